"""Dense scoring of whole micrographs with a patch classifier, and picks from the score map.

A micrograph is read and prepared exactly as preprocessing prepared the training micrographs
(`prepare_micrograph`: rescale so particles are `target_diameter` px, robust clip to uint8; the
parameters travel in the checkpoint's `preprocessing`). Windows of `patch_size` px are centred on a
grid of `stride` px over the rescaled micrograph, reflect-padded by patch_size // 2 (as
`cut_patches` pads training patches), so windows can centre on the edge. Each window is
standardised on its own (zero mean, unit std, std floored at one grey level: `augment.to_float`),
shrunk to `input_size` and scored by the network; the map holds one logit per grid cell.

Two ways to cut the windows, both batched (strided views, no per-window Python):
- "downsample" (the default where it applies): the padded micrograph is shrunk once by
  input_size / patch_size and `input_size` windows are cut from it; each window is standardised
  with its mean and std at full resolution (integral images of the pixels and their squares, exact
  in int64). Resizing is linear and keeps constants, so this equals standardise-then-resize except
  in the outermost output pixel ring, where the per-window resize cannot see the neighbouring
  pixels. It needs an integer ratio patch_size / input_size that divides the stride. On EMPIAR-10017
  (resnet_tiny, 128 -> 64 px) the logits differ by at most 0.6% of their range; the windows cost about
  a quarter of the exact path's (the network's time is the same).
- "exact": every window is cut at patch_size, standardised and resized on its own, as training did
  (`training.data.network_input`).
The network runs in eval mode under `torch.inference_mode`, channels_last, with bf16 autocast where
asked (default on CUDA).

Picks (`picks_from_score_map`): `nms.peak_picks` on the map with the minimum distance converted to
grid cells, each peak refined to a fraction of a cell by a parabola through it and its neighbours
along each axis, cells mapped to rescaled pixels then to original pixels (`to_original`), spaced
again at the minimum distance (refinement moves picks by up to half a cell), picks closer than
`edge_margin_px` to the border dropped, and the best `max_picks` kept.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datasets.errors import InputError
from datasets.micrographs import prepare_micrograph, read_micrograph
from datasets.preprocess_run import to_original
from picking.nms import nms_points, peak_picks
from training.checkpoint import evaluated_model, load_checkpoint
from training.data import network_input

PREPROCESSING_KEYS = ("patch_size", "input_size", "particle_diameter_px", "scale", "clip_sigma")
SCORING_METHODS = ("downsample", "exact")


@dataclass(frozen=True)
class WindowGrid:
    """Where the score map's cells sit: cell (row, col) is the window centred on rescaled pixel
    (offset_x + col * stride, offset_y + row * stride); rows and cols may be fractional."""
    offset_x: int
    offset_y: int
    stride: int
    rows: int
    cols: int

    def centres(self, rows, cols) -> np.ndarray:
        """(N, 2) x, y in rescaled-micrograph pixels of the given cells."""
        rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        return np.stack([self.offset_x + cols * self.stride, self.offset_y + rows * self.stride], axis=1)


def window_grid(height: int, width: int, stride: int, align: int = 1) -> WindowGrid:
    """Window centres every `stride` px covering the micrograph, the spare pixels split between both
    ends (rounded down to a multiple of `align`)."""
    if stride < 1:
        raise InputError(f"--stride {stride} must be at least 1 px")
    offset_y, offset_x = (((side - 1) % stride) // 2 // align * align for side in (height, width))
    return WindowGrid(offset_x, offset_y, stride, rows=(height - 1 - offset_y) // stride + 1,
                      cols=(width - 1 - offset_x) // stride + 1)


def scoring_method(patch_size: int, input_size: int, stride: int, requested: str | None = None) -> str:
    """`requested`, else "downsample" where patch_size / input_size is an integer dividing the stride."""
    factor, remainder = divmod(patch_size, input_size)
    aligned = remainder == 0 and stride % factor == 0
    if requested == "downsample" and not aligned:
        raise InputError(f"scoring 'downsample' needs patch_size {patch_size} / input_size {input_size} to be an "
                         f"integer that divides the stride {stride}; choose another --stride or --scoring exact")
    return requested or ("downsample" if aligned else "exact")


def prepare_model(model: torch.nn.Module, device) -> torch.nn.Module:
    """The model in eval mode on `device`, channels_last (a no-op where it already is)."""
    return model.eval().to(device=device, memory_format=torch.channels_last)


def _padded(image: np.ndarray, half: int, multiple: int, device) -> torch.Tensor:
    """uint8 micrograph reflect-padded by `half` on every side (extra at the bottom/right to make both
    sides a multiple of `multiple`), as a tensor on `device`."""
    extra = [(-(side + 2 * half)) % multiple for side in image.shape]
    padded = np.pad(image, ((half, half + extra[0]), (half, half + extra[1])), mode="reflect")
    return torch.from_numpy(padded).to(device)


def _window_mean_std(padded: torch.Tensor, grid: WindowGrid, size: int):
    """Mean and std (population) of the `size` px windows at every grid cell, from integral images."""
    pixels = padded.to(torch.int64)
    ys = grid.offset_y + grid.stride * torch.arange(grid.rows, device=padded.device)
    xs = grid.offset_x + grid.stride * torch.arange(grid.cols, device=padded.device)

    def window_sums(values):
        integral = F.pad(values.cumsum(0).cumsum(1), (1, 0, 1, 0))
        return (integral[ys + size][:, xs + size] - integral[ys][:, xs + size]
                - integral[ys + size][:, xs] + integral[ys][:, xs]).double()

    area = size * size
    mean = window_sums(pixels) / area
    variance = (window_sums(pixels * pixels) / area - mean * mean).clamp(min=0)
    return mean.float(), variance.sqrt().float()


def _windows(image: torch.Tensor, grid: WindowGrid, size: int, step: int, offset_x: int, offset_y: int):
    """Strided view [rows, cols, size, size] of the windows of `image` (no copy)."""
    view = image[offset_y:, offset_x:].unfold(0, size, step).unfold(1, size, step)
    return view[:grid.rows, :grid.cols]


def _exact_batches(padded, grid, patch_size, input_size, rows_per_batch):
    windows = _windows(padded, grid, patch_size, grid.stride, grid.offset_x, grid.offset_y)
    for first in range(0, grid.rows, rows_per_batch):
        batch = windows[first:first + rows_per_batch].reshape(-1, patch_size, patch_size)
        yield network_input(batch, input_size, padded.device)


def _downsampled_batches(padded, grid, patch_size, input_size, rows_per_batch):
    factor = patch_size // input_size
    mean, std = _window_mean_std(padded, grid, patch_size)
    small = padded.float()
    if factor > 1:
        small = F.interpolate(small[None, None], size=(small.shape[0] // factor, small.shape[1] // factor),
                              mode="bilinear", antialias=True, align_corners=False)[0, 0]
    windows = _windows(small, grid, input_size, grid.stride // factor, grid.offset_x // factor,
                       grid.offset_y // factor)
    for first in range(0, grid.rows, rows_per_batch):
        rows = slice(first, first + rows_per_batch)
        batch = windows[rows].reshape(-1, 1, input_size, input_size)
        yield (batch - mean[rows].reshape(-1, 1, 1, 1)) / std[rows].reshape(-1, 1, 1, 1).clamp(min=1.0)


def score_micrograph(model, image_uint8: np.ndarray, *, patch_size: int, input_size: int, stride: int, device,
                     batch_size: int = 1024, method: str | None = None, bf16: bool | None = None):
    """(score map [rows, cols] float32 of logits on `device`, WindowGrid) of a prepared micrograph.

    `method` is "downsample" or "exact" (default: `scoring_method`); `bf16` autocast defaults to on for
    CUDA. At least one grid row is scored per batch.
    """
    device = torch.device(device)
    method = scoring_method(patch_size, input_size, stride, method)
    factor = patch_size // input_size if method == "downsample" else 1
    height, width = image_uint8.shape
    grid = window_grid(height, width, stride, align=factor)
    padded = _padded(image_uint8, patch_size // 2, factor, device)
    rows_per_batch = max(1, batch_size // grid.cols)
    batches = (_downsampled_batches if method == "downsample" else _exact_batches)(
        padded, grid, patch_size, input_size, rows_per_batch)
    model = prepare_model(model, device)
    use_bf16 = device.type == "cuda" if bf16 is None else bf16
    logits = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for batch in batches:
            logits.append(model(batch.contiguous(memory_format=torch.channels_last)).reshape(-1).float())
    return torch.cat(logits).reshape(grid.rows, grid.cols), grid


def _subcell_offsets(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex of the parabola through each peak and its two neighbours, per axis, in cells (|d| <= 0.5);
    0 on the map's border or where the three values do not bend down."""
    padded = np.pad(values, 1, mode="edge")
    r, c = rows + 1, cols + 1
    here = padded[r, c]

    def vertex(before, after, inside):
        curvature = before - 2 * here + after
        offset = np.divide(before - after, 2 * curvature, out=np.zeros_like(here), where=curvature < 0)
        return np.where(inside, np.clip(offset, -0.5, 0.5), 0.0)

    dy = vertex(padded[r - 1, c], padded[r + 1, c], (rows > 0) & (rows < values.shape[0] - 1))
    dx = vertex(padded[r, c - 1], padded[r, c + 1], (cols > 0) & (cols < values.shape[1] - 1))
    return dy, dx


