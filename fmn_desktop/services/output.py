"""Where results go: the one policy for output paths of every action.

An existing file (or model folder) is replaced only when the caller says so (`overwrite`:
the CLI's `--overwrite`, the app after its save dialog asked); a path that is a folder where
a file is wanted, or a folder that cannot be written, is refused before any work is done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from fmn_desktop.errors import FmnError

OVERWRITE_HINT = "--overwrite replaces it"


class OutputPathError(FmnError):
    """The output path is the wrong kind of thing: a folder where a file goes, or the reverse."""


class OutputExistsError(OutputPathError):
    """The output path exists and replacing it was not asked for."""


def _writable_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():  # folders are created on the way: check the first that exists
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise FmnError(f"cannot write {path}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise FmnError(f"cannot write {path}: folder {probe} is not writable")


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse `path` as a file to write: a folder, an unwritable place, or an existing file
    without `overwrite`."""
    path = Path(path)
    if str(path).strip() == "":
        raise FmnError("no output file given")
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists ({OVERWRITE_HINT})")
    _writable_parent(path)
    return path


def check_output_model(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """`check_output_file` for a model: `.safetensors` is one file, anything else a diffusers
    folder (an existing non-empty one is replaced only with `overwrite`, and only if it is a
    model folder)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return check_output_file(path, overwrite)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} is a file; a diffusers model is written as a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{path} exists and is not empty ({OVERWRITE_HINT})")
        if not (path / "model_index.json").is_file():
            raise OutputPathError(f"{path} is not a diffusers model folder; it is never replaced")
    _writable_parent(path)
    return path


@contextlib.contextmanager
def scratch_file(folder: str | os.PathLike, name: str = "patch.safetensors") -> Iterator[Path]:
    """A temporary file name in `folder` (the registry a result is registered into), removed
    when the block ends; one a killed process leaves is swept at the next registry open."""
    from fmn_desktop.fileio import temp_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = temp_path(folder / name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
