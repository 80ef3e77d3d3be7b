"""Preprocessing speed and memory, side by side on the same micrographs in one run.

Prints: the bare decode + rescale + normalise seconds per micrograph, the full COCO-PU and sliding-window
preprocessing seconds per micrograph with 1 worker (and the ratio to the bare time; goal <= 1.5), the
speed-up from 1 to 2 workers (goal >= 1.7 on 2 cores), and the peak RSS of each run (goal <= 3 GB).
Each preprocessing run is a fresh subprocess so its peak memory is its own. Each setting runs
--repeats times (default 3), the settings interleaved, each run after `os.sync()`; the median time is
reported, as the page-cache writeback of the previous run's ~1 GB made single runs vary by a third.

    python -m bench.bench_preprocess --data-root ../shared/data/empiar10017
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datasets.io.layout import dataset_diameter, load_dataset
from datasets.io.micrographs import prepare_micrograph, read_micrograph

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import {module} as tool
start = time.time()
summary = tool.main({argv!r})
print("BENCH" + json.dumps({{"seconds": time.time() - start, "micrographs": summary["micrographs"],
    "patches": sum(s["count"] for s in summary["splits"].values()), "bytes": summary["bytes"],
    "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}}))
"""


def bare_seconds(records, scale):
    """Decode + rescale + normalise only, per micrograph (one process)."""
    start = time.time()
    for record in records:
        prepare_micrograph(read_micrograph(record.path), scale, 4.0)
    return (time.time() - start) / len(records)


def run_tool(module, argv):
    code = CHILD.format(repo=str(REPO), module=module, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("BENCH")][-1]
    return json.loads(line[5:])


SETTINGS = [(module, workers, extra)
            for module, extra in (("preprocess_coco_full_dataset", []), ("preprocess_chunked", ["--ratio", "0.3"]))
            for workers in (1, 2)]


def median_runs(data_root, tmp, repeats):
    """[(module, workers, figures)]: each setting run `repeats` times, the settings interleaved within
    each round so that drift of the machine reaches all alike; the last run's figures, median seconds."""
    runs = [[] for _ in SETTINGS]
    for _ in range(repeats):
        for index, (module, workers, extra) in enumerate(SETTINGS):
            out = Path(tmp) / f"{module}_{workers}"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # start with no dirty pages of the previous run still being written back
            runs[index].append(run_tool(module, ["--data-root", data_root, "--output-dir", str(out),
                                                 "--num-workers", str(workers), *extra]))
    return [(module, workers, {**runs[i][-1], "seconds": statistics.median(r["seconds"] for r in runs[i])})
            for i, (module, workers, _) in enumerate(SETTINGS)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "empiar10017"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the median time is shown")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: need at least 1")
    records, _ = load_dataset(args.data_root)
    scale = 64 / dataset_diameter(records)
    bare = bare_seconds(records, scale)
    with tempfile.TemporaryDirectory() as tmp:
        rows = median_runs(args.data_root, tmp, args.repeats)
    print(f"\n{len(records)} micrographs from {args.data_root}; median of {args.repeats} runs each")
    print(f"bare decode + rescale + normalise: {bare:.3f} s/micrograph")
    print(f"{'tool':30s} {'workers':>7s} {'s/micrograph':>12s} {'x bare':>7s} {'speed-up':>8s} {'patches':>8s} "
          f"{'MB on disk':>10s} {'peak RSS MB':>11s}")
    for module, workers, stats in rows:
        per = stats["seconds"] / stats["micrographs"]
        one = next(s for m, w, s in rows if m == module and w == 1)
        print(f"{module:30s} {workers:7d} {per:12.3f} {per / bare:7.2f} {one['seconds'] / stats['seconds']:8.2f} "
              f"{stats['patches']:8d} {stats['bytes'] / 2**20:10.1f} {stats['peak_rss_mb']:11.0f}")


if __name__ == "__main__":
    main()