def picks_from_score_map(score_map: torch.Tensor, grid: WindowGrid, scale_xy, original_shape, *,
                         min_distance_px: float, threshold: float | None, edge_margin_px: float = 0.0,
                         max_picks: int | None = None, diameter_px: float = np.nan) -> np.ndarray:
    """Picks (N, 4: x, y, diameter, score = logit) in ORIGINAL pixels, best first.

    Distances are in original pixels; picks closer than `edge_margin_px` to the micrograph border
    (x < margin or x > width - 1 - margin, same for y) are dropped before the best `max_picks` are kept.
    """
    cells = min_distance_px * float(np.mean(scale_xy)) / grid.stride
    rows, cols, scores = peak_picks(score_map, cells, threshold)
    dy, dx = _subcell_offsets(score_map.float().cpu().numpy(), rows, cols)
    xy = to_original(grid.centres(rows + dy, cols + dx), scale_xy)
    spaced = nms_points(xy, scores, min_distance_px)
    xy, scores = xy[spaced], scores[spaced]
    height, width = original_shape
    inside = ((xy >= edge_margin_px) & (xy <= np.array([width - 1, height - 1]) - edge_margin_px)).all(axis=1)
    xy, scores = xy[inside][:max_picks], scores[inside][:max_picks]
    return np.column_stack([xy, np.full(len(xy), float(diameter_px)), scores])


