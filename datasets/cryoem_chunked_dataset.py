"""The chunk loader and the PU batch sampler: read the chunk dirs that preprocessing writes.

A split can be read three ways with the same result:
- "memory" (`--load-to-memory`): every chunk of the split concatenated into RAM tensors.
- "mmap": each chunk memory-mapped (`torch.load(mmap=True)`), random access by global index; fast on
  SSD or when the chunks sit in the page cache.
- "on_demand": whole chunks read when needed (sequential file reads, for HDDs); training then streams
  them with `ChunkStream` / `PUStream`, a shuffle buffer taking the place of random access.

Training's fast path is `CryoEMChunkedDataset.get_batch(indices)`: uint8 patches and labels gathered
with tensor indexing, augmented later on the device in batch. `__getitem__` keeps the guides'
per-sample API `(weak_aug, strong_aug, label, sample_type)` for compatibility only.

`PUBatchSampler` yields batches of global indices with an exact positive : unlabeled count in each,
epochs of a defined number of steps, seeded per epoch, each DDP rank drawing from its own share.
Samples are numbered globally: the chunks of the first dir in order, then those of the next dir.
"""
import functools
import json
import math
import pickle
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from itertools import accumulate, chain, count
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from datasets.augment import strong_augment, to_float, weak_augment
from datasets.chunk_format import (CHUNK_KEYS, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNLABELED, SCHEMA_VERSION,
                                   preprocessing_progress)
from datasets.errors import InputError

MODES = ("memory", "mmap", "on_demand")
BATCH_KEYS = ("patches", "label", "sample_type", "true_label")
CHUNK_DTYPES = {"patches": torch.uint8, "label": torch.int8, "sample_type": torch.int8,
                "true_label": torch.int8, "micrograph": torch.int32, "xy": torch.int32}


def _as_dirs(dirs):
    return [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]


def _field(metadata, path, *keys):
    value = metadata
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise InputError(f"{path}: no '{'.'.join(keys)}' entry; rerun the preprocessing command "
                             f"with this version of the repo")
        value = value[key]
    return value


def read_metadata(chunk_dir):
    """metadata.json of a finished preprocessing run; InputError when missing, unreadable or unfinished."""
    path = Path(chunk_dir) / "metadata.json"
    if not path.is_file():
        raise InputError(f"{chunk_dir}: no metadata.json; run preprocess_chunked.py or "
                         f"preprocess_coco_full_dataset.py with --output-dir {chunk_dir} first")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg}); rerun the preprocessing command") from exc
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path}: schema_version {metadata.get('schema_version')} but this loader reads "
                         f"{SCHEMA_VERSION}; preprocess again with this version of the repo")
    if not metadata.get("complete"):
        done, total = preprocessing_progress(metadata)
        raise InputError(f"{chunk_dir}: preprocessing incomplete ({done} of {total} micrographs done); "
                         f"rerun the same preprocessing command to resume it")
    return metadata


@dataclass(frozen=True)
class ChunkIndex:
    """The chunk files of one split over one or more chunk dirs, in global sample order."""
    dirs: tuple
    split: str
    paths: tuple
    counts: tuple
    patch_size: int

    def __len__(self):
        return sum(self.counts)

    @property
    def starts(self):
        """Global index of each chunk's first sample (int64 tensor)."""
        return torch.tensor((0,) + tuple(accumulate(self.counts))[:-1], dtype=torch.long)

    @property
    def source(self):
        """How error messages name this split: its dirs and the split."""
        return f"{', '.join(str(d) for d in self.dirs)} [{self.split}]"


