"""Patches as the front ends name them: `FILE[:STRENGTH]` specs, library items, summaries."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmn_desktop.patch import Patch


@dataclass
class PatchSpec:
    path: Path
    strength: float = 1.0


def parse_patch_spec(text: str) -> PatchSpec:
    """'PATH[:STRENGTH]' (a Windows drive letter's colon is not a strength). A strength must
    be finite and within `limits.MAX_STRENGTH` (NonFiniteError otherwise)."""
    from fmn_desktop.patch.validate import check_strength

    head, sep, tail = text.rpartition(":")
    if sep and head and not tail.startswith(("\\", "/")):
        try:
            strength = float(tail)
        except ValueError:
            pass
        else:
            return PatchSpec(Path(head), check_strength(strength, f"strength of {head}"))
    return PatchSpec(Path(text), 1.0)


def read_patches(model, specs: Sequence[PatchSpec]) -> list[tuple[Patch, float]]:
    """The patch files of `specs`, checked against `model`'s UNet, with their strengths."""
    from fmn_desktop.patch import load_patch, unet_module_names

    names = unet_module_names(model.pipe.unet)
    return [(load_patch(s.path, names), s.strength) for s in specs]


STACK_MODES = ("additive", "fused")


def spec_entries(model, specs: Sequence[PatchSpec]):
    """`patch.stack.StackEntry`s of patch files (named after the files)."""
    from fmn_desktop.patch.stack import StackEntry

    return [
        StackEntry(patch, strength, spec.path.name)
        for (patch, strength), spec in zip(read_patches(model, specs), specs)
    ]


def composed_patches(model, specs: Sequence[PatchSpec], mode: str = "additive", force=False):
    """Several patch files as one patch for `model`, composed exactly as a stack is (the same
    fit and conflict checks, additive or fused): the one way every command puts several
    patches on a model. None when `specs` is empty."""
    from fmn_desktop.patch.stack import ComposeSettings, composed_patch

    if not specs:
        return None
    return composed_patch(model, spec_entries(model, specs), ComposeSettings(mode=mode), force)


@contextlib.contextmanager
def applied_patches(model, specs: Sequence[PatchSpec], mode: str = "additive", force=False):
    """`composed_patches` on `model`'s UNet for the block (restored bit-exactly after);
    yields the composed patch (None, and the model untouched, without specs)."""
    from fmn_desktop.patch import PatchedUNet

    patch = composed_patches(model, specs, mode, force)
    if patch is None:
        yield None
        return
    with PatchedUNet(model.pipe.unet, [(patch, 1.0)], fingerprint=model.fingerprint, force=True):
        yield patch


@dataclass(frozen=True)
class PatchItem:
    """A patch as a front end lists it: its file, strength, and the registry's view of it."""

    name: str
    path: str
    strength: float = 1.0
    concepts: tuple[str, ...] = ()
    kind: str = ""
    family: str = ""
    base_fingerprint: str = ""

    @classmethod
    def from_record(cls, record, strength: float = 1.0) -> PatchItem:
        return cls(
            record.name,
            str(record.path),
            float(strength),
            tuple(record.concepts),
            record.kind,
            record.family,
            record.base_fingerprint,
        )


def stack_entries(items: Sequence[PatchItem], model=None, cache: dict | None = None):
    """`patch.stack.StackEntry`s read from the items' files (checked against the model's UNet
    when given); the registry's kind and concepts win over the file's. `cache` (path ->
    Patch) saves re-reading files while strengths change."""
    from fmn_desktop.patch import load_patch, unet_module_names
    from fmn_desktop.patch.stack import StackEntry

    names = unet_module_names(model.pipe.unet) if model is not None else None
    entries = []
    for it in items:
        if cache is not None and it.path in cache:
            patch = cache[it.path]
        else:
            patch = load_patch(it.path, names)
            if cache is not None:
                cache[it.path] = patch
        if it.kind:
            patch.meta.kind = it.kind
        if it.concepts:
            patch.meta.concepts = list(it.concepts)
        entries.append(StackEntry(patch, it.strength, it.name))
    return entries


def conflicts(
    items: Sequence[PatchItem], fingerprint: str | None, cache: dict | None = None
) -> list[str]:
    """`patch.stack.find_conflicts` messages for these patches (no model needed)."""
    from fmn_desktop.patch.stack import find_conflicts

    return [c.message for c in find_conflicts(stack_entries(items, None, cache), fingerprint)]


def describe_patch(path: str | os.PathLike) -> dict:
    """Metadata and a summary of a patch file, without needing a model (nor torch, unless
    a tensor is bfloat16)."""
    from fmn_desktop.patch.summary import summarize

    info = summarize(path) or _summary_with_torch(path)
    return {"file": str(path), "bytes": Path(path).stat().st_size, **info}


def _summary_with_torch(path: str | os.PathLike) -> dict:
    from fmn_desktop.patch import load_patch
    from fmn_desktop.patch.layout import meta_fields

    patch = load_patch(path)
    meta = patch.meta
    fields = {f: getattr(meta, f) for f in meta_fields({})}
    return {
        "format": "lora" if patch.is_lora else "diff",
        "tensors": len(patch.deltas),
        "parameters": patch.numel(),
        "ranks": sorted({d.rank for d in patch.deltas.values() if d.rank is not None}),
        "norm": math.sqrt(
            sum(float(d.to_dense().double().square().sum()) for d in patch.deltas.values())
        ),
        **fields,
    }


def apply_to_file(
    model,
    specs: Sequence[PatchSpec],
    out: str | os.PathLike,
    force: bool = False,
    overwrite: bool = False,
    mode: str = "additive",
) -> Path:
    """Write `model` with patches applied (composed as a stack in `mode`) as a diffusers
    folder, or a single `.safetensors` (an existing one is replaced only with `overwrite`).
    No NaN/inf weight is ever written. A single file is written tensor by tensor with each
    patched weight computed as it is written: `model` is never modified and no copy of it
    is made."""
    from fmn_desktop.models import export_single_file, save_model
    from fmn_desktop.patch import patched_weights
    from fmn_desktop.services.output import check_output_model

    check_output_model(out, overwrite)
    if Path(out).suffix.lower() == ".safetensors":
        composed = composed_patches(model, specs, mode, force)
        patches = [] if composed is None else [(composed, 1.0)]
        # checked against the model when composed
        weights = patched_weights(model.pipe.unet, patches, model.fingerprint, True)
        return export_single_file(
            model.pipe, out, family=model.architecture_family, unet_weights=weights
        )
    with applied_patches(model, specs, mode, force):
        return save_model(model.pipe, out, family=model.architecture_family, replace=overwrite)
