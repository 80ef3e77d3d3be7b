"""Dense scoring of whole micrographs with a patch classifier, and picks from the score map.

A micrograph is read and prepared exactly as preprocessing prepared the training micrographs
(`prepare_micrograph`: rescale so particles have the training diameter, robust clip to uint8; the
`PreprocessingFacts` travel in the checkpoint). A window of `patch_size` px can be centred on
any pixel of the rescaled micrograph, reflect-padded by patch_size // 2 (as `cut_patches` pads
training patches), so windows can centre on the edge. Each window is normalised as in training
(`models.input.normalise` with the checkpoint's `NetworkInput`: per patch, patch mean only, or the
micrograph's grey scale as preprocessed), shrunk to `input_size` and scored by the network.
`WindowScorer` scores any list of window centres, batched, with no per-window Python; the score map
holds the logits of a grid of windows every `stride` px.

Two ways to cut the windows:
- "downsample" (the default where it applies): the padded micrograph is shrunk once by
  input_size / patch_size and `input_size` windows are cut from it; where the normalisation needs a
  window's mean (and std) they come from full resolution (integral images of the pixels and their
  squares, exact in int64). Resizing is linear and keeps constants, so this equals
  normalise-then-resize except in the outermost output pixel ring, where the per-window resize
  cannot see the neighbouring pixels. It needs an integer ratio patch_size / input_size that divides
  the stride. On EMPIAR-10017 (resnet_tiny, 128 -> 64 px) the logits differ by at most 0.6% of their
  range; the windows cost about a quarter of the exact path's (the network's time is the same).
- "exact": every window is cut at patch_size, normalised and resized on its own, as training did
  (`models.input.network_input`).
The network runs in eval mode under `torch.inference_mode`, channels_last, with bf16 autocast where
asked (default on CUDA).

Picks (`picks_from_score_map`): `nms.peak_picks` on the map with the minimum distance converted to
grid cells, each peak placed to a fraction of a cell by a parabola through it and its neighbours
along each axis, rescored there by one more window (`rescore_at_peaks`, the default in
`pick_prepared`), cells mapped to rescaled pixels then to original pixels (`to_original`), spaced
again at the minimum distance (sub-cell placement moves picks by up to half a cell), picks closer than
`edge_margin_px` to the border dropped.
"""
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse as fold_batch_norm

from common.errors import InputError
from datasets.augment import dihedral_index_maps
from datasets.chunks.format import PreprocessingFacts
from datasets.geometry import to_original
from datasets.io.micrographs import prepare_micrograph, read_micrograph, read_pixel_size
from models.checkpoint import checkpoint_network_input, evaluated_model, load_checkpoint
from models.ensemble import MeanLogitEnsemble
from models.input import NetworkInput, network_input, normalise
from picking.nms import nms_points, peak_picks

SCORING_METHODS = ("downsample", "exact")
PEAK_SYMMETRIES = (1, 4, 8)  # views of each peak window averaged by rescore_at_peaks
DEFAULT_PEAK_SYMMETRIES = 4  # chosen on the val micrographs (docs/results.md)
MIN_DISTANCE_FRACTION = 0.5  # picks at least this x diameter apart (Topaz's extract radius; val of both real sets)
EDGE_MARGIN_FRACTION = 0.125  # picks nearer the border than this x diameter are dropped (val of both real sets)


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