def open_chunk_dirs(dirs, split):
    """The ChunkIndex of `split` over chunk dirs `dirs` (one path or several shards), checked.

    Each dir must hold a finished run's metadata.json and every chunk file it lists; all dirs must
    share the patch size. A shard without chunks of the split is fine (sharding every N-th micrograph
    can leave a small split empty in some shards); no chunks of the split in any dir is an InputError.
    """
    dirs = _as_dirs(dirs)
    paths, counts, patch_sizes = [], [], {}
    for chunk_dir in dirs:
        metadata = read_metadata(chunk_dir)
        meta_path = chunk_dir / "metadata.json"
        patch_sizes[chunk_dir] = int(_field(metadata, meta_path, "config", "patch_size"))
        for entry in _field(metadata, meta_path, "splits").get(split, {}).get("chunks", []):
            path = chunk_dir / entry["file"]
            if not path.is_file():
                raise InputError(f"{path}: listed in {meta_path} but missing; restore it or rerun the "
                                 f"preprocessing command with --no-resume")
            paths.append(path)
            counts.append(int(entry["count"]))
    if len(set(patch_sizes.values())) > 1:
        sizes = ", ".join(f"{d}: {s}" for d, s in patch_sizes.items())
        raise InputError(f"chunk dirs have different patch sizes ({sizes}); preprocess every shard with "
                         f"the same --patch-size")
    if not paths:
        raise InputError(f"{', '.join(map(str, dirs))}: no {split} chunks; check --data-dir or preprocess "
                         f"with a {split} split")
    return ChunkIndex(tuple(dirs), split, tuple(paths), tuple(counts), patch_sizes[dirs[0]])


def read_prior(dirs):
    """nnPU's pi (fraction of positives among unlabeled train samples) over one or more shards.

    "counted" priors are recomputed from the shards' summed train counts,
    hidden_positive / (hidden_positive + background); "expected_particles" priors from the summed
    estimates, hidden_windows_estimate / unlabeled_windows. InputError unless 0 < pi < 1.
    """
    dirs = _as_dirs(dirs)
    shards = [(d / "metadata.json", read_metadata(d)) for d in dirs]
    methods = {_field(meta, path, "priors", "method") for path, meta in shards}
    source = ", ".join(map(str, dirs))
    if len(methods) > 1:
        raise InputError(f"{source}: shards disagree on how the prior was obtained ({', '.join(sorted(methods))}); "
                         f"preprocess every shard with the same settings")
    method = methods.pop()
    hidden = np.array([_field(meta, path, "splits", "train", "counts", "hidden_positive") for path, meta in shards])
    background = np.array([_field(meta, path, "splits", "train", "counts", "background") for path, meta in shards])
    unlabeled = hidden + background
    if method == "counted":
        prior = hidden.sum() / unlabeled.sum() if unlabeled.sum() else math.nan
    elif method == "expected_particles":
        estimate = sum(_field(meta, path, "priors", "hidden_windows_estimate") for path, meta in shards)
        windows = sum(_field(meta, path, "priors", "unlabeled_windows") for path, meta in shards)
        prior = estimate / windows if windows else math.nan
    else:
        raise InputError(f"{source}: no usable prior in metadata (method {method!r}); set loss.prior in the config "
                         f"or preprocess with --expected-particles")
    if not 0 < prior < 1:
        raise InputError(f"{source}: prior_unlabeled {prior:.4g} ({method}) is outside (0, 1); set loss.prior "
                         f"in the config instead of --use-data-prior")
    return float(prior)


def _load_chunk(path, count, patch_size, mmap):
    """One chunk file as a dict of tensors (memory-mapped or read whole), checked against the contract."""
    try:
        chunk = torch.load(path, mmap=mmap, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: unreadable chunk ({exc}); rerun the preprocessing command with "
                         f"--no-resume") from exc
    expected = {"patches": (count, patch_size, patch_size), "xy": (count, 2)}
    for key in CHUNK_KEYS:
        tensor = chunk.get(key)
        shape = expected.get(key, (count,))
        if tensor is None or tensor.dtype != CHUNK_DTYPES[key] or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else f"{tensor.dtype} {list(tensor.shape)}"
            raise InputError(f"{path}: '{key}' is {found}, metadata and schema say "
                             f"{CHUNK_DTYPES[key]} {list(shape)}; rerun the preprocessing command with --no-resume")
    return chunk


