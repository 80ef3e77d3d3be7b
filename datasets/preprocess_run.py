"""The driver both preprocessors share: read micrographs in parallel, sample patches, write chunks.

A tool hands over its micrograph records and a picklable `sample_fn(image, particles_xy, truth_xy,
known_negative_xy, rng, train=bool) -> (samples, stats)` working in rescaled pixels. Micrographs are processed by a
multiprocessing pool and consumed strictly in order, so the chunks do not depend on the worker count;
each micrograph's RNG is seeded by (seed, its index in the whole dataset), so shards and resumes agree.
"""
import shutil
import time
import warnings
from collections import deque
from functools import partial
from itertools import islice
from multiprocessing import get_context
from multiprocessing.pool import MaybeEncodingError
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory handover of tensors between processes)
from tqdm import tqdm

from datasets.chunk_writer import ChunkStore, SplitStream, prepare_output_dir
from datasets.coordinates import drop_outside
from datasets.errors import InputError
from datasets.layout import SPLITS
from datasets.micrographs import prepare_micrograph, read_micrograph
from utils.files import bytes_on_disk, peak_rss_mb


def to_scaled(xy, scale_xy):
    """Original-pixel coordinates -> rescaled-micrograph pixels (pixel centres map onto pixel centres)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * np.asarray(scale_xy) - 0.5


def to_original(xy, scale_xy):
    """Rescaled-micrograph pixels -> original-micrograph pixels (inverse of to_scaled)."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) / np.asarray(scale_xy) - 0.5


def add_preprocessing_flags(parser, default_config):
    """The flags both preprocessors share (data, scale, chunks, workers, shards, resume)."""
    parser.add_argument("--config", default=str(default_config), help="YAML config (defaults: %(default)s)")
    parser.add_argument("--data-root", help="dataset root (micrograph folders + annotations)")
    parser.add_argument("--output-dir", help="where chunks and metadata.json go (your big disk)")
    parser.add_argument("--annotations", help="labels in any format (file or folder) instead of the layout's")
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--target-diameter", type=float, help="particle diameter after rescaling, px")
    parser.add_argument("--particle-diameter", type=float, help="particle diameter in original px")
    parser.add_argument("--native-resolution", action="store_true", default=None,
                        help="keep original pixels (the guides' behaviour)")
    parser.add_argument("--chunk-size", type=int, help="patches per chunk file")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-workers", type=int, default=1, help="processes (output is identical for any)")
    parser.add_argument("--shard", help="i/N: process every N-th micrograph into <output-dir>/shard-i-of-N")
    parser.add_argument("--no-resume", action="store_true", help="delete this tool's chunks and start over")
    parser.add_argument("--strict", action="store_true", help="fail on an unreadable micrograph")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config key")
    return parser


def parse_shard(text):
    """'i/N' -> (i, N) with 0 <= i < N."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError as exc:
        raise InputError(f"--shard {text} must look like i/N, e.g. 0/4") from exc
    if not 0 <= index < count:
        raise InputError(f"--shard {text}: need 0 <= i < N")
    return index, count


def _xy(particles):
    return None if particles is None else particles[:, :2]


def process_micrograph(record, *, scale, clip_sigma, seed, sample_fn):
    """Read, rescale, normalise and sample one micrograph; a decode failure comes back as an error."""
    try:
        image = read_micrograph(record.path)
    except InputError as exc:
        return {"error": str(exc)}
    height, width = image.shape
    prepared, scale_xy = prepare_micrograph(image, scale, clip_sigma)
    particles, n_dropped = drop_outside(record.particles, width, height)
    truth = None if record.truth is None else drop_outside(record.truth, width, height)[0]
    rejected = None if record.known_negatives is None else drop_outside(record.known_negatives, width, height)[0]
    rng = np.random.default_rng([seed, record.index])
    scaled = [None if p is None else to_scaled(_xy(p), scale_xy) for p in (particles, truth, rejected)]
    samples, stats = sample_fn(prepared, scaled[0], scaled[1], scaled[2], rng, train=record.split == "train")
    samples["xy"] = np.rint(to_original(samples["xy"], scale_xy)).astype(np.int32)
    info = {"width": width, "height": height, "scale_x": scale_xy[0], "scale_y": scale_xy[1],
            "n_particles": int(len(particles)), "n_dropped": int(n_dropped),
            "n_samples": int(len(samples["label"])), **stats}
    return {"samples": samples, "info": info}


def _single_threaded_worker():
    """Forked workers must not enter the parent's OpenMP pool (a deadlock): torch gets one thread."""
    torch.set_num_threads(1)


