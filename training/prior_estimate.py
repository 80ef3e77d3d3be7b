"""The particle count estimated from the patches when the user gives none: Best Bin Estimation (BBE).

BBE (Garg, Wu, Smola, Balakrishnan & Lipton, "Mixture Proportion Estimation and PU Learning: A Modern
Approach", NeurIPS 2021) estimates the fraction α of positives in an unlabeled sample U from a
classifier trained to tell labeled positives P from U: on held-out data, the top-scoring bin of a
good classifier holds positives only, so α = min over thresholds c of q_U(c) / q_P(c) (the fractions of
U and P scoring above c), the threshold chosen with an upper confidence bound so that a bin with few
samples is not trusted.

Here P are the labeled particles' windows and U the far windows of a partial-labels COCO split (at
least `neg_min_distance` diameters from every labeled particle). The P windows are shifted uniformly
within half a diameter before the classifier sees them (training and held-out alike), so α is the
fraction of far windows with a particle centre within that half diameter. α then gives the density
of the particles nobody labeled over the free area (α / (π r²), r = diameter / 2), and a particle
count and π follow from that density exactly as π does from --expected-particles (datasets/prior.py).
Preprocessing records them as a suggestion and does not use them: on EMPIAR-10146 they measured
2.5-3.4x the counted π (docs/method.md). The classifier is the compact ResNet, trained on half of the
train micrographs and scored on the other half, both ways round (cross-fitting); the cross-fit runs
three times with different classifier seeds and α is the median (about two minutes each on CPU). No
ground truth is read.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn
from torch.nn import functional as F

from datasets.chunks.loader import gather_rows, load_chunk
from datasets.sampling.windows import LABELED, UNLABELED
from models.resnet import build_model

MIN_SAMPLES = 100         # labeled particles and far windows each, below which no estimate is made
MAX_SAMPLES = 4000        # of each, drawn at random (seeded) beyond that
INPUT_SIZE = 32
REPEATS = 3               # cross-fits with different classifier seeds; α is their median (one alone varied
                          # 0.90-1.28x the counted pi with the seed on generated data)
CITATION = "BBE (Garg et al., NeurIPS 2021)"


@dataclass(frozen=True)
class DensityEstimate:
    """The missing particles' density over the free area, from α, or why there is none (`reason`)."""
    alpha: float | None = None            # fraction of far windows holding a particle (BBE)
    density_per_px: float | None = None   # particles per free px of the rescaled micrographs
    reason: str | None = None


def bbe_alpha(scores_p, scores_u, delta=0.1, gamma=0.01):
    """BBE's mixture proportion from held-out classifier scores of positives and unlabeled (Garg et al. 2021,
    Algorithm 1): q_U(c)/q_P(c) at the threshold minimising it plus its confidence width."""
    scores_p, scores_u = np.sort(scores_p)[::-1], np.sort(scores_u)[::-1]
    thresholds = scores_p[: max(1, len(scores_p) - 1)]
    q_p = np.searchsorted(-scores_p, -thresholds, side="right") / len(scores_p)
    q_u = np.searchsorted(-scores_u, -thresholds, side="right") / len(scores_u)
    width = math.sqrt(math.log(4 / delta) / (2 * len(scores_p))) + math.sqrt(math.log(4 / delta) / (2 * len(scores_u)))
    best = np.argmin(q_u / q_p + (1 + gamma) * width / q_p)
    return float(min(1.0, q_u[best] / q_p[best]))


def train_windows(chunk_dir, metadata):
    """(the train chunks memory-mapped, their first global rows, their sample_type, micrograph and xy rows
    as numpy arrays) of a finished split: the patches stay on disk until `gather_rows` takes some."""
    entries = metadata["splits"]["train"]["chunks"]
    chunks = [load_chunk(chunk_dir / entry["file"], int(entry["count"]), metadata["facts"]["patch_size"], mmap=True)
              for entry in entries]
    starts = torch.tensor(np.cumsum([0] + [int(entry["count"]) for entry in entries[:-1]]), dtype=torch.long)
    rows = {key: np.concatenate([c[key].numpy() for c in chunks]) for key in ("sample_type", "micrograph", "xy")}
    return chunks, starts, rows


def positive_and_far(rows, min_distance):
    """Global indices of the labeled particles' windows and of the far windows."""
    positives, far = [], []
    order = np.argsort(rows["micrograph"], kind="stable")
    for mine in np.split(order, np.flatnonzero(np.diff(rows["micrograph"][order])) + 1):
        labeled = mine[rows["sample_type"][mine] == LABELED]
        unknown = mine[rows["sample_type"][mine] == UNLABELED]
        if not len(labeled) or not len(unknown):
            continue
        distance, _ = cKDTree(rows["xy"][labeled]).query(rows["xy"][unknown])
        positives.append(labeled)
        far.append(unknown[distance >= min_distance])
    return np.concatenate(positives or [np.zeros(0, int)]), np.concatenate(far or [np.zeros(0, int)])


