"""Patch files: only what changed in a UNet, as kohya-named LoRA or `.diff` safetensors.

A patch maps UNet parameter names (diffusers layout, e.g.
``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight``) to a delta, dense or
low-rank, plus metadata. On disk it uses the names other tools read (`naming.py`: kohya's
``lora_unet_`` keys, block modules by diffusers paths on SD1/SD2 and by LDM paths on SDXL):

- LoRA: ``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha`` (scale
  alpha/rank), as kohya's sd-scripts write them;
- full deltas: ``lora_unet_<module>.diff`` (and ``.diff_b`` for biases), as ComfyUI and A1111
  load them.

Metadata holds ``modelspec.*`` keys, kohya ``ss_*`` keys UIs display, and our ``fmn.*`` keys.
Reading a file never unpickles anything (safetensors only) and maps kohya names back to
parameter names through the target UNet's own module names, since underscores are ambiguous.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fmn_desktop.errors import PatchFormatError, PatchMismatchError
from fmn_desktop.fileio import atomic_write_bytes
from fmn_desktop.models.families import EMBEDDED_FAMILY
from fmn_desktop.patch.layout import LORA_PREFIX, check_patch_path, group_keys, meta_fields
from fmn_desktop.patch.naming import file_key, key_lookup
from fmn_desktop.patch.validate import (
    alpha_value,
    check_finite_tensors,
    validate_delta,
    validate_deltas,
)

FORMAT_VERSION = "1"
ARCHITECTURES = {  # modelspec.architecture of a LoRA per base-model family
    "sd1": "stable-diffusion-v1/lora",
    "sd2": "stable-diffusion-v2-768-v/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
    EMBEDDED_FAMILY: "fmn-toyworld-v1/lora",
}
SS_BASE = {
    "sd1": "sd_v1",
    "sd2": "sd_v2",
    "sdxl": "sdxl_base_v1-0",
    EMBEDDED_FAMILY: "fmn_toyworld",
}


@dataclass
class Delta:
    """A change to one parameter: dense (`weight`) or low rank (`up @ down * alpha / rank`)."""

    dense: torch.Tensor | None = None
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None

    @property
    def is_lora(self) -> bool:
        return self.up is not None

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])

    def to_dense(self, shape: torch.Size | None = None) -> torch.Tensor:
        """The full delta in fp32, reshaped to `shape` (conv weights) when given."""
        if self.dense is not None:
            out = self.dense.float()
        else:
            assert self.up is not None and self.down is not None
            if not self.rank:
                raise PatchFormatError("a LoRA delta of rank 0 changes nothing; not a patch")
            scale = (self.alpha if self.alpha is not None else self.rank) / self.rank
            out = (self.up.float().flatten(1) @ self.down.float().flatten(1)) * scale
        return out.reshape(shape) if shape is not None else out

    def numel(self) -> int:
        if self.dense is not None:
            return self.dense.numel()
        return self.up.numel() + self.down.numel()


@dataclass
class PatchMeta:
    """What a patch is and where it came from; stored as safetensors metadata."""

    concepts: list[str]
    kind: str = "forget"  # forget | correct
    method: str = "resteer"
    family: str = "sd1"
    base_fingerprint: str = ""
    title: str = ""
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    # Tensors other tools must not see as weights (e.g. the concept's text embeddings that
    # closed-form stacking needs) travel in the metadata, base64-encoded.
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_metadata(self, fmt: str, rank: int | None, alpha: float | None) -> dict[str, str]:
        arch = ARCHITECTURES.get(self.family, f"{self.family}/lora")
        meta = {
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": arch if fmt == "lora" else arch.replace("/lora", "/diff"),
            "modelspec.implementation": "https://github.com/huggingface/diffusers",
            "modelspec.title": self.title or f"{self.kind} {', '.join(self.concepts)}",
            "modelspec.date": self.created,
            "modelspec.description": f"Forget-Me-Not Studio {self.kind} patch ({self.method})",
            "ss_network_module": "networks.lora",
            "ss_base_model_version": SS_BASE.get(self.family, self.family),
            "fmn.format_version": FORMAT_VERSION,
            "fmn.format": fmt,
            "fmn.concepts": json.dumps(self.concepts),
            "fmn.kind": self.kind,
            "fmn.method": self.method,
            "fmn.family": self.family,
            "fmn.base_fingerprint": self.base_fingerprint,
            "fmn.created": self.created,
            "fmn.hyperparameters": json.dumps(self.hyperparameters, sort_keys=True),
            "fmn.scores": json.dumps(self.scores, sort_keys=True),
        }
        if rank is not None:
            meta["ss_network_dim"] = str(rank)
            meta["ss_network_alpha"] = str(alpha if alpha is not None else rank)
        meta.update({f"fmn.extra.{k}": v for k, v in self.extra.items()})
        meta.update({f"fmn.stats.{k}": encode_tensor(v) for k, v in self.stats.items()})
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> PatchMeta:
        return cls(
            **meta_fields(meta),
            stats={
                k[len("fmn.stats.") :]: decode_tensor(v, k)
                for k, v in meta.items()
                if k.startswith("fmn.stats.")
            },
        )


def encode_tensor(t: torch.Tensor) -> str:
    """A small tensor as JSON text: dtype, shape and base64 of its bytes."""
    t = t.detach().contiguous().cpu()
    raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    dtype = str(t.dtype).removeprefix("torch.")
    return json.dumps(
        {"dtype": dtype, "shape": list(t.shape), "b64": base64.b64encode(raw).decode()}
    )


def decode_tensor(text: str, key: str = "tensor") -> torch.Tensor:
    try:
        obj = json.loads(text)
        dtype = getattr(torch, obj["dtype"])
        if dtype not in (torch.float16, torch.float32, torch.bfloat16, torch.int64):
            raise ValueError(f"dtype {obj['dtype']} not allowed")
        raw = bytearray(base64.b64decode(obj["b64"], validate=True))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat.reshape(obj["shape"]).clone()
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise PatchFormatError(
            f"patch metadata {key!r} is not a valid encoded tensor ({exc})"
        ) from exc


@dataclass
class Patch:
    """Deltas keyed by UNet parameter name, plus metadata."""

    deltas: dict[str, Delta]
    meta: PatchMeta

    def numel(self) -> int:
        return sum(d.numel() for d in self.deltas.values())

    @property
    def is_lora(self) -> bool:
        return bool(self.deltas) and all(d.is_lora for d in self.deltas.values())


def save_patch(patch: Patch, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write `patch` atomically as `fmt` ("lora" or "diff"; default: lora if every delta is).

    Dense deltas are written as `.diff`; writing them as LoRA needs `to_lora` first.
    """
    path = Path(path)
    atomic_write_bytes(path, patch_bytes(patch, fmt, path.name))
    return path


