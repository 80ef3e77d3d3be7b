"""The blind benchmark's label dropping (the one place the protocol touches complete labels) and its run."""
import hashlib
import json

import shutil

import numpy as np
import pytest
import yaml

from bench import bench_pick
from datasets.io.coordinates import read_coco


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fraction", [0.7, 0.3, 0.1])
def test_each_micrograph_keeps_exactly_round_f_n_of_its_particles_seeded(world, tmp_path, fraction):
    source = world.root / "data"
    counts, expected = bench_pick.write_blind_dataset(source, tmp_path / "a", fraction)
    bench_pick.write_blind_dataset(source, tmp_path / "b", fraction)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")  # seeded: the same labels every time
    for split in ("train", "val", "test"):
        before, _ = read_coco(source / "annotations" / f"instances_{split}.json")
        after, _ = read_coco(tmp_path / "a" / "annotations" / f"instances_{split}.json")
        for stem, particles in before.items():
            kept = after.get(stem, np.zeros((0, 4)))
            wanted = int(round(fraction * len(particles))) if split == "train" else len(particles)
            assert len(kept) == wanted, (split, stem)
            rows = {tuple(row) for row in np.round(particles[:, :2], 3)}
            assert all(tuple(row) in rows for row in np.round(kept[:, :2], 3))  # a subset, nothing moved
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["annotations", "test", "train", "val"]
    assert counts["test"][0] == counts["test"][1] and expected > 0


TINY = """
data: {input_size: 32, max_eval_samples: 500}
model: {backbone: resnet_tiny, dropout: 0.1, ema_decay: 0.9}
training: {epochs: 2, batch_size: 32, steps_per_epoch: 6, log_every: 3}
"""


@pytest.mark.slow
def test_the_blind_benchmark_runs_the_users_path_and_scores_the_picks(world, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bench_summary.json").write_text(json.dumps({"0.9/ours": {"auprc": 0.5}}))
    rows = bench_pick.main(["--data-root", str(world.root / "data"), "--label-fractions", "0.5", "--output-dir",
                            str(tmp_path / "out"), "--config", str(config), "--pickers", "ours"])
    (fraction, picker, result), = rows
    assert (fraction, picker) == (0.5, "ours") and 0 < result["prior"] < 1 and 0 <= result["auprc"] <= 1
    case = tmp_path / "out" / "F0.5"
    meta = json.loads((case / "chunks" / "metadata.json").read_text())
    assert meta["config"]["labels"] == "partial" and meta["priors"]["method"] == "expected_particles"
    # the truth counts pi apart from the user's path: the blind folder never holds it, its chunks are gone
    assert 0 < result["prior_counted"] < 1 and not (case / "data" / "ground_truth").exists()
    assert len(list((case / "truth" / "ground_truth").glob("*.csv"))) > 0 and not (case / "counted").exists()
    summary = json.loads((tmp_path / "out" / "bench_summary.json").read_text())
    assert set(summary) == {"0.9/ours", "0.5/ours"}  # an earlier run's rows are kept
    assert "0.50" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("topaz") is None, reason="topaz is not installed (pip install topaz-em)")
def test_topaz_runs_first_on_the_same_blind_folder_and_caps_our_training_time(world, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    rows = bench_pick.main(["--data-root", str(world.root / "data"), "--label-fractions", "0.5", "--output-dir",
                            str(tmp_path / "out"), "--config", str(config), "--topaz-epochs", "1",
                            "--topaz-epoch-size", "4"])
    assert [picker for _, picker, _ in rows] == ["topaz", "ours"]
    topaz, ours = rows[0][2], rows[1][2]
    assert 0 <= topaz["auprc"] <= 1 and 0 < topaz["prior"] < 1
    resolved = yaml.safe_load((tmp_path / "out" / "F0.5" / "runs" / "ours" / "config.yaml").read_text())
    assert resolved["training"]["max_minutes"] == pytest.approx(topaz["train_s"] / 60, abs=1e-3)
    summary = json.loads((tmp_path / "out" / "bench_summary.json").read_text())
    assert set(summary) == {"0.5/topaz", "0.5/ours"} and summary["0.5/ours"]["auprc"] == ours["auprc"]


@pytest.mark.slow
def test_settings_are_chosen_on_val_with_the_overrides_given(world, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    (_, _, ours), = bench_pick.main([
        "--data-root", str(world.root / "data"), "--label-fractions", "0.5", "--output-dir", str(tmp_path / "out"),
        "--config", str(config), "--pickers", "ours", "--score-split", "val", "--set", "training.seed=3",
        "training.members=2", "--preprocess-set", "preprocessing.unlabeled_windows_per=expected"])
    case = tmp_path / "out" / "F0.5"
    val, _ = read_coco(case / "data" / "annotations" / "instances_val.json")
    test, _ = read_coco(case / "data" / "annotations" / "instances_test.json")
    scored = json.loads((case / "eval.json").read_text())
    assert scored["n_targets"] == sum(map(len, val.values())) != sum(map(len, test.values()))
    picked = {p.stem for p in (case / "picks" / "candidates").glob("*.npy")}
    assert picked == set(val)
    runs = [case / "runs" / "ours", case / "runs" / "ours" / "member2"]
    assert [yaml.safe_load((run / "config.yaml").read_text())["training"]["seed"] for run in runs] == [3, 4]
    manifest = json.loads((case / "picks" / "manifest.json").read_text())
    assert manifest["checkpoint"] == [str(run / "best.pt") for run in runs] and ours["members"] == 2
    seconds = [json.loads((run / "results.json").read_text())["timings"]["train_seconds"] for run in runs]
    assert ours["train_s"] == pytest.approx(sum(seconds))
    meta = json.loads((case / "chunks" / "metadata.json").read_text())
    assert meta["config"]["unlabeled_windows_per"] == "expected"