def _empty_like_rows(part, n, keys, pin_memory):
    """Uninitialised tensors for n rows of `part`'s `keys`."""
    return {key: torch.empty((n,) + tuple(part[key].shape[1:]), dtype=part[key].dtype, pin_memory=pin_memory)
            for key in keys}


def _flat(tensor):
    """A [N, ...] tensor as [N, K] rows: index_select copies whole rows of a 2-D tensor at memcpy speed."""
    return tensor.flatten(1) if tensor.dim() > 1 else tensor.unsqueeze(1)


def _gather(get_part, starts, indices, keys, pin_memory=False):
    """Rows `indices` (global) of parts beginning at global `starts`, as a dict of `keys` tensors.

    The indices are grouped by part (`get_part(k)` returns part k); each part gives its rows in one
    index_select, and one more puts them back in the order asked. No per-sample Python.
    """
    indices = indices.contiguous()
    part_ids, order = torch.sort(torch.searchsorted(starts, indices, right=True) - 1, stable=True)
    touched, sizes = torch.unique_consecutive(part_ids, return_counts=True)
    template = get_part(int(touched[0]) if len(touched) else 0)
    grouped = {key: _flat(rows) for key, rows in _empty_like_rows(template, len(indices), keys, False).items()}
    begin = 0
    for k, size in zip(touched.tolist(), sizes.tolist()):
        part, local = get_part(k), indices[order[begin:begin + size]] - starts[k]
        for key in keys:
            torch.index_select(_flat(part[key]), 0, local, out=grouped[key][begin:begin + size])
        begin += size
    out = _empty_like_rows(template, len(indices), keys, pin_memory)
    inverse = torch.argsort(order)
    for key in keys:
        torch.index_select(grouped[key], 0, inverse, out=_flat(out[key]))
    return out


def _as_indices(indices, n):
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise IndexError(f"sample index out of range [0, {n})")
    return indices


def _pin(requested):
    """Pinned host memory only helps (and only works) where CUDA is present."""
    return bool(requested) and torch.cuda.is_available()


class CryoEMChunkedDataset(Dataset):
    """One split of one or more chunk dirs, read in `mode` "memory", "mmap" or "on_demand".

    `labels` and `sample_types` (int8, whole split) come from memory-mapped label tensors without
    reading patches. In "on_demand" mode `get_batch` reads the chunks it touches whole and keeps the
    last two; random batches are therefore slow there: stream with `ChunkStream` / `PUStream`.
    """

    def __init__(self, chunk_dirs, split, mode="mmap", pin_memory=False):
        if mode not in MODES:
            raise InputError(f"unknown loader mode {mode!r}; use one of {', '.join(MODES)}")
        self.index = open_chunk_dirs(chunk_dirs, split)
        self.mode, self.pin_memory = mode, _pin(pin_memory)
        mapped = [_load_chunk(p, n, self.index.patch_size, mmap=True)
                  for p, n in zip(self.index.paths, self.index.counts)]
        self.labels = torch.cat([c["label"] for c in mapped])
        self.sample_types = torch.cat([c["sample_type"] for c in mapped])
        if mode == "memory":
            self._parts = [{key: torch.cat([c[key] for c in mapped]) for key in BATCH_KEYS}]
            self._starts = torch.zeros(1, dtype=torch.long)
            self._get_part = self._parts.__getitem__
        else:
            self._starts = self.index.starts
            self._get_part = mapped.__getitem__ if mode == "mmap" else functools.lru_cache(maxsize=2)(self._read_part)

    def _read_part(self, k):
        return _load_chunk(self.index.paths[k], self.index.counts[k], self.index.patch_size, mmap=False)

    def __len__(self):
        return len(self.index)

    def get_batch(self, indices):
        """Samples `indices` (global) as uint8 patches [B, S, S] and int8 label, sample_type, true_label."""
        indices = _as_indices(indices, len(self))
        return _gather(self._get_part, self._starts, indices, BATCH_KEYS, self.pin_memory)

    def __getitem__(self, i):
        """The guides' per-sample API (slow path): (weak_aug [1,S,S], strong_aug [1,S,S], label, sample_type)."""
        batch = self.get_batch([int(i)])
        x = to_float(batch["patches"][:, None])
        return weak_augment(x)[0], strong_augment(x)[0], int(batch["label"][0]), int(batch["sample_type"][0])


