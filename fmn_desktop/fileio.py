"""Atomic file writes, shared by patch files, exports and the registry's store (no torch here).

A write goes to a temporary file beside the target, is flushed and fsynced, renamed over the
target, and the folder is fsynced: a process killed at any moment leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import (single-threaded then): os.umask can only be read by setting it.
_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, tmp_prefix: str | None = None) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = tmp_prefix or f".{path.name}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file private (0600); a written file gets the usual mode.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
