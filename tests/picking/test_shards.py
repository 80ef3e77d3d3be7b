"""Picking past one process: `--shard i/N` (and torchrun ranks) share one output folder, each with its own
manifest, and together write exactly the picks of one process."""
import hashlib
import json
import signal
import subprocess
import sys
import time

import mrcfile
import numpy as np
import pytest
from test_picking import SYNTHETIC, make_checkpoint, pick_cli

import evaluate_picks
from conftest import REPO
from synthetic.simulator import SPECIES_STREAM, generate_micrograph, make_species

PICK = [sys.executable, str(REPO / "pick_particles.py")]


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """Five synthetic micrographs, a checkpoint, and the folder one process picked them into."""
    root = tmp_path_factory.mktemp("shards")
    species = make_species(np.random.default_rng([SYNTHETIC.seed, SPECIES_STREAM]), SYNTHETIC)
    (root / "mics").mkdir()
    for index in range(5):
        with mrcfile.new(root / "mics" / f"mic_{index}.mrc") as mrc:
            mrc.set_data(generate_micrograph(SYNTHETIC, species, 5, index).image)
    checkpoint = make_checkpoint(root / "best.pt")
    pick_cli(checkpoint, root / "mics", root / "single", *OPTIONS)
    return root, checkpoint


OPTIONS = ["--stride", "16", "--threshold", "-2", "--relion-project-dir", "/"]


def argv(root, checkpoint, out, *extra):
    return [*PICK, "--checkpoint", str(checkpoint), "--micrographs", str(root / "mics"), "--output-dir", str(out),
            "--device", "cpu", *OPTIONS, *extra]


def digests(folder):
    """sha256 of every pick file and candidate (not the manifests, which hold timings), the folder's own
    path taken out (autopick.star names the coordinate files by it)."""
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes().replace(
        str(folder).lstrip("/").encode(), b"OUT")).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.startswith(("manifest", ".lock"))}


@pytest.mark.slow
def test_two_shards_in_one_folder_write_exactly_the_picks_of_one_process(five, tmp_path):
    root, checkpoint = five
    out = tmp_path / "sharded"
    processes = [subprocess.Popen(argv(root, checkpoint, out, "--shard", f"{i}/2"), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [r[1][-2000:] for r in results]
    shard_entries = [json.loads((out / f"manifest.shard-{i}-of-2.json").read_text())["micrographs"] for i in range(2)]
    assert [[e["stem"] for e in entries] for entries in shard_entries] == [["mic_0", "mic_2", "mic_4"],
                                                                          ["mic_1", "mic_3"]]
    assert digests(out) == digests(root / "single")
    assert "score_histogram.png" in digests(out) and "particles.star" in digests(out)
    assert evaluate_picks.read_manifest(out) == evaluate_picks.read_manifest(root / "single") == (
        [f"mic_{i}" for i in range(5)], [])


@pytest.mark.slow
def test_torchrun_ranks_take_their_shards(five, tmp_path):
    root, checkpoint = five
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               *argv(root, checkpoint, out)[1:]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "error:" in line]
    assert sorted(p.name for p in out.glob("manifest.shard-*")) == ["manifest.shard-0-of-2.json",
                                                                    "manifest.shard-1-of-2.json"]
    assert digests(out) == digests(root / "single")


@pytest.mark.slow
def test_a_shard_killed_mid_pick_is_redone_on_rerun_and_nothing_half_written_stays(five, tmp_path):
    root, checkpoint = five
    out = tmp_path / "killed"
    victim = subprocess.Popen(argv(root, checkpoint, out, "--shard", "0/2"), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "candidates" / "mic_0.npy").exists():
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for shard in ("1/2", "0/2"):
        done = subprocess.run(argv(root, checkpoint, out, "--shard", shard), cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert digests(out) == digests(root / "single")
    assert not list(out.rglob("*.tmp"))


def test_a_second_process_on_the_same_shard_is_refused(five, tmp_path, capsys):
    from common.files import folder_lock
    root, checkpoint = five
    with folder_lock(tmp_path / "out", "pick_particles", name=".lock.shard-1-of-3"):
        with pytest.raises(SystemExit) as exit_info:
            pick_cli(checkpoint, root / "mics", tmp_path / "out", "--shard", "1/3")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "is being written by pick_particles" in error and "\n" not in error


def test_rethreshold_waits_for_no_shard_and_a_shard_waits_for_rethreshold(five, tmp_path, capsys):
    from common.files import folder_lock
    root, checkpoint = five
    with folder_lock(tmp_path / "out", "threshold_picks"):
        with pytest.raises(SystemExit):
            pick_cli(checkpoint, root / "mics", tmp_path / "out", "--shard", "0/2")
    assert "being written by threshold_picks" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["2/2", "-1/2", "a/b"])
def test_a_shard_spec_out_of_range_is_one_line(five, tmp_path, capsys, spec):
    root, checkpoint = five
    with pytest.raises(SystemExit) as exit_info:
        pick_cli(checkpoint, root / "mics", tmp_path / "out", f"--shard={spec}")
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and error.startswith(f"error: --shard {spec}") and "\n" not in error
    assert not (tmp_path / "out").exists()