def _generator(*keys):
    """A torch generator seeded from a tuple of ints (seed, epoch, rank, ...), well mixed."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def _draw_cycled(pool, n, generator):
    """n items of `pool`: whole reshuffled passes over it, concatenated (recycled when n > len(pool))."""
    passes = -(-n // len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(passes)])
    return pool[order[:n]]


def _rank_share(items, generator, rank, world_size):
    """This rank's disjoint share of a shuffled `items`; all of them when there are fewer than ranks."""
    shuffled = items[torch.randperm(len(items), generator=generator)]
    return shuffled[rank::world_size] if len(items) >= world_size else shuffled


def positives_per_batch(batch_size, batch_ratio=(1, 4), positive_ratio=None):
    """Positives in a batch: int(batch_size * p / (p + u)) for batch_ratio [p, u]; positive_ratio r = [r, 1 - r]."""
    if positive_ratio is not None:
        if not 0 < positive_ratio < 1:
            raise InputError(f"positive_ratio {positive_ratio} is outside (0, 1); 0.2 means 1 positive : 4 unlabeled")
        batch_ratio = (positive_ratio, 1 - positive_ratio)
    if len(batch_ratio) != 2 or min(batch_ratio) <= 0:
        raise InputError(f"batch_ratio {list(batch_ratio)} must be two positive numbers [positive, unlabeled], "
                         f"e.g. [1, 4]")
    n_pos = math.floor(round(batch_size * batch_ratio[0] / sum(batch_ratio), 6))
    if not 0 < n_pos < batch_size:
        raise InputError(f"batch_size {batch_size} with batch_ratio {list(batch_ratio)} gives {n_pos} positives "
                         f"per batch; use a larger batch or a ratio leaving room for both kinds")
    return n_pos


