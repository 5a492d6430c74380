"""Importing patch files made elsewhere: the one module that knows every external key scheme.

Recognised layouts (safetensors only; pickles are refused):

- ours (``fmn.*`` metadata) and kohya LoRA / ``.diff`` with diffusers module paths
  (``lora_unet_down_blocks_0_attentions_0_..._attn2_to_k.lora_down.weight``), as kohya's
  sd-scripts write for SD1/SD2, or original LDM module paths, as SDXL kohya files use
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k``), or a mix (`naming.py`);
- PEFT / diffusers LoRA (``unet.<module>.lora_A.weight`` / ``lora_B``);
- absolute weights of other erasure tools (ESD / UCE style): UNet tensors under diffusers
  names (optionally ``unet.``-prefixed) or LDM names (``model.diffusion_model.``); the delta is
  the file minus the loaded base, and tensors equal to the base are dropped.

Anything that does not fit the base model is refused with the keys and the reason: unknown
modules, text-encoder tensors (``lora_te*``), shapes that differ, a fingerprint of another
base (unless forced), or an absolute file that changes the VAE or text encoder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmn_desktop.errors import PatchFormatError, PatchMismatchError
from fmn_desktop.patch.apply import check_compatible
from fmn_desktop.patch.format import Delta, Patch, PatchMeta, read_tensors
from fmn_desktop.patch.naming import LORA_PREFIX, key_lookup, uses_ldm_blocks
from fmn_desktop.patch.validate import FLOAT_DTYPES, alpha_value, validate_deltas

LDM_UNET_PREFIX = "model.diffusion_model."
TEXT_PREFIXES = (
    "lora_te_",
    "lora_te1_",
    "lora_te2_",
    "text_encoder.",
    "text_encoder_2.",
    "cond_stage_model.",
    "conditioner.",
)
OTHER_LDM_PREFIXES = ("first_stage_model.", "cond_stage_model.", "conditioner.")
LORA_PARTS = {"lora_down.weight", "lora_up.weight", "alpha", "diff", "diff_b"}


@dataclass
class ImportedPatch:
    patch: Patch
    source_format: str  # fmn | kohya | kohya-ldm | peft | absolute
    notes: list[str] = field(default_factory=list)
    original_bytes_ok: bool = False  # the file itself can be stored as is (ours, names fit)


def _listing(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def ldm_module_map(unet: torch.nn.Module) -> dict[str, str]:
    """LDM module path -> diffusers module path, for every UNet parameter's module."""
    from fmn_desktop.models.ldm import unet_to_ldm

    names = [n for n, _ in unet.named_parameters()]
    try:
        mapped = unet_to_ldm({n: n for n in names}, unet.config)
    except (KeyError, ValueError):
        return {}
    return {ldm.rpartition(".")[0]: diff.rpartition(".")[0] for ldm, diff in mapped.items()}


def detect_format(keys: list[str], metadata: dict[str, str]) -> str:
    text = [k for k in keys if k.startswith(TEXT_PREFIXES)]
    if text and len(text) == len(keys):
        raise PatchFormatError(
            f"only text-encoder tensors ({_listing(sorted(text))}): patches change the UNet"
        )
    if any(k.startswith(LORA_PREFIX) for k in keys):
        if "fmn.format_version" in metadata:
            return "fmn"
        return "kohya-ldm" if uses_ldm_blocks(keys) else "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        return "peft"
    weights = [k for k in keys if k.endswith((".weight", ".bias")) and k not in text]
    if weights:
        return "absolute"
    raise PatchFormatError(
        f"not a patch layout fmn knows (kohya LoRA, .diff, PEFT LoRA, absolute UNet weights); "
        f"keys: {_listing(sorted(keys))}"
    )


