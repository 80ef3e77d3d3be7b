"""Micrographs processed in a process pool, their results handed back in order through shared memory.

Workers are forked and do numpy/Pillow/scipy work only; `ordered_results` yields their results in
input order, so what is written never depends on the number of workers.
"""
import shutil
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

from common.errors import InputError


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
