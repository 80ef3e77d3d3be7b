"""The COCO PU split of one micrograph: which patches it contributes. Pure functions on arrays.

Inputs and outputs as in windows.py: the rescaled uint8 micrograph, particle centres in rescaled px,
a per-micrograph Generator; a dict of arrays in the chunk contract's terms.
"""
import numpy as np
from scipy.spatial import cKDTree

from datasets.chunks.format import LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNLABELED
from datasets.sampling.windows import (BACKGROUND, HIDDEN, KNOWN_NEGATIVE, LABELED, UNLABELED, near, samples_of,
                                       with_patches)

LABEL_MODES = ("partial", "complete")
WINDOW_BASES = ("expected", "labeled")


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


def free_area(height, width, particles_xy, diameter):
    """Pixels of the micrograph at least one diameter from every particle of `particles_xy`: where other
    particles can be (they do not overlap), measured on a grid a quarter diameter apart."""
    step = max(1, int(round(diameter / 4)))
    ys, xs = np.arange(step // 2, height, step), np.arange(step // 2, width, step)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).reshape(-1, 2)
    free = ~near(grid, particles_xy, diameter - 1e-9) if len(particles_xy) else np.ones(len(grid), bool)
    return float(height * width * free.mean()) if len(grid) else 0.0


def isolated_count(particles_xy, diameter):
    """How many of the particles lie at least one diameter from every other one: left out of the labels,
    they would sit in the free area of the rest (`free_area`)."""
    if len(particles_xy) < 2:
        return len(particles_xy)
    distance, _ = cKDTree(particles_xy).query(particles_xy, k=2)
    return int(np.sum(distance[:, 1] >= diameter))


def random_windows(rng, *, count, height, width):
    """`count` window centres (x, y) drawn uniformly over the micrograph, as Topaz samples its unlabeled pixels."""
    return np.stack([rng.integers(width, size=count), rng.integers(height, size=count)], axis=1)


def _random_window_samples(rng, particles_xy, *, count, centre_radius, height, width, train, complete):
    """Windows anywhere on the micrograph: centred on a particle when one lies within `centre_radius` px.

    Train: all are unlabeled (label 0); the centred ones are its positives (hidden_positive). With
    complete labels the rest are background, which is what pi counts; with partial labels their truth
    is unknown (`unlabeled`, true_label -1): an unlabeled particle may sit under any of them.
    Val/test: the centred ones are positives, the rest negatives.
    """
    centres = random_windows(rng, count=count, height=height, width=width)
    centred = _centred(centres, particles_xy, centre_radius)
    label = np.full(count, LABEL_UNLABELED) if train else centred.astype(int)
    sample_type = np.where(centred, HIDDEN if train else LABELED, BACKGROUND if complete else UNLABELED)
    return samples_of(centres, label, sample_type, np.where(centred, 1, 0 if complete else -1))


def _centred(centres, particles_xy, radius):
    """Which window centres lie within `radius` px of a particle centre (none where the particles are unknown):
    the one rule that makes a window a particle, as for the random windows."""
    return near(centres, particles_xy, radius) if particles_xy is not None else np.zeros(len(centres), bool)


def _known_negatives(centres, truth_xy, radius, complete=True):
    """Windows labeled -1; true_label marks the ones centred (within `radius`) on an unannotated particle
    (when known; -1 with partial labels, where nobody knows)."""
    k = len(centres)
    true_label = _centred(centres, truth_xy, radius).astype(int) if complete else np.full(k, -1)
    return samples_of(centres, np.full(k, LABEL_NEGATIVE), np.full(k, KNOWN_NEGATIVE), true_label)


def coco_pu_samples(image, particles_xy, truth_xy, known_negative_xy, rng, *, size, diameter, labels,
                    hide_ratio, neg_per_pos, neg_min_distance, offcentre_per_pos, offcentre_distance,
                    offcentre_label, random_per_pos, centre_radius, train, window_particles=None):
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
    true. `truth_xy` (all particles, when known) sets true_label, so a negative centred on an unannotated
    particle (within `centre_radius` diameters, the rule of the random windows) is marked a hidden positive;
    one that only overlaps a particle is background, as the off-centre windows are.

    `labels="partial"` (a user's own labels, never complete): nothing is hidden (`hide_ratio` is 0),
    `truth_xy` is None, and train samples whose truth nobody knows (far negatives, random windows off
    the labeled particles) are `unlabeled` with true_label -1; pi then comes from the expected particle
    count (datasets/prior.py), and the stats hold what that needs. With `window_particles` (the
    expected count per micrograph), the far negatives and random windows of a train
    micrograph are counted per particle it is expected to hold, labeled or not, rather than per labeled
    particle: the unlabeled set then covers a micrograph alike whatever fraction of its particles a
    user clicked.
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
    n_windows = max(n, window_particles) if train and window_particles else n
    wanted = int(round(neg_per_pos * n_windows))
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
    complete = labels == "complete" or not train
    centre_px = centre_radius * diameter
    on_particle = _centred(negatives, truth_xy, centre_px)
    parts = [
        samples_of(centres_pos, np.full(len(labeled), LABEL_POSITIVE), np.full(len(labeled), LABELED),
                   np.ones(len(labeled))),
        samples_of(centres_hid, np.full(n_hide, LABEL_UNLABELED), np.full(n_hide, HIDDEN), np.ones(n_hide)),
        samples_of(negatives, np.full(n_negatives, LABEL_UNLABELED),
                   np.where(on_particle, HIDDEN, BACKGROUND if complete else UNLABELED),
                   on_particle.astype(int) if complete else np.full(n_negatives, -1)),
    ]
    if offcentre_known and len(offcentre):
        truth_or_labels = particles_xy if truth_xy is None else truth_xy
        parts.append(_known_negatives(offcentre, truth_or_labels, centre_px, complete))
    if train and known_negative_xy is not None and len(known_negative_xy):
        centres_kn = np.clip(np.rint(known_negative_xy).astype(np.int64), 0, [width - 1, height - 1])
        parts.append(_known_negatives(centres_kn, None, centre_px))
    n_random = int(round(random_per_pos * n_windows))
    if n_random:
        parts.append(_random_window_samples(rng, particles_xy if truth_xy is None else truth_xy,
                                            count=n_random, centre_radius=centre_px,
                                            height=height, width=width, train=train, complete=complete))
    samples = with_patches(image, parts, size)
    unknown = samples["sample_type"] == UNLABELED
    unknown_far = int(np.sum(unknown[:len(labeled) + n_hide + n_negatives]))
    stats = {"negatives_wanted": wanted, "negatives_found": int(take),
             "offcentre_wanted": offcentre_wanted, "offcentre_found": int(len(offcentre)), "hidden": int(n_hide),
             "random_windows": n_random, "n_labeled": int(len(labeled)), "area_px": int(height * width),
             "free_area_px": free_area(height, width, labeled, diameter),
             "labeled_isolated": isolated_count(labeled, diameter),
             "unlabeled_known_positive": int(np.sum(samples["sample_type"] == HIDDEN)),
             "unknown_far": unknown_far, "unknown_random": int(np.sum(unknown)) - unknown_far}
    return samples, stats