def _default_steps(n_unlabeled, n_unl_per_batch, world_size):
    return max(1, -(-n_unlabeled // (n_unl_per_batch * world_size)))


class PUBatchSampler(Sampler):
    """Batches of global indices with exactly n_pos labeled positives then batch_size - n_pos others.

    "Others" are every non-positive sample: unlabeled (label 0) and known negatives (-1) are drawn
    from one shuffled pool, so known negatives come in their natural proportion (in expectation).
    Per epoch (seeded by seed and `set_epoch`, as DistributedSampler) each rank takes a disjoint share
    of the shuffled positives (when there are at least world_size) and of the others; it draws its
    batches from its shares in reshuffled passes, so positives are recycled as needed and every batch
    is full. An epoch is `steps_per_epoch` batches; default one pass over the others,
    ceil(n_others / (n_others_per_batch * world_size)), the last batch topped up from a new pass.
    """

    def __init__(self, labels, batch_size=64, batch_ratio=(1, 4), positive_ratio=None, steps_per_epoch=None,
                 seed=0, rank=0, world_size=1, source="labels"):
        labels = torch.as_tensor(labels)
        self.positives = (labels == LABEL_POSITIVE).nonzero().squeeze(1)
        self.others = (labels != LABEL_POSITIVE).nonzero().squeeze(1)
        if not len(self.positives):
            raise InputError(f"{source}: split has no labeled positives; check the annotations / hide ratio")
        if not len(self.others):
            raise InputError(f"{source}: split has no unlabeled samples; PU training needs them (check the "
                             f"negative ratio / hide ratio of preprocessing)")
        self.n_pos = positives_per_batch(batch_size, batch_ratio, positive_ratio)
        self.n_unl = batch_size - self.n_pos
        self.steps = steps_per_epoch or _default_steps(len(self.others), self.n_unl, world_size)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        shared = _generator(self.seed, self.epoch)
        positives = _rank_share(self.positives, shared, self.rank, self.world_size)
        others = _rank_share(self.others, shared, self.rank, self.world_size)
        own = _generator(self.seed, self.epoch, self.rank, 1)
        pos = _draw_cycled(positives, self.steps * self.n_pos, own).view(self.steps, self.n_pos)
        unl = _draw_cycled(others, self.steps * self.n_unl, own).view(self.steps, self.n_unl)
        yield from torch.cat([pos, unl], dim=1)


class ChunkStream:
    """Batches read chunk by chunk in a seeded chunk order, mixed through a shuffle buffer (HDD mode).

    Each chunk file is read whole and sequentially (the next one in a background thread while the
    current one is served). Its rows join the rows carried over, the pool is permuted and served as
    batches until `buffer_size` rows are left to carry into the next chunk. Memory: the chunk being
    served, the one being read, and twice the buffer. Batches hold BATCH_KEYS plus "index" (global
    sample index); each sample of the rank's share comes exactly once per pass. The last batch is
    short unless `repeat` chains passes into an endless stream: then the rows a pass leaves over
    (less than a batch) open the next pass's first batch. `labels` keeps only rows with those label
    values. With world_size > 1 each rank reads every
    world_size-th chunk of the epoch's order, or its share of rows of every chunk when chunks are
    fewer than ranks. `shuffle=False` serves the rows in file order.
    """

    def __init__(self, index, batch_size, buffer_size=16384, shuffle=True, seed=0, rank=0, world_size=1,
                 labels=None, repeat=False, pin_memory=False):
        self.index, self.batch_size, self.buffer_size = index, batch_size, buffer_size if shuffle else 0
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.int8)
        self.repeat, self.pin_memory, self.epoch = repeat, _pin(pin_memory), 0
        self.bytes_read = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _schedule(self):
        """(chunk number, last of its pass) this rank reads, pass after pass; one order for all ranks."""
        n = len(self.index.paths)
        generator = _generator(self.seed, self.epoch)
        for _ in count() if self.repeat else range(1):
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            mine = (order[self.rank::self.world_size] if n >= self.world_size else order).tolist()
            yield from ((k, i == len(mine) - 1) for i, k in enumerate(mine))

    def _read(self, k):
        chunk = _load_chunk(self.index.paths[k], self.index.counts[k], self.index.patch_size, mmap=False)
        self.bytes_read += self.index.paths[k].stat().st_size
        rows = {key: chunk[key] for key in BATCH_KEYS}
        rows["index"] = self.index.starts[k] + torch.arange(self.index.counts[k])
        keep = torch.ones(self.index.counts[k], dtype=torch.bool)
        if self.labels is not None:
            keep &= torch.isin(rows["label"], self.labels)
        if len(self.index.paths) < self.world_size:
            keep &= rows["index"] % self.world_size == self.rank
        return rows if bool(keep.all()) else {key: value[keep] for key, value in rows.items()}

    def _serve(self, parts, n_serve, owed, generator):
        """Yield batches of the first n_serve rows of a permutation of parts' rows; return the rest.

        The first `owed` rows (the front of the carried rows, left over from the previous pass) stay
        ahead of all others in the permutation, so they are served first.
        """
        starts = torch.tensor([0, len(parts[0]["index"])])
        n = int(starts[1]) + len(parts[1]["index"])
        if self.shuffle:
            order = torch.cat([torch.randperm(owed, generator=generator),
                               owed + torch.randperm(n - owed, generator=generator)])
        else:
            order = torch.arange(n)
        keys = tuple(parts[0])
        for begin in range(0, n_serve, self.batch_size):
            end = min(begin + self.batch_size, n_serve)
            yield _gather(parts.__getitem__, starts, order[begin:end], keys, self.pin_memory)
        return _gather(parts.__getitem__, starts, order[n_serve:], keys)

    def _n_serve(self, n, owed, end_of_pass):
        """Whole batches to serve from n pooled rows: all but less than a batch at the end of a pass,
        else all but `buffer_size`, and at least the batches holding the `owed` rows."""
        keep = 0 if end_of_pass else self.buffer_size
        at_least = -(-owed // self.batch_size) * self.batch_size
        return min(n, max(n - keep, at_least)) // self.batch_size * self.batch_size

    def __iter__(self):
        generator = _generator(self.seed, self.epoch, self.rank, 2)
        schedule = chain(self._schedule(), [(None, True)])
        with ThreadPoolExecutor(max_workers=1) as reader:
            k, end_of_pass = next(schedule)
            pending = reader.submit(self._read, k)
            carried, owed = None, 0
            for k_next, next_end_of_pass in schedule:
                chunk = pending.result()
                if k_next is not None:
                    pending = reader.submit(self._read, k_next)
                parts = [carried if carried is not None else {key: value[:0] for key, value in chunk.items()}, chunk]
                n = len(parts[0]["index"]) + len(chunk["index"])
                n_serve = n if k_next is None else self._n_serve(n, owed, end_of_pass)
                carried = yield from self._serve(parts, n_serve, owed, generator)
                owed = n - n_serve if end_of_pass else max(0, owed - n_serve)
                end_of_pass = next_end_of_pass


class PUStream:
    """Exact-ratio PU batches for on-demand (HDD) training.

    The labeled positives of this rank's share (every world_size-th, when there are at least
    world_size) are gathered into RAM once, reading only their rows through memory maps: N_pos * S^2
    bytes (100k positives of 128 px: 1.6 GB). They are recycled in reshuffled passes. All other
    samples (unlabeled and known negatives) stream through an endless `ChunkStream`. Each batch holds
    n_pos positives followed by batch_size - n_pos streamed samples; an epoch is `steps_per_epoch`
    batches, by default one pass over the others (as PUBatchSampler), the stream running on into its
    next pass for the last batch.
    """

    def __init__(self, index, batch_size=64, batch_ratio=(1, 4), positive_ratio=None, steps_per_epoch=None,
                 buffer_size=16384, seed=0, rank=0, world_size=1, pin_memory=False):
        self.n_pos = positives_per_batch(batch_size, batch_ratio, positive_ratio)
        self.n_unl = batch_size - self.n_pos
        mapped = [_load_chunk(p, n, index.patch_size, mmap=True) for p, n in zip(index.paths, index.counts)]
        labels = torch.cat([c["label"] for c in mapped])
        positives = (labels == LABEL_POSITIVE).nonzero().squeeze(1)
        n_others = len(labels) - len(positives)
        if not len(positives):
            raise InputError(f"{index.source}: split has no labeled positives; check the annotations / hide ratio")
        if not n_others:
            raise InputError(f"{index.source}: split has no unlabeled samples; PU training needs them (check the "
                             f"negative ratio / hide ratio of preprocessing)")
        if len(positives) >= world_size:
            positives = positives[rank::world_size]
        self.pool = _gather(mapped.__getitem__, index.starts, positives, BATCH_KEYS)
        self.pool["index"] = positives
        self.steps = steps_per_epoch or _default_steps(n_others, self.n_unl, world_size)
        self.others = ChunkStream(index, self.n_unl, buffer_size, seed=seed, rank=rank, world_size=world_size,
                                  labels=(LABEL_UNLABELED, LABEL_NEGATIVE), repeat=True)
        self.seed, self.rank, self.pin_memory, self.epoch = seed, rank, _pin(pin_memory), 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.others.set_epoch(epoch)

    def __len__(self):
        return self.steps

    def __iter__(self):
        draws = _draw_cycled(torch.arange(len(self.pool["index"])), self.steps * self.n_pos,
                             _generator(self.seed, self.epoch, self.rank, 3)).view(self.steps, self.n_pos)
        with closing(iter(self.others)) as others:
            for rows in draws:
                streamed = next(others)
                batch = _empty_like_rows(self.pool, self.n_pos + self.n_unl, tuple(self.pool), self.pin_memory)
                for key, out in batch.items():
                    out[:self.n_pos] = self.pool[key][rows]
                    out[self.n_pos:] = streamed[key]
                yield batch
