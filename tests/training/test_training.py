"""Training: short end-to-end runs on a tiny generated dataset, resume, TensorBoard, DDP, bad input."""
import json
import math
import os
import shlex
import subprocess
import sys

import pytest
import torch
import yaml

import make_synthetic_dataset
import preprocess_coco_full_dataset
import train_pu_fixed_full
import train_with_chunked_data
from common.config import parse_overrides
from common.errors import InputError
from conftest import REPO
from datasets.chunks.format import PreprocessingFacts
from models.checkpoint import load_checkpoint
from models.ensemble import MeanLogitEnsemble
from models.precision import native_bf16
from picking.score import load_picker
from training.engine import member_budget_seconds, resume_hint
from training.members import member_checkpoints, member_dirs, member_results, member_runs

FAST = ["--set", "data.input_size=32", "model.backbone=resnet_tiny", "training.batch_size=32",
        "training.steps_per_epoch=8", "training.log_every=4", "data.max_eval_samples=400",
        "model.ema_decay=0.9", "optimizer.lr=0.002"]


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    """A tiny synthetic dataset (high SNR, easy) preprocessed by the COCO PU tool, 64 px patches."""
    root = tmp_path_factory.mktemp("train_data")
    make_synthetic_dataset.main(["--output-dir", str(root / "syn"), "--num-train", "3", "--num-val", "1", "--num-test", "1",
                                 "--width", "384", "--height", "384", "--particle-diameter", "24", "--snr", "1.0",
                                 "--seed", "3"])
    out = root / "chunks"
    preprocess_coco_full_dataset.main(["--data-root", str(root / "syn"), "--output-dir", str(out), "--labels",
                                       "complete", "--hide-ratio", "0.3",
                                       "--patch-size", "64", "--target-diameter", "32"])
    return out


def train(chunks, tmp_path, *extra, name="run", epochs=3):
    argv = ["--data-dir", str(chunks), "--exp-name", name, "--output-root", str(tmp_path), "--device", "cpu",
            "--use-data-prior", "--epochs", str(epochs), *FAST, *extra]
    return train_pu_fixed_full.main(argv)


@pytest.mark.slow
def test_short_training_beats_chance_and_writes_the_run_dir(chunks, tmp_path):
    results = train(chunks, tmp_path, epochs=4)
    run = tmp_path / "run"
    assert results["val"]["auc"] > 0.75 and results["test"]["auc"] > 0.75
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "results.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "results.json").read_text())
    for block in ("val", "test"):
        assert {"auc", "ap", "precision", "recall", "f1", "at_best_f1_threshold"} <= set(saved[block])
    meta = json.loads((chunks / "metadata.json").read_text())
    assert saved["prior"] == pytest.approx(meta["priors"]["prior_unlabeled"])
    ckpt = load_checkpoint(run / "best.pt")
    assert {"model", "optimizer", "scheduler", "ema", "epoch", "step", "best_metric", "config", "preprocessing",
            "network_input", "prior", "git_sha"} <= set(ckpt)
    assert ckpt["preprocessing"] == meta["facts"] and ckpt["preprocessing"]["patch_size"] == 64
    assert ckpt["network_input"] == {"input_size": 32, "normalization": "micrograph", "grey_levels": 31.875}
    assert ckpt["prior"]["value"] == saved["prior"] and ckpt["prior"]["source"].startswith("counted")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/pu_loss", "train/consistency_loss", "train/mask_rate",
            "train/pseudo_label_accuracy", "val/auc", "val/ap", "val/precision", "val/recall", "val/f1",
            "lr"} <= tags
    assert len(events.Scalars("val/auc")) == 4


