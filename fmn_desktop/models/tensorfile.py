"""safetensors files read and written one tensor at a time, without memory maps.

Loading a checkpoint with `safetensors.torch.load_file` maps the file and copies every tensor
out of the map: the mapped pages count as resident memory beside the copies, so the process
peaks near twice the weights. Here each tensor is read with plain file reads straight into
the buffer it will live in (the page cache is not part of the process), and files are written
from a header computed up front, then tensor by tensor, so a whole model never needs a second
copy in memory.

The layout is safetensors' own: an 8-byte little-endian header length, a JSON header (padded
with spaces to a multiple of 8 bytes) mapping names to dtype, shape and data offsets, then the
tensors' bytes back to back.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from fmn_desktop.fileio import atomic_path
from fmn_desktop.models.checkpoint import read_safetensors_header
from fmn_desktop.models.errors import ModelLoadError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor will be in a file: its dtype and shape."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _spec_of(name: str, info: dict, path: Path) -> TensorSpec:
    try:
        dtype = DTYPES[info["dtype"]]
        shape = tuple(int(n) for n in info["shape"])
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"{path.name}: unsupported or corrupt tensor entry {name!r}") from None
    return TensorSpec(dtype, shape)


def _data_start(path: Path) -> int:
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return 8 + n


def read_tensors(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of a safetensors file (or just `names`), in file order.

    Each tensor is a fresh CPU tensor filled by a file read (no memory map). `dtype` casts
    floating tensors as they are read (one tensor at a time). The header is checked first
    (a truncated file fails before anything is read).
    """
    path = Path(path)
    header = read_safetensors_header(path)
    wanted = set(header) if names is None else set(names)
    missing = wanted - set(header)
    if missing:
        raise ModelLoadError(f"{path.name} lacks tensor {sorted(missing)[0]!r}")
    order = sorted(wanted, key=lambda n: int(header[n]["data_offsets"][0]))
    start = _data_start(path)
    with path.open("rb", buffering=0) as fh:
        for name in order:
            info = header[name]
            spec = _spec_of(name, info, path)
            begin, end = (int(x) for x in info["data_offsets"])
            if end - begin != spec.nbytes:
                raise ModelLoadError(
                    f"{path.name}: tensor {name!r} has {end - begin} bytes, its shape needs "
                    f"{spec.nbytes}"
                )
            raw = torch.empty(spec.nbytes, dtype=torch.uint8)
            if spec.nbytes:
                fh.seek(start + begin)
                view = memoryview(raw.numpy())
                got = 0
                while got < spec.nbytes:  # readinto may return less than asked
                    n = fh.readinto(view[got:])
                    if not n:
                        raise ModelLoadError(f"{path.name} is truncated (in {name!r})")
                    got += n
            tensor = raw.view(spec.dtype).reshape(spec.shape)
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            yield name, tensor


def load_tensors(
    path: str | os.PathLike,
    names: Iterable[str] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (or just `names`) as a dict, read without a memory
    map: about the tensors' own size in memory, not twice it."""
    return dict(read_tensors(path, names, dtype))


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write_tensors(
    path: str | os.PathLike,
    specs: Mapping[str, TensorSpec],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    check: Callable[[str, torch.Tensor], None] | None = None,
) -> Path:
    """Write a safetensors file tensor by tensor, atomically.

    `specs` fixes every tensor's name, dtype and shape up front (the header comes first in
    the file); `produce(name)` is then called once per name, in the file's order, and must
    return a tensor of exactly that spec: only one tensor needs to be in memory at a time.
    `check(name, tensor)` may raise to abandon the write (nothing is left under `path`).
    Tensors are stored widest element first, so each starts at an offset that is a
    multiple of its element size, as safetensors' own writer does.
    """
    path = Path(path)
    order = sorted(specs, key=lambda n: (-specs[n].dtype.itemsize, n))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name in order:
        spec = specs[name]
        if spec.dtype not in CODES:
            raise ValueError(f"{name}: dtype {spec.dtype} cannot be stored in safetensors")
        header[name] = {
            "dtype": CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(raw)))
            fh.write(raw)
            for name in order:
                spec = specs[name]
                tensor = produce(name)
                if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                    raise ValueError(
                        f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, the header says "
                        f"{spec.dtype} {spec.shape}"
                    )
                if check is not None:
                    check(name, tensor)
                if spec.nbytes:
                    fh.write(_as_bytes(tensor))
                del tensor
    return path
