"""Pick-level evaluation: picks against ground-truth particles, as precision, recall, F1 and AUPRC.

Same yardstick as Topaz's `precision_recall_curve` command, so the two pickers' numbers compare:

- Matching, per micrograph: one assignment over all picks at once, whatever their scores
  (`scipy.optimize.linear_sum_assignment`). A pick-particle pair costs d^2 - r^2 when the pick lies
  closer than the radius r to the particle (d < r), and 0 otherwise, so the assignment maximises the
  summed r^2 - d^2 of the pairs in range; a pick is a true positive when assigned to a particle in
  range. Each particle takes at most one pick: a second pick on one particle is a false positive.
- The curve, over all scored micrographs pooled: picks sorted by score, picks of equal score taken
  together as one step; at each step precision = TP / picks so far and recall = TP / all ground-truth
  particles of the scored micrographs, so particles that no pick reaches lower recall.
- AUPRC = sum over steps of precision x (recall gained at that step): average precision without
  interpolation, Topaz's `auprc`. An empty pick set scores 0.
- Picks on micrographs that the ground truth does not cover are ignored and counted, as Topaz's
  default (`--images target`) does.

The radius is fixed (`radius`) or a fraction of each particle's diameter (`radius_fraction`, 0.5 by
default); `default_diameter` stands in where the ground truth has none.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from common.errors import InputError
from picking.overlay import blank_plot


def match_picks(picks_xy: np.ndarray, targets_xy: np.ndarray, radius) -> np.ndarray:
    """Index of the ground-truth particle assigned to each pick (input order), -1 where none.

    `radius` is one number or one per particle. Only picks and particles with a partner in range enter
    the assignment: the others cost 0 against everything and cannot change it.
    """
    picks_xy = np.asarray(picks_xy, dtype=np.float64).reshape(-1, 2)
    targets_xy = np.asarray(targets_xy, dtype=np.float64).reshape(-1, 2)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(targets_xy),))
    assigned = np.full(len(picks_xy), -1, dtype=np.int64)
    if len(picks_xy) == 0 or len(targets_xy) == 0:
        return assigned
    near = cKDTree(targets_xy).query_ball_point(picks_xy, radius.max())
    rows = np.flatnonzero([len(n) > 0 for n in near])
    cols = np.unique(np.concatenate([near[i] for i in rows])).astype(np.int64) if len(rows) else rows
    d2 = ((picks_xy[rows, None, :] - targets_xy[None, cols, :]) ** 2).sum(-1)
    cost = np.minimum(d2 - radius[cols] ** 2, 0.0)
    pick_index, target_index = linear_sum_assignment(cost)
    in_range = cost[pick_index, target_index] < 0
    assigned[rows[pick_index[in_range]]] = cols[target_index[in_range]]
    return assigned


@dataclass
class PRCurve:
    """Precision and recall at each distinct score threshold (descending), and their summaries."""
    precision: np.ndarray
    recall: np.ndarray
    threshold: np.ndarray
    f1: np.ndarray
    n_matched: np.ndarray
    auprc: float
    n_targets: int
    n_picks: int

    @property
    def best(self) -> int | None:
        """Index of the best-F1 step (the highest threshold among equals); None without picks."""
        return int(np.argmax(self.f1)) if len(self.f1) else None

    def at_best(self) -> dict:
        """F1, precision, recall, threshold and TP count at the best-F1 step (zeros without picks)."""
        if self.best is None:
            return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": None, "n_matched": 0}
        i = self.best
        return {"f1": float(self.f1[i]), "precision": float(self.precision[i]),
                "recall": float(self.recall[i]), "threshold": float(self.threshold[i]),
                "n_matched": int(self.n_matched[i])}


    def at_threshold(self, threshold: float | None) -> dict:
        """F1, precision, recall and TP count keeping the picks scoring at least `threshold` (all for None)."""
        kept = np.flatnonzero(self.threshold >= threshold) if threshold is not None else np.arange(len(self.f1))
        if not len(kept):
            return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": threshold, "n_matched": 0}
        i = int(kept[-1])
        return {"f1": float(self.f1[i]), "precision": float(self.precision[i]),
                "recall": float(self.recall[i]), "threshold": threshold, "n_matched": int(self.n_matched[i])}


def precision_recall_curve(matched: np.ndarray, scores: np.ndarray, n_targets: int) -> PRCurve:
    """The curve of picks flagged true positive (`matched`) against `n_targets` particles.

    A NaN score (a format without scores) ranks below every score; unscored picks share one step.
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    last_of_step = np.append(ranked[1:] != ranked[:-1], True) if len(ranked) else np.zeros(0, bool)
    n_picked = np.flatnonzero(last_of_step) + 1
    tp = np.cumsum(np.asarray(matched, dtype=bool)[order])[last_of_step]
    precision = tp / n_picked
    recall = tp / n_targets if n_targets else np.zeros(len(tp))
    gained = np.diff(tp, prepend=0)
    auprc = float(np.sum(precision * gained) / n_targets) if n_targets else 0.0
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return PRCurve(precision, recall, ranked[last_of_step], f1, tp, auprc, int(n_targets), len(scores))


@dataclass
class Evaluation:
    """Pooled curve, one row per scored micrograph, the radii used and what was left out."""
    curve: PRCurve
    per_micrograph: list[dict]
    radius: np.ndarray
    ignored_micrographs: list[str]
    n_ignored_picks: int


