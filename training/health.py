"""The warning signs of a failing PU run, checked every epoch: printed and logged to TensorBoard."""
import math

FLAT_EPOCHS = 10


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf: training stops and the last good checkpoint is kept."""


def check_finite(value, step):
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss is {value} at step {step}; stopped, last.pt holds the last good state "
                               f"(lower optimizer.lr or check the prior)")


def health_warnings(train_parts, val_metrics, auc_history, use_consistency):
    """(tag, message) pairs for each warning sign present."""
    found = []
    mask_rate = train_parts.get("mask_rate")
    if use_consistency and mask_rate is not None:
        if mask_rate < 0.20:
            found.append(("mask_rate_low", f"mask rate {mask_rate:.1%} < 20%: consistency threshold too high"))
        elif mask_rate > 0.95:
            found.append(("mask_rate_high", f"mask rate {mask_rate:.1%} > 95%: consistency threshold too low"))
    predicted = val_metrics.get("predicted_positive_rate")
    if predicted is not None and predicted > 0.99:
        found.append(("collapse_positive", "the model calls ~every val patch a particle (recall 100%): "
                                           "check the prior and the negatives"))
    elif predicted is not None and predicted < 0.01:
        found.append(("collapse_negative", "the model calls ~no val patch a particle (recall 0%): "
                                           "check the prior and the labels"))
    if len(auc_history) > FLAT_EPOCHS and max(auc_history[-FLAT_EPOCHS:]) <= max(auc_history[:-FLAT_EPOCHS]):
        found.append(("val_auc_flat", f"val AUC has not improved for {FLAT_EPOCHS} epochs"))
    return found
