"""Content-addressed patch files: `<registry>/patches/<sha[:2]>/<sha256>.safetensors`.

A file is written to a temporary name beside its final one, fsynced, then renamed, so the
store holds whole files only; the name is the hash of the bytes, so a file is never rewritten.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from fmn_desktop.fileio import TMP_PREFIX, atomic_write_bytes

SUFFIX = ".safetensors"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PatchStore:
    """Files by sha256 under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}{SUFFIX}"

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes, sha: str | None = None) -> tuple[str, bool]:
        """Store `data`; returns (sha256, whether a new file was written)."""
        sha = sha or sha256_bytes(data)
        final = self.path(sha)
        if final.is_file() and final.stat().st_size == len(data):
            return sha, False
        atomic_write_bytes(final, data)
        return sha, True

    def read(self, sha: str) -> bytes:
        return self.path(sha).read_bytes()

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)

    def files(self) -> dict[str, Path]:
        """sha -> path of every stored file."""
        if not self.root.is_dir():
            return {}
        return {p.name[: -len(SUFFIX)]: p for p in self.root.glob(f"??/*{SUFFIX}")}

    def temporaries(self, older_than_s: float = 0.0) -> list[Path]:
        """Leftover temporary files (a writer killed mid-write), older than `older_than_s`
        (ours, and the `.<sha>.<random>.tmp` names older versions wrote)."""
        if not self.root.is_dir():
            return []
        now = time.time()
        found = [*self.root.glob(f"??/{TMP_PREFIX}*"), *self.root.glob("??/.*.tmp")]
        out = []
        for p in found:
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    out.append(p)
            except OSError:
                continue
        return out

    def sweep(self) -> list[Path]:
        """Remove the temporaries of writers that are gone (see `fileio.sweep`)."""
        from fmn_desktop.fileio import sweep

        if not self.root.is_dir():
            return []
        return [p for sub in self.root.glob("??") if sub.is_dir() for p in sweep(sub)]
