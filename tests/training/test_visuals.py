"""What TensorBoard shows besides scalars: the val PR curve, the unlabeled patch grids, the picks preview,
and the progress bar (training/visuals.py, training/engine.py)."""
import io
import json
import shutil

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, TENSORS, EventAccumulator
from tensorboard.util import tensor_util
from tqdm import tqdm

from datasets.chunks.format import LABEL_UNLABELED, read_facts
from datasets.chunks.loader import CryoEMChunkedDataset
from test_training import chunks, train  # noqa: F401  (chunks: the tiny dataset fixture)
from training.engine import POSTFIX_EVERY, show_epoch_means
from training.visuals import (PREVIEW_SIDE, extremes, logit_table, patch_grid, picks_preview, unlabeled_pool,
                              val_micrograph)


def events_of(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={IMAGES: 0, TENSORS: 0})
    events.Reload()
    return events


def test_extremes_are_the_highest_and_lowest_logits_of_the_pool():
    logits = torch.randn(256, generator=torch.Generator().manual_seed(0))
    top, lowest = extremes(logits, 32)
    ranked = torch.argsort(logits, descending=True)
    assert top.tolist() == ranked[:32].tolist()
    assert lowest.tolist() == ranked.flip(0)[:32].tolist()
    assert logits[top].min() > logits[torch.tensor([i for i in range(256) if i not in set(top.tolist())])].max()
    few_top, few_lowest = extremes(logits[:5], 32)  # a pool smaller than the grid: all of it, each way
    assert sorted(few_top.tolist()) == sorted(few_lowest.tolist()) == [0, 1, 2, 3, 4]


def test_patch_grid_lays_out_the_patches_at_the_network_input_size():
    patches = torch.arange(32, dtype=torch.uint8).mul(7)[:, None, None].expand(32, 64, 64).contiguous()
    grid = patch_grid(patches, 32)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2 + 4 * 34, 2 + 8 * 34)  # 4 rows of 8, 2 px apart
    assert int(grid[0, 2, 2]) == 0 and int(grid[0, 2, 2 + 34]) == 7 and int(grid[1, 2 + 34, 2]) == 8 * 7
    assert int(grid[0, 1, 5]) == 0  # the padding
    assert patch_grid(patches[:5], 32).shape == (3, 36, 2 + 5 * 34)


def test_logit_table_follows_the_grid_and_marks_the_known_truth():
    table = logit_table(torch.tensor([2.5, 1.25, -0.5] + [0.0] * 7), torch.tensor([1, 0, -1] + [-1] * 7))
    lines = table.splitlines()
    assert lines[2] == "| 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 |"
    assert lines[4] == "| 2.50 P | 1.25 N | -0.50 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |"
    assert lines[5] == "| 0.00 | 0.00 |" and len(lines) == 6


def test_unlabeled_pool_is_a_fixed_seeded_subset_of_the_unlabeled_train_patches(chunks):
    pool = unlabeled_pool([str(chunks)], 40, seed=42)
    again = unlabeled_pool([str(chunks)], 40, seed=42)
    assert pool.patches.shape == (40, 64, 64) and torch.equal(pool.patches, again.patches)
    dataset = CryoEMChunkedDataset([str(chunks)], "train", mode="mmap")
    unlabeled = (dataset.labels == LABEL_UNLABELED).nonzero().squeeze(1)
    everything = dataset.get_batch(unlabeled)["patches"]
    assert all((everything == patch).all(dim=(1, 2)).any() for patch in pool.patches)
    assert len(unlabeled_pool([str(chunks)], 10 ** 6, seed=42).patches) == len(unlabeled)


def test_tiny_training_writes_the_pr_curve_the_grids_and_the_picks(chunks, tmp_path):
    train(chunks, tmp_path, "training.picks_preview_every=1", "training.unlabeled_grid_pool=100", name="seen",
          epochs=2)
    events = events_of(tmp_path / "seen")
    assert {"unlabeled/top_scoring", "unlabeled/lowest_scoring", "val/picks"} <= set(events.Tags()["images"])
    for tag in ("unlabeled/top_scoring", "unlabeled/lowest_scoring"):
        shown = events.Images(tag)
        assert [e.step for e in shown] == [8, 16]
        assert (shown[-1].height, shown[-1].width) == (2 + 4 * 34, 2 + 8 * 34)  # 32 patches at input_size 32
    picks = events.Images("val/picks")[-1]
    assert picks.width == picks.height == min(PREVIEW_SIDE, 512)  # 384 px micrograph x 4/3
    curves = events.Tensors("val/pr_curve")
    assert [e.step for e in curves] == [8, 16]
    tp, fp, tn, fn, precision, recall = tensor_util.make_ndarray(curves[-1].tensor_proto)
    val = json.loads((tmp_path / "seen" / "metrics.jsonl").read_text().splitlines()[-1])["val"]
    assert tp[0] + fn[0] == val["n_positive"] and tp[0] + fp[0] + tn[0] + fn[0] == val["n"]
    assert recall[0] == 1.0 and 0 < precision[0] < 1
    text = tensor_util.make_ndarray(events.Tensors("unlabeled/top_scoring_logits/text_summary")[-1].tensor_proto)
    rows = text.item().decode().splitlines()[4:]
    logits = [float(cell.split()[0]) for row in rows for cell in row.strip("| ").split(" | ")]
    assert len(logits) == 32 and logits == sorted(logits, reverse=True)


def test_the_visuals_turned_off_write_no_images(chunks, tmp_path):
    train(chunks, tmp_path, "training.unlabeled_grid_size=0", "training.picks_preview_every=0", name="blind",
          epochs=1)
    events = events_of(tmp_path / "blind")
    assert events.Tags()["images"] == []
    assert events.Tags()["tensors"] == ["val/pr_curve"]


def test_picks_preview_is_off_with_the_reason_when_the_val_micrograph_is_gone(chunks, tmp_path, capsys):
    path, why = val_micrograph([chunks])
    assert path.is_file() and path.parent.name == "val" and why is None
    moved = tmp_path / "moved"
    shutil.copytree(chunks, moved)
    meta = json.loads((moved / "metadata.json").read_text())
    for entry in meta["micrographs"]:
        entry["path"] = str(tmp_path / "nowhere" / f"{entry['stem']}.mrc")
    (moved / "metadata.json").write_text(json.dumps(meta))
    assert val_micrograph([moved])[0] is None
    assert picks_preview([moved], read_facts([moved])) is None
    assert "picks preview off (training.picks_preview_every): no val micrograph is where preprocessing read it" \
        in capsys.readouterr().out


def test_negative_visual_settings_are_refused(chunks, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(chunks, tmp_path, "training.picks_preview_every=-1", name="bad", epochs=1)
    assert "training.picks_preview_every -1 must be at least 0 (0 = off)" in capsys.readouterr().err


def test_progress_bar_shows_the_epoch_mean_loss_and_mask_rate_every_few_steps():
    bar = tqdm(total=100, file=io.StringIO(), disable=False)
    sums = {"loss": torch.tensor(2.5), "mask_rate": torch.tensor(3.0)}
    show_epoch_means(bar, sums, POSTFIX_EVERY - 1)
    assert bar.postfix is None
    show_epoch_means(bar, sums, POSTFIX_EVERY)
    assert bar.postfix == f"loss={2.5 / POSTFIX_EVERY:.4f}, mask_rate={3.0 / POSTFIX_EVERY:.1%}"
