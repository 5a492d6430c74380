"""The layout of a patch file, without torch: which keys form a delta, which dtypes and shapes
a delta's tensors may have, and the metadata fields. One set of rules for the reader that
loads tensors (`format.load_patch`, `validate`) and the one that only summarises a file
(`summary`, for `fmn inspect`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmn_desktop.errors import PatchFormatError
from fmn_desktop.fileio import looks_pickled

LORA_PREFIX = "lora_unet_"
FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
PARTS = ("lora_down.weight", "lora_up.weight", "alpha", "diff", "diff_b")
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}


def check_patch_path(path: str | os.PathLike) -> Path:
    """`path` as a Path, refused when it is a folder, missing, or a pickled file."""
    path = Path(path)
    if path.is_dir():
        raise PatchFormatError(f"{path} is a folder, not a patch file")
    if not path.is_file():
        raise PatchFormatError(f"no such patch file: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES or looks_pickled(path):
        raise PatchFormatError(
            f"{path.name} is a pickled (torch.save) file: pickled files are never loaded "
            "(they can run code); convert it to .safetensors with a tool you trust"
        )
    return path


def group_keys(keys, where: str) -> dict[str, dict[str, str]]:
    """kohya module key -> {part ("lora_up.weight", "diff", ...): tensor key}, refusing keys
    that are not UNet deltas, unpaired LoRA factors, LoRA and diff of one module, and
    unknown parts."""
    grouped: dict[str, dict[str, str]] = {}
    for key in keys:
        if not key.startswith(LORA_PREFIX):
            raise PatchFormatError(
                f"{where}: key {key!r} is not a UNet LoRA/diff key "
                f"(expected '{LORA_PREFIX}...'); text-encoder patches are not supported"
            )
        module_key, _, suffix = key.partition(".")
        grouped.setdefault(module_key, {})[suffix] = key
    for module_key, parts in grouped.items():
        if {"lora_down.weight", "lora_up.weight", "alpha"} & set(parts):
            if "lora_up.weight" not in parts or "lora_down.weight" not in parts:
                raise PatchFormatError(
                    f"{where}: {module_key}: lora_down and lora_up come in pairs"
                )
            if "diff" in parts:
                raise PatchFormatError(f"{where}: {module_key}: both LoRA and diff")
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise PatchFormatError(f"{module_key}: unsupported tensors {sorted(unknown)}")
    return grouped


def check_form(dtype: str, shape: tuple[int, ...], where: str, what: str) -> None:
    """A delta tensor's dtype (its name: "float32", ...) and shape: float, non-empty, <= 4-D."""
    if dtype not in FLOAT_DTYPE_NAMES:
        raise PatchFormatError(
            f"{where}: {what} has dtype {dtype}; patch tensors are float16, bfloat16 or float32"
        )
    if any(n == 0 for n in shape):
        raise PatchFormatError(f"{where}: {what} is empty (shape {tuple(shape)})")
    if len(shape) > 4:
        raise PatchFormatError(f"{where}: {what} has {len(shape)} dimensions (at most 4)")


def check_rank_nonzero(down_shape: tuple[int, ...], where: str) -> None:
    if len(down_shape) >= 1 and down_shape[0] == 0:
        raise PatchFormatError(f"{where}: a LoRA of rank 0 changes nothing; not a patch")


def check_factors(up_shape: tuple[int, ...], down_shape: tuple[int, ...], where: str) -> None:
    """LoRA factors that fit: up (out, r[, 1, 1]), down (r, in[, kh, kw]), r >= 1."""
    up, down = tuple(up_shape), tuple(down_shape)
    if len(up) not in (2, 4) or len(down) != len(up):
        raise PatchFormatError(
            f"{where}: lora_up {up} and lora_down {down} are not "
            "LoRA factors (both 2-D, or both 4-D for convolutions)"
        )
    rank = down[0]
    if rank < 1 or up[1] != rank or (len(up) == 4 and up[2:] != (1, 1)):
        raise PatchFormatError(f"{where}: lora_up {up} does not fit lora_down {down} (rank {rank})")


def check_alpha_form(dtype: str, shape: tuple[int, ...], where: str) -> None:
    size = 1
    for n in shape:
        size *= n
    if dtype == "bool" or dtype.startswith("complex") or size != 1:
        raise PatchFormatError(
            f"{where}: alpha must be one number, got {dtype} of shape {tuple(shape)}"
        )


def meta_fields(meta: dict[str, str]) -> dict[str, Any]:
    """The `PatchMeta` fields stored in safetensors metadata (all but the encoded tensors)."""

    def loads(key: str, default: Any) -> Any:
        try:
            value = json.loads(meta[key]) if key in meta else default
        except (json.JSONDecodeError, RecursionError) as exc:
            raise PatchFormatError(f"patch metadata {key!r} is not valid JSON: {exc}") from exc
        if not isinstance(value, type(default)):
            want = "a JSON object" if isinstance(default, dict) else "a JSON list"
            raise PatchFormatError(
                f"patch metadata {key!r} must be {want}, not {type(value).__name__}"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise PatchFormatError(f"patch metadata {key!r} must be a list of strings")
        return value

    return {
        "concepts": loads("fmn.concepts", []),
        "kind": meta.get("fmn.kind", "forget"),
        "method": meta.get("fmn.method", "unknown"),
        "family": meta.get("fmn.family", ""),
        "base_fingerprint": meta.get("fmn.base_fingerprint", ""),
        "title": meta.get("modelspec.title", ""),
        "created": meta.get("fmn.created", meta.get("modelspec.date", "")),
        "hyperparameters": loads("fmn.hyperparameters", {}),
        "scores": loads("fmn.scores", {}),
        "extra": {k[len("fmn.extra.") :]: v for k, v in meta.items() if k.startswith("fmn.extra.")},
    }
