"""Reading checkpoint files safely: safetensors header checks and pickle refusal.

Pickled files (`.ckpt`, `.pt`, `.pth`, `.bin`) can run arbitrary code when unpickled. They are
read only with `torch.load(weights_only=True)`, torch's restricted unpickler that builds
tensors and plain containers and refuses every other global; a file that needs more is
refused with a message, never loaded another way.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from pathlib import Path

from fmn_desktop.fileio import pickled_bytes
from fmn_desktop.models.errors import ModelLoadError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER = 100_000_000  # safetensors' own limit


def read_safetensors_header(path: str | Path) -> dict:
    """Parse and check a safetensors header; raise ModelLoadError if the file is damaged.

    Checks the header length, the JSON, and that the data section is exactly as long as the
    tensors' offsets say (a truncated download fails here, before any tensor is read).
    Returns the header without `__metadata__`.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"not a file: {path}")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if pickled_bytes(head + fh.read(1)):
            raise ModelLoadError(
                f"{path.name} is a pickled (torch.save) file, not safetensors, whatever its "
                "name says; rename it to .ckpt to have it read with the restricted unpickler, "
                "or convert it with a tool you trust"
            )
        fh.seek(8)
        if len(head) < 8:
            raise ModelLoadError(
                f"{path.name} is empty or truncated ({size} bytes); not a safetensors file"
            )
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise ModelLoadError(
                f"{path.name} is truncated or not a safetensors file "
                f"(header says {n} bytes, file has {size})"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"{path.name}: the safetensors header is corrupt (not JSON)") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name}: the safetensors header is corrupt")
    header.pop("__metadata__", None)
    end = 0
    for name, info in header.items():
        try:
            start, stop = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ModelLoadError(f"{path.name}: corrupt entry for tensor {name!r}") from None
        end = max(end, int(stop))
    data = size - 8 - n
    if data < end:
        raise ModelLoadError(
            f"{path.name} is truncated: its tensors need {end:,} bytes of data but only {data:,} "
            "are present (an interrupted download or copy?)"
        )
    return header


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The `__metadata__` string map of a safetensors file (empty if none)."""
    from safetensors import safe_open

    read_safetensors_header(path)
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def checkpoint_keys(path: str | Path) -> list[str]:
    """Tensor names of a checkpoint without loading tensors (safetensors only)."""
    return list(read_safetensors_header(path).keys())


def load_pickle_state_dict(path: str | Path) -> dict:
    """Tensors of a pickled checkpoint, read with torch's restricted `weights_only` unpickler.

    Raises ModelLoadError when the pickle needs anything besides tensors and plain containers
    (which is also what a malicious `__reduce__` needs): it is never unpickled another way.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notices
            obj = torch.load(
                str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", str(exc))
        what = f" (it references {found[1]})" if found else ""
        raise ModelLoadError(
            f"refusing to unpickle {path.name}: it holds objects other than tensors, which "
            f"could run code when loaded{what}. Convert it to .safetensors with a tool you "
            "trust, or get a .safetensors release of this model"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path.name} is damaged or not a PyTorch checkpoint ({exc})"
        ) from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path.name} does not hold a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path.name} holds no tensors")
    return tensors
