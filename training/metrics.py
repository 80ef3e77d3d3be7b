"""Patch-level metrics (the table every run reports): AUC, AP, precision, recall, F1."""
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def threshold_metrics(scores, true_label, threshold):
    predicted = scores >= threshold
    tp = float(np.sum(predicted & (true_label == 1)))
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float((true_label == 1).sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1,
            "predicted_positive_rate": float(predicted.mean()) if len(predicted) else 0.0}


def best_f1_threshold(scores, true_label):
    """The probability threshold with the highest F1 (chosen on val, applied to test)."""
    precision, recall, thresholds = precision_recall_curve(true_label, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def patch_metrics(scores, true_label, best_threshold=None):
    """auc, ap and precision/recall/f1 at 0.5; plus the same at `best_threshold` when given.

    Only samples whose truth is known (true_label 0 or 1) count.
    """
    known = true_label >= 0
    scores, true_label = scores[known], true_label[known]
    both = len(np.unique(true_label)) == 2
    result = {"auc": float(roc_auc_score(true_label, scores)) if both else float("nan"),
              "ap": float(average_precision_score(true_label, scores)) if both else float("nan"),
              **threshold_metrics(scores, true_label, 0.5), "n": int(len(scores)),
              "n_positive": int((true_label == 1).sum())}
    if best_threshold is not None:
        result["at_best_f1_threshold"] = threshold_metrics(scores, true_label, best_threshold)
    return result
