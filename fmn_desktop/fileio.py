"""Atomic file writes and their temporary files, shared by every writer (no torch here).

A write goes to a temporary file (or folder) beside the target, is flushed and fsynced,
renamed over the target, and the folder is fsynced: a process killed at any moment leaves
the old file or the new one, never half of one.

Every temporary has one recognisable name, ``.fmn-tmp-<pid>-<random>-<target name>``: it is
removed when the write fails (exceptions, Ctrl-C, and SIGTERM once `terminate_as_exception`
is in force), and what a `kill -9` left is removed by `sweep` the next time something is
written into that folder (or the registry is opened): a temporary whose writer is no longer
running on this machine, or that has not changed for `STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".fmn-tmp-"
_TMP_RE = re.compile(r"^\.fmn-tmp-(\d+)-([0-9a-f]{8})-")
STALE_AFTER_S = 600.0  # a temporary untouched this long is left over, whoever wrote it
_MAX_NAME = 200  # keep temporary names well under the usual 255-byte limit


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded then): os.umask can only be read by setting it.
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK


# --------------------------------------------------------------------------- temporaries
def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temporary name beside `target` (nothing is created)."""
    target = Path(target)
    name = target.name.encode("utf-8", "surrogateescape")[: _MAX_NAME - 30]
    stem = name.decode("utf-8", "ignore")
    return target.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{stem}")


def is_temporary(name: str) -> bool:
    return _TMP_RE.match(name) is not None


def pid_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there
        return True
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
    return newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def stale_temporaries(
    folder: str | os.PathLike, stale_after_s: float = STALE_AFTER_S
) -> list[Path]:
    """Temporaries in `folder` whose writer is gone (dead pid) or untouched for a while."""
    folder = Path(folder)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    out = []
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if m is None:
            continue
        path = Path(entry.path)
        try:
            dead = int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1)))
            old = now - _newest_mtime(path) >= stale_after_s
        except OSError:
            continue  # gone already
        if dead or old:
            out.append(path)
    return out


def sweep(folder: str | os.PathLike, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the left-over temporaries of `folder` (see `stale_temporaries`); never fails."""
    removed = []
    for path in stale_temporaries(folder, stale_after_s):
        with contextlib.suppress(OSError):
            _remove(path)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------- sniffing
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, torch's zip container


def pickled_bytes(head: bytes) -> bool:
    """Whether a file starting with `head` (9+ bytes) is a pickle or torch zip, not a
    safetensors file (whose header length may start with 0x80, but whose byte 8 is "{")."""
    if len(head) > 8 and head[8:9] == b"{":
        return False
    return head[:1] == PICKLE_MAGIC[0] or head[:4] == PICKLE_MAGIC[1]


def looks_pickled(path: str | os.PathLike) -> bool:
    """`pickled_bytes` of a file's first bytes (False when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return pickled_bytes(fh.read(9))
    except OSError:
        return False


# --------------------------------------------------------------------------- atomic writes
def _prepare(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that wants a file name (e.g.
    safetensors' `save_file`); when the block succeeds the file is fsynced, given the usual
    mode (0666 less the umask) and renamed over `path`; when it fails it is removed."""
    path = Path(path)
    _prepare(path)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    path = Path(path)
    _prepare(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside `path` to fill; when the block succeeds it is
    renamed to `path` (an existing `path` is refused unless `replace`: then the old folder
    is moved aside and deleted once the new one is in place); when it fails it is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp = temp_path(path)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if path.exists():
            if not replace and any(path.iterdir()):
                raise FileExistsError(17, "exists and is not empty", str(path))
            old = temp_path(path)
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        _remove(tmp)
        if old is not None and not path.exists():
            os.rename(old, path)  # put the old folder back
            old = None
        raise
    finally:
        if old is not None:
            _remove(old)
    fsync_dir(path.parent)


# --------------------------------------------------------------------------- signals
class Terminated(BaseException):
    """SIGTERM (or SIGHUP) received: unwinds like Ctrl-C, so temporaries are removed."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP raise `Terminated` in the main thread instead of
    ending the process on the spot (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    wanted = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {}
    for name in wanted:
        sig = getattr(signal, name)
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