@pytest.mark.slow
def test_resume_continues_the_same_run(chunks, tmp_path, monkeypatch):
    from training import engine
    train(chunks, tmp_path, name="straight", epochs=2)
    real_train_epoch = engine.train_epoch

    def interrupted(run, epoch, skip, budget):
        if epoch == 1:
            raise KeyboardInterrupt  # killed at the start of the second epoch
        return real_train_epoch(run, epoch, skip, budget)
    monkeypatch.setattr(engine, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(chunks, tmp_path, name="split", epochs=2)
    first = load_checkpoint(tmp_path / "split" / "last.pt")
    assert first["epoch"] == 1 and first["step"] == 8
    monkeypatch.undo()
    train(chunks, tmp_path, name="split", epochs=2)  # a rerun resumes last.pt
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "split" / "last.pt")
    assert resumed["step"] == straight["step"] == 16
    for key, value in straight["model"].items():
        assert torch.allclose(value.float(), resumed["model"][key].float(), atol=1e-5), key
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, state in straight["optimizer"]["state"].items():
        assert torch.allclose(state["exp_avg"], resumed["optimizer"]["state"][key]["exp_avg"], atol=1e-5)
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.slow
def test_weight_average_is_the_mean_of_the_epoch_end_teachers_and_survives_a_resume(chunks, tmp_path, monkeypatch):
    from training import engine
    teachers = []
    real_fold = engine.fold_into_average

    def recording(run):
        started = real_fold(run)
        if run.average.n_averaged > len(teachers):
            teachers.append({k: v.clone() for k, v in run.teacher.state_dict().items()})
        return started
    monkeypatch.setattr(engine, "fold_into_average", recording)
    results = train(chunks, tmp_path, "model.average_from=0.5", name="swa", epochs=4)
    monkeypatch.undo()
    records = [json.loads(line) for line in (tmp_path / "swa" / "metrics.jsonl").read_text().splitlines()]
    assert [r["averaged_epochs"] for r in records] == [0, 1, 2, 3]  # epoch ends at 0.25, 0.5, 0.75, 1.0
    assert len(teachers) == 3 and results["averaged_epochs"] >= 1
    last = load_checkpoint(tmp_path / "swa" / "last.pt")
    for key, value in last["average"].items():
        if value.dtype.is_floating_point:
            assert torch.allclose(value, sum(t[key] for t in teachers) / 3, atol=1e-6), key
    assert any(not torch.equal(v, last["ema"][k]) for k, v in last["average"].items() if v.dtype.is_floating_point)
    best = load_checkpoint(tmp_path / "swa" / "best.pt")
    assert best["best_epoch"] >= 1 and best["averaged_epochs"] == best["best_epoch"]  # only averages compete
    from models.checkpoint import evaluated_model
    picked = evaluated_model(best, tmp_path / "swa" / "best.pt").state_dict()
    assert all(torch.equal(picked[k], v) for k, v in best["average"].items())

    real_train_epoch = engine.train_epoch

    def interrupted(run, epoch, skip, budget):
        if epoch == 3:
            raise KeyboardInterrupt  # killed after two averaged epochs
        return real_train_epoch(run, epoch, skip, budget)
    monkeypatch.setattr(engine, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(chunks, tmp_path, "model.average_from=0.5", name="swa_split", epochs=4)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "swa_split" / "last.pt")["averaged_epochs"] == 2
    train(chunks, tmp_path, "model.average_from=0.5", name="swa_split", epochs=4)
    resumed = load_checkpoint(tmp_path / "swa_split" / "last.pt")
    assert resumed["averaged_epochs"] == 3
    for key, value in last["average"].items():
        assert torch.allclose(value.float(), resumed["average"][key].float(), atol=1e-5), key


def test_cosine_schedule_ends_at_the_time_budget():
    from training.engine import build_optimizer
    spent = {"fraction": 0.0}
    model = torch.nn.Linear(2, 1)
    _, schedule = build_optimizer(model, {"lr": 1.0, "weight_decay": 0.0, "scheduler": "cosine", "warmup_epochs": 0},
                                  total_steps=100, steps_per_epoch=10, budget_used=lambda: spent["fraction"])
    model.weight.grad = None
    schedule.optimizer.step()
    schedule.step()  # step 1 of 100: the step count leads
    assert schedule.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.01)))
    spent["fraction"] = 0.5  # half the time spent at step 2: the time leads
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.5)
    spent["fraction"] = 1.2
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.0)


