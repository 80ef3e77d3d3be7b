"""Shared pytest fixtures: repo root on sys.path, the optional real dataset in ../shared, and a tiny world
made by the real tools (data, chunks, a trained run, picks) for the end-to-end tests."""
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
EMPIAR = SHARED_DATA / "empiar10017"


@pytest.fixture
def empiar10017():
    """The real EMPIAR-10017 micrographs; skipped with a message where ../shared is absent."""
    if not (EMPIAR / "annotations").is_dir():
        pytest.skip(f"real data not found at {EMPIAR} (only present beside the developers' checkout)")
    return EMPIAR


import make_synthetic_dataset  # noqa: E402  (the repo root is on sys.path from here on)
import pick_particles  # noqa: E402
import preprocess_coco_full_dataset  # noqa: E402
import train_pu_fixed_full  # noqa: E402

TRAIN = ["--device", "cpu", "--use-data-prior", "--epochs", "3", "--set", "data.input_size=32",
         "model.backbone=resnet_tiny", "training.batch_size=32", "training.steps_per_epoch=6", "training.log_every=3",
         "data.max_eval_samples=300", "model.ema_decay=0.9"]


@dataclass(frozen=True)
class World:
    """`root/data` (synthetic micrographs), `root/chunks`, `root/runs/run` (trained) and `root/picks`."""
    root: Path

    def preprocess_args(self, out, data=None, research_split=True):
        """Flags of either preprocessor; `research_split` adds the COCO PU tool's hiding protocol."""
        split = ["--labels", "complete", "--hide-ratio", "0.3"] if research_split else []
        return ["--data-root", str(data or self.root / "data"), "--output-dir", str(out), "--patch-size", "64",
                "--target-diameter", "32", "--chunk-size", "150", *split]

    def train_args(self, output_root, exp_name="run", data_dir=None, *extra):
        return ["--data-dir", str(data_dir or self.root / "chunks"), "--exp-name", exp_name, "--output-root",
                str(output_root), *TRAIN, *extra]

    def pick_args(self, out, micrographs=None, checkpoint=None):
        return ["--checkpoint", str(checkpoint or self.root / "runs" / "run" / "best.pt"), "--micrographs",
                str(micrographs or self.root / "data" / "test"), "--output-dir", str(out), "--device", "cpu",
                "--formats", "relion", "csv", "box", "topaz"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny dataset, its chunks, a trained run and its picks: the reference faults are compared with."""
    world = World(tmp_path_factory.mktemp("world"))
    make_synthetic_dataset.main(["--output-dir", str(world.root / "data"), "--num-train", "3", "--num-val", "1",
                                 "--num-test", "2", "--width", "320", "--height", "320", "--particle-diameter", "24",
                                 "--snr", "1.0", "--seed", "4"])
    preprocess_coco_full_dataset.main(world.preprocess_args(world.root / "chunks"))
    train_pu_fixed_full.main(world.train_args(world.root / "runs"))
    pick_particles.main(world.pick_args(world.root / "picks"))
    return world


class RunsCode:
    """Unpickling this calls a function of the file's choosing: here one that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_malicious_checkpoint(path, marker):
    """A file that looks like our checkpoint but would create `marker` if it were ever unpickled."""
    import torch
    torch.save({"format": "cryopu-checkpoint-v2", "payload": RunsCode(marker)}, path)
    return path
