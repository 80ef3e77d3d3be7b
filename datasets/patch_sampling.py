"""Which patches a micrograph contributes, for the two preprocessors. Pure functions on arrays.

Both take the micrograph already rescaled and normalised (uint8), particle centres in the same
(rescaled) pixels, and a per-micrograph numpy Generator, and return a dict of numpy arrays in the
chunk contract's terms (patches, label, sample_type, true_label, xy = patch centre in rescaled px).
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial import cKDTree

from datasets.chunk_format import (LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNLABELED, SAMPLE_TYPES)

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


def _samples(centres, label, sample_type, true_label):
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
    """The guide's sliding windows: positive when a labeled centre is within `radius` of the window centre.

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
    return with_patches(image, [_samples(centres, label, sample_type, true_label)], size), stats


def negative_candidates(height, width, particles_xy, *, size, spacing, min_distance):
    """Distinct grid positions whose patch fits the micrograph and which lie >= min_distance from every particle."""
    half = size // 2
    if height < size or width < size:
        return np.zeros((0, 2), dtype=np.int64)
    step = max(1, int(round(spacing)))
    ys = np.arange(half, height - half + 1, step)
    xs = np.arange(half, width - half + 1, step)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    grid = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    if len(particles_xy):
        grid = grid[~near(grid, particles_xy, min_distance - 1e-9)]
    return grid


def offcentre_negatives(particles_xy, rng, *, count, diameter, distance, height, width):
    """`count` window centres (x, y) next to particles but off their centres: each lies `distance` =
    (low, high) diameters from a randomly drawn particle, in a random direction, inside the micrograph,
    and at least `low` diameters from every particle, so it is centred on none.

    They teach the classifier where a particle's centre is. Trained on centred positives and far
    background alone, its score stays high half a diameter off-centre, and non-maximum suppression then
    keeps a ring of false picks around each particle (on EMPIAR-10017, most high-scoring false picks lay
    0.5-1 diameter from a particle). May return fewer than `count` in crowded micrographs.
    """
    low, high = distance[0] * diameter, distance[1] * diameter
    if count == 0 or len(particles_xy) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    draws = 4 * count
    anchors = particles_xy[rng.integers(len(particles_xy), size=draws)]
    angle = rng.uniform(0.0, 2.0 * np.pi, draws)
    radius = rng.uniform(low, high, draws)
    centres = np.rint(anchors + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1))
    centres = centres.astype(np.int64)
    inside = (centres >= 0).all(axis=1) & (centres[:, 0] < width) & (centres[:, 1] < height)
    centres = centres[inside]
    centres = centres[~near(centres, particles_xy, low - 1e-9)]
    return centres[:count]


def random_windows(rng, *, count, height, width):
    """`count` window centres (x, y) drawn uniformly over the micrograph, as Topaz samples its unlabeled pixels."""
    return np.stack([rng.integers(width, size=count), rng.integers(height, size=count)], axis=1)


def _random_window_samples(rng, particles_xy, *, count, centre_radius, height, width, train):
    """Windows anywhere on the micrograph: centred on a particle when one lies within `centre_radius` px.

    Train: all are unlabeled (label 0); the centred ones are its positives (hidden_positive), the rest
    background, which is what pi counts. Val/test: the centred ones are positives, the rest negatives.
    """
    centres = random_windows(rng, count=count, height=height, width=width)
    centred = near(centres, particles_xy, centre_radius)
    label = np.full(count, LABEL_UNLABELED) if train else centred.astype(int)
    sample_type = np.where(centred, HIDDEN if train else LABELED, BACKGROUND)
    return _samples(centres, label, sample_type, centred.astype(int))


def _on_particle(centres, particles_xy, diameter):
    """Which window centres lie within half a diameter of a particle (none where the particles are unknown)."""
    return near(centres, particles_xy, diameter / 2) if particles_xy is not None else np.zeros(len(centres), bool)


def _known_negatives(centres, truth_xy, diameter):
    """Windows labeled -1; true_label marks the ones that land on an unannotated particle (when known)."""
    k = len(centres)
    return _samples(centres, np.full(k, LABEL_NEGATIVE), np.full(k, KNOWN_NEGATIVE),
                    _on_particle(centres, truth_xy, diameter).astype(int))