@pytest.mark.parametrize("members", [1, 2])
def test_time_budget_stops_the_run_with_the_learning_rate_annealed(chunks, tmp_path, monkeypatch, members):
    """training.max_minutes is the ensemble's: each of two members stops at its half, annealed there."""
    from types import SimpleNamespace

    from training import engine
    clock = {"now": 0.0}

    def tick():  # the training loop's clock advances 20 ms per reading, however fast or loaded the machine is
        clock["now"] += 0.02
        return clock["now"]
    monkeypatch.setattr(engine, "time", SimpleNamespace(time=tick))
    train(chunks, tmp_path, f"training.max_minutes={0.005 * members}", f"training.members={members}",
          name="budget", epochs=50)
    for run in member_dirs(tmp_path / "budget", members):
        results = json.loads((run / "results.json").read_text())
        assert results["stopped"].startswith("time budget of 0.005 min reached")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        by_steps = 0.002 * 0.5 * (1 + math.cos(math.pi * records[-1]["step"] / (50 * 8)))  # > 0.0019
        assert records[-1]["lr"] < 0.5 * by_steps  # annealed by the clock (the last step's lr lags it by one step)
        assert results["timings"]["train_seconds"] == pytest.approx(0.3, abs=0.5)


def test_chunked_script_uses_data_prior_and_positive_ratio(chunks, tmp_path):
    results = train_with_chunked_data.main(["--data-dir", str(chunks), "--exp-name", "guide", "--output-root",
                                            str(tmp_path), "--device", "cpu", "--positive-ratio", "0.25",
                                            "--epochs", "1", "--load-to-memory", *FAST])
    meta = json.loads((chunks / "metadata.json").read_text())
    assert results["prior"] == pytest.approx(meta["priors"]["prior_unlabeled"])
    config = (tmp_path / "guide" / "config.yaml").read_text()
    assert "loader_mode: memory" in config and "- 0.25" in config


def test_baseline_and_nnpu_only_modes_run(chunks, tmp_path):
    pn = train(chunks, tmp_path, "loss.mode=pn", "training.amp=false", name="pn", epochs=1)
    assert pn["loss_mode"] == "pn" and pn["precision"] == "fp32"
    only = train(chunks, tmp_path, "loss.use_consistency=false", name="only", epochs=1)
    assert only["consistency"] is False
    assert only["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")


def test_the_normalisation_trained_with_travels_to_picking(chunks, tmp_path):
    results = train(chunks, tmp_path, "data.normalization=patch_mean", name="grey", epochs=2)
    assert results["val"]["auc"] > 0.6
    picker = load_picker(tmp_path / "grey" / "best.pt", "cpu")
    assert picker.spec.normalization == "patch_mean" and picker.spec.input_size == 32
    assert picker.facts == PreprocessingFacts.from_dict(json.loads((chunks / "metadata.json").read_text())["facts"],
                                                        "metadata")


def test_members_train_one_after_the_other_with_their_own_seeds_and_pick_as_one_ensemble(chunks, tmp_path, capsys):
    alone = train(chunks, tmp_path, name="pair", epochs=1)
    first = train(chunks, tmp_path, "training.members=2", name="pair", epochs=1)  # a second member joins the run
    run = tmp_path / "pair"
    assert first["steps"] == alone["steps"] == 8  # ... and the first is not trained again
    assert member_checkpoints(run) == [run / "best.pt", run / "member2" / "best.pt"]
    configs = [yaml.safe_load((d / "config.yaml").read_text())["training"] for d in (run, run / "member2")]
    assert [(c["seed"], c["members"]) for c in configs] == [(42, 2), (43, 2)]
    results = [json.loads((d / "results.json").read_text()) for d in (run, run / "member2")]
    assert first == results[0] and member_results(member_checkpoints(run)) == results
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["members"] == 2 and summary["steps"] == results[0]["steps"] + results[1]["steps"] == 16
    assert summary["train_seconds"] == pytest.approx(sum(r["timings"]["train_seconds"] for r in results), abs=0.1)
    assert isinstance(load_picker(member_checkpoints(run), "cpu").model, MeanLogitEnsemble)
    again = train(chunks, tmp_path, "training.members=2", name="pair", epochs=1)  # a rerun resumes both: no step more
    assert again["steps"] == first["steps"]
    assert json.loads((run / "member2" / "results.json").read_text())["steps"] == results[1]["steps"]


