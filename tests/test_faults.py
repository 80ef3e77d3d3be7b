"""Fault injection across the tools: malicious files, a second writer, damaged chunks, foreign files, kill -9.

Each tool is run as a user would (its script, in a subprocess where a kill is involved) on a tiny
synthetic dataset; outputs are compared byte for byte with an uninterrupted run.
"""
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import pick_particles
import preprocess_coco_full_dataset
import train_pu_fixed_full
from common import files
from common.files import folder_lock
from conftest import REPO, write_malicious_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def digests(folder, pattern="*"):
    """sha256 of every file under `folder` but the lock file (whose text names its holder)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if p.is_file() and p.name != ".lock"}


def refused(capsys, main, argv):
    """The one-line error of a tool that must refuse, with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ")
    return error


def test_a_malicious_last_pt_runs_nothing_and_is_refused(world, tmp_path, capsys):
    run = tmp_path / "runs" / "shared_model"
    run.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    write_malicious_checkpoint(run / "last.pt", marker)
    error = refused(capsys, train_pu_fixed_full.main, world.train_args(tmp_path / "runs", "shared_model"))
    assert "last.pt" in error and "could run code" in error
    assert not marker.exists() and sorted(p.name for p in run.iterdir()) == [".lock", "last.pt"]


def test_a_second_writer_is_refused_and_the_first_writers_files_stay_as_they_are(world, tmp_path, capsys):
    root = world.root
    for folder, main, argv in (
            (root / "chunks", preprocess_coco_full_dataset.main,
             world.preprocess_args(root / "chunks") + ["--no-resume", "--hide-ratio", "0.5"]),
            (root / "runs" / "run", train_pu_fixed_full.main, world.train_args(root / "runs")),
            (root / "picks", pick_particles.main, world.pick_args(root / "picks"))):
        before = digests(folder)
        with folder_lock(folder, "the first writer"):
            error = refused(capsys, main, argv)
        assert f"{folder} is being written by the first writer (pid {os.getpid()}" in error
        assert digests(folder) == before


def test_a_damaged_chunk_is_named_when_training_starts(world, tmp_path, capsys):
    damaged = tmp_path / "chunks"
    damaged.mkdir()
    for path in (world.root / "chunks").iterdir():
        if path.name != ".lock":
            (damaged / path.name).write_bytes(path.read_bytes())
    chunk = damaged / "train_chunk_0001.pt"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the patches
    chunk.write_bytes(bytes(data))
    error = refused(capsys, train_pu_fixed_full.main, world.train_args(tmp_path / "runs", "x", damaged))
    assert "train_chunk_0001.pt does not match the checksum" in error
    assert not (tmp_path / "runs" / "x").exists()  # a failed start leaves no empty run folder


def test_picking_into_a_label_folder_is_refused_and_changes_nothing(world, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    stem = sorted((world.root / "data" / "test").iterdir())[0].stem
    (labels / f"{stem}.csv").write_text("X-Coordinate,Y-Coordinate,Diameter\n10,20,24\n")
    before = digests(labels)
    error = refused(capsys, pick_particles.main, world.pick_args(labels))
    assert f"did not write (e.g. {stem}.csv)" in error
    assert digests(labels) == before


def test_every_micrograph_failing_is_an_error(world, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mrc").write_bytes(b"not an mrc" * 50)
    with pytest.warns(UserWarning, match="a.mrc"):
        error = refused(capsys, pick_particles.main, world.pick_args(tmp_path / "picks", broken))
    assert "none of the 1 micrographs could be picked" in error and "a.mrc" in error


def kill_at_random_points(command, points, within, seed):
    """Start `command` `points` times, each killed with SIGKILL after a random time in `within` seconds
    (a run that finishes first is fine); then run it to the end and return that last run."""
    rng = random.Random(seed)
    for _ in range(points):
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        time.sleep(rng.uniform(*within))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def script(name, *argv):
    return [sys.executable, str(REPO / name), *map(str, argv)]


@pytest.mark.slow
def test_preprocessing_killed_at_ten_points_resumes_to_the_same_bytes(world, tmp_path):
    out = tmp_path / "chunks"
    done = kill_at_random_points(script("preprocess_coco_full_dataset.py", *world.preprocess_args(out)),
                                 points=10, within=(1.5, 4.0), seed=1)
    assert done.returncode == 0, done.stderr[-2000:]
    assert digests(out, "*.pt") == digests(world.root / "chunks", "*.pt")
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_training_killed_at_ten_points_resumes_to_the_same_model(world, tmp_path):
    def command(root):
        return script("train_pu_fixed_full.py", *world.train_args(root), "training.checkpoint_every=2")
    uninterrupted = subprocess.run(command(tmp_path / "reference"), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    done = kill_at_random_points(command(tmp_path / "runs"), points=10, within=(3.0, 9.0), seed=2)
    assert done.returncode == 0, done.stderr[-2000:]
    run, reference = tmp_path / "runs" / "run", tmp_path / "reference" / "run"
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # each epoch's line exactly once
    assert not list(run.glob("*.tmp"))
    mine, theirs = (torch.load(r / "best.pt", weights_only=True)["ema"] for r in (run, reference))
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    ours = json.loads((run / "results.json").read_text())["test"]
    assert ours == json.loads((reference / "results.json").read_text())["test"]


@pytest.mark.slow
def test_picking_killed_at_ten_points_resumes_to_the_same_picks(world, tmp_path):
    out = tmp_path / "picks"
    done = kill_at_random_points(script("pick_particles.py", *world.pick_args(out)), points=10, within=(2.0, 6.0),
                                 seed=3)
    assert done.returncode == 0, done.stderr[-2000:]
    assert digests(out, "*.csv") == digests(world.root / "picks", "*.csv")
    assert digests(out, "*.box") == digests(world.root / "picks", "*.box")
    assert not list(out.rglob("*.tmp"))
    statuses = {e["stem"]: e["status"] for e in json.loads((out / "manifest.json").read_text())["micrographs"]}
    assert set(statuses.values()) == {"done"} and len(statuses) == 2


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "disk full while writing"),
                                           (errno.EACCES, "permission denied")])
def test_a_full_disk_or_a_read_only_folder_is_one_line_wherever_it_strikes(world, tmp_path, capsys, monkeypatch,
                                                                             code, message):
    """The first file each tool writes fails: the same one-line error, naming the file, from every tool."""
    def failing_fsync(descriptor):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    for main, argv, first_file in ((preprocess_coco_full_dataset.main, world.preprocess_args(tmp_path / "c"),
                                    "train_chunk_0000.pt"),
                                   (train_pu_fixed_full.main, world.train_args(tmp_path / "runs"), "config.yaml"),
                                   (pick_particles.main, world.pick_args(tmp_path / "picks"), "manifest.json")):
        error = refused(capsys, main, argv)
        assert message in error and first_file in error, error
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_refused_second_trainer_leaves_the_first_ones_fresh_run_folder_alone(world, tmp_path, capsys):
    """The first trainer may still be checking checksums, its run folder holding only the lock: the
    refused second one must not tidy that folder (and the lock) away."""
    run = tmp_path / "runs" / "fresh"
    with folder_lock(run, "the first trainer"):
        error = refused(capsys, train_pu_fixed_full.main, world.train_args(tmp_path / "runs", "fresh"))
        assert "is being written by the first trainer" in error
        assert (run / ".lock").is_file()