def coco_pu_samples(image, particles_xy, truth_xy, known_negative_xy, rng, *, size, diameter,
                    hide_ratio, neg_per_pos, neg_min_distance, offcentre_per_pos, offcentre_distance,
                    offcentre_label, random_per_pos, centre_radius, train):
    """The COCO PU split of one micrograph (particle-centred positives, hidden positives, negatives).

    Train: a seeded `hide_ratio` of the annotated particles is hidden in the unlabeled set; far negatives
    are `neg_per_pos` per particle, at distinct grid positions >= `neg_min_distance` diameters from every
    annotated particle; off-centre negatives are `offcentre_per_pos` per particle, `offcentre_distance`
    diameters beside one (offcentre_negatives); both go to the unlabeled set, except that with
    `offcentre_label="known_negative"` the off-centre windows are placed beside the labeled particles
    only (the hidden ones are not known) and become known negatives; rejected picks (PUFP) become
    known negatives too; `random_per_pos` windows per particle lie anywhere on the micrograph and join
    the unlabeled set, a positive there when within `centre_radius` diameters of a particle centre
    (random_window_samples). Val/test: every particle is a positive, negatives by the same rules, labels
    true. `truth_xy` (all particles, when known) sets true_label, so a negative that lands on an
    unannotated particle is marked a hidden positive.
    """
    height, width = image.shape
    n = len(particles_xy)
    order = rng.permutation(n)
    n_hide = int(n * hide_ratio) if train else 0
    hidden, labeled = particles_xy[order[:n_hide]], particles_xy[order[n_hide:]]
    centres_pos = np.rint(labeled).astype(np.int64)
    centres_hid = np.rint(hidden).astype(np.int64)
    np.clip(centres_pos, 0, [width - 1, height - 1], out=centres_pos)
    np.clip(centres_hid, 0, [width - 1, height - 1], out=centres_hid)
    wanted = int(round(neg_per_pos * n))
    candidates = negative_candidates(height, width, particles_xy, size=size,
                                     spacing=diameter / 4, min_distance=neg_min_distance * diameter)
    take = min(wanted, len(candidates))
    negatives = candidates[np.sort(rng.choice(len(candidates), size=take, replace=False))] if take else candidates[:0]
    offcentre_wanted = int(round(offcentre_per_pos * n))
    offcentre_known = train and offcentre_label == "known_negative"
    offcentre = offcentre_negatives(labeled if offcentre_known else particles_xy, rng, count=offcentre_wanted,
                                    diameter=diameter, distance=offcentre_distance, height=height, width=width)
    if not offcentre_known:
        negatives = np.concatenate([negatives, offcentre])
    n_negatives = len(negatives)
    on_particle = _on_particle(negatives, truth_xy, diameter)
    parts = [
        _samples(centres_pos, np.full(len(labeled), LABEL_POSITIVE), np.full(len(labeled), LABELED),
                 np.ones(len(labeled))),
        _samples(centres_hid, np.full(n_hide, LABEL_UNLABELED), np.full(n_hide, HIDDEN), np.ones(n_hide)),
        _samples(negatives, np.full(n_negatives, LABEL_UNLABELED), np.where(on_particle, HIDDEN, BACKGROUND),
                 on_particle.astype(int)),
    ]
    if offcentre_known and len(offcentre):
        parts.append(_known_negatives(offcentre, particles_xy if truth_xy is None else truth_xy, diameter))
    if train and known_negative_xy is not None and len(known_negative_xy):
        centres_kn = np.clip(np.rint(known_negative_xy).astype(np.int64), 0, [width - 1, height - 1])
        parts.append(_known_negatives(centres_kn, None, diameter))
    n_random = int(round(random_per_pos * n))
    if n_random:
        parts.append(_random_window_samples(rng, particles_xy if truth_xy is None else truth_xy,
                                            count=n_random, centre_radius=centre_radius * diameter,
                                            height=height, width=width, train=train))
    stats = {"negatives_wanted": wanted, "negatives_found": int(take),
             "offcentre_wanted": offcentre_wanted, "offcentre_found": int(len(offcentre)), "hidden": int(n_hide),
             "random_windows": n_random}
    return with_patches(image, parts, size), stats
