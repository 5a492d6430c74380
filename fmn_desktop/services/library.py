"""The library's verbs that need tensors: register, import, export, stack apply/export.

The registry package stores files and rows; this module reads patch files against a loaded
model (interop), composes stacks (patch.stack) and writes results, recording each as a job.

>>> from fmn_desktop.registry import open_registry
>>> with open_registry() as reg:  # doctest: +SKIP
...     rec, _ = import_file(reg, "someone_elses_lora.safetensors", model, concepts=["castle"])
...     export_registry_stack(reg, "clean", model, "clean.safetensors", "lora")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmn_desktop.errors import FmnError
from fmn_desktop.fileio import atomic_write_bytes
from fmn_desktop.patch.format import load_patch, patch_bytes
from fmn_desktop.patch.stack import (
    ComposeSettings,
    Conflict,
    StackEntry,
    StackExport,
    export_stack,
    find_conflicts,
)
from fmn_desktop.registry import PatchRecord, Registry, StackRecord
from fmn_desktop.services.model import model_name
from fmn_desktop.services.output import check_output_file, check_output_model
from fmn_desktop.services.patches import PatchItem, stack_entries
from fmn_desktop.training import Progress

PATCH_EXPORT_FORMATS = ("original", "lora", "diff")


@dataclass
class ImportOutcome:
    record: PatchRecord
    new: bool
    source_format: str
    notes: list[str] = field(default_factory=list)


def import_file(
    reg: Registry,
    path: str | os.PathLike,
    model=None,
    *,
    name: str | None = None,
    concepts: list[str] | None = None,
    kind: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    notes: str = "",
    force: bool = False,
    unet_only: bool = False,
) -> ImportOutcome:
    """Register a patch file; nothing that can never be applied is registered.

    Our own files need no model: they are checked completely without one (usable tensors,
    names of a known family's UNet; `patch.standalone.load_standalone`). Other tools' files
    (kohya, PEFT, `.diff`, ESD/UCE absolute weights) need `model`, are checked against it
    (keys, shapes, base) and stored converted. `force` does one thing: accept a patch made
    for another base model than `model` (so it needs `model`)."""
    from fmn_desktop.patch.format import read_metadata
    from fmn_desktop.patch.interop import detect_format, import_patch, read_tensors
    from fmn_desktop.patch.standalone import load_standalone

    path = Path(path)
    if force and model is None:
        raise FmnError(
            "force accepts a patch made for another base model, so it needs that model "
            "(--model) to compare with"
        )
    with reg.job("import", {"file": str(path), "model": model_name(model)}) as job:
        if model is None:
            meta = read_metadata(path)
            raw, _ = read_tensors(path)
            fmt = detect_format(list(raw), meta)
            if fmt != "fmn":
                raise FmnError(
                    f"{path.name} is a {fmt} file: give the base model (--model) so its keys, "
                    "shapes and base can be checked and converted"
                )
            data = path.read_bytes()
            load_standalone(path)
            out_notes, src = [], "fmn"
        else:
            imported = import_patch(
                path, model, concepts=concepts, kind=kind, force=force, unet_only=unet_only
            )
            out_notes, src = imported.notes, imported.source_format
            if imported.original_bytes_ok:
                data = path.read_bytes()
            else:
                data = patch_bytes(imported.patch, None, path.name)
            if model.fingerprint:
                reg.add_base_model(
                    model.fingerprint, path=str(getattr(model, "source", "")), family=model.family
                )
        rec, new = reg.put_patch(
            data,
            name=name,
            tags=tags,
            notes=notes,
            source=str(path),
            concepts=concepts if model is None else None,
            kind=kind if model is None else None,
        )
        job["patch"] = rec.id
        job["message"] = f"imported ({src})" if new else "already registered"
    return ImportOutcome(rec, new, src, out_notes)


def export_patch(
    reg: Registry,
    ref: str | int,
    out: str | os.PathLike,
    fmt: str = "original",
    rank: int | None = None,
    max_rel_error: float | None = None,
    overwrite: bool = False,
) -> tuple[Path, float | None]:
    """Write a registered patch: the stored file as is, or converted to LoRA / `.diff`.
    Returns the path and, for a LoRA made from dense deltas, the SVD's relative error.
    An existing `out` is replaced only with `overwrite`."""
    from fmn_desktop.patch.lowrank import write_patch

    if fmt not in PATCH_EXPORT_FORMATS:
        raise FmnError(f"unknown format {fmt!r}; valid: {', '.join(PATCH_EXPORT_FORMATS)}")
    out = check_output_file(out, overwrite)
    data = reg.read_patch_bytes(ref)  # hash-checked
    rec = reg.get_patch(ref)
    err = None
    if fmt == "original":
        atomic_write_bytes(out, data)
    else:
        _, err = write_patch(load_patch(rec.path), out, fmt, rank, max_rel_error)
    return out, err


def registry_stack_entries(
    reg: Registry, stack: str | int, model=None
) -> tuple[StackRecord, list[StackEntry]]:
    """A registered stack and its patches read from the store (hash-checked), checked
    against `model`'s UNet when given."""
    rec = reg.get_stack(stack)
    items = []
    for item in rec.items:
        reg.read_patch_bytes(item.patch.id)
        items.append(PatchItem.from_record(item.patch, item.strength))
    return rec, stack_entries(items, model)


def stack_conflicts(
    reg: Registry, stack: str | int, fingerprint: str | None = None
) -> list[Conflict]:
    """Conflicts of a registered stack, found from its patches alone (no model needed)."""
    _, entries = registry_stack_entries(reg, stack)
    return find_conflicts(entries, fingerprint)


def _settings(rec: StackRecord, mode: str | None, preserve_weight: float | None) -> ComposeSettings:
    s = ComposeSettings(mode=mode or rec.mode)
    if preserve_weight is not None:
        s.preserve_weight = preserve_weight
    return s


def export_registry_stack(
    reg: Registry,
    stack: str | int,
    model,
    out: str | os.PathLike,
    fmt: str = "lora",
    *,
    mode: str | None = None,
    rank: int | None = None,
    max_rel_error: float | None = None,
    preserve_weight: float | None = None,
    force: bool = False,
    register: bool = False,
    overwrite: bool = False,
) -> tuple[StackExport, PatchRecord | None]:
    """Export a registered stack (LoRA, .diff, diffusers folder or single file); `register`
    also adds a LoRA/.diff result to the registry. Recorded as a job. An existing `out` is
    replaced only with `overwrite`."""
    check_export_out(out, fmt, overwrite)
    args = {"stack": str(stack), "out": str(out), "format": fmt, "mode": mode, "rank": rank}
    with reg.job("stack-export", args) as job:
        rec, entries = registry_stack_entries(reg, stack, model)
        job["stack"] = rec.id
        result = export_stack(
            model,
            entries,
            out,
            fmt,
            _settings(rec, mode, preserve_weight),
            rank=rank,
            max_rel_error=max_rel_error,
            force=force,
            title=f"stack {rec.name}",
            replace=overwrite,
        )
        added = register_export(reg, result, ["stack", rec.name]) if register else None
        if added is not None:
            job["patch"] = added.id
        job["message"] = f"wrote {out}" + (
            f" (LoRA rank {result.rank}, relative error {result.lora_error:.4f})"
            if result.lora_error is not None
            else ""
        )
    return result, added


def apply_registry_stack(
    reg: Registry,
    stack: str | int,
    model,
    out: str | os.PathLike,
    *,
    mode: str | None = None,
    preserve_weight: float | None = None,
    force: bool = False,
    overwrite: bool = False,
) -> StackExport:
    """Write the model with the stack applied: a diffusers folder, or a single `.safetensors`."""
    fmt = "single-file" if str(out).lower().endswith(".safetensors") else "diffusers"
    result, _ = export_registry_stack(
        reg,
        stack,
        model,
        out,
        fmt,
        mode=mode,
        preserve_weight=preserve_weight,
        force=force,
        overwrite=overwrite,
    )
    return result


def check_export_out(out, fmt: str, overwrite: bool = False) -> Path:
    """`services.output`'s check for a stack export of format `fmt`."""
    if fmt in ("single-file", "diffusers"):
        return check_output_model(out, overwrite)
    return check_output_file(out, overwrite)


def register_file(registry_root: str | None, model, path, tags=(), source: str = "desktop app"):
    """Add the patch file at `path` (and the model it was made on) to the registry."""
    from fmn_desktop.registry import open_registry

    with open_registry(registry_root) as reg:
        if model.fingerprint:
            reg.add_base_model(
                model.fingerprint,
                name=Path(str(model.source)).name,
                path=str(model.source),
                family=model.family,
            )
        return reg.add_patch(Path(path), tags=list(tags), source=source)


def import_job(ctx, registry_root: str | None, path: str, model=None, **options):
    """`import_file` as a job (what `fmn patches import` and the app's Import run)."""
    from fmn_desktop.registry import open_registry

    yield Progress("import", text=f"reading {Path(path).name}")
    with open_registry(registry_root) as reg:
        return import_file(reg, path, model, **options)


EXPORT_FORMATS = {
    "lora": "Stack as one LoRA patch (*.safetensors)",
    "diff": "Stack as one .diff patch (*.safetensors)",
    "single-file": "Patched checkpoint, single file (*.safetensors)",
    "diffusers": "Patched model, diffusers folder (*)",
}


def export_stack_job(
    ctx,
    model,
    items: Sequence[PatchItem],
    out: str,
    fmt: str,
    mode: str = "additive",
    registry_root: str | None = None,
    name: str = "",
    force: bool = False,
    overwrite: bool = False,
):
    """A stack of library items written as one patch or a patched model; a LoRA/.diff
    result is registered too when a registry is given. An existing `out` is replaced only
    with `overwrite` (the app passes it once its save dialog has asked)."""
    from fmn_desktop.registry import open_registry

    check_export_out(out, fmt, overwrite)
    yield Progress("export", text=f"composing {len(items)} patches ({mode})")
    entries = stack_entries(items, model)
    yield Progress("export", text=f"writing {out}")
    result = export_stack(
        model,
        entries,
        out,
        fmt,
        ComposeSettings(mode=mode),
        force=force,
        title=f"stack {name}".strip(),
        replace=overwrite,
    )
    if registry_root is not None:
        with open_registry(registry_root) as reg:
            register_export(reg, result, ["stack"] + ([name] if name else []))
    return result


def register_export(reg: Registry, result: StackExport, tags: list[str]) -> PatchRecord | None:
    """Add an exported stack to the registry when it is a patch file (LoRA or .diff)."""
    if result.format not in ("lora", "diff"):
        return None
    return reg.add_patch(Path(result.path), tags=tags, source=str(result.path))