def test_members_share_the_time_budget_and_a_count_that_is_no_whole_number_is_refused(tmp_path):
    config = {"training": {"members": 3, "seed": 7, "max_minutes": 30}}
    runs = member_runs(config, tmp_path)
    assert [(c["training"]["seed"], d) for c, d in runs] == [(7, tmp_path), (8, tmp_path / "member2"),
                                                             (9, tmp_path / "member3")]
    assert config["training"] == {"members": 3, "seed": 7, "max_minutes": 30}  # the run's own config is untouched
    assert [member_budget_seconds(c["training"]) for c, _ in runs] == [600.0] * 3  # 30 minutes shared by three
    assert member_budget_seconds({"members": 2, "max_minutes": None}) == math.inf
    for bad in (0, 1.5, True, "two"):
        with pytest.raises(InputError, match="training.members"):
            member_runs({"training": {"members": bad, "seed": 7, "max_minutes": None}}, tmp_path)


def _error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        train_pu_fixed_full.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input(chunks, tmp_path, capsys):
    base = ["--output-root", str(tmp_path), "--device", "cpu", *FAST]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "metadata.json" in _error(capsys, ["--data-dir", str(empty), "--use-data-prior", *base])
    assert "(0, 1)" in _error(capsys, ["--data-dir", str(chunks), "--prior", "1.5", *base])
    err = _error(capsys, ["--data-dir", str(chunks), "--use-data-prior", *base, "loss.priorr=0.3"])
    assert "loss.priorr" in err
    err = _error(capsys, ["--data-dir", str(chunks), "--use-data-prior", *base, "data.normalization=window"])
    assert "data.normalization 'window' is not one of patch, patch_mean, micrograph" in err
    err = _error(capsys, ["--data-dir", str(chunks), "--use-data-prior", "--prior", "0.2", *base])
    assert err == "error: give either --prior or --use-data-prior, not both"
    err = _error(capsys, ["--data-dir", str(chunks), "--use-data-prior", *base, "model.average_from=1.5"])
    assert "model.average_from 1.5 must be a fraction of the schedule in [0, 1)" in err
    train(chunks, tmp_path, name="arch", epochs=1)
    err = _error(capsys, ["--data-dir", str(chunks), "--use-data-prior", "--exp-name", "arch", "--epochs", "2",
                          *base, "model.backbone=resnet18"])
    assert "model.backbone" in err


