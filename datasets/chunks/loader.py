"""The chunk loader and the PU batch sampler: read the chunk dirs that preprocessing writes.

A split can be read three ways with the same result:
- "memory" (`--load-to-memory`): every chunk of the split concatenated into RAM tensors.
- "mmap": each chunk memory-mapped (`torch.load(mmap=True)`), random access by global index; fast on
  SSD or when the chunks sit in the page cache.
- "on_demand": whole chunks read when needed (sequential file reads, for HDDs); training then streams
  them with `ChunkStream` / `PUStream`, a shuffle buffer taking the place of random access.

Training's fast path is `CryoEMChunkedDataset.get_batch(indices)`: uint8 patches and labels gathered
with tensor indexing, augmented later on the device in batch (stream.py holds the HDD streams).

`PUBatchSampler` yields batches of global indices with an exact positive : unlabeled count in each,
epochs of a defined number of steps, seeded per epoch, each DDP rank drawing from its own share.
Samples are numbered globally: the chunks of the first dir in order, then those of the next dir.
"""
import functools
import math
import pickle
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from common.errors import InputError
from common.files import file_crc32, human_bytes, memory_available_bytes
from datasets.chunks.format import (CHUNK_DTYPES, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNLABELED, METADATA,
                                    chunk_dir_list, metadata_field, read_metadata)

MODES = ("memory", "mmap", "on_demand")
BATCH_KEYS = ("patches", "label", "sample_type", "true_label")


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
    dirs = chunk_dir_list(dirs)
    paths, counts, patch_sizes = [], [], {}
    for chunk_dir in dirs:
        metadata = read_metadata(chunk_dir)
        meta_path = chunk_dir / METADATA
        patch_sizes[chunk_dir] = int(metadata_field(metadata, meta_path, "facts", "patch_size"))
        for entry in metadata_field(metadata, meta_path, "splits").get(split, {}).get("chunks", []):
            path = chunk_dir / entry["file"]
            if not path.is_file():
                raise missing_chunk(path)
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


def missing_chunk(path):
    return InputError(f"{path}: listed in {path.parent / METADATA} but missing; restore it or rerun the "
                      f"preprocessing command with --no-resume")


def verify_checksums(dirs, rank=0, world_size=1):
    """Check the chunks of the chunk dirs against the CRC-32 their metadata.json recorded while writing:
    every `world_size`-th chunk from `rank` on, so DDP ranks share the reading.

    A chunk that was damaged, truncated or replaced (another run writing the same folder, a bad disk)
    is a one-line InputError naming it. Chunks written before checksums were recorded are not checked;
    returns (chunks checked, chunks without a checksum)."""
    listed = [(d / entry["file"], entry.get("crc32")) for d in chunk_dir_list(dirs)
              for split in read_metadata(d)["splits"].values() for entry in split["chunks"]][rank::world_size]
    for path, expected in tqdm(listed, desc="verifying chunk checksums", unit="chunk", leave=False):
        if not path.is_file():
            raise missing_chunk(path)
        if expected is not None and file_crc32(path) != expected:
            raise InputError(f"{path} does not match the checksum its metadata.json recorded (damaged or replaced); "
                             f"rerun the preprocessing command with --no-resume, or set data.verify_checksums false")
    missing = sum(expected is None for _, expected in listed)
    return len(listed) - missing, missing


def load_chunk(path, count, patch_size, mmap):
    """One chunk file as a dict of tensors (memory-mapped or read whole), checked against the contract."""
    try:
        chunk = torch.load(path, mmap=mmap, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: unreadable chunk ({exc}); rerun the preprocessing command with "
                         f"--no-resume") from exc
    expected = {"patches": (count, patch_size, patch_size), "xy": (count, 2)}
    for key, dtype in CHUNK_DTYPES.items():
        tensor = chunk.get(key)
        shape = expected.get(key, (count,))
        if tensor is None or tensor.dtype != dtype or tuple(tensor.shape) != shape:
            found = "missing" if tensor is None else f"{tensor.dtype} {list(tensor.shape)}"
            raise InputError(f"{path}: '{key}' is {found}, metadata and schema say "
                             f"{dtype} {list(shape)}; rerun the preprocessing command with --no-resume")
    return chunk


def empty_rows(part, n, keys, pin_memory):
    """Uninitialised tensors for n rows of `part`'s `keys`."""
    return {key: torch.empty((n,) + tuple(part[key].shape[1:]), dtype=part[key].dtype, pin_memory=pin_memory)
            for key in keys}


def _flat(tensor):
    """A [N, ...] tensor as [N, K] rows: index_select copies whole rows of a 2-D tensor at memcpy speed."""
    return tensor.flatten(1) if tensor.dim() > 1 else tensor.unsqueeze(1)