def _arrays_as(result, convert, kind):
    """`result` with every value of type `kind` in it (nested dicts too) passed through `convert`."""
    if isinstance(result, dict):
        return {key: _arrays_as(value, convert, kind) for key, value in result.items()}
    return convert(result) if isinstance(result, kind) else result


SHARED_MEMORY = Path("/dev/shm")
_pipe_warned = False  # whether this worker has said that its results take the pipe


def shared_memory_free() -> int:
    """Bytes free where torch.multiprocessing keeps shared tensors (/dev/shm); 0 where there is none."""
    return shutil.disk_usage(SHARED_MEMORY).free if SHARED_MEMORY.is_dir() else 0


def _array_bytes(result) -> int:
    if isinstance(result, dict):
        return sum(_array_bytes(value) for value in result.values())
    return result.nbytes if isinstance(result, np.ndarray) else 0


def _in_shared_memory(function, item):
    """function(item) in a worker, its numpy arrays as torch tensors: torch.multiprocessing hands those
    to the parent in shared memory, where a pickled array goes through the pool's pipe (a micrograph's
    patches are ~50 MB, and that copy made two workers no faster than one). Where /dev/shm lacks room
    for two such results (Docker gives 64 MB), they take the pipe, with one warning per worker: slower, but a
    small /dev/shm does not stop the run."""
    global _pipe_warned
    result = function(item)
    needed, free = 2 * _array_bytes(result), shared_memory_free()
    if free < needed:
        if not _pipe_warned:
            warnings.warn(f"/dev/shm has {free / 2**20:.0f} MB free, under the {needed / 2**20:.0f} MB a worker "
                          f"needs to hand its patches over; they go through a pipe instead (slower). Give the "
                          f"container more shared memory (docker run --shm-size 2g) for full speed")
        _pipe_warned = True
        return result
    return _arrays_as(result, lambda array: torch.from_numpy(np.ascontiguousarray(array)), np.ndarray)


def _received(pending):
    """The result of a pool job, its shared tensors back as numpy arrays (which keep the memory alive)."""
    try:
        return _arrays_as(pending.get(), torch.Tensor.numpy, torch.Tensor)
    except MaybeEncodingError as exc:
        if "shared memory" not in exc.exc:
            raise RuntimeError(f"a worker's result could not reach the main process: {exc.exc}") from None
        raise InputError(f"a worker could not hand its patches over in shared memory "
                         f"({shared_memory_free() / 2**20:.0f} MB free in /dev/shm; {exc.exc}); use "
                         f"--num-workers 1, or give the container more shared memory (docker run --shm-size 2g)"
                         ) from None


def ordered_results(function, items, num_workers):
    """function(item) for each item, in order, over a process pool when num_workers > 1.

    Workers are forked (no re-import, so two workers pay off even on a few micrographs) and do
    numpy/Pillow/scipy work only; their results' arrays come back in shared memory. At most
    2 x num_workers micrographs are in flight, so finished results never pile up in memory when
    writing is slower than reading.
    """
    if num_workers <= 1:
        yield from map(function, items)
        return
    items, shared = iter(items), partial(_in_shared_memory, function)
    with get_context("fork").Pool(num_workers, initializer=_single_threaded_worker) as pool:
        pending = deque(pool.apply_async(shared, (item,)) for item in islice(items, 2 * num_workers))
        while pending:
            result = _received(pending.popleft())
            for item in islice(items, 1):
                pending.append(pool.apply_async(shared, (item,)))
            yield result


def _consume(store, stream, table_row, position, result, strict):
    entry = store.metadata["micrographs"][table_row]
    if "error" in result:
        if strict:
            raise InputError(result["error"] + " (--strict)")
        warnings.warn(result["error"])
        entry.update(status="skipped", reason=result["error"])
        return
    entry.update(status="done", **result["info"])
    samples = result["samples"]
    samples["micrograph"] = np.full(len(samples["label"]), table_row, dtype=np.int32)
    stream.feed(position, samples)