def _group_kohya(
    raw: dict[str, torch.Tensor],
    lookup: dict[str, str],
    name: str,
    skip_text: bool = False,
    notes: list[str] | None = None,
) -> dict[str, Delta]:
    text = sorted(k for k in raw if k.startswith(TEXT_PREFIXES))
    if text and not skip_text:
        raise PatchFormatError(
            f"{name}: text-encoder tensors are not supported (patches change the UNet only): "
            f"{_listing(text)}; import with unet_only (CLI: --unet-only) to drop them"
        )
    if text:
        raw = {k: v for k, v in raw.items() if k not in set(text)}
        if notes is not None:
            notes.append(f"{len(text)} text-encoder tensors dropped (UNet only)")
    other = sorted(k for k in raw if not k.startswith(LORA_PREFIX))
    if other:
        raise PatchFormatError(f"{name}: keys outside the UNet LoRA layout: {_listing(other)}")
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        module_key, _, suffix = key.partition(".")
        grouped.setdefault(module_key, {})[suffix] = tensor
    unknown = sorted(k for k in grouped if k not in lookup)
    if unknown:
        raise PatchMismatchError(
            f"{name}: {len(unknown)} module(s) do not exist in this UNet: {_listing(unknown)}"
        )
    deltas: dict[str, Delta] = {}
    for module_key, parts in grouped.items():
        bad = sorted(set(parts) - LORA_PARTS)
        if bad:
            raise PatchFormatError(f"{name}: {module_key}: unsupported tensors {bad}")
        module = lookup[module_key]
        if "lora_down.weight" in parts or "lora_up.weight" in parts:
            if "lora_up.weight" not in parts or "lora_down.weight" not in parts:
                raise PatchFormatError(f"{name}: {module_key}: lora_down and lora_up come in pairs")
            alpha = parts.get("alpha")
            deltas[f"{module}.weight"] = Delta(
                up=parts["lora_up.weight"],
                down=parts["lora_down.weight"],
                alpha=alpha_value(alpha, f"{name}: {module_key}") if alpha is not None else None,
            )
        elif "alpha" in parts:
            raise PatchFormatError(f"{name}: {module_key}: alpha without lora_down / lora_up")
        if "diff" in parts:
            deltas[f"{module}.weight"] = Delta(dense=parts["diff"])
        if "diff_b" in parts:
            deltas[f"{module}.bias"] = Delta(dense=parts["diff_b"])
    return deltas


def _group_peft(raw: dict[str, torch.Tensor], modules: set[str], name: str) -> dict[str, Delta]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        k = key.removeprefix("unet.").removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            token = f".{part}."
            if token in k:
                module = k.split(token)[0]
                grouped.setdefault(module, {})[part] = tensor
                break
        else:
            if k.endswith(".alpha"):
                grouped.setdefault(k[: -len(".alpha")], {})["alpha"] = tensor
            else:
                raise PatchFormatError(f"{name}: key {key!r} is not a PEFT LoRA tensor")
    text = sorted(m for m in grouped if m.startswith(("text_encoder", "te_")))
    if text:
        raise PatchFormatError(f"{name}: text-encoder tensors are not supported: {_listing(text)}")
    unknown = sorted(m for m in grouped if m not in modules)
    if unknown:
        raise PatchMismatchError(f"{name}: modules not in this UNet: {_listing(unknown)}")
    deltas = {}
    for module, parts in grouped.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            raise PatchFormatError(f"{name}: {module}: lora_A and lora_B come in pairs")
        alpha = parts.get("alpha")
        deltas[f"{module}.weight"] = Delta(
            up=parts["lora_B"],
            down=parts["lora_A"],
            alpha=alpha_value(alpha, f"{name}: {module}") if alpha is not None else None,
        )
    return deltas


def _absolute_deltas(
    raw: dict[str, torch.Tensor], pipe, name: str, notes: list[str]
) -> dict[str, Delta]:
    unet = pipe.unet
    params = {n: p.detach() for n, p in unet.named_parameters()}
    ldm_to_diff = {}
    ldm_map = ldm_module_map(unet)
    for ldm_module, diff_module in ldm_map.items():
        for leaf in ("weight", "bias"):
            ldm_to_diff[f"{ldm_module}.{leaf}"] = f"{diff_module}.{leaf}"
    others = sorted(k for k in raw if k.startswith(OTHER_LDM_PREFIXES))
    if others:
        _check_unchanged_others(raw, others, pipe, name)
        notes.append(f"{len(others)} VAE / text-encoder tensors equal the base and were skipped")
    deltas: dict[str, Delta] = {}
    unknown, shapes = [], []
    for key, tensor in raw.items():
        if key in others:
            continue
        k = key.removeprefix("unet.")
        if k.startswith(LDM_UNET_PREFIX) or k not in params:
            k = ldm_to_diff.get(k.removeprefix(LDM_UNET_PREFIX), k)
        if k not in params:
            unknown.append(key)
            continue
        if tensor.dtype not in FLOAT_DTYPES:
            raise PatchFormatError(f"{name}: {key} has dtype {tensor.dtype}, not a float weight")
        if tuple(tensor.shape) != tuple(params[k].shape):
            shapes.append(f"{key} {tuple(tensor.shape)} vs {tuple(params[k].shape)}")
            continue
        base = params[k].detach().cpu()
        if torch.equal(tensor, base.to(tensor.dtype)):  # unchanged (an fp16 copy included)
            continue
        deltas[k] = Delta(dense=tensor.float() - base.float())
    if unknown:
        raise PatchMismatchError(
            f"{name}: {len(unknown)} tensor(s) are not UNet weights of this model: "
            f"{_listing(sorted(unknown))}"
        )
    if shapes:
        raise PatchMismatchError(
            f"{name}: shapes differ from the base model (file vs model): {_listing(shapes, 3)}"
        )
    if not deltas:
        raise PatchMismatchError(
            f"{name}: every tensor equals the loaded base model: nothing to import "
            "(was it made for another model?)"
        )
    notes.append(f"{len(deltas)} of {len(raw) - len(others)} UNet tensors differ from the base")
    return deltas


