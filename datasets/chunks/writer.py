"""Fixed-size, atomic, resumable chunk writing and the metadata.json that describes it.

The samples of a split arrive as an ordered stream, micrograph after micrograph. Every `chunk_size`
samples become `{split}_chunk_{k:04d}.pt`, written to `<name>.tmp` and moved into place with
`os.replace`; metadata.json is then rewritten the same way with a cursor (micrograph position, samples
of it already written). A resumed run regenerates the micrograph under the cursor (its RNG is seeded by
its index), skips what was written, and so produces byte-identical chunks to an uninterrupted run.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from common.config import diff_keys
from common.errors import InputError
from common.files import LOCK_FILE, atomic_path, atomic_write_json, file_crc32
from datasets.chunks.format import (CHUNK_DTYPES, METADATA, SAMPLE_TYPE_NAMES, SAMPLE_TYPES, SCHEMA_VERSION, chunk_name,
                                    load_metadata)
from datasets.io.layout import SPLITS


@contextmanager
def _without_crc32():
    """torch.save without a CRC32 per record, restored afterwards. The checksum is what makes saving a
    patch chunk slow (4x on 250 MB), and torch.load never checks it: it only serves unzip tools.
    A torch too old for the switch saves with the checksum."""
    if not hasattr(torch.serialization, "set_crc32_options"):
        yield
        return
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


# Settings that change no patch by themselves, so a resume takes them as given: the count behind pi, and the
# basis of the unlabeled windows (what it draws is `window_particles`, compared as any other key).
NO_PATCH_KEYS = ("expected_particles", "unlabeled_windows_per")


def resume_hint(differing, old_config):
    """The fix for a refused resume: --no-resume, or for a new count over windows drawn per labeled
    particle, keeping them with the labeled basis (pi is then recomputed over them)."""
    if differing == ["window_particles"] and old_config.get("window_particles") is None:
        return ("the unlabeled windows there were drawn per labeled particle, a count draws them per expected "
                "particle: use --no-resume to redraw them, or keep them and recompute pi only with "
                "--set preprocessing.unlabeled_windows_per=labeled")
    return "use --no-resume to overwrite it or another --output-dir"


def own_files(metadata):
    """The names a preprocessing tool may delete or overwrite in its output dir: the files its metadata
    lists, the next chunk of each split (written, or being written, when a run was killed), their
    temporary names, metadata.json and the lock file. Nothing else is ever touched."""
    names = {METADATA, LOCK_FILE}
    for split in SPLITS:
        chunks = (metadata or {}).get("splits", {}).get(split, {}).get("chunks", [])
        names |= {entry["file"] for entry in chunks} | {chunk_name(split, len(chunks))}
    return names | {name + ".tmp" for name in names}


def prepare_output_dir(output_dir, tool, config, facts, resume):
    """Load the metadata to resume from (or None to start fresh), refusing anything unsafe.

    Refuses: a dir holding another tool's chunks or files this tool did not write (`own_files`);
    resuming with a config or preprocessing facts that differ (names the keys; a setting that only
    changes no patch, `NO_PATCH_KEYS`, is taken as given and pi recomputed). `resume=False`
    deletes only this tool's own files. Leftover temporary files of a killed run are removed.
    """
    output_dir = Path(output_dir)
    meta_path = output_dir / METADATA
    metadata = load_metadata(meta_path) if meta_path.exists() else None
    if metadata is not None and metadata.get("tool") != tool:
        raise InputError(f"{output_dir} holds chunks written by {metadata.get('tool', 'another tool')}, "
                         f"not {tool}; choose another --output-dir")
    ours = own_files(metadata)
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in ours)
    if foreign:
        raise InputError(f"{output_dir} holds files that {tool} did not write (e.g. {foreign[0]}); "
                         f"choose an empty or new --output-dir")
    for path in output_dir.iterdir():
        if path.name.endswith(".tmp") or (not resume and path.name != LOCK_FILE):
            path.unlink()
    if not resume:
        return None
    if metadata is not None:
        differing = [key for key in diff_keys({**metadata["config"], **metadata.get("facts", {})},
                                              {**config, **facts.to_dict()}) if key not in NO_PATCH_KEYS]
        if differing:
            raise InputError(f"{output_dir} was written with a different config ({', '.join(differing)}); "
                             f"{resume_hint(differing, metadata['config'])}")
    return metadata


class ChunkStore:
    """Owns an output dir: the metadata, the chunk files and the per-split cursor.

    Each chunk's CRC-32 is computed from the file just written, in a background thread, so it costs
    nothing where a core is free; it enters metadata.json with the first save after it is ready, and
    `save(wait=True)` (the run's last) waits for all. A resumed run checksums chunks a kill left without one.
    """

    def __init__(self, output_dir, tool, config, facts, micrographs, metadata=None):
        self.output_dir = Path(output_dir)
        self.chunk_size = int(config["chunk_size"])
        self.metadata = metadata or {
            "schema_version": SCHEMA_VERSION, "tool": tool, "complete": False, "config": config,
            "facts": facts.to_dict(), "micrographs": micrographs, "splits": {}, "priors": {},
            "resume": {"micrographs_done": 0}, "skipped_micrographs": []}
        self.hasher, self.pending = ThreadPoolExecutor(max_workers=1), []
        for state in self.metadata["splits"].values():
            for entry in state["chunks"]:
                if entry.get("crc32") is None:
                    self._checksum(entry)

    def _checksum(self, entry):
        entry["crc32"] = None
        self.pending.append((entry, self.hasher.submit(file_crc32, self.output_dir / entry["file"])))

    def split_state(self, split):
        return self.metadata["splits"].setdefault(split, {
            "chunks": [], "counts": {name: 0 for name in SAMPLE_TYPES}, "count": 0,
            "cursor": {"position": 0, "offset": 0}, "complete": False})

    def save(self, wait=False):
        """Rewrite metadata.json with the checksums ready by now (all of them with `wait`)."""
        for entry, checksum in [item for item in self.pending if wait or item[1].done()]:
            entry["crc32"] = checksum.result()
            self.pending.remove((entry, checksum))
        self.metadata["resume"]["micrographs_done"] = sum(
            1 for m in self.metadata["micrographs"] if m.get("status") in ("done", "skipped"))
        atomic_write_json(self.output_dir / METADATA, self.metadata)

    def write_chunk(self, split, samples, cursor):
        """Write one chunk atomically, record it and the cursor, then rewrite metadata.json."""
        state = self.split_state(split)
        name = chunk_name(split, len(state["chunks"]))
        path = self.output_dir / name
        tensors = {key: torch.from_numpy(np.ascontiguousarray(samples[key])).to(dtype)
                   for key, dtype in CHUNK_DTYPES.items()}
        with _without_crc32(), atomic_path(path) as tmp:
            torch.save(tensors, tmp)
        counts = {name: int(np.sum(samples["sample_type"] == code)) for code, name in SAMPLE_TYPE_NAMES.items()}
        state["chunks"].append({"file": name, "count": int(len(samples["label"])), "counts": counts})
        self._checksum(state["chunks"][-1])  # read back from the page cache it was just written to
        state["count"] += int(len(samples["label"]))
        for key, value in counts.items():
            state["counts"][key] += value
        state["cursor"] = dict(cursor)
        self.save()


class SplitStream:
    """Feeds one split's ordered micrograph samples into fixed-size chunks, honouring the cursor.

    Samples are copied into one chunk-sized buffer per key, allocated at the first feed and reused for
    every chunk of the split (a fresh 330 MB array per chunk costs its page faults again each time)."""

    def __init__(self, store, split):
        self.store, self.split = store, split
        self.state = store.split_state(split)
        self.buffer, self.buffered = None, 0

    @property
    def resume_position(self):
        return self.state["cursor"]["position"]

    def feed(self, position, samples):
        """Add micrograph `position`'s samples (dict of arrays); writes every full chunk."""
        n = len(samples["label"])
        start = self.state["cursor"]["offset"] if position == self.resume_position and not self.buffered else 0
        while start < n:
            take = min(n - start, self.store.chunk_size - self.buffered)
            self._append({k: v[start:start + take] for k, v in samples.items()})
            start += take
            if self.buffered == self.store.chunk_size:
                cursor = {"position": position + 1, "offset": 0} if start == n else \
                    {"position": position, "offset": start}
                self._flush(cursor)

    def _append(self, part):
        if self.buffer is None:
            self.buffer = {k: np.empty((self.store.chunk_size, *v.shape[1:]), v.dtype) for k, v in part.items()}
        n = len(part["label"])
        for key, values in part.items():
            self.buffer[key][self.buffered:self.buffered + n] = values
        self.buffered += n

    def _flush(self, cursor):
        self.store.write_chunk(self.split, {k: v[:self.buffered] for k, v in self.buffer.items()}, cursor)
        self.buffered = 0

    def finish(self, n_positions):
        """Write the last, partial chunk and mark the split complete."""
        if self.buffered:
            self._flush({"position": n_positions, "offset": 0})
        self.buffer = None
        self.state["cursor"] = {"position": n_positions, "offset": 0}
        self.state["complete"] = True
        self.store.save()
