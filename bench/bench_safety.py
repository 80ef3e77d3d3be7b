"""What the safety nets cost, side by side in one run: chunk checksums and the folder lock against the
preprocessing and training time they protect.

Preprocessing: the same data preprocessed into fresh folders as shipped and with the chunk CRC-32
replaced by a no-op, alternately (`--repeats` each, the fastest kept); the lock's acquire and release
timed on its own (one per run). Training: verifying every chunk's checksum, which a run does once
when it starts, against one training epoch of the given config (its step time measured over
`--steps` steps, times the epoch's steps).

    python -m bench.bench_safety --data-root ../shared/data/empiar10017 --config configs/cpu_benchmark.yaml
"""
import argparse
import tempfile
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from unittest import mock

import torch

import preprocess_coco_full_dataset
from common.config import resolve_config
from common.files import folder_lock
from datasets.chunks import writer
from datasets.chunks.format import read_facts
from datasets.chunks.loader import verify_checksums
from datasets.prior import read_prior
from training.cli import DEFAULT_CONFIG
from training.engine import build_run, new_progress, train_step


def preprocessing_seconds(data_root, out, num_workers, checksums):
    argv = ["--data-root", str(data_root), "--output-dir", str(out), "--num-workers", str(num_workers),
            "--labels", "complete", "--hide-ratio", "0.3"]
    started = time.perf_counter()
    with redirect_stdout(StringIO()), mock.patch.object(writer, "file_crc32", writer.file_crc32 if checksums
                                                        else (lambda path: "00000000")):
        preprocess_coco_full_dataset.main(argv)
    return time.perf_counter() - started


def lock_seconds(folder, times=200):
    started = time.perf_counter()
    for _ in range(times):
        with folder_lock(folder, "bench"):
            pass
    return (time.perf_counter() - started) / times


def epoch_seconds(config_path, chunks, steps):
    """One training epoch's time on `chunks`: `steps` timed steps (after one warm-up) times the epoch's steps."""
    config = resolve_config(DEFAULT_CONFIG, config_path, {"data.data_dir": [str(chunks)]})
    run = build_run(config, Path(tempfile.mkdtemp()), torch.device("cpu"), read_facts([chunks]), read_prior([chunks]))
    run.progress = new_progress()
    batches = run.batches.epoch(0)
    train_step(run, next(batches))
    started = time.perf_counter()
    for _ in range(steps):
        train_step(run, next(batches))
    return (time.perf_counter() - started) / steps * run.batches.steps, run.batches.steps


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="dataset in the CryoTransformer layout")
    parser.add_argument("--config", default="configs/cpu_benchmark.yaml", help="training config of the epoch")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_safety_"))
    runs = {True: [], False: []}
    for repeat in range(args.repeats):
        for checksums in (False, True):
            out = work / f"chunks_{repeat}_{int(checksums)}"
            runs[checksums].append(preprocessing_seconds(args.data_root, out, args.num_workers, checksums))
    chunks = work / "chunks_0_1"
    lock = lock_seconds(work / "lock_test")
    started = time.perf_counter()
    checked, _ = verify_checksums([chunks])
    verify = time.perf_counter() - started
    epoch, steps = epoch_seconds(args.config, chunks, args.steps)
    plain, safe = min(runs[False]), min(runs[True])
    print(f"\n{args.data_root}: {checked} chunks, {args.num_workers} workers, best of {args.repeats}")
    print(f"{'what':44s} {'seconds':>9s} {'cost':>8s}")
    print(f"{'preprocessing without chunk checksums':44s} {plain:9.2f}")
    print(f"{'preprocessing with chunk checksums':44s} {safe:9.2f} {(safe - plain) / plain:8.1%}")
    print(f"{'folder lock, taken and released once':44s} {lock:9.5f} {lock / plain:8.3%}")
    print(f"{'one training epoch (' + str(steps) + ' steps, ' + args.config + ')':44s} {epoch:9.2f}")
    print(f"{'verifying every chunk at a run start':44s} {verify:9.2f} {verify / epoch:8.1%} of one epoch")
    return {"preprocess_plain": plain, "preprocess_checksums": safe, "lock": lock, "epoch": epoch, "verify": verify}


if __name__ == "__main__":
    main()