def test_incomplete_preprocessing_and_no_positives(chunks, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(chunks, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    meta["complete"] = False
    (broken / "metadata.json").write_text(json.dumps(meta))
    err = _error(capsys, ["--data-dir", str(broken), "--use-data-prior", "--output-root", str(tmp_path), *FAST])
    assert "resume" in err or "incomplete" in err
    nopos = tmp_path / "nopos"
    shutil.copytree(chunks, nopos)
    for chunk in nopos.glob("train_chunk_*.pt"):
        data = torch.load(chunk, weights_only=True)
        data["label"][data["label"] == 1] = 0
        torch.save(data, chunk)
    err = _error(capsys, ["--data-dir", str(nopos), "--prior", "0.3", "--output-root", str(tmp_path), *FAST])
    assert "train_chunk_0000.pt does not match the checksum" in err  # the rewritten chunks are caught first
    err = _error(capsys, ["--data-dir", str(nopos), "--prior", "0.3", "--output-root", str(tmp_path), *FAST,
                          "data.verify_checksums=false"])
    assert "no labeled positives" in err


@pytest.mark.slow
@pytest.mark.parametrize("members", [1, 2])
def test_two_process_gloo_ddp_run(chunks, tmp_path, members):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(29533 + members)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           str(REPO / "train_pu_fixed_full.py"), "--data-dir", str(chunks), "--exp-name", "ddp", "--output-root",
           str(tmp_path), "--device", "cpu", "--use-data-prior", "--epochs", "1", *FAST, f"training.members={members}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for run in member_dirs(tmp_path / "ddp", members):
        results = json.loads((run / "results.json").read_text())
        assert results["steps"] == 8 and 0.0 <= results["test"]["auc"] <= 1.0


@pytest.mark.slow
def test_two_nodes_over_gloo_train_as_one_run(chunks, tmp_path):
    """`torchrun --nnodes 2` as two local node processes (one rank each) meeting at a 127.0.0.1 rendezvous:
    the multi-node command of the README's scaling section, with the same result files as one node of two."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", "29541",
                               str(REPO / "train_pu_fixed_full.py"), "--data-dir", str(chunks), "--exp-name", "nodes",
                               "--output-root", str(tmp_path), "--device", "cpu", "--use-data-prior", "--epochs", "1",
                               *FAST], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    results = json.loads((tmp_path / "nodes" / "results.json").read_text())
    assert results["steps"] == 8 and 0.0 <= results["test"]["auc"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "nodes").glob("*.pt")) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("amp, native, expected", [(True, True, torch.bfloat16), (True, False, torch.float32),
                                                   (False, True, torch.float32)])
def test_training_amp_runs_bf16_only_where_the_device_has_it(monkeypatch, amp, native, expected):
    from types import SimpleNamespace

    from training import engine
    monkeypatch.setattr(engine, "native_bf16", lambda device: native)
    run = SimpleNamespace(config={"training": {"amp": amp}}, device=torch.device("cpu"))
    with engine.autocast(run):
        out = torch.nn.Conv2d(1, 2, 3)(torch.randn(1, 1, 8, 8))
    assert out.dtype == expected
    assert engine.uses_bf16(run) == (expected == torch.bfloat16)


def test_a_refused_resume_names_the_set_that_trains_as_the_run_did():
    """Each differing key at its saved value (a default changed since, e.g. the share at 0.25); a key added
    since the run (data.known_negative_share, absent) at the value that trains as runs without it did; no
    hint where a key is missing otherwise, or gone from the config now. The items read back as the values."""
    now = {"data": {"batch_ratio": [1, 3], "known_negative_share": 0.5}, "model": {"backbone": "resnet18"}}
    saved = {"data": {"batch_ratio": [1, 4], "known_negative_share": 0.25}, "model": {"backbone": "resnet_tiny"}}
    hint = resume_hint(saved, now, ["data.known_negative_share", "model.backbone", "data.batch_ratio"])
    assert hint == ("resume it as it was with --set data.known_negative_share=0.25 model.backbone=resnet_tiny "
                    "'data.batch_ratio=[1, 4]', or ")
    items = shlex.split(hint.removeprefix("resume it as it was with --set ").removesuffix(", or "))
    assert parse_overrides(items) == {"data": {"known_negative_share": 0.25, "batch_ratio": [1, 4]},
                                      "model": {"backbone": "resnet_tiny"}}
    before = {"data": {"batch_ratio": [1, 4]}}
    assert resume_hint(before, now, ["data.known_negative_share"]) == ("resume it as it was with --set "
                                                                         "data.known_negative_share=null, or ")
    assert resume_hint(before, now, ["data.known_negative_share", "model.backbone"]) == ""
    assert resume_hint({**saved, "loss": {"removed_since": 1}}, now, ["loss.removed_since"]) == ""