def gather_rows(get_part, starts, indices, keys, pin_memory=False):
    """Rows `indices` (global) of parts beginning at global `starts`, as a dict of `keys` tensors.

    The indices are grouped by part (`get_part(k)` returns part k); each part gives its rows in one
    index_select, and one more puts them back in the order asked. No per-sample Python.
    """
    indices = indices.contiguous()
    part_ids, order = torch.sort(torch.searchsorted(starts, indices, right=True) - 1, stable=True)
    touched, sizes = torch.unique_consecutive(part_ids, return_counts=True)
    template = get_part(int(touched[0]) if len(touched) else 0)
    grouped = {key: _flat(rows) for key, rows in empty_rows(template, len(indices), keys, False).items()}
    begin = 0
    for k, size in zip(touched.tolist(), sizes.tolist()):
        part, local = get_part(k), indices[order[begin:begin + size]] - starts[k]
        for key in keys:
            torch.index_select(_flat(part[key]), 0, local, out=grouped[key][begin:begin + size])
        begin += size
    out = empty_rows(template, len(indices), keys, pin_memory)
    inverse = torch.argsort(order)
    for key in keys:
        torch.index_select(grouped[key], 0, inverse, out=_flat(out[key]))
    return out


def _as_indices(indices, n):
    indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise IndexError(f"sample index out of range [0, {n})")
    return indices


def use_pinned_memory(requested):
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
        self.mode, self.pin_memory = mode, use_pinned_memory(pin_memory)
        mapped = [load_chunk(p, n, self.index.patch_size, mmap=True)
                  for p, n in zip(self.index.paths, self.index.counts)]
        self.labels = torch.cat([c["label"] for c in mapped])
        self.sample_types = torch.cat([c["sample_type"] for c in mapped])
        if mode == "memory":
            refuse_beyond_memory(self.index, mode)
            self._parts = [{key: torch.cat([c[key] for c in mapped]) for key in BATCH_KEYS}]
            self._starts = torch.zeros(1, dtype=torch.long)
            self._get_part = self._parts.__getitem__
        else:
            self._starts = self.index.starts
            self._get_part = mapped.__getitem__ if mode == "mmap" else functools.lru_cache(maxsize=2)(self._read_part)

    def _read_part(self, k):
        return load_chunk(self.index.paths[k], self.index.counts[k], self.index.patch_size, mmap=False)

    def __len__(self):
        return len(self.index)

    def get_batch(self, indices):
        """Samples `indices` (global) as uint8 patches [B, S, S] and int8 label, sample_type, true_label."""
        indices = _as_indices(indices, len(self))
        return gather_rows(self._get_part, self._starts, indices, BATCH_KEYS, self.pin_memory)


def refuse_beyond_memory(index, mode):
    """InputError when `index`'s patches take more than 80% of the memory left: "memory" mode cannot hold
    them, and "mmap" mode's random reads would then go to disk (174 samples/s on an SSD that streams 26,700,
    docs/results.md): the stream ("on_demand") reads each chunk once, in order. A few sorted rows (an eval
    subset) read well by mmap at any size; training's random batches call this for mmap themselves."""
    needed, available = len(index) * (index.patch_size ** 2 + len(BATCH_KEYS) - 1), memory_available_bytes()
    if available is not None and needed > 0.8 * available:
        why = "cannot hold it" if mode == "memory" else "would read it from disk at random, ~100x slower"
        raise InputError(f"{index.source} holds {human_bytes(needed)} of patches, more than 80% of the "
                         f"{human_bytes(available)} of memory left; loader_mode {mode} {why}: stream it with "
                         f"--set data.loader_mode=on_demand")


def seeded_generator(*keys):
    """A torch generator seeded from a tuple of ints (seed, epoch, rank, ...), well mixed."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(keys)).generate_state(1)[0]))


def draw_cycled(pool, n, generator):
    """n items of `pool`: whole reshuffled passes over it, concatenated (recycled when n > len(pool))."""
    passes = -(-n // len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(passes)])
    return pool[order[:n]]


def _rank_share(items, generator, rank, world_size):
    """This rank's disjoint share of a shuffled `items`; all of them when there are fewer than ranks."""
    shuffled = items[torch.randperm(len(items), generator=generator)]
    return shuffled[rank::world_size] if len(items) >= world_size else shuffled


