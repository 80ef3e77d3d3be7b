"""What TensorBoard shows of a run besides its scalars, written by rank 0 after each evaluation.

- `val/pr_curve`: the precision-recall curve of the val patches just evaluated (their scores reused).
- `unlabeled/top_scoring`, `unlabeled/lowest_scoring`: grids of the unlabeled training patches the
  evaluated network scores highest and lowest, out of a fixed seeded pool read once at the start; their
  logits, grid row by grid row, in the text tags `unlabeled/top_scoring_logits` and
  `unlabeled/lowest_scoring_logits`.
- `val/picks`: every `training.picks_preview_every` epochs, the picks (logit >= 0, as pick_particles.py
  finds them) drawn on the first val micrograph of the chunks' metadata.json, at most PREVIEW_SIDE
  rescaled px square of it (its top-left corner), with `val/picks_summary` saying where and how many.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from common.errors import InputError
from datasets.chunks.format import LABEL_UNLABELED, chunk_dir_list, read_metadata
from datasets.chunks.loader import CryoEMChunkedDataset
from datasets.geometry import to_scaled
from models.input import resize, to_float
from picking.overlay import overlay_image
from picking.score import (PreparedMicrograph, default_stride, pick_distances, pick_prepared, picker_from_model,
                           prepare_for_picking)

GRID_COLUMNS = 8
PREVIEW_SIDE = 768  # rescaled px: the picks preview scores (and shows) at most this square of the micrograph
TRUTH_MARKS = {1: " P", 0: " N"}  # unlabeled patches whose truth is known: hidden particle, background


@dataclass(frozen=True)
class UnlabeledPool:
    """The fixed seeded subset of unlabeled training patches the grids are chosen from, held in memory."""
    patches: torch.Tensor     # uint8 [N, S, S]
    true_label: torch.Tensor  # int8 [N]: 1 hidden particle, 0 background, -1 unknown


@dataclass(frozen=True)
class PicksPreview:
    """The val micrograph the picks are drawn on, prepared as for picking and cropped."""
    stem: str
    micrograph: PreparedMicrograph


@dataclass(frozen=True)
class Visuals:
    pool: UnlabeledPool | None
    preview: PicksPreview | None


def check_visual_settings(train_cfg):
    """InputError for a negative training.unlabeled_grid_size / picks_preview_every or an empty pool."""
    for key, least in (("unlabeled_grid_size", 0), ("unlabeled_grid_pool", 1), ("picks_preview_every", 0)):
        if train_cfg[key] < least:
            raise InputError(f"training.{key} {train_cfg[key]} must be at least {least}"
                             + (" (0 = off)" if least == 0 else ""))


def build_visuals(config, facts) -> Visuals:
    """What training.unlabeled_grid_size and training.picks_preview_every ask for (None where off)."""
    train_cfg, dirs = config["training"], config["data"]["data_dir"]
    pool = (unlabeled_pool(dirs, train_cfg["unlabeled_grid_pool"], train_cfg["seed"])
            if train_cfg["unlabeled_grid_size"] else None)
    preview = picks_preview(dirs, facts) if train_cfg["picks_preview_every"] else None
    return Visuals(pool, preview)


def log_pr_curve(writer, probabilities, true_label, step):
    """`val/pr_curve` of the val patches whose truth is known."""
    known = true_label >= 0
    writer.add_pr_curve("val/pr_curve", true_label[known], probabilities[known], step)


def unlabeled_pool(data_dirs, size, seed) -> UnlabeledPool | None:
    """At most `size` unlabeled training patches (seeded, the same on every run and resume); None if none."""
    dataset = CryoEMChunkedDataset(data_dirs, "train", mode="mmap")
    unlabeled = (dataset.labels == LABEL_UNLABELED).nonzero().squeeze(1).numpy()
    if not len(unlabeled):
        return None
    chosen = np.sort(np.random.default_rng(seed).choice(unlabeled, size=min(size, len(unlabeled)), replace=False))
    batch = dataset.get_batch(torch.from_numpy(chosen))
    return UnlabeledPool(batch["patches"].clone(), batch["true_label"].clone())


def extremes(logits, count):
    """Indices of the `count` highest logits (highest first) and of the `count` lowest (lowest first)."""
    count = min(count, len(logits))
    return torch.topk(logits, count).indices, torch.topk(logits, count, largest=False).indices


def patch_grid(patches, size):
    """uint8 patches [N, S, S] resized to `size` px as the network sees them (models.input.resize) -> one
    uint8 image [3, H, W], GRID_COLUMNS patches a row, 2 px black between."""
    shown = resize(to_float(patches), size).round().clamp(0, 255).to(torch.uint8)
    return make_grid(shown, nrow=GRID_COLUMNS, padding=2)


def logit_table(logits, true_label):
    """Markdown table of `logits` laid out as in `patch_grid`, each marked P/N where its truth is known."""
    cells = [f"{value:.2f}{TRUTH_MARKS.get(int(truth), '')}" for value, truth in zip(logits.tolist(), true_label)]
    rows = [cells[start:start + GRID_COLUMNS] for start in range(0, len(cells), GRID_COLUMNS)]
    header = "| " + " | ".join(str(c + 1) for c in range(GRID_COLUMNS)) + " |\n|" + "---|" * GRID_COLUMNS
    body = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return f"logits, row by row as in the grid (P: hidden particle, N: background)\n\n{header}\n{body}"


def log_unlabeled_grids(writer, pool, logits, count, size, step):
    """The `count` top- and lowest-scoring patches of the pool (`logits` [N], its order) as two grids of
    `size` px patches."""
    for name, chosen in zip(("top_scoring", "lowest_scoring"), extremes(logits, count)):
        writer.add_image(f"unlabeled/{name}", patch_grid(pool.patches[chosen], size), step)
        writer.add_text(f"unlabeled/{name}_logits", logit_table(logits[chosen], pool.true_label[chosen]), step)


def val_micrograph(data_dirs):
    """(path, None) of the first val micrograph the chunks' metadata.json records that is still where
    preprocessing read it, else (None, why not)."""
    recorded = [entry for d in chunk_dir_list(data_dirs) for entry in read_metadata(d)["micrographs"]
                if entry["split"] == "val" and entry.get("status") == "done"]
    for entry in recorded:
        if Path(entry["path"]).is_file():
            return Path(entry["path"]), None
    if not recorded:
        return None, "the chunks record no val micrograph"
    return None, f"no val micrograph is where preprocessing read it (e.g. {recorded[0]['path']})"


def picks_preview(data_dirs, facts) -> PicksPreview | None:
    """The val micrograph prepared as pick_particles.py prepares it, cropped; None (said why) if there is none."""
    path, why = val_micrograph(data_dirs)
    if path is not None:
        try:
            return PicksPreview(path.stem, cropped(prepare_for_picking(path, facts), PREVIEW_SIDE))
        except InputError as exc:  # e.g. unreadable now: training goes on without the preview
            why = str(exc)
    print(f"picks preview off (training.picks_preview_every): {why}")
    return None


def cropped(micrograph, side):
    """The top-left `side` x `side` rescaled px of a prepared micrograph, its coordinates unchanged."""
    image = micrograph.image[:side, :side]
    scale_x, scale_y = micrograph.scale_xy
    original_shape = (round(image.shape[0] / scale_y), round(image.shape[1] / scale_x))
    return replace(micrograph, image=image, original_shape=original_shape)


def draw_picks(model, preview, facts, spec, device, bf16):
    """(RGB uint8 [H, W, 3] of the preview's micrograph, circles on its picks at logit >= 0, their number).

    `model` is copied with its BatchNorms folded, as `picking.score.load_picker` prepares a checkpoint's."""
    picker = picker_from_model(model, facts, spec, device)
    micrograph = preview.micrograph
    diameter = facts.particle_diameter_px / micrograph.size_ratio
    min_distance, edge_margin = pick_distances(diameter)
    picks = pick_prepared(picker, micrograph, stride=default_stride(facts, spec), min_distance_px=min_distance,
                          threshold=0.0, device=device, edge_margin_px=edge_margin, bf16=bf16)
    xy = to_scaled(picks[:, :2], micrograph.scale_xy)
    picture = overlay_image(micrograph.image, xy, diameter * float(np.mean(micrograph.scale_xy)), PREVIEW_SIDE)
    return np.asarray(picture), len(picks)


def log_picks_preview(writer, preview, model, facts, spec, device, bf16, step):
    image, count = draw_picks(model, preview, facts, spec, device, bf16)
    writer.add_image("val/picks", image, step, dataformats="HWC")
    height, width = preview.micrograph.image.shape
    writer.add_text("val/picks_summary", f"{preview.stem}: {count} picks at logit >= 0 in its top-left "
                                         f"{width} x {height} rescaled px", step)
