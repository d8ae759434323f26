"""Files that are never half written: a crash, a kill or a full disk leaves the old file (or none).

    with atomic_path("run.safetensors") as tmp:   # write to tmp, a sibling of the target
        save_file(state, str(tmp))
    atomic_write("run.json", json.dumps(record))   # text or bytes in one call
    check_writable("outputs/run")                  # fail now, not after hours of training

The data go to a temporary file in the target's folder, ``.<name>.<host>-<pid>.<random>.tmp``,
are flushed to disk, and only then replace the target with ``os.replace`` (atomic on POSIX and
Windows); on any error the temporary file is removed and the error propagates with the target's
name in it. The new file gets the mode the replaced file had, or, for a new file, the mode the
umask gives (``0o666 & ~umask``, like ``open``), never a private 0600.

A kill between the two steps leaves the temporary file behind. Each later write into the same
folder removes such leftovers of this package's naming only, and only when they are provably
stale: written by a process of this host that no longer runs, or (another host's, or named
without a process id by an older version) untouched for ``STALE_AFTER_S`` seconds. A concurrent
writer's file is never touched: its process is alive, and it is younger than an hour, since
writing keeps its modification time fresh.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

STALE_AFTER_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_RANDOM = r"[a-z0-9_]{8}"  # tempfile.mkstemp's random part
_WITH_PID = re.compile(rf"^\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.{_RANDOM}\.tmp$")
_WITHOUT_PID = re.compile(rf"^\..+\.{_RANDOM}\.tmp$")  # written by an older version


def _umask() -> int:
    """This process's umask, read without changing it where Linux allows (/proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (True when it cannot be told)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


def _stale(entry: os.DirEntry[str], now: float) -> bool:
    """Whether ``entry`` is a leftover temporary file of this module (module docstring)."""
    ours = _WITH_PID.match(entry.name)
    if ours is None and _WITHOUT_PID.match(entry.name) is None:
        return False
    try:
        if not entry.is_file(follow_symlinks=False):
            return False
        if ours is not None and ours["host"] == _HOST and not _alive(int(ours["pid"])):
            return True
        return now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove this module's stale temporary files in ``folder`` (module docstring); returns them.
    Errors (another process removed one first, no permission) are ignored."""
    removed, now = [], time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and _stale(entry, now):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write to; on success it becomes ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    prefix = f".{path.name}.{_HOST}-{os.getpid()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with contextlib.suppress(OSError, NotImplementedError):
            os.chmod(fd if os.chmod in os.supports_fd else name, mode)
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # what was written reaches the disk before the rename
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def check_writable(folder: str | Path, fix: str = "") -> Path:
    """Create ``folder`` if needed and write, sync and delete a small probe file in it, so that a
    read-only or full folder fails before a long run, not after it. Returns the folder.

    Raises ``OSError`` (its errno kept) naming the folder, followed by ``fix``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check.") as probe:
            probe.write(bytes(4096))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        message = f"cannot write to {folder}: {err.strerror or err}" + (f"; {fix}" if fix else "")
        raise OSError(err.errno, message) from err
    return folder