def _check_unchanged_others(raw, keys: list[str], pipe, name: str) -> None:
    from fmn_desktop.models.ldm import pipeline_family, pipeline_to_ldm

    try:
        base = pipeline_to_ldm(pipe, pipeline_family(pipe))
    except (KeyError, ValueError) as exc:
        raise PatchFormatError(
            f"{name}: holds VAE / text-encoder tensors that cannot be checked against this "
            f"model ({exc}); keep only the UNet tensors"
        ) from exc
    changed = [
        k
        for k in keys
        if k not in base
        or tuple(base[k].shape) != tuple(raw[k].shape)
        or not torch.equal(base[k].detach().cpu().to(raw[k].dtype), raw[k])
    ]
    if changed:
        raise PatchMismatchError(
            f"{name}: changes the VAE or text encoder, which a UNet patch cannot hold: "
            f"{_listing(changed)}"
        )


def import_patch(
    path: str | os.PathLike,
    model,
    *,
    concepts: list[str] | None = None,
    kind: str | None = None,
    force: bool = False,
    compute_embeddings: bool = True,
    unet_only: bool = False,
) -> ImportedPatch:
    """Read any supported patch file against a loaded model and return it as our Patch.

    `model` is a LoadedModel (pipe, fingerprint, family). External files get metadata from
    the arguments: concepts, kind (forget/correct), the model's fingerprint as their base.
    With concepts and `compute_embeddings`, their text embeddings are stored as stats so the
    patch can join fused stacks. `unet_only` drops a LoRA's text-encoder tensors (else refused).
    """
    from fmn_desktop.patch.format import unet_module_names

    name = Path(path).name
    raw, metadata = read_tensors(path)
    fmt = detect_format(list(raw), metadata)
    unet = model.pipe.unet
    notes: list[str] = []
    if fmt in ("fmn", "kohya", "kohya-ldm"):
        deltas = _group_kohya(raw, key_lookup(unet_module_names(unet)), name, unet_only, notes)
        if fmt == "kohya-ldm":
            notes.append("LDM (SDXL kohya) module names mapped to diffusers names")
    elif fmt == "peft":
        deltas = _group_peft(raw, set(unet_module_names(unet)), name)
    else:
        deltas = _absolute_deltas(raw, model.pipe, name, notes)
    validate_deltas(deltas, name)
    if fmt == "fmn":
        meta = PatchMeta.from_metadata(metadata)
        if concepts:
            meta.concepts = list(concepts)
        if kind:
            meta.kind = kind
    else:
        meta = PatchMeta(
            concepts=list(concepts or []),
            kind=kind or "forget",
            method={"absolute": "import-absolute", "peft": "import-peft"}.get(fmt, "import-kohya"),
            family=model.family,
            base_fingerprint=model.fingerprint or "",
            title=metadata.get("modelspec.title", "") or metadata.get("ss_output_name", ""),
            extra={"source_file": name, "source_format": fmt},
        )
    if meta.kind not in ("forget", "correct"):
        raise PatchFormatError(f"{name}: kind {meta.kind!r}; valid: forget, correct")
    patch = Patch(deltas, meta)
    check_compatible(patch, unet, model.fingerprint, force)
    computed = False
    if compute_embeddings and meta.concepts and "concept_embeddings" not in meta.stats:
        computed = True
        from fmn_desktop.patch.stack import concept_embeddings_for

        meta.stats["concept_embeddings"] = concept_embeddings_for(model.pipe, meta.concepts).to(
            torch.float16
        )
        notes.append("concept embeddings computed from the concept names")
    return ImportedPatch(
        patch,
        fmt,
        notes,
        original_bytes_ok=(
            fmt == "fmn" and not concepts and not kind and not computed and not notes
        ),
    )
