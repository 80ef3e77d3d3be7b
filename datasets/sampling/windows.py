"""Sliding windows and the helpers both samplers share. Pure functions on arrays.

Samplers take the micrograph already rescaled and normalised (uint8), particle centres in the same
(rescaled) pixels, and a per-micrograph numpy Generator, and return a dict of numpy arrays in the
chunk contract's terms (patches, label, sample_type, true_label, xy = patch centre in rescaled px).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial import cKDTree

from datasets.chunks.format import LABEL_POSITIVE, LABEL_UNLABELED, SAMPLE_TYPES

LABELED = SAMPLE_TYPES["labeled_positive"]
HIDDEN = SAMPLE_TYPES["hidden_positive"]
BACKGROUND = SAMPLE_TYPES["background"]
KNOWN_NEGATIVE = SAMPLE_TYPES["known_negative"]
UNLABELED = SAMPLE_TYPES["unlabeled"]


def near(centres_xy, particles_xy, radius):
    """True for each centre with a particle within `radius` (same pixel units)."""
    if len(particles_xy) == 0 or len(centres_xy) == 0:
        return np.zeros(len(centres_xy), dtype=bool)
    distance, _ = cKDTree(particles_xy).query(centres_xy, k=1, distance_upper_bound=radius)
    return np.isfinite(distance)


def cut_patches(image, centres_xy, size):
    """Patches of `size` px centred on integer centres; the micrograph is reflect-padded at its edges."""
    half = size // 2
    padded = np.pad(image, half, mode="reflect")
    windows = sliding_window_view(padded, (size, size))
    xy = np.rint(np.asarray(centres_xy, dtype=np.float64)).astype(np.int64).reshape(-1, 2)
    return np.ascontiguousarray(windows[xy[:, 1], xy[:, 0]])


def window_centres(height, width, size, stride):
    """Centres (x, y) of the sliding windows that fit entirely inside the micrograph, row-major."""
    if height < size or width < size:
        return np.zeros((0, 2), dtype=np.int64)
    ys = np.arange(0, height - size + 1, stride) + size // 2
    xs = np.arange(0, width - size + 1, stride) + size // 2
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def samples_of(centres, label, sample_type, true_label):
    """One group of a micrograph's samples, before their patches are cut: centres and labels."""
    return {"label": np.asarray(label, dtype=np.int8),
            "sample_type": np.asarray(sample_type, dtype=np.int8),
            "true_label": np.asarray(true_label, dtype=np.int8),
            "xy": np.asarray(centres, dtype=np.float64).reshape(-1, 2)}


def with_patches(image, parts, size):
    """One sample dict from groups of `_samples` (in order), the patches of all their centres cut from
    `image` in one pass (cutting per group, then concatenating, copied each micrograph's ~50 MB twice)."""
    samples = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return {"patches": cut_patches(image, samples["xy"], size), **samples}


def sliding_window_samples(image, labeled_xy, truth_xy, rng, *, size, stride, radius, ratio, train):
    """Sliding windows: positive when a labeled centre is within `radius` of the window centre.

    Keeps every positive window and a seeded `ratio` of the others. In train, windows without a labeled
    particle are unlabeled (label 0); their truth comes from `truth_xy` when known, else stays unknown.
    In val/test the annotations are taken as complete: positives label 1, others label 0.
    Returns (samples, stats) where stats holds the window counts the prior estimate needs.
    """
    height, width = image.shape
    centres = window_centres(height, width, size, stride)
    positive = near(centres, labeled_xy, radius)
    others = np.flatnonzero(~positive)
    n_keep = int(round(ratio * len(others)))
    kept_others = np.sort(rng.choice(others, size=n_keep, replace=False)) if n_keep else others[:0]
    keep = np.sort(np.concatenate([np.flatnonzero(positive), kept_others]))
    centres, positive = centres[keep], positive[keep]
    truth = near(centres, truth_xy, radius) if truth_xy is not None else None
    if train:
        label = np.where(positive, LABEL_POSITIVE, LABEL_UNLABELED)
        if truth is None:
            sample_type = np.where(positive, LABELED, UNLABELED)
            true_label = np.where(positive, 1, -1)
        else:
            sample_type = np.where(positive, LABELED, np.where(truth, HIDDEN, BACKGROUND))
            true_label = (positive | truth).astype(int)
    else:
        truth = positive if truth is None else truth
        label = np.where(positive, LABEL_POSITIVE, LABEL_UNLABELED)
        sample_type = np.where(truth, LABELED, BACKGROUND)
        true_label = truth.astype(int)
    stats = {"windows": int(len(positive) - len(kept_others) + len(others)),
             "unlabeled_windows": int(len(others))}
    return with_patches(image, [samples_of(centres, label, sample_type, true_label)], size), stats
