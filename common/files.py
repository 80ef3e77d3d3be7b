"""Safe writing: atomic files (fsynced), one advisory lock per output folder, one error for a full disk;
and run facts (git sha, peak memory, bytes on disk)."""
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import time
import zlib
from pathlib import Path

from common.errors import InputError

LOCK_FILE = ".lock"
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DENIED_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def write_failure(exc, path):
    """The one-line InputError for a write that failed for want of space or permission, else None.

    torch.save reports a full disk as a RuntimeError, not ENOSPC: then the free space tells why.
    """
    folder = Path(path).parent
    code = getattr(exc, "errno", None)
    if code in DENIED_ERRNOS:
        return InputError(f"cannot write {path}: permission denied; choose a folder you can write to")
    if code in FULL_DISK_ERRNOS or (isinstance(exc, (OSError, RuntimeError)) and folder.is_dir()
                                    and shutil.disk_usage(folder).free < (1 << 20)):
        return InputError(f"disk full while writing {path}; free space and rerun the same command to resume "
                          f"(what was written before is intact)")
    return None


@contextlib.contextmanager
def atomic_path(path):
    """Yield the temporary path `<path>.tmp` for any writer that takes a path; on success the file is
    fsynced and moved onto `path` with os.replace, so a reader (or a kill, or a full disk) never finds
    half a file under `path`. On any failure the temporary file is removed and `path` keeps what it held.

    The one way every tool writes a file it may later read back: chunks, metadata, checkpoints,
    configs, results, pick files and manifests (`atomic_write` for writers that take an open file).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        failure = write_failure(exc, path)
        if failure is None:
            raise
        raise failure from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """`atomic_path` for writers that take an open file: yields `<path>.tmp` opened in `mode`."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


class FolderBusy(InputError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder, tool, shared=False, name=LOCK_FILE):
    """Hold an advisory lock (fcntl.flock on `<folder>/<name>`, `.lock` by default) while `tool` writes `folder`:
    exclusive, or `shared` with other shared holders (shards of one job writing files of their own).

    A writer that cannot have it gets a one-line InputError naming the holder (tool, pid, start time)
    instead of mixing its files in. The lock goes with the process, so a killed writer never leaves it held.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / name, "a+")
    except OSError as exc:
        raise write_failure(exc, folder / name) or exc
    with handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.readline().strip() or "another process"
            raise FolderBusy(f"{folder} is being written by {holder}; wait for it to finish or choose another "
                             f"output folder") from None
        if not shared:
            handle.seek(0)
            handle.truncate()
        handle.write(f"{tool} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        handle.flush()
        yield


def atomic_write_text(path, text):
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes (hashlib.file_digest reads it in blocks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_crc32(path) -> str:
    """CRC-32 of a file's bytes as 8 hex digits: catches any damaged or changed byte run by accident
    (a bad disk, a truncated copy, another writer) at twice the speed of sha256."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


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


def memory_cgroup_folders():
    """(folder, limit file) of each memory cgroup this process is in: cgroup v2's `memory.max` and/or
    v1's `memory.limit_in_bytes`, from /proc/self/cgroup."""
    folders = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            folders.append((Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"))
        elif "memory" in controllers.split(","):
            folders.append((Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"))
    return folders


def _cgroup_memory_limit():
    """This process's memory cgroup limit in bytes, or None where it has none."""
    for folder, name in memory_cgroup_folders():
        text = (folder / name).read_text().strip() if (folder / name).is_file() else "max"
        if text != "max" and int(text) < (1 << 60):
            return int(text)
    return None


def memory_available_bytes():
    """Memory this process can still fill: the kernel's MemAvailable, capped by a memory cgroup's limit;
    None where the system does not say (no /proc)."""
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) * 1024
        limit = _cgroup_memory_limit()
    except (OSError, KeyError, ValueError):
        return None
    return available if limit is None else min(available, limit)


def bytes_on_disk(paths):
    return sum(Path(p).stat().st_size for p in paths if Path(p).exists())


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
