"""Loader benchmark: samples/s of the chunk loader in each mode, beside the disk's sequential read speed.

Run from the repo root: `python -m bench.bench_loader --data-dir data/chunks`.

Inputs: `--data-dir` (one or more chunk dirs), `--split`, `--batch-size`, `--batches`, `--buffer-size`,
`--modes`. Output: a table on stdout with, per mode, samples/s, the MB/s of patches delivered, the MB/s
read from the chunk files (on_demand), and the setup time (opening; for memory mode, loading).
- memory, mmap: `CryoEMChunkedDataset.get_batch` on uniformly random batches (a shuffled sampler's
  access pattern);
- on_demand: a `ChunkStream` (sequential chunk reads, shuffle buffer), what HDD training uses.
Before each mode the chunk files' pages are dropped from the page cache (POSIX_FADV_DONTNEED), so
figures start cold; pages the kernel keeps anyway can still inflate them. MB = 10^6 bytes.
The training benchmark imports `bench_loader_modes` and `disk_sequential_read_mb_s`.
"""
import argparse
import os
from contextlib import closing
from itertools import islice
from time import perf_counter

import torch

from common.errors import exit_on_input_error
from datasets.chunks.loader import MODES, CryoEMChunkedDataset, open_chunk_dirs
from datasets.chunks.stream import ChunkStream


def drop_page_cache(paths):
    """Ask the kernel to drop the cached pages of `paths` (clean, unmapped pages only)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_sequential_read_mb_s(paths, block_bytes=16 << 20):
    """MB/s reading `paths` (one path or several), each start to end in big unbuffered reads, after
    dropping them from the page cache."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    drop_page_cache(paths)
    buffer = bytearray(block_bytes)
    total, start = 0, perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total / 1e6 / (perf_counter() - start)


def bench_random_access(chunk_dirs, split, mode, batch_size, n_batches, seed=0):
    """get_batch throughput of a "memory" or "mmap" dataset on random batches, from a cold page cache."""
    drop_page_cache(open_chunk_dirs(chunk_dirs, split).paths)
    start = perf_counter()
    dataset = CryoEMChunkedDataset(chunk_dirs, split, mode)
    setup_s = perf_counter() - start
    batches = torch.randint(len(dataset), (n_batches, batch_size), generator=torch.Generator().manual_seed(seed))
    start = perf_counter()
    for batch in batches:
        dataset.get_batch(batch)
    elapsed = perf_counter() - start
    samples = batches.numel()
    patch_mb = samples * dataset.index.patch_size ** 2 / 1e6
    return {"samples_per_s": samples / elapsed, "patch_mb_per_s": patch_mb / elapsed, "disk_mb_per_s": None,
            "setup_s": setup_s}


def bench_stream(chunk_dirs, split, batch_size, n_batches, buffer_size=16384, seed=0):
    """ChunkStream throughput (at most one pass), with the MB/s it read from the chunk files."""
    index = open_chunk_dirs(chunk_dirs, split)
    drop_page_cache(index.paths)
    stream = ChunkStream(index, batch_size, buffer_size, seed=seed)
    samples, start = 0, perf_counter()
    with closing(iter(stream)) as batches:
        for batch in islice(batches, n_batches):
            samples += len(batch["label"])
    elapsed = perf_counter() - start
    return {"samples_per_s": samples / elapsed, "patch_mb_per_s": samples * index.patch_size ** 2 / 1e6 / elapsed,
            "disk_mb_per_s": stream.bytes_read / 1e6 / elapsed, "setup_s": 0.0}


def bench_loader_modes(chunk_dirs, split="train", batch_size=64, n_batches=200, buffer_size=16384, modes=MODES,
                       seed=0):
    """{mode: {samples_per_s, patch_mb_per_s, disk_mb_per_s, setup_s}} plus the disk's sequential MB/s."""
    index = open_chunk_dirs(chunk_dirs, split)
    largest = max(index.paths, key=lambda p: p.stat().st_size)
    results = {"samples": len(index), "patch_size": index.patch_size,
               "disk_sequential_mb_s": disk_sequential_read_mb_s(largest), "modes": {}}
    for mode in modes:
        if mode == "on_demand":
            results["modes"][mode] = bench_stream(chunk_dirs, split, batch_size, n_batches, buffer_size, seed)
        else:
            results["modes"][mode] = bench_random_access(chunk_dirs, split, mode, batch_size, n_batches, seed)
    return results


def format_table(results):
    """The results of bench_loader_modes as printable lines."""
    lines = [f"{'mode':<10} {'samples/s':>12} {'patch MB/s':>11} {'disk MB/s':>10} {'setup s':>8}"]
    for mode, r in results["modes"].items():
        disk = "" if r["disk_mb_per_s"] is None else f"{r['disk_mb_per_s']:.0f}"
        lines.append(f"{mode:<10} {r['samples_per_s']:>12.0f} {r['patch_mb_per_s']:>11.1f} {disk:>10} "
                     f"{r['setup_s']:>8.2f}")
    lines.append(f"disk sequential read: {results['disk_sequential_mb_s']:.0f} MB/s (largest chunk, after "
                 f"POSIX_FADV_DONTNEED; the page cache may still inflate it)")
    return lines


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", nargs="+", required=True, help="one or more chunk dirs (shards)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=200, help="batches timed per mode")
    parser.add_argument("--buffer-size", type=int, default=16384, help="on_demand shuffle buffer, in samples")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    with exit_on_input_error():
        results = bench_loader_modes(args.data_dir, args.split, args.batch_size, args.batches, args.buffer_size,
                                     args.modes)
    print(f"loader on {', '.join(args.data_dir)} [{args.split}]: {results['samples']} samples of "
          f"{results['patch_size']} px, batch {args.batch_size}, {args.batches} batches per mode")
    print("\n".join(format_table(results)))
    return results


if __name__ == "__main__":
    main()
