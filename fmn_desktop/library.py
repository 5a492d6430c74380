"""Registry verbs that need tensors: import, export, stack apply/export (CLI and GUI share them).

The registry package stores files and rows; this module reads patch files against a loaded
model (interop), composes stacks (patch.stack) and writes results, recording each as a job.

>>> from fmn_desktop.registry import open_registry
>>> with open_registry() as reg:  # doctest: +SKIP
...     rec, _ = import_file(reg, "someone_elses_lora.safetensors", model, concepts=["castle"])
...     export_registry_stack(reg, "clean", model, "clean.safetensors", "lora")
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fmn_desktop.errors import FmnError
from fmn_desktop.fileio import atomic_write_bytes
from fmn_desktop.patch.format import load_patch, save_patch, unet_module_names
from fmn_desktop.patch.stack import (
    ComposeSettings,
    Conflict,
    StackEntry,
    StackExport,
    export_stack,
    find_conflicts,
)
from fmn_desktop.registry import PatchRecord, Registry, StackRecord

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
    """Register a patch file. Our own files need no model; other tools' files (kohya, PEFT,
    `.diff`, ESD/UCE absolute weights) are checked against `model` and stored converted."""
    from fmn_desktop.patch.format import read_metadata
    from fmn_desktop.patch.interop import detect_format, import_patch, read_tensors

    path = Path(path)
    with reg.job("import", {"file": str(path), "model": _model_name(model)}) as job:
        if model is None:
            meta = read_metadata(path)
            raw, _ = read_tensors(path)
            fmt = detect_format(list(raw), meta)
            if fmt != "fmn":
                raise FmnError(
                    f"{path.name} is a {fmt} file: give the base model (--model) so its keys, "
                    "shapes and base can be checked and converted"
                )
            load_patch(path)  # validates tensors (NaN, pairs) before anything is stored
            data, out_notes, src = path.read_bytes(), [], "fmn"
        else:
            imported = import_patch(
                path, model, concepts=concepts, kind=kind, force=force, unet_only=unet_only
            )
            out_notes, src = imported.notes, imported.source_format
            if imported.original_bytes_ok:
                data = path.read_bytes()
            else:
                with tempfile.TemporaryDirectory(prefix="fmn-import-") as tmp:
                    p = save_patch(imported.patch, Path(tmp) / "patch.safetensors")
                    data = p.read_bytes()
            if model.fingerprint:
                reg.add_base_model(
                    model.fingerprint, path=str(getattr(model, "source", "")), family=model.family
                )
        from fmn_desktop.registry.store import sha256_bytes

        existing = reg.find_sha(sha256_bytes(data))
        rec = reg.add_patch(
            data, name=name, tags=tags, notes=notes, source=str(path),
            concepts=concepts if model is None else None, kind=kind if model is None else None,
        )
        job["patch"] = rec.id
        job["message"] = "already registered" if existing else f"imported ({src})"
    return ImportOutcome(rec, existing is None, src, out_notes)


def export_patch(
    reg: Registry,
    ref: str | int,
    out: str | os.PathLike,
    fmt: str = "original",
    rank: int | None = None,
    max_rel_error: float | None = None,
) -> tuple[Path, float | None]:
    """Write a registered patch: the stored file as is, or converted to LoRA / `.diff`.
    Returns the path and, for a LoRA made from dense deltas, the SVD's relative error."""
    from fmn_desktop.patch.lowrank import to_lora

    if fmt not in PATCH_EXPORT_FORMATS:
        raise FmnError(f"unknown format {fmt!r}; valid: {', '.join(PATCH_EXPORT_FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    data = reg.read_patch_bytes(ref)  # hash-checked
    rec = reg.get_patch(ref)
    err = None
    if fmt == "original":
        atomic_write_bytes(out, data)
    else:
        patch = load_patch(rec.path)
        if fmt == "lora" and not patch.is_lora:
            patch, err = to_lora(
                patch, rank=rank, max_rel_error=None if rank else (max_rel_error or 0.01)
            )
            patch.meta.extra["lora_relative_error"] = f"{err:.6f}"
        save_patch(patch, out, fmt)
    return out, err


def stack_entries(
    reg: Registry, stack: str | int, unet=None
) -> tuple[StackRecord, list[StackEntry]]:
    """A registered stack and its patches read from the store (hash-checked)."""
    rec = reg.get_stack(stack)
    names = unet_module_names(unet) if unet is not None else None
    entries = []
    for item in rec.items:
        reg.read_patch_bytes(item.patch.id)
        patch = load_patch(item.patch.path, names)
        patch.meta.kind = item.patch.kind
        patch.meta.concepts = item.patch.concepts or patch.meta.concepts
        entries.append(StackEntry(patch, item.strength, item.patch.name))
    return rec, entries


def stack_conflicts(reg: Registry, stack: str | int, fingerprint: str | None = None) -> list[Conflict]:
    """Conflicts of a registered stack, found from its patches alone (no model needed)."""
    _, entries = stack_entries(reg, stack)
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
) -> tuple[StackExport, PatchRecord | None]:
    """Export a registered stack (LoRA, .diff, diffusers folder or single file); `register`
    also adds a LoRA/.diff result to the registry. Recorded as a job."""
    args = {"stack": str(stack), "out": str(out), "format": fmt, "mode": mode, "rank": rank}
    with reg.job("stack-export", args) as job:
        rec, entries = stack_entries(reg, stack, model.pipe.unet)
        job["stack"] = rec.id
        result = export_stack(
            model, entries, out, fmt, _settings(rec, mode, preserve_weight),
            rank=rank, max_rel_error=max_rel_error, force=force, title=f"stack {rec.name}",
        )
        added = None
        if register and fmt in ("lora", "diff"):
            added = reg.add_patch(Path(out), tags=["stack", rec.name], source=str(out))
            job["patch"] = added.id
        job["message"] = f"wrote {out}" + (
            f" (LoRA rank {result.rank}, relative error {result.lora_error:.4f})"
            if result.lora_error is not None else ""
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
) -> StackExport:
    """Write the model with the stack applied: a diffusers folder, or a single `.safetensors`."""
    fmt = "single-file" if str(out).lower().endswith(".safetensors") else "diffusers"
    result, _ = export_registry_stack(
        reg, stack, model, out, fmt, mode=mode, preserve_weight=preserve_weight, force=force
    )
    return result


def _model_name(model) -> str:
    if model is None:
        return ""
    return str(getattr(model, "source", "") or "model")
