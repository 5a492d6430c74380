"""A patch file's summary without torch (`fmn inspect` starts in a fraction of a second).

The header gives the metadata, the keys and every tensor's dtype and shape; numpy reads the
values for the checks `load_patch` makes (finite factors, a finite product) and for the
norm of the change. The rules are `layout`'s, shared with `load_patch`. A file whose tensors
numpy cannot hold (bfloat16) gets `None`: the caller reads it with torch.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from typing import Any

from fmn_desktop.errors import NonFinitePatchError, PatchFormatError
from fmn_desktop.patch.layout import (
    check_alpha_form,
    check_factors,
    check_form,
    check_patch_path,
    check_rank_nonzero,
    group_keys,
    meta_fields,
)

# safetensors dtype codes numpy reads, by the names torch gives them.
NUMPY_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
}
STAT_DTYPES = {"float16": 2, "float32": 4, "bfloat16": 2, "int64": 8}


def summarize(path: str | os.PathLike) -> dict[str, Any] | None:
    """format, tensors, parameters, ranks, norm (Frobenius norm of every dense change) and
    the metadata fields of a patch file; PatchFormatError for what `load_patch` refuses;
    None when a tensor's dtype is not one numpy reads."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    path = check_patch_path(path)
    name = path.name
    try:
        fh = safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PatchFormatError(f"{name} is not a readable safetensors file ({exc})") from exc
    with fh:
        meta = dict(fh.metadata() or {})
        keys = list(fh.keys())
        if not keys:
            raise PatchFormatError(f"{name} holds no tensors")
        codes = {k: fh.get_slice(k).get_dtype() for k in keys}
        if any(c not in NUMPY_DTYPES for c in codes.values()):
            return None
        try:
            arrays = {k: fh.get_tensor(k) for k in keys}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PatchFormatError(f"{name}: truncated or corrupt tensor data ({exc})") from exc
    groups = group_keys(keys, name)
    fields = meta_fields(meta)
    _check_stats(meta)

    tensors = parameters = 0
    ranks: set[int] = set()
    square_sum = 0.0
    lora = True
    with np.errstate(all="ignore"):  # overflow is what the checks below look for
        for module_key, parts in groups.items():
            at = f"{name}: {module_key[len('lora_unet_') :]}"
            if "lora_up.weight" in parts:
                up, down = arrays[parts["lora_up.weight"]], arrays[parts["lora_down.weight"]]
                alpha = None
                if "alpha" in parts:
                    alpha = _alpha(arrays[parts["alpha"]], f"{name}: {module_key}")
                check_rank_nonzero(down.shape, f"{at}.weight")
                _float(up, f"{at}.weight", "lora_up")
                _float(down, f"{at}.weight", "lora_down")
                check_factors(up.shape, down.shape, f"{at}.weight")
                rank = int(down.shape[0])
                scale = np.float32((alpha if alpha is not None else rank) / rank)
                dense = (
                    up.astype(np.float32).reshape(up.shape[0], -1)
                    @ down.astype(np.float32).reshape(rank, -1)
                ) * scale
                if not np.isfinite(dense).all():
                    raise NonFinitePatchError(
                        f"{at}.weight: lora_up x lora_down x alpha/rank overflows to inf or NaN"
                    )
                square_sum += float(np.square(dense.astype(np.float64)).sum())
                tensors += 1
                parameters += up.size + down.size
                ranks.add(rank)
            for part, leaf in (("diff", "weight"), ("diff_b", "bias")):
                if part in parts:
                    dense = arrays[parts[part]]
                    _float(dense, f"{at}.{leaf}", "delta")
                    square_sum += float(
                        np.square(dense.astype(np.float32).astype(np.float64)).sum()
                    )
                    tensors += 1
                    parameters += dense.size
                    lora = False
    return {
        "format": "lora" if lora else "diff",
        "tensors": tensors,
        "parameters": int(parameters),
        "ranks": sorted(ranks),
        "norm": math.sqrt(square_sum),
        **fields,
    }


def _float(a, where: str, what: str) -> None:
    import numpy as np

    check_form(a.dtype.name, a.shape, where, what)
    if not np.isfinite(a).all():
        raise NonFinitePatchError(f"{where}: {what} contains NaN or inf")


def _alpha(a, where: str) -> float:
    check_alpha_form(a.dtype.name, a.shape, where)
    value = float(a.reshape(()))
    if not math.isfinite(value):
        raise NonFinitePatchError(f"{where}: alpha is {value}")
    return value


def _check_stats(meta: dict[str, str]) -> None:
    """The encoded tensors of the metadata (`format.decode_tensor`'s format) are well formed."""
    for key, text in meta.items():
        if not key.startswith("fmn.stats."):
            continue
        try:
            obj = json.loads(text)
            size = STAT_DTYPES[obj["dtype"]]
            raw = base64.b64decode(obj["b64"], validate=True)
            count = 1
            for n in obj["shape"]:
                if not isinstance(n, int) or n < 0:
                    raise ValueError(f"bad shape {obj['shape']}")
                count *= n
            if len(raw) != count * size:
                raise ValueError(f"{len(raw)} bytes for shape {obj['shape']}")
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
            raise PatchFormatError(
                f"patch metadata {key!r} is not a valid encoded tensor ({exc})"
            ) from exc
