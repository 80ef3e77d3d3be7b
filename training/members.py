"""An ensemble's members (training.members): where each one trains and with which seed.

Member 1 is the run itself; member k >= 2 trains in <run dir>/member<k> with training.seed + k - 1, the
rest of the config unchanged (training.max_minutes is the whole ensemble's; the engine gives each member
its share). Light on imports, so the pipeline script and the benchmarks can list the members cheaply.
"""
import copy
import json
from pathlib import Path

from common.config import load_yaml
from common.errors import InputError


def member_runs(config, run_dir) -> list[tuple[dict, Path]]:
    """(config, run dir) of each of the config's training.members networks, in training order."""
    count = config["training"]["members"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"training.members {count!r} must be a whole number of networks, 1 or more")
    runs = []
    for number, member_dir in enumerate(member_dirs(run_dir, count), start=1):
        member = copy.deepcopy(config)
        member["training"]["seed"] = config["training"]["seed"] + number - 1
        runs.append((member, member_dir))
    return runs


def member_dirs(run_dir, count) -> list[Path]:
    return [Path(run_dir) if number == 1 else Path(run_dir) / f"member{number}" for number in range(1, count + 1)]


def member_checkpoints(run_dir) -> list[Path]:
    """best.pt of every member of the run in run_dir (training.members of its config.yaml): what picking takes."""
    config = load_yaml(Path(run_dir) / "config.yaml")
    return [d / "best.pt" for d in member_dirs(run_dir, config["training"].get("members", 1))]


def member_results(checkpoints) -> list[dict]:
    """results.json of each member whose best.pt is in checkpoints (as member_checkpoints lists them)."""
    return [json.loads((Path(c).parent / "results.json").read_text()) for c in checkpoints]