def patch_bytes(patch: Patch, fmt: str | None = None, what: str = "patch") -> bytes:
    """The safetensors bytes `save_patch` writes; refuses anything unusable (NaN, inf,
    rank 0, mismatched factors) so that no such file is ever written."""
    fmt = fmt or ("lora" if patch.is_lora else "diff")
    if fmt not in ("lora", "diff"):
        raise ValueError(f"unknown patch format {fmt!r}; valid: 'lora', 'diff'")
    for name, delta in patch.deltas.items():
        validate_delta(name, delta, what)
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas = set(), set()
    for name, delta in sorted(patch.deltas.items()):
        key, leaf = file_key(name, patch.meta.family)
        if fmt == "lora":
            if not delta.is_lora:
                raise PatchFormatError(
                    f"{name}: dense delta cannot be written as LoRA; use to_lora()"
                )
            tensors[f"{key}.lora_down.weight"] = delta.down.contiguous()
            tensors[f"{key}.lora_up.weight"] = delta.up.contiguous()
            alpha = float(delta.alpha if delta.alpha is not None else delta.rank)
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
            ranks.add(delta.rank)
            alphas.add(alpha)
        else:
            tensors[f"{key}.diff" if leaf == "weight" else f"{key}.diff_b"] = (
                delta.to_dense().contiguous() if delta.is_lora else delta.dense.contiguous()
            )
    if not tensors:
        raise PatchFormatError("refusing to write an empty patch")
    check_finite_tensors(tensors, what)
    check_finite_tensors(patch.meta.stats, f"{what} (its stored statistics)")
    rank = max(ranks) if ranks else None
    alpha = max(alphas) if alphas else None
    metadata = patch.meta.to_metadata(fmt, rank, alpha)
    return save(tensors, metadata=metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of a file, with clear errors for bad files."""
    with _open(path) as fh:
        return dict(fh.metadata() or {})


def _open(path: str | os.PathLike):
    path = check_patch_path(path)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise PatchFormatError(f"{path.name} is not a readable safetensors file ({exc})") from exc


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, with clear errors."""
    with _open(path) as fh:
        meta = dict(fh.metadata() or {})
        try:
            raw = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PatchFormatError(
                f"{Path(path).name}: truncated or corrupt tensor data ({exc})"
            ) from exc
    if not raw:
        raise PatchFormatError(f"{Path(path).name} holds no tensors")
    return raw, meta


def load_patch(path: str | os.PathLike, module_names: list[str] | None = None) -> Patch:
    """Read a patch file (ours, kohya LoRA or `.diff`).

    `module_names` (the UNet's module paths, see `unet_module_names`) resolves kohya keys
    (diffusers or LDM module paths) to parameter names; without it the keys are kept as they
    are (module path with underscores), which writing a patch reproduces.
    """
    raw, meta = read_tensors(path)
    lookup = key_lookup(module_names or [])
    grouped = {
        module_key: {part: raw[key] for part, key in parts.items()}
        for module_key, parts in group_keys(raw, Path(path).name).items()
    }
    deltas: dict[str, Delta] = {}
    for module_key, parts in grouped.items():
        if module_names is not None and module_key not in lookup:
            raise PatchMismatchError(f"{module_key}: no such module in this UNet")
        module = lookup.get(module_key, module_key[len(LORA_PREFIX) :])
        if "lora_up.weight" in parts:
            alpha = parts.get("alpha")
            deltas[f"{module}.weight"] = Delta(
                up=parts["lora_up.weight"],
                down=parts["lora_down.weight"],
                alpha=alpha_value(alpha, f"{Path(path).name}: {module_key}")
                if alpha is not None
                else None,
            )
        if "diff" in parts:
            deltas[f"{module}.weight"] = Delta(dense=parts["diff"])
        if "diff_b" in parts:
            deltas[f"{module}.bias"] = Delta(dense=parts["diff_b"])
    validate_deltas(deltas, Path(path).name)
    return Patch(deltas=deltas, meta=PatchMeta.from_metadata(meta))


def unet_module_names(unet: torch.nn.Module) -> list[str]:
    """Module paths of a UNet, to resolve kohya keys."""
    return [name for name, _ in unet.named_modules() if name]
