"""Atomic writes (one helper, fsynced) and run facts (git sha, peak memory, bytes on disk)."""
import contextlib
import json
import os
import resource
import subprocess
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield the temporary path `<path>.tmp` for any writer that takes a path; on success the file is
    fsynced and moved onto `path` with os.replace, so a reader (or a kill, or a full disk) never finds
    half a file under `path`. On any failure the temporary file is removed and `path` keeps what it held.

    The one way every tool writes a file it may later read back: chunks, metadata, checkpoints,
    configs, results, pick files and manifests (`atomic_write` for writers that take an open file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`atomic_path` for writers that take an open file: yields `<path>.tmp` opened in `mode`."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def atomic_write_text(path, text):
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def git_sha(repo_dir=None):
    """The commit the code runs at ('unknown' outside a git checkout)."""
    repo_dir = repo_dir or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def peak_rss_mb():
    """Peak resident memory of this process and of its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def bytes_on_disk(paths):
    return sum(Path(p).stat().st_size for p in paths if Path(p).exists())


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
