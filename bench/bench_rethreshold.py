"""How long threshold_picks.py takes to rewrite a large picks folder, next to what picking it cost.

Builds a picks folder as pick_particles.py leaves it (manifest.json and candidates/<stem>.npy) for
`--micrographs` micrographs of 4096 px with `--candidates` candidate picks each (uniform positions,
a bimodal logit mix like real candidates: background near -4, particles near 3), then times
threshold_picks.py on it: at a given threshold with every format, at a target count per
micrograph, and with the threshold suggested from the histogram's valley; a folder of real picks
can be passed instead with --picks-dir (it is copied first, never changed).

    python -m bench.bench_rethreshold --micrographs 1000
"""
import argparse
import shutil
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np

import threshold_picks
from picking.writers import record, write_candidates


def make_picks_folder(folder: Path, micrographs: int, candidates: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    manifest = {"micrographs": [], "checkpoint": "bench", "settings": {"relion_project_dir": str(folder)}}
    for index in range(micrographs):
        stem = f"mic_{index:05d}"
        scores = np.where(rng.random(candidates) < 0.25, rng.normal(3, 1, candidates), rng.normal(-4, 1, candidates))
        xy = rng.uniform(54, 4042, (candidates, 2))
        picks = np.column_stack([xy, np.full(candidates, 108.0), np.sort(scores)[::-1]])
        write_candidates(folder, stem, picks)
        manifest["micrographs"].append({"stem": stem, "path": str(folder / "Movies" / f"{stem}.mrc"), "status": "done",
                                        "n_candidates": candidates, "width": 4096, "height": 4096,
                                        "diameter_px": 108.0})
    record(folder, manifest, manifest["micrographs"][-1])


def timed(argv) -> tuple[float, dict]:
    started = time.perf_counter()
    with redirect_stdout(StringIO()):
        summary = threshold_picks.main(argv)
    return time.perf_counter() - started, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micrographs", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=2000, help="candidates per micrograph")
    parser.add_argument("--picks-dir", help="a real picks folder to time instead (copied first)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "picks"
        if args.picks_dir:
            shutil.copytree(args.picks_dir, folder, ignore=shutil.ignore_patterns(".lock"))
        else:
            make_picks_folder(folder, args.micrographs, args.candidates)
        cases = [("threshold 1.0, default formats", ["--threshold", "1.0"]),
                 ("300 per micrograph", ["--picks-per-micrograph", "300"]),
                 ("suggested (valley)", [])]
        print(f"{folder}: rethresholding (threshold_picks.py, no network)")
        print(f"{'case':32s} {'seconds':>8s} {'micrographs':>12s} {'picks':>10s}")
        for name, extra in cases:
            seconds, summary = timed(["--output-dir", str(folder), *extra])
            print(f"{name:32s} {seconds:8.2f} {summary['n_micrographs']:12,d} {summary['n_picks']:10,d}")


if __name__ == "__main__":
    main()