def target_radius(targets: np.ndarray, stem: str, radius: float | None, radius_fraction: float,
                  default_diameter: float | None) -> np.ndarray:
    """Matching radius per particle of one micrograph (rows x, y, diameter, score)."""
    if radius is not None:
        return np.full(len(targets), float(radius))
    diameter = targets[:, 2].copy()
    if default_diameter is not None:
        diameter[np.isnan(diameter)] = default_diameter
    if np.isnan(diameter).any():
        raise InputError(f"ground truth for micrograph {stem} has particles without a diameter; "
                         "pass --radius PX or --particle-diameter PX")
    return radius_fraction * diameter


def precision_recall(picks: dict, targets: dict, radius: float | None = None, radius_fraction: float = 0.5,
                     default_diameter: float | None = None, micrographs=None) -> Evaluation:
    """Evaluate a pick table against a ground-truth table (both stem -> array [N, 4] x, y, diameter, score).

    Scores the `micrographs` given that the ground truth covers (default: every ground-truth micrograph);
    ground-truth micrographs without picks count their particles as misses.
    """
    stems = sorted(targets) if micrographs is None else [s for s in dict.fromkeys(micrographs) if s in targets]
    ignored = sorted(set(picks) - set(stems))
    empty = np.zeros((0, 4))
    rows, radii = [], []
    for stem in stems:
        mine, theirs = picks.get(stem, empty), targets[stem]
        radii.append(target_radius(theirs, stem, radius, radius_fraction, default_diameter))
        rows.append((stem, match_picks(mine[:, :2], theirs[:, :2], radii[-1]) >= 0, mine[:, 3], len(theirs)))
    n_targets = sum(row[3] for row in rows)
    if n_targets == 0:
        raise InputError("the ground truth holds no particles on the micrographs scored; "
                         "check --ground-truth and the micrograph list")
    curve = precision_recall_curve(np.concatenate([row[1] for row in rows]),
                                   np.concatenate([row[2] for row in rows]), n_targets)
    table = [micrograph_row(*row, curve.at_best()["threshold"]) for row in rows]
    return Evaluation(curve, table, np.concatenate(radii), ignored,
                      int(sum(len(picks[s]) for s in ignored)))


def micrograph_row(stem: str, matched: np.ndarray, scores: np.ndarray, n_targets: int,
                   threshold: float | None) -> dict:
    """One micrograph's counts and scores at the pooled best-F1 threshold, and its own AUPRC."""
    ranked = np.nan_to_num(scores, nan=-np.inf)
    kept = ranked >= threshold if threshold is not None else np.zeros(len(scores), bool)
    tp, n_kept = int(matched[kept].sum()), int(kept.sum())
    precision = tp / n_kept if n_kept else 0.0
    recall = tp / n_targets if n_targets else float("nan")
    total = precision + recall
    f1 = 2 * precision * recall / total if total > 0 else 0.0
    auprc = precision_recall_curve(matched, scores, n_targets).auprc if n_targets else float("nan")
    return {"stem": stem, "n_targets": int(n_targets), "n_picks": len(scores), "n_picks_kept": n_kept,
            "n_matched": tp, "precision": precision, "recall": recall, "f1": f1, "auprc": auprc}


def _vertical_text(text: str, font) -> Image.Image:
    """`text` in black on white, rotated to read bottom to top."""
    left, top, right, bottom = font.getbbox(text)
    strip = Image.new("RGB", (right + 2, bottom + 2), "white")
    ImageDraw.Draw(strip).text((1, 1), text, fill="black", font=font)
    return strip.rotate(90, expand=True)


def save_pr_curve_png(path, recall: np.ndarray, precision: np.ndarray, label: str,
                      size: tuple[int, int] = (640, 520)) -> None:
    """Draw precision against recall, axes 0..1 with ticks every 0.2, `label` as the title."""
    width, height = size
    left, right, top, bottom = 70, 25, 45, 60
    image, draw, font = blank_plot(size, 14)

    def to_pixel(r, p):
        return left + r * (width - left - right), height - bottom - p * (height - top - bottom)

    draw.rectangle([to_pixel(0, 1), to_pixel(1, 0)], outline="black")
    for tick in np.linspace(0, 1, 6):
        x, y0 = to_pixel(tick, 0)
        x0, y = to_pixel(0, tick)
        draw.line([(x, y0), (x, y0 + 5)], fill="black")
        draw.line([(x0 - 5, y), (x0, y)], fill="black")
        draw.text((x, y0 + 8), f"{tick:.1f}", fill="black", font=font, anchor="mt")
        draw.text((x0 - 8, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
    draw.text(((left + width - right) / 2, height - 18), "recall", fill="black", font=font, anchor="mm")
    ylabel = _vertical_text("precision", font)
    image.paste(ylabel, (12, int((top + height - bottom - ylabel.height) / 2)))
    draw.text((width / 2, top / 2), label, fill="black", font=font, anchor="mm")
    points = [to_pixel(r, p) for r, p in zip(recall, precision)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    elif points:
        draw.ellipse([points[0][0] - 3, points[0][1] - 3, points[0][0] + 3, points[0][1] + 3], fill=(31, 119, 180))
    image.save(path)