class WindowScorer:
    """Logits of the windows centred on any integer pixels of one prepared micrograph, batched.

    The window centred on rescaled pixel (x, y) starts at (x, y) in the micrograph padded by
    patch_size // 2. "exact" cuts it at patch_size and calls `models.input.network_input`;
    "downsample" cuts it from the padded micrograph shrunk once by patch_size / input_size (centres
    must then be multiples of that factor), standardised, for "patch" normalisation, with the window's
    mean and std at full resolution (integral images of the pixels and their squares, exact in int64).
    """

    def __init__(self, model, image_uint8: np.ndarray, *, patch_size: int, spec: NetworkInput, device, method: str,
                 bf16: bool, batch_size: int):
        self.model, self.device, self.bf16, self.batch_size = prepare_model(model, device), device, bf16, batch_size
        self.patch_size, self.spec, self.method = patch_size, spec, method
        self.factor = patch_size // spec.input_size if method == "downsample" else 1
        self.padded = _padded(image_uint8, patch_size // 2, self.factor, device)
        if method == "downsample":
            self.small = _shrunk(self.padded.float(), self.factor)
            self.integrals = _integral_images(self.padded) if spec.normalization != "micrograph" else None

    def __call__(self, centres_xy: torch.Tensor, symmetries: int = 1) -> torch.Tensor:
        """float32 logits [N] of the windows centred on `centres_xy` (int64 [N, 2] x, y, rescaled px), each
        the mean over the first `symmetries` of the square's symmetries of the window (`square_symmetries`)."""
        centres_xy = centres_xy.to(self.device)
        logits = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for first in range(0, len(centres_xy), self.batch_size):
                batch = self._network_input(centres_xy[first:first + self.batch_size])
                views = [self.model(view.contiguous(memory_format=torch.channels_last)).reshape(-1).float()
                         for view in square_symmetries(batch, symmetries)]
                logits.append(torch.stack(views).mean(0))
        return torch.cat(logits) if logits else torch.zeros(0, device=self.device)

    def _network_input(self, centres_xy):
        xs, ys = centres_xy[:, 0], centres_xy[:, 1]
        if self.method == "exact":
            return network_input(_cut(self.padded, ys, xs, self.patch_size), self.spec, self.device)
        windows = _cut(self.small, ys // self.factor, xs // self.factor, self.spec.input_size)[:, None]
        if self.integrals is None:
            return normalise(windows, self.spec)
        mean, std = _window_mean_std(self.integrals, ys, xs, self.patch_size)
        return normalise(windows, self.spec, mean[:, None, None, None], std[:, None, None, None])

    def score_grid(self, grid: WindowGrid) -> torch.Tensor:
        """The score map [rows, cols] of the windows of `grid`."""
        return self(grid_centres(grid, self.device)).reshape(grid.rows, grid.cols)


def square_symmetries(batch: torch.Tensor, count: int):
    """The first `count` (1, 4 or 8) of the square's 8 symmetries of a batch [N, C, S, S], in the weak
    augmentation's order (`dihedral_index_maps`: rotations by 0, 90, 180 and 270 degrees, then the same
    of the mirrored batch). The first is the batch itself, not a copy (the score map's path)."""
    yield batch
    flat = batch.flatten(2)
    for source in dihedral_index_maps(batch.shape[-1], batch.device)[1:count]:
        yield flat[:, :, source.flatten()].view_as(batch)


def _shrunk(image: torch.Tensor, factor: int) -> torch.Tensor:
    if factor == 1:
        return image
    return F.interpolate(image[None, None], size=(image.shape[0] // factor, image.shape[1] // factor),
                         mode="bilinear", antialias=True, align_corners=False)[0, 0]


def _cut(image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` px windows of `image` whose top-left corners are (ys, xs), as [N, size, size]."""
    return image.unfold(0, size, 1).unfold(1, size, 1)[ys, xs]


def _integral_images(padded: torch.Tensor):
    """Summed-area tables (int64, zero first row and column) of the pixels and of their squares."""
    pixels = padded.to(torch.int64)
    return tuple(F.pad(values.cumsum(0).cumsum(1), (1, 0, 1, 0)) for values in (pixels, pixels * pixels))


def _window_mean_std(integrals, ys: torch.Tensor, xs: torch.Tensor, size: int):
    """Mean and std (population) of the `size` px windows with top-left corners (ys, xs)."""
    def window_sums(integral):
        return (integral[ys + size, xs + size] - integral[ys, xs + size]
                - integral[ys + size, xs] + integral[ys, xs]).double()

    area = size * size
    mean = window_sums(integrals[0]) / area
    variance = (window_sums(integrals[1]) / area - mean * mean).clamp(min=0)
    return mean.float(), variance.sqrt().float()


def window_scorer(model, image_uint8: np.ndarray, *, patch_size: int, spec: NetworkInput, stride: int, device,
                  batch_size: int = 1024, method: str | None = None,
                  bf16: bool | None = None) -> tuple[WindowScorer, WindowGrid]:
    """A WindowScorer for a prepared micrograph and the grid of windows every `stride` px over it.

    `method` is "downsample" or "exact" (default: `scoring_method`); `bf16` autocast defaults to on for CUDA.
    """
    device = torch.device(device)
    method = scoring_method(patch_size, spec.input_size, stride, method)
    scorer = WindowScorer(model, image_uint8, patch_size=patch_size, spec=spec, device=device, method=method,
                          bf16=device.type == "cuda" if bf16 is None else bf16, batch_size=batch_size)
    height, width = image_uint8.shape
    return scorer, window_grid(height, width, stride, align=scorer.factor)


def grid_centres(grid: WindowGrid, device) -> torch.Tensor:
    """int64 [rows * cols, 2] window centres (x, y) of the grid, row-major."""
    ys = grid.offset_y + grid.stride * torch.arange(grid.rows, device=device)
    xs = grid.offset_x + grid.stride * torch.arange(grid.cols, device=device)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def score_micrograph(model, image_uint8: np.ndarray, **options):
    """(score map [rows, cols] float32 of logits on `device`, WindowGrid) of a prepared micrograph;
    `options` as `window_scorer` (patch_size, spec, stride, device, ...)."""
    scorer, grid = window_scorer(model, image_uint8, **options)
    return scorer.score_grid(grid), grid


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


def rescore_at_peaks(scorer: WindowScorer, centres_xy: np.ndarray, scores: np.ndarray, *,
                     shape: tuple[int, int], symmetries: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Score the window centred on each peak's sub-cell position too, and keep the higher logit.

    A grid samples a particle's score peak up to half a stride off its top, so on the grid alone
    particles rank partly by where the grid happened to fall. The parabolas of `_subcell_offsets`
    say where the top is; one more window per peak, there (rounded to a multiple of the scorer's
    factor, inside the micrograph of `shape`, rescaled), scores it. On EMPIAR-10017 this gave the
    AUPRC of a grid at half the stride for 4% more windows instead of 300%. With `symmetries` 4 or 8
    that window's logit is the mean over its rotations (and mirror images): the views training
    augmented with, whose mean is a less noisy score of the same particle.
    """
    factor = scorer.factor
    high = np.array([shape[1] - 1, shape[0] - 1]) // factor * factor
    at = np.clip(np.rint(np.asarray(centres_xy).reshape(-1, 2) / factor) * factor, 0, high)
    logits = scorer(torch.from_numpy(at.astype(np.int64)), symmetries).cpu().numpy().astype(np.float64)
    return centres_xy, np.maximum(scores, logits)


def pick_distances(diameter_px: float, min_distance_fraction: float = MIN_DISTANCE_FRACTION,
                   edge_margin_px: float | None = None) -> tuple[float, float]:
    """(min_distance_px, edge_margin_px) for particles of `diameter_px`: the spacing at `min_distance_fraction`
    x diameter, and `edge_margin_px` where given, else EDGE_MARGIN_FRACTION x diameter."""
    edge_margin = diameter_px * EDGE_MARGIN_FRACTION if edge_margin_px is None else edge_margin_px
    return min_distance_fraction * diameter_px, edge_margin


def picks_from_score_map(score_map: torch.Tensor, grid: WindowGrid, scale_xy, original_shape, *,
                         min_distance_px: float, threshold: float | None, edge_margin_px: float = 0.0,
                         diameter_px: float = np.nan, refine=None) -> np.ndarray:
    """Picks (N, 4: x, y, diameter, score = logit) in ORIGINAL pixels, best first.

    Peaks are placed to a fraction of a cell by `_subcell_offsets`; `refine`, a function of (those
    centres in rescaled px, scores) -> the same (e.g. `rescore_at_peaks`), may then move or rescore them.
    Distances are in original pixels; picks closer than `edge_margin_px` to the micrograph border
    (x < margin or x > width - 1 - margin, same for y) are dropped.
    """
    cells = min_distance_px * float(np.mean(scale_xy)) / grid.stride
    rows, cols, scores = peak_picks(score_map, cells, threshold)
    dy, dx = _subcell_offsets(score_map.float().cpu().numpy(), rows, cols)
    centres = grid.centres(rows + dy, cols + dx)
    if refine is not None:
        centres, scores = refine(centres, scores)
    xy = to_original(centres, scale_xy)
    spaced = nms_points(xy, scores, min_distance_px)
    xy, scores = xy[spaced], scores[spaced]
    height, width = original_shape
    inside = ((xy >= edge_margin_px) & (xy <= np.array([width - 1, height - 1]) - edge_margin_px)).all(axis=1)
    xy, scores = xy[inside], scores[inside]
    return np.column_stack([xy, np.full(len(xy), float(diameter_px)), scores])


MAX_PIXEL_SIZE_RATIO = 2.0  # micrographs' pixel size / training's beyond this (or below its inverse): refused


@dataclass
class PreparedMicrograph:
    """A micrograph read and prepared for picking: uint8 rescaled image, the exact per-axis scale, and its
    pixel size over the training micrographs' (1 where either is unknown: sizes taken as trained, in px)."""
    image: np.ndarray
    scale_xy: tuple[float, float]
    original_shape: tuple[int, int]
    pixel_size: float | None = None
    size_ratio: float = 1.0


@dataclass(frozen=True)
class Picker:
    """A trained network with what it needs to see micrographs as in training."""
    model: torch.nn.Module
    facts: PreprocessingFacts
    spec: NetworkInput


def pixel_size_ratio(facts: PreprocessingFacts, pixel_size: float | None, source, force: bool = False) -> float:
    """Micrograph Å/px over training Å/px (1 where either is unknown); refused beyond 2x unless `force`."""
    if pixel_size is None or facts.pixel_size_angstrom is None:
        return 1.0
    ratio = pixel_size / facts.pixel_size_angstrom
    if not force and not 1 / MAX_PIXEL_SIZE_RATIO <= ratio <= MAX_PIXEL_SIZE_RATIO:
        raise InputError(f"{source} is at {pixel_size:g} Å/px, the model was trained at "
                         f"{facts.pixel_size_angstrom:g} Å/px ({ratio:.2f}x); pick micrographs within 2x of it, "
                         f"or pass --force to rescale anyway")
    return ratio


def prepare_for_picking(path, facts: PreprocessingFacts, pixel_size: float | None = None,
                        force: bool = False) -> PreparedMicrograph:
    """Read the micrograph at `path` (InputError where unreadable) and rescale/normalise it as training did.

    Its pixel size is `pixel_size` (the user's), else its MRC header's; where it and the training pixel
    size are known and differ, the micrograph is rescaled further so particles have the training size
    in rescaled px (coordinates still come back in the micrograph's own pixels).
    """
    pixel_size = pixel_size or read_pixel_size(path)
    ratio = pixel_size_ratio(facts, pixel_size, f"micrograph {path}", force)
    original = read_micrograph(path)
    image, scale_xy = prepare_micrograph(original, facts.scale * ratio, facts.clip_sigma)
    return PreparedMicrograph(image, scale_xy, original.shape, pixel_size, ratio)


def pick_prepared(picker: Picker, micrograph: PreparedMicrograph, *, stride: int, min_distance_px: float,
                  threshold: float | None, device, edge_margin_px: float = 0.0,
                  batch_size: int = 1024, method: str | None = None, bf16: bool | None = None,
                  rescore_peaks: bool = True, peak_symmetries: int = DEFAULT_PEAK_SYMMETRIES) -> np.ndarray:
    """Score a prepared micrograph every `stride` px, rescore its peaks at their sub-cell positions
    (`rescore_at_peaks` with `peak_symmetries` views, unless `rescore_peaks` is False) and return the
    picks (N, 4) in original pixels, score = logit; distances are in the micrograph's own pixels."""
    scorer, grid = window_scorer(picker.model, micrograph.image, patch_size=picker.facts.patch_size, spec=picker.spec,
                                 stride=stride, device=device, batch_size=batch_size, method=method, bf16=bf16)
    score_map = scorer.score_grid(grid)
    refine = (partial(rescore_at_peaks, scorer, shape=micrograph.image.shape, symmetries=peak_symmetries)
              if rescore_peaks else None)
    return picks_from_score_map(score_map, grid, micrograph.scale_xy, micrograph.original_shape,
                                min_distance_px=min_distance_px, threshold=threshold, edge_margin_px=edge_margin_px,
                                diameter_px=picker.facts.particle_diameter_px / micrograph.size_ratio, refine=refine)


def pick_micrograph(picker: Picker, path, **options) -> np.ndarray:
    """Picks (N, 4: x, y, diameter, logit) in original pixels of the micrograph at `path`;
    `options` as `pick_prepared` (stride, min_distance_px, threshold, device, ...)."""
    return pick_prepared(picker, prepare_for_picking(path, picker.facts), **options)


def default_stride(facts: PreprocessingFacts, spec: NetworkInput) -> int:
    """The picking stride: a quarter of the rescaled particle diameter, a multiple of patch_size / input_size
    (so the downsampled scoring applies)."""
    factor = max(1, facts.patch_size // spec.input_size)
    return max(factor, int(round(facts.particle_diameter_px * facts.scale / 4 / factor)) * factor)


def picker_from_model(model: torch.nn.Module, facts: PreprocessingFacts, spec: NetworkInput, device) -> Picker:
    """A Picker of `model` (a copy with each BatchNorm folded into the convolution before it, in eval mode
    on `device`): the same function, one pass fewer over every feature map."""
    return Picker(prepare_model(fold_batch_norm(model.eval()), device), facts, spec)


def load_picker(paths, device) -> Picker:
    """The Picker of one of our checkpoints, or of several as one ensemble, the model on `device` in eval mode.

    The weights are those that were evaluated (`evaluated_model`: the weight average, else the EMA
    teacher, else the trained model), BatchNorms folded (`picker_from_model`). Several checkpoints
    (`paths` a list) score the mean of their logits (`MeanLogitEnsemble`); they must have been trained on
    the same patches (preprocessing facts and network input), else an InputError names the first that was not.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    pickers = [_checkpoint_picker(path, device) for path in paths]
    first = pickers[0]
    for path, picker in zip(paths[1:], pickers[1:]):
        if (picker.facts, picker.spec) != (first.facts, first.spec):
            raise InputError(f"checkpoint {path} was trained on other patches than {paths[0]} (preprocessing or "
                             f"network input differ); an ensemble's members must be trained on the same chunks")
    if len(pickers) == 1:
        return first
    return Picker(prepare_model(MeanLogitEnsemble([p.model for p in pickers]), device), first.facts, first.spec)


def _checkpoint_picker(path, device) -> Picker:
    checkpoint = load_checkpoint(path)
    facts = PreprocessingFacts.from_dict(checkpoint.get("preprocessing"), f"checkpoint {path}")
    spec = checkpoint_network_input(checkpoint, path)
    return picker_from_model(evaluated_model(checkpoint, path), facts, spec, device)
