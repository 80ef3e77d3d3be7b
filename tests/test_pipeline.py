"""run_full_training.sh on a tiny default: stages, skip on rerun, resume after a kill; TensorBoard over HTTP."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # every test here runs the whole pipeline or a server

TINY_SYNTHETIC = "--num-train 3 --num-val 1 --num-test 1 --width 384 --height 384 --diameter 24 --snr 1.0 --seed 5"
TINY_CONFIG = """
data: {input_size: 32, max_eval_samples: 2000}
model: {backbone: resnet_tiny, dropout: 0.1, ema_decay: 0.9}
optimizer: {lr: 0.002}
training: {epochs: 4, batch_size: 32, steps_per_epoch: 8, log_every: 4, early_stopping_patience: 10}
"""


def pipeline_command(tmp):
    return ["bash", str(REPO / "run_full_training.sh"), "--config", str(tmp / "tiny.yaml"), "--exp-name", "tiny",
            "--experiments-dir", str(tmp / "experiments"), "--chunks-dir", str(tmp / "chunks"),
            "--synthetic-dir", str(tmp / "synthetic"), "--synthetic-args", TINY_SYNTHETIC, "--device", "cpu"]


def run_pipeline(tmp):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(pipeline_command(tmp), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    (tmp / "tiny.yaml").write_text(TINY_CONFIG)
    first = run_pipeline(tmp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp, first


def test_all_stages_run_and_write_their_outputs(pipeline):
    tmp, first = pipeline
    run = tmp / "experiments" / "tiny"
    for stage in ("synthetic_data", "preprocess", "train", "pick", "evaluate"):
        assert (run / "logs" / f"{stage}.log").is_file(), stage
    results = json.loads((run / "results.json").read_text())
    assert 0.5 < results["test"]["auc"] <= 1.0 and 0.0 < results["prior"] < 1.0
    summary = json.loads((run / "pick_eval" / "summary.json").read_text())
    assert summary["n_targets"] > 0 and 0.0 <= summary["auprc"] <= 1.0
    assert list((run / "picks").glob("*.star"))
    assert "results (patch metrics)" in first.stdout and "tensorboard --logdir" in first.stdout


def test_second_run_skips_finished_stages(pipeline):
    tmp, _ = pipeline
    again = run_pipeline(tmp)
    assert again.returncode == 0, again.stderr[-2000:]
    for stage in ("synthetic_data", "train", "evaluate"):
        assert f"stage: {stage} already done" in again.stdout
    assert "already complete, nothing to do" in again.stdout  # preprocessing runs, finds its chunks done


def test_chunks_of_another_data_root_are_refused_not_reused(pipeline):
    """The chunk folder remembers its data root: a run on other data stops instead of training on stale chunks."""
    tmp, _ = pipeline
    other = tmp / "other_data"
    other.mkdir()
    for item in (tmp / "synthetic").iterdir():
        (other / item.name).symlink_to(item)
    command = [*pipeline_command(tmp)[:2], "--data-root", str(other), *pipeline_command(tmp)[2:]]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0 and "stage 'preprocess' failed" in done.stderr
    assert "different config (data_root" in done.stdout + done.stderr


def test_failing_stage_stops_with_its_name(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "run_full_training.sh"), "--data-root", str(tmp_path / "nowhere"),
                           "--experiments-dir", str(tmp_path / "exp"), "--chunks-dir", str(tmp_path / "c")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "stage 'preprocess' failed" in done.stderr


@pytest.mark.parametrize("members", [1, 2])
def test_killed_mid_training_resumes_the_same_run_and_picks_with_every_member(tmp_path, members):
    """Killed while the last member trains: the rerun does not skip training (an earlier member's results.json is
    not enough), resumes that member where it was, and picks with every member's best.pt (one ensemble)."""
    (tmp_path / "tiny.yaml").write_text(TINY_CONFIG.replace("epochs: 4", f"epochs: 6, members: {members}"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    process = subprocess.Popen(pipeline_command(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "experiments" / "tiny"
    last_member = run if members == 1 else run / f"member{members}"
    deadline = time.time() + 600
    while not (last_member / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (last_member / "last.pt").exists() and not (last_member / "results.json").exists()
    again = run_pipeline(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {last_member} at epoch" in (run / "logs" / "train.log").read_text()
    epochs = [json.loads(line)["epoch"] for line in (last_member / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(set(epochs)) and epochs[0] == 1
    assert json.loads((last_member / "results.json").read_text())["steps"] == epochs[-1] * 8
    manifest = json.loads((run / "picks" / "manifest.json").read_text())
    members_picked = [str(run / "best.pt"), *(str(run / f"member{k}" / "best.pt") for k in range(2, members + 1))]
    assert manifest["checkpoint"] == (members_picked[0] if members == 1 else members_picked)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_run_curves(pipeline):
    tmp, _ = pipeline
    port = free_port()
    board = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp / "experiments"),
                              "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        tags, deadline = None, time.time() + 90
        while time.time() < deadline:
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
                if tags.get("tiny"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert tags and {"val/auc", "train/loss", "train/mask_rate"} <= set(tags["tiny"])
        query = urllib.parse.urlencode({"tag": "val/auc", "run": "tiny"})
        points = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
        assert len(points) >= 1 and all(0.0 <= value <= 1.0 for _, _, value in points)
    finally:
        board.terminate()
        board.wait(timeout=30)
