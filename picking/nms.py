"""Non-maximum suppression: turn a dense score map, or scored points, into picks at least a minimum
distance apart.

`peak_picks` works on a score map on any device in two steps:

1. Candidates, vectorised on the map's device. A pixel is a candidate when it is the maximum of the
   square window inscribed in the disk of radius `min_distance` (half-width floor(d / sqrt 2), at
   least 1; computed as two 1-D max-pools) and reaches the threshold. Max-pooling alone does not
   space picks apart: every pixel of a plateau of equal scores is a maximum, and two peaks beyond
   the square but inside the disk are both maxima. Candidates sharing a window can only be ties and
   lie closer than `min_distance`, so the greedy pass would keep at most one of them anyway; a
   second max-pool over a seeded random key keeps one per window. A plateau thus yields about one
   candidate per window spread over it, as greedy tiling would (a raster-order key would chain
   across a large plateau and keep only its first pixel).
2. Spacing, exact, on the CPU over the candidates only: a greedy pass in descending score keeps a
   candidate unless a kept one lies closer than `min_distance` (pairs found with a
   `scipy.spatial.cKDTree`). Only candidates that have a closer neighbour enter the Python loop.

No two picks returned are closer than `min_distance` (a distance equal to it is allowed).
`nms_points` runs step 2 on picks given as points.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree


def nms_points(xy: np.ndarray, scores: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of the points kept by greedy NMS, in descending score (ties: input order).

    A point is kept unless a kept point of higher rank lies closer than `min_distance`.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = _greedy_keep(xy[order], min_distance)
    return order[keep]


def _greedy_keep(ranked_xy: np.ndarray, min_distance: float) -> np.ndarray:
    """Boolean mask over points given in rank order: greedy suppression of pairs closer than d."""
    if min_distance <= 0:
        raise ValueError(f"min_distance must be positive, got {min_distance}")
    n = len(ranked_xy)
    keep = np.ones(n, dtype=bool)
    pairs = cKDTree(ranked_xy).query_pairs(min_distance, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    gaps = np.linalg.norm(ranked_xy[pairs[:, 0]] - ranked_xy[pairs[:, 1]], axis=1)
    pairs = pairs[gaps < min_distance]
    # query_pairs yields i < j: i outranks j, so edges point from the higher-ranked point.
    lower = csr_matrix((np.ones(len(pairs), dtype=bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    for i in np.unique(pairs[:, 0]):
        if keep[i]:
            keep[lower.indices[lower.indptr[i]:lower.indptr[i + 1]]] = False
    return keep


def _window_max(x: torch.Tensor, half: int) -> torch.Tensor:
    """Maximum over the (2 half + 1)^2 window around each pixel, as two 1-D max-pools (separable)."""
    rows = F.max_pool2d(x, (2 * half + 1, 1), stride=1, padding=(half, 0))
    return F.max_pool2d(rows, (1, 2 * half + 1), stride=1, padding=(0, half))


def _candidate_peaks(maps: torch.Tensor, min_distance: float, threshold: float | None) -> torch.Tensor:
    """Bool [B, H, W]: window maxima reaching the threshold, at most one per window among ties."""
    half = max(1, int(math.floor(min_distance / math.sqrt(2))))
    x = maps.unsqueeze(1)
    peak = x == _window_max(x, half)
    if threshold is not None:
        peak &= x >= threshold
    key = torch.rand(x.shape[-2:], generator=torch.Generator(maps.device).manual_seed(0), device=maps.device)
    key = torch.where(peak, key, -math.inf)
    peak &= _window_max(key, half) == key
    return peak.squeeze(1)


def peak_picks(score_map: torch.Tensor, min_distance: float, threshold: float | None = None,
               max_picks: int | None = None):
    """Picks from a score map [H, W] (or a batch [B, H, W]) on any device.

    min_distance is in map pixels; picks score at least `threshold`. Pass logits rather than
    probabilities: a saturated sigmoid (exactly 1.0) turns particles into plateaus. Returns (ys, xs,
    scores) as numpy arrays (int64, int64, float64) in descending score, at most `max_picks` long;
    for a batch, a list of such triples, one per map.
    """
    if score_map.dim() not in (2, 3):
        raise ValueError(f"score_map must be [H, W] or [B, H, W], got shape {tuple(score_map.shape)}")
    maps = score_map.detach()
    maps = maps.unsqueeze(0) if maps.dim() == 2 else maps
    maps = maps if maps.dtype in (torch.float32, torch.float64) else maps.float()
    peaks = _candidate_peaks(maps, min_distance, threshold)
    b, ys, xs = (t.cpu().numpy() for t in peaks.nonzero(as_tuple=True))
    scores = maps[peaks].cpu().numpy().astype(np.float64)
    picks = []
    for i in range(maps.shape[0]):
        mine = b == i
        keep = nms_points(np.stack([xs[mine], ys[mine]], axis=1), scores[mine], min_distance)[:max_picks]
        picks.append((ys[mine][keep], xs[mine][keep], scores[mine][keep]))
    return picks[0] if score_map.dim() == 2 else picks