def positives_per_batch(batch_size, batch_ratio=(1, 4)):
    """Positives in a batch: int(batch_size * p / (p + u)) for batch_ratio [p, u]."""
    if len(batch_ratio) != 2 or min(batch_ratio) <= 0:
        raise InputError(f"batch_ratio {list(batch_ratio)} must be two positive numbers [positive, unlabeled], "
                         f"e.g. [1, 4]")
    n_pos = math.floor(round(batch_size * batch_ratio[0] / sum(batch_ratio), 6))
    if not 0 < n_pos < batch_size:
        raise InputError(f"batch_size {batch_size} with batch_ratio {list(batch_ratio)} gives {n_pos} positives "
                         f"per batch; use a larger batch or a ratio leaving room for both kinds")
    return n_pos


def default_steps(n_unlabeled, n_unl_per_batch, world_size):
    return max(1, -(-n_unlabeled // (n_unl_per_batch * world_size)))


def non_positive_slots(n_others, share, n_unlabeled, n_known, world_size=1):
    """How a batch's n_others non-positive slots are filled, as (slots drawn from the unlabeled pool, known-
    negative slots, default epoch length). Known negatives (label -1) get floor(n_others * share + 0.5)
    slots of their own when a share is set and the split holds both kinds; else 0, and they are drawn
    with the unlabeled windows in one pool, in their natural proportion. An epoch is one pass over the
    pool the other slots draw from."""
    known = 0
    if share is not None:
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise InputError(f"data.known_negative_share {share!r} must be a number in (0, 1), or null for the "
                             f"known negatives' natural share")
        slots = math.floor(n_others * share + 0.5)
        if n_unlabeled and n_known and not 0 < slots < n_others:
            raise InputError(f"data.known_negative_share {share} gives {slots} of a batch's {n_others} non-positive "
                             f"slots to known negatives; use a share that leaves room for both, a larger batch, or "
                             f"null")
        known = slots if n_unlabeled and n_known else 0
    pool = n_unlabeled if known else n_unlabeled + n_known
    return n_others - known, known, default_steps(pool, n_others - known, world_size)


class PUBatchSampler(Sampler):
    """Batches of global indices with exactly n_pos labeled positives then batch_size - n_pos others.

    "Others" are every non-positive sample: unlabeled (label 0) and known negatives (-1). By default
    (`known_negative_share=None`) they are drawn from one shuffled pool, so known negatives come in their
    natural proportion (in expectation). With a share, each batch's others are round(share x n_others)
    known negatives drawn from their own pool, after the unlabeled ones, whatever their number on disk
    (a split without known negatives, or without unlabeled windows, keeps the one pool: `n_known` is
    then 0).
    Per epoch (seeded by seed and `set_epoch`, as DistributedSampler) each rank takes a disjoint share
    of every shuffled pool (when it holds at least world_size); it draws its batches from its shares in
    reshuffled passes, so positives and known negatives are recycled as needed and every batch is full.
    An epoch is `steps_per_epoch` batches; default one pass over the unlabeled pool,
    ceil(n_pool / (n_pool_per_batch * world_size)), the last batch topped up from a new pass.
    """

    def __init__(self, labels, batch_size=64, batch_ratio=(1, 4), steps_per_epoch=None,
                 seed=0, rank=0, world_size=1, source="labels", known_negative_share=None):
        labels = torch.as_tensor(labels)
        self.positives = (labels == LABEL_POSITIVE).nonzero().squeeze(1)
        others = (labels != LABEL_POSITIVE).nonzero().squeeze(1)
        if not len(self.positives):
            raise InputError(f"{source}: split has no labeled positives; check the annotations / hide ratio")
        if not len(others):
            raise InputError(f"{source}: split has no unlabeled samples; PU training needs them (check the "
                             f"negative ratio / hide ratio of preprocessing)")
        self.n_pos = positives_per_batch(batch_size, batch_ratio)
        self.n_unl = batch_size - self.n_pos
        known = (labels == LABEL_NEGATIVE).nonzero().squeeze(1)
        unlabeled = (labels == LABEL_UNLABELED).nonzero().squeeze(1)
        drawn, self.n_known, epoch_steps = non_positive_slots(self.n_unl, known_negative_share, len(unlabeled),
                                                              len(known), world_size)
        if self.n_known:
            self.pools, self.per_batch = (unlabeled, known), (drawn, self.n_known)
        else:
            self.pools, self.per_batch = (others,), (drawn,)
        self.steps = steps_per_epoch or epoch_steps
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        shared = seeded_generator(self.seed, self.epoch)
        positives = _rank_share(self.positives, shared, self.rank, self.world_size)
        pools = [_rank_share(pool, shared, self.rank, self.world_size) for pool in self.pools]
        own = seeded_generator(self.seed, self.epoch, self.rank, 1)
        parts = [draw_cycled(pool, self.steps * n, own).view(self.steps, n)
                 for pool, n in zip([positives, *pools], [self.n_pos, *self.per_batch])]
        yield from torch.cat(parts, dim=1)
