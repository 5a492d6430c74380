"""Reading a safetensors header without torch: metadata, tensor list, and a size check.

A file whose data is shorter than its header promises (a truncated copy) is refused here,
before anything is stored.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from fmn_desktop.fileio import pickled_bytes
from fmn_desktop.registry.errors import RegistryError

MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}


def parse_header(data: bytes, what: str = "file") -> Header:
    """Parse and validate a whole safetensors file held in memory."""
    if pickled_bytes(data[:9]):
        raise RegistryError(
            f"{what} is a pickled (torch.save) file: it is never loaded, since unpickling can "
            "run code; convert it to .safetensors with a tool you trust"
        )
    if len(data) < 8:
        raise RegistryError(f"{what} is not a safetensors file (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER or 8 + n > len(data):
        raise RegistryError(f"{what} is not a safetensors file or is truncated (header length {n})")
    try:
        raw = json.loads(data[8 : 8 + n].decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise RegistryError(f"{what} has an unreadable safetensors header ({exc})") from exc
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise RegistryError(f"{what}: safetensors metadata must map strings to strings")
    end = 0
    for name, info in raw.items():
        try:
            start, stop = info["data_offsets"]
            end = max(end, int(stop))
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"{what}: tensor {name!r} has no valid data offsets") from exc
    if 8 + n + end != len(data):
        raise RegistryError(
            f"{what} is truncated or padded: its header promises {8 + n + end} bytes, "
            f"the file has {len(data)}"
        )
    if not raw:
        raise RegistryError(f"{what} holds no tensors")
    return Header(metadata=metadata, tensors=raw)