@dataclass
class PreparedMicrograph:
    """A micrograph read and prepared for picking: uint8 rescaled image and the exact per-axis scale."""
    image: np.ndarray
    scale_xy: tuple[float, float]
    original_shape: tuple[int, int]


def prepare_for_picking(path, preprocessing: dict) -> PreparedMicrograph:
    """Read the micrograph at `path` (InputError where unreadable) and rescale/normalise it as training did."""
    original = read_micrograph(path)
    image, scale_xy = prepare_micrograph(original, preprocessing["scale"], preprocessing["clip_sigma"])
    return PreparedMicrograph(image, scale_xy, original.shape)


def pick_prepared(model, micrograph: PreparedMicrograph, preprocessing: dict, *, stride: int,
                  min_distance_px: float, threshold: float | None, device, expected_particles: int | None = None,
                  edge_margin_px: float = 0.0, batch_size: int = 1024, method: str | None = None,
                  bf16: bool | None = None) -> np.ndarray:
    """Score a prepared micrograph and return its picks (N, 4) in original pixels, score = logit."""
    score_map, grid = score_micrograph(model, micrograph.image, patch_size=preprocessing["patch_size"],
                                       input_size=preprocessing["input_size"], stride=stride, device=device,
                                       batch_size=batch_size, method=method, bf16=bf16)
    return picks_from_score_map(score_map, grid, micrograph.scale_xy, micrograph.original_shape,
                                min_distance_px=min_distance_px, threshold=threshold,
                                edge_margin_px=edge_margin_px, max_picks=expected_particles,
                                diameter_px=preprocessing["particle_diameter_px"])


def pick_micrograph(model, path, preprocessing: dict, **options) -> np.ndarray:
    """Picks (N, 4: x, y, diameter, logit) in original pixels of the micrograph at `path`;
    `options` as `pick_prepared` (stride, min_distance_px, threshold, device, ...)."""
    return pick_prepared(model, prepare_for_picking(path, preprocessing), preprocessing, **options)


def load_picker(path, device):
    """(model on `device` in eval mode, preprocessing dict) from one of our checkpoints.

    The EMA teacher's weights are used where the checkpoint holds them (they are what was evaluated).
    """
    checkpoint = load_checkpoint(path)
    preprocessing = checkpoint.get("preprocessing") or {}
    missing = [key for key in PREPROCESSING_KEYS if key not in preprocessing]
    if missing:
        raise InputError(f"checkpoint {path} lacks preprocessing facts ({', '.join(missing)}); "
                         f"use a best.pt/last.pt written by the current training scripts")
    return prepare_model(evaluated_model(checkpoint, path), device), preprocessing
