"""Batches for training and evaluation, in the three loader modes, as uint8 tensors."""
import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.chunks.loader import CryoEMChunkedDataset, PUBatchSampler, open_chunk_dirs, refuse_beyond_memory
from datasets.chunks.stream import PUStream


class _BatchView:
    """Lets a DataLoader fetch whole batches: item = a LongTensor of indices -> get_batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, indices):
        return self.dataset.get_batch(indices)


class TrainBatches:
    """Exact-ratio PU batches for one epoch (seeded by the epoch), from memory/mmap or a stream."""

    def __init__(self, data_cfg, train_cfg, rank, world_size, num_workers, pin_memory):
        dirs, mode = data_cfg["data_dir"], data_cfg["loader_mode"]
        common = dict(batch_size=train_cfg["batch_size"], batch_ratio=tuple(data_cfg["batch_ratio"]),
                      steps_per_epoch=train_cfg["steps_per_epoch"], seed=train_cfg["seed"], rank=rank,
                      world_size=world_size, known_negative_share=data_cfg["known_negative_share"])
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.stream = self.dataset = self.sampler = None  # on_demand: a stream; else a dataset and its sampler
        if mode == "on_demand":
            self.stream = PUStream(open_chunk_dirs(dirs, "train"), buffer_size=data_cfg["shuffle_buffer"],
                                   pin_memory=pin_memory, **common)
            self.steps, self.patch_size = len(self.stream), self.stream.pool["patches"].shape[-1]
        else:
            self.dataset = CryoEMChunkedDataset(dirs, "train", mode=mode, pin_memory=pin_memory and not num_workers)
            if mode == "mmap":  # random batches over a split beyond memory would read from disk at random
                refuse_beyond_memory(self.dataset.index, mode)
            self.sampler = PUBatchSampler(self.dataset.labels, source=str(dirs), **common)
            self.steps, self.patch_size = len(self.sampler), self.dataset.index.patch_size
        source = self.stream if self.stream is not None else self.sampler
        if data_cfg["known_negative_share"] is not None and not source.n_known and rank == 0:
            print(f"data.known_negative_share {data_cfg['known_negative_share']}: the train split of {dirs} lacks known "
                  f"negatives (label -1) or unlabeled windows, so its non-positive windows are drawn as one pool")

    def epoch(self, epoch, skip=0):
        """The batches of `epoch`, the first `skip` left out (a resumed epoch)."""
        if self.stream is not None:
            self.stream.set_epoch(epoch)
            batches = iter(self.stream)
            for _ in range(skip):
                next(batches)
            return batches
        self.sampler.set_epoch(epoch)
        index_batches = list(self.sampler)[skip:]
        if not self.num_workers:
            return (self.dataset.get_batch(indices) for indices in index_batches)
        return iter(DataLoader(_BatchView(self.dataset), sampler=index_batches, batch_size=None,
                               num_workers=self.num_workers, pin_memory=self.pin_memory))


def eval_subset(dirs, split, max_samples, seed):
    """A split (mmap) and a fixed, seeded, sorted subset of at most max_samples of its indices."""
    dataset = CryoEMChunkedDataset(dirs, split, mode="mmap")
    n = len(dataset)
    if max_samples and n > max_samples:
        chosen = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        return dataset, torch.from_numpy(chosen)
    return dataset, torch.arange(n)