def crops(patches, radius, rng, shift):
    """Float windows [B, 1, 32, 32] of the patches' centres (shifted uniformly within `radius` when `shift`),
    each standardised: the crop leaves room for the largest shift."""
    size = patches.shape[-1]
    crop = size - 2 * math.ceil(radius)
    if shift:
        angle, r = rng.uniform(0, 2 * math.pi, len(patches)), radius * np.sqrt(rng.uniform(0, 1, len(patches)))
        offsets = np.rint(np.stack([r * np.cos(angle), r * np.sin(angle)], 1)).astype(int)
    else:
        offsets = np.zeros((len(patches), 2), int)
    low = (size - crop) // 2 + offsets
    out = torch.stack([patches[i, y:y + crop, x:x + crop] for i, (x, y) in enumerate(low)]).float().unsqueeze(1)
    out = F.interpolate(out, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    std, mean = torch.std_mean(out, dim=(1, 2, 3), keepdim=True, correction=0)
    return (out - mean) / std.clamp(min=1.0)


def augment(x, generator):
    """A random one of the eight flips and quarter turns, per batch (particles have no preferred orientation)."""
    k = int(torch.randint(4, (1,), generator=generator))
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if torch.rand(1, generator=generator) < 0.5 else x


def fit_and_score(patches, fit, score, radius, seed, steps=300, batch=64):
    """Train P-versus-U on `fit` = (P indices, U indices); return the scores of `score`'s P (shifted) and U."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model("resnet_tiny", dropout=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(steps):
        p, u = rng.choice(fit[0], batch), rng.choice(fit[1], batch)
        x = augment(torch.cat([crops(patches[p], radius, rng, True), crops(patches[u], radius, rng, False)]),
                    generator)
        target = torch.cat([torch.ones(batch), torch.zeros(batch)])
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        return [torch.cat([model(crops(patches[part], radius, rng, shift)) for part in np.array_split(
            indices, max(1, len(indices) // 512))]).numpy() for indices, shift in ((score[0], True), (score[1], False))]


def estimate_missing_density(chunk_dir, metadata, diameter, min_distance, seed=0):
    """α of the far windows by BBE (cross-fitted over two halves of the train micrographs) and the density
    of unlabeled particles it implies; a DensityEstimate with `reason` when there are too few labels."""
    chunks, starts, rows = train_windows(chunk_dir, metadata)
    positives, far = positive_and_far(rows, min_distance * diameter)
    if min(len(positives), len(far)) < MIN_SAMPLES:
        return DensityEstimate(reason=f"too few labels to estimate it ({len(positives)} labeled particles, "
                                      f"{len(far)} far windows; {MIN_SAMPLES} of each needed)")
    rng = np.random.default_rng(seed)
    positives = np.sort(rng.choice(positives, min(len(positives), MAX_SAMPLES), replace=False))
    far = np.sort(rng.choice(far, min(len(far), MAX_SAMPLES), replace=False))
    chosen = np.concatenate([positives, far])
    patches = gather_rows(chunks.__getitem__, starts, torch.from_numpy(chosen), ("patches",))["patches"]
    micrograph = rows["micrograph"][chosen]
    positives, far = np.arange(len(positives)), np.arange(len(positives), len(chosen))  # rows of `patches`
    micrographs = np.unique(micrograph[positives])
    if len(micrographs) < 2:
        return DensityEstimate(reason="labels on one train micrograph only; two are needed to estimate it")
    first_half = np.isin(micrograph, micrographs[::2])
    folds = [tuple(idx[first_half[idx] == side] for idx in (positives, far)) for side in (True, False)]
    usable = [k for k, (held_p, held_u) in enumerate(folds)
              if min(len(held_p), len(held_u), len(folds[1 - k][0]), len(folds[1 - k][1])) > 0]
    if not usable:
        return DensityEstimate(reason="far windows on one half of the train micrographs only; label more "
                                      "micrographs to estimate it")
    alphas = [cross_fitted_alpha(patches, folds, usable, diameter, seed + 2 * repeat) for repeat in range(REPEATS)]
    alpha = float(np.median(alphas))
    return DensityEstimate(alpha, alpha / (math.pi * (diameter / 2) ** 2))


def cross_fitted_alpha(patches, folds, usable, diameter, seed):
    """α of the far windows, each half scored by a classifier fitted on the other (classifier seeds seed, seed + 1),
    the halves weighted by their far windows."""
    alphas, weights = [], []
    for k in usable:
        held_p, held_u = folds[k]
        scores_p, scores_u = fit_and_score(patches, folds[1 - k], (held_p, held_u), diameter / 2, seed + k)
        alphas.append(bbe_alpha(scores_p, scores_u))
        weights.append(len(held_u))
    return float(np.average(alphas, weights=weights))
