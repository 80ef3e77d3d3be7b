"""Choose the threshold the pick files are written at, without ground truth, and draw the score histogram.

The candidates of a picks folder hold every peak above a low floor, so their logits mix a mode of
background (ice, carbon edges, the spaces between particles) and a mode of particles. Two ways to
suggest where to cut, neither of which needs to know where the particles are:
- `expected_particles`: the user's particle count per micrograph (as for π): the threshold that keeps
  that many picks per micrograph on average over the folder;
- `valley`: the deepest point of the smoothed histogram between its lowest and highest modes (the
  mode at the floor is background, the last one particles); where the histogram has one mode, logit 0
  (probability 0.5).
"""
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from picking.overlay import blank_plot

HISTOGRAM_BINS = 80
NO_VALLEY_THRESHOLD = 0.0


@dataclass(frozen=True)
class Suggestion:
    threshold: float
    method: str   # "expected_particles", "valley" or "no valley: logit 0"


def count_threshold(scores: np.ndarray, n_micrographs: int, expected_particles: float) -> float:
    """The logit that keeps `expected_particles` x `n_micrographs` of `scores` (all if there are fewer)."""
    ranked = np.sort(scores)[::-1]
    keep = int(round(expected_particles * n_micrographs))
    return float(ranked[min(max(keep, 1), len(ranked)) - 1])


def valley_threshold(scores: np.ndarray) -> float | None:
    """The bin centre of the smoothed histogram's minimum between its first and last mode; None with one mode."""
    counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
    smooth = gaussian_filter1d(counts.astype(np.float64), sigma=2, mode="nearest")
    inner = (smooth[1:-1] > smooth[:-2]) & (smooth[1:-1] >= smooth[2:])
    peaks = np.flatnonzero(np.concatenate([[smooth[0] > smooth[1]], inner, [smooth[-1] > smooth[-2]]]))
    significant = peaks[smooth[peaks] >= 0.02 * smooth.max()]
    if len(significant) < 2:
        return None
    first, last = significant[0], significant[-1]
    bottom = first + int(np.argmin(smooth[first:last + 1]))
    return float((edges[bottom] + edges[bottom + 1]) / 2)


def suggest_threshold(scores: np.ndarray, n_micrographs: int, expected_particles: float | None = None) -> Suggestion:
    """The threshold for the pick files: from the expected count when given, else the histogram's valley."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return Suggestion(NO_VALLEY_THRESHOLD, "no candidates: logit 0")
    if expected_particles is not None:
        return Suggestion(count_threshold(scores, n_micrographs, expected_particles), "expected_particles")
    valley = valley_threshold(scores)
    return Suggestion(NO_VALLEY_THRESHOLD, "no valley: logit 0") if valley is None else Suggestion(valley, "valley")


def save_score_histogram_png(path, scores: np.ndarray, threshold: float, label: str,
                             size: tuple[int, int] = (640, 400)) -> None:
    """Bars of the candidates' logits (log counts), the threshold as a red line, `label` as the title."""
    width, height = size
    left, right, top, bottom = 60, 20, 40, 50
    image, draw, font = blank_plot(size, 13)
    scores = np.asarray(scores, dtype=np.float64)
    counts, edges = np.histogram(scores if len(scores) else np.zeros(1), bins=HISTOGRAM_BINS)
    low, high = float(min(edges[0], threshold)), float(max(edges[-1], threshold))
    span = max(high - low, 1e-9)
    heights = np.log10(counts + 1.0) / max(np.log10(counts.max() + 1.0), 1e-9)

    def x_of(value):
        return left + (value - low) / span * (width - left - right)

    for count_height, start, end in zip(heights, edges[:-1], edges[1:]):
        y = height - bottom - count_height * (height - top - bottom)
        draw.rectangle([x_of(start), y, max(x_of(end) - 1, x_of(start)), height - bottom], fill=(31, 119, 180))
    draw.line([(left, height - bottom), (width - right, height - bottom)], fill="black")
    for tick in np.linspace(low, high, 6):
        draw.text((x_of(tick), height - bottom + 6), f"{tick:.1f}", fill="black", font=font, anchor="mt")
    draw.line([(x_of(threshold), top), (x_of(threshold), height - bottom)], fill=(214, 39, 40), width=2)
    draw.text(((left + width - right) / 2, height - 15), "candidate logit (bars: log count)", fill="black",
              font=font, anchor="mm")
    draw.text((width / 2, top / 2), label, fill="black", font=font, anchor="mm")
    image.save(path, format="PNG")
