"""Streaming reads for HDDs: whole chunks read sequentially, mixed through a shuffle buffer.

`ChunkStream` serves batches of one split's rows chunk by chunk; `PUStream` builds exact-ratio PU
batches from the labeled positives (and, at a fixed share, the known negatives) held in RAM and every
other sample streamed.
"""
import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from itertools import chain, count

import torch

from common.errors import InputError
from datasets.chunks.format import CHUNK_DTYPES, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNLABELED
from datasets.chunks.loader import (BATCH_KEYS, draw_cycled, empty_rows, gather_rows, load_chunk,
                                    non_positive_slots, positives_per_batch, seeded_generator, use_pinned_memory)


class ChunkStream:
    """Batches read chunk by chunk in a seeded chunk order, mixed through a shuffle buffer (HDD mode).

    Each chunk file is read whole and sequentially (the next one in a background thread while the
    current one is served). Its rows join the rows carried over, the pool is permuted and served as
    batches until `buffer_size` rows are left to carry into the next chunk. Memory: two pools of a
    chunk plus the buffer (the chunk files' pages belong to the page cache, through their memory
    maps). Batches hold BATCH_KEYS plus "index" (global sample index); each sample of the rank's share
    comes exactly once per pass. The last batch is short unless `repeat` chains passes into an
    endless stream: then the rows a pass leaves over open the next pass's first batch. `labels` keeps
    only rows with those label values. With world_size > 1 each rank reads every world_size-th chunk
    of the epoch's order, or its share of rows of every chunk when chunks are fewer than ranks.
    `shuffle=False` serves the rows in file order.
    """

    def __init__(self, index, batch_size, buffer_size=16384, shuffle=True, seed=0, rank=0, world_size=1,
                 labels=None, repeat=False, pin_memory=False):
        self.index, self.batch_size, self.buffer_size = index, batch_size, buffer_size if shuffle else 0
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.labels = None if labels is None else torch.tensor(labels, dtype=torch.int8)
        self.repeat, self.pin_memory, self.epoch = repeat, use_pinned_memory(pin_memory), 0
        # rows carried over: fewer than buffer_size + a batch, and than the split + a batch (a repeating
        # stream carries a pass's leftovers into the next)
        self.chunk_row = min(self.buffer_size, len(index)) + batch_size
        self.bytes_read = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _schedule(self):
        """(chunk number, last of its pass) this rank reads, pass after pass; one order for all ranks."""
        n = len(self.index.paths)
        generator = seeded_generator(self.seed, self.epoch)
        for _ in count() if self.repeat else range(1):
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            mine = (order[self.rank::self.world_size] if n >= self.world_size else order).tolist()
            yield from ((k, i == len(mine) - 1) for i, k in enumerate(mine))

    def _read(self, k, pool):
        """Copy chunk k's rows (those of `labels`, of this rank's share) into `pool` from row
        `chunk_row` on, straight from its memory map; return how many."""
        chunk = load_chunk(self.index.paths[k], self.index.counts[k], self.index.patch_size, mmap=True)
        self.bytes_read += self.index.paths[k].stat().st_size
        keep = torch.ones(self.index.counts[k], dtype=torch.bool)
        if self.labels is not None:
            keep &= torch.isin(chunk["label"], self.labels)
        if len(self.index.paths) < self.world_size:
            keep &= (self.index.starts[k] + torch.arange(self.index.counts[k])) % self.world_size == self.rank
        rows = keep.nonzero().squeeze(1)
        end = self.chunk_row + len(rows)
        for key in BATCH_KEYS:
            torch.index_select(chunk[key], 0, rows, out=pool[key][self.chunk_row:end])
        pool["index"][self.chunk_row:end] = self.index.starts[k] + rows
        return len(rows)

    def _order(self, n, owed, generator):
        """The serving order of n pooled rows: a permutation in which the first `owed` rows (the front
        of the carried rows, left over from the previous pass) stay ahead of all others."""
        if not self.shuffle:
            return torch.arange(n)
        return torch.cat([torch.randperm(owed, generator=generator),
                          owed + torch.randperm(n - owed, generator=generator)])

    def _n_serve(self, n, owed, end_of_pass):
        """Whole batches to serve from n pooled rows: all but less than a batch at the end of a pass,
        else all but `buffer_size`, and at least the batches holding the `owed` rows."""
        keep = 0 if end_of_pass else self.buffer_size
        at_least = -(-owed // self.batch_size) * self.batch_size
        return min(n, max(n - keep, at_least)) // self.batch_size * self.batch_size

    def _pools(self):
        """Two pools of rows, kept for the whole stream (fresh chunk-sized tensors cost more in page
        faults than the copies): the rows carried over at the front, a chunk's rows from row
        `chunk_row` on. The reader fills one while the other is served."""
        rows = self.chunk_row + max(self.index.counts)
        shapes = {"patches": (rows, self.index.patch_size, self.index.patch_size)}
        return [{key: torch.empty(shapes.get(key, (rows,)), dtype=CHUNK_DTYPES[key]) for key in BATCH_KEYS}
                | {"index": torch.empty(rows, dtype=torch.long)} for _ in range(2)]

    def _batches(self, pool, order):
        for begin in range(0, len(order), self.batch_size):
            rows = order[begin:begin + self.batch_size]
            batch = empty_rows(pool, len(rows), tuple(pool), self.pin_memory)
            for key, out in batch.items():
                torch.index_select(pool[key], 0, rows, out=out)
            yield batch

    def __iter__(self):
        generator = seeded_generator(self.seed, self.epoch, self.rank, 2)
        schedule = chain(self._schedule(), [(None, True)])
        pools = self._pools()
        with ThreadPoolExecutor(max_workers=1) as reader:
            k, end_of_pass = next(schedule)
            pending = reader.submit(self._read, k, pools[0])
            n_carried, owed = 0, 0
            for k_next, next_end_of_pass in schedule:
                n = n_carried + pending.result()
                if k_next is not None:
                    pending = reader.submit(self._read, k_next, pools[1])
                n_serve = n if k_next is None else self._n_serve(n, owed, end_of_pass)
                order = self._order(n, owed, generator)
                rows = torch.where(order < n_carried, order, order - n_carried + self.chunk_row)
                yield from self._batches(pools[0], rows[:n_serve])
                n_carried = n - n_serve
                for key, value in pools[0].items():
                    torch.index_select(value, 0, rows[n_serve:], out=pools[1][key][:n_carried])
                pools.reverse()
                owed = n - n_serve if end_of_pass else max(0, owed - n_serve)
                end_of_pass = next_end_of_pass


class PUStream:
    """Exact-ratio PU batches for on-demand (HDD) training.

    The labeled positives of this rank's share (every world_size-th, when there are at least
    world_size) are gathered into RAM once, reading only their rows through the memory map of one chunk
    at a time (the pages mapped never exceed a chunk's): N_pos * S^2 bytes (100k positives of 128 px:
    1.6 GB). They are recycled in reshuffled passes. All other samples (unlabeled and known negatives)
    stream through an endless `ChunkStream`, unless `known_negative_share` (as PUBatchSampler) gives
    the known negatives a fixed number of slots: they are then gathered into RAM as the positives and
    only the unlabeled windows stream. Each batch holds n_pos positives, the streamed samples, then
    the known negatives; an epoch is `steps_per_epoch` batches, by default one pass over the streamed
    samples (as PUBatchSampler), the stream running on into its next pass for the last batch.
    """

    def __init__(self, index, batch_size=64, batch_ratio=(1, 4), steps_per_epoch=None,
                 buffer_size=16384, seed=0, rank=0, world_size=1, pin_memory=False, known_negative_share=None):
        self.n_pos = positives_per_batch(batch_size, batch_ratio)
        mapped = [load_chunk(p, n, index.patch_size, mmap=True) for p, n in zip(index.paths, index.counts)]
        labels = torch.cat([c["label"] for c in mapped])
        del mapped  # rows are gathered one mapped chunk at a time: each unmapped before the next
        positives = (labels == LABEL_POSITIVE).nonzero().squeeze(1)
        known = (labels == LABEL_NEGATIVE).nonzero().squeeze(1)
        n_unlabeled = int((labels == LABEL_UNLABELED).sum())
        if not len(positives):
            raise InputError(f"{index.source}: split has no labeled positives; check the annotations / hide ratio")
        if not n_unlabeled + len(known):
            raise InputError(f"{index.source}: split has no unlabeled samples; PU training needs them (check the "
                             f"negative ratio / hide ratio of preprocessing)")
        self.n_unl, self.n_known, epoch_steps = non_positive_slots(batch_size - self.n_pos, known_negative_share,
                                                                   n_unlabeled, len(known), world_size)
        one_chunk = functools.lru_cache(maxsize=1)(lambda k: load_chunk(index.paths[k], index.counts[k],
                                                                        index.patch_size, mmap=True))
        self.pool = self._gather(one_chunk, index, positives, rank, world_size)
        self.known = self._gather(one_chunk, index, known, rank, world_size) if self.n_known else None
        streamed = (LABEL_UNLABELED,) if self.n_known else (LABEL_UNLABELED, LABEL_NEGATIVE)
        self.steps = steps_per_epoch or epoch_steps
        self.others = ChunkStream(index, self.n_unl, buffer_size, seed=seed, rank=rank, world_size=world_size,
                                  labels=streamed, repeat=True)
        self.seed, self.rank, self.pin_memory, self.epoch = seed, rank, use_pinned_memory(pin_memory), 0

    @staticmethod
    def _gather(one_chunk, index, rows, rank, world_size):
        """Rows (global indices) of this rank's share, in RAM, with their indices under "index"."""
        if len(rows) >= world_size:
            rows = rows[rank::world_size]
        pool = gather_rows(one_chunk, index.starts, rows, BATCH_KEYS)
        pool["index"] = rows
        return pool

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.others.set_epoch(epoch)

    def __len__(self):
        return self.steps

    def _draws(self, pool, n, stream):
        rows = torch.arange(len(pool["index"]))
        return draw_cycled(rows, self.steps * n, seeded_generator(self.seed, self.epoch, self.rank, stream)).view(
            self.steps, n)

    def __iter__(self):
        draws = self._draws(self.pool, self.n_pos, 3)
        known_draws = self._draws(self.known, self.n_known, 4) if self.n_known else [None] * self.steps
        with closing(iter(self.others)) as others:
            for rows, known_rows in zip(draws, known_draws):
                streamed = next(others)
                batch = empty_rows(self.pool, self.n_pos + self.n_unl + self.n_known, tuple(self.pool),
                                   self.pin_memory)
                for key, out in batch.items():
                    out[:self.n_pos] = self.pool[key][rows]
                    out[self.n_pos:self.n_pos + self.n_unl] = streamed[key]
                    if self.n_known:
                        out[self.n_pos + self.n_unl:] = self.known[key][known_rows]
                yield batch