def run_preprocessing(tool, config, records, sample_fn, *, output_dir, resume, num_workers, strict,
                      priors_fn, scale):
    """Write every split's chunks into output_dir (resuming where it stopped) and return a summary."""
    start = time.time()
    table = [{"index": r.index, "path": str(Path(r.path).resolve()), "stem": r.stem, "split": r.split,
              "status": "pending"} for r in records]
    metadata = prepare_output_dir(output_dir, tool, config, resume)
    if metadata is not None and [m["path"] for m in metadata["micrographs"]] != [t["path"] for t in table]:
        raise InputError(f"the micrographs found now differ from those {output_dir} was started with; "
                         f"use --no-resume to start over or another --output-dir")
    if metadata is not None and metadata.get("complete"):
        return summarize(metadata, output_dir, start, already_complete=True)
    store = ChunkStore(output_dir, tool, config, table, metadata)
    worker = partial(process_micrograph, scale=scale, clip_sigma=config["clip_sigma"], seed=config["seed"],
                     sample_fn=sample_fn)
    rows = {r.index: row for row, r in enumerate(records)}
    streams = {split: SplitStream(store, split) for split in SPLITS}
    sizes = {split: sum(r.split == split for r in records) for split in SPLITS}
    jobs = []  # (split, position in split, record) still to do, in the order chunks are written
    for split in SPLITS:
        first = sizes[split] if streams[split].state["complete"] else streams[split].resume_position
        jobs += [(split, position, r) for position, r in enumerate(r for r in records if r.split == split)
                 if position >= first]
    with tqdm(total=len(records), initial=len(records) - len(jobs), desc=f"{tool}", unit="micrograph") as bar:
        results = ordered_results(worker, [record for _, _, record in jobs], num_workers)
        for (split, position, record), result in zip(jobs, results):
            _consume(store, streams[split], rows[record.index], position, result, strict)
            if position == sizes[split] - 1:
                streams[split].finish(sizes[split])
            bar.update(1)
    for split in SPLITS:  # splits with no micrographs left to read
        if not streams[split].state["complete"]:
            streams[split].finish(sizes[split])
    store.metadata["priors"] = priors_fn(store.metadata)
    store.metadata["complete"] = True
    store.save()
    return summarize(store.metadata, output_dir, start)


def summarize(metadata, output_dir, start, already_complete=False):
    """Counts per split and sample type, bytes on disk, seconds, peak memory."""
    files = [Path(output_dir) / c["file"] for s in metadata["splits"].values() for c in s["chunks"]]
    skipped = [m for m in metadata["micrographs"] if m.get("status") == "skipped"]
    return {
        "output_dir": str(output_dir), "already_complete": already_complete,
        "micrographs": len(metadata["micrographs"]), "skipped_micrographs": len(skipped),
        "micrographs_per_split": {split: sum(m["split"] == split for m in metadata["micrographs"])
                                  for split in SPLITS},
        "dropped_particles": sum(m.get("n_dropped", 0) for m in metadata["micrographs"]),
        "splits": {name: {"count": s["count"], "chunks": len(s["chunks"]), **s["counts"]}
                   for name, s in metadata["splits"].items()},
        "priors": metadata["priors"], "bytes": bytes_on_disk(files), "seconds": time.time() - start,
        "peak_rss_mb": peak_rss_mb()}


def print_summary(summary):
    from utils.files import human_bytes
    state = "already complete, nothing to do" if summary["already_complete"] else "done"
    print(f"\n{summary['output_dir']}: {state}")
    print(f"  micrographs: {summary['micrographs']} ({summary['skipped_micrographs']} skipped, unreadable)")
    print(f"  particles outside their micrograph (dropped): {summary['dropped_particles']}")
    for split, counts in summary["splits"].items():
        parts = ", ".join(f"{k} {v:,}" for k, v in counts.items() if k not in ("count", "chunks") and v)
        print(f"  {split:5s}: {counts['count']:,} patches in {counts['chunks']} chunk(s) ({parts})")
    for key, value in summary["priors"].items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    print(f"  on disk: {human_bytes(summary['bytes'])}; {summary['seconds']:.1f} s; "
          f"peak memory {summary['peak_rss_mb']:.0f} MB")


def counted_prior(train_counts):
    """pi for nnPU: the fraction of positives among the unlabeled training samples (hidden / (hidden + background))."""
    hidden, background = train_counts.get("hidden_positive", 0), train_counts.get("background", 0)
    return hidden / (hidden + background) if hidden + background else float("nan")


def positive_fraction(train_counts):
    """The guide's number: positives (labeled + hidden) over all training patches."""
    total = sum(train_counts.values())
    positives = train_counts.get("labeled_positive", 0) + train_counts.get("hidden_positive", 0)
    return positives / total if total else float("nan")
