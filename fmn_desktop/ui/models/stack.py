"""The stack composer's state: ordered patches with strengths, composition mode, conflicts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from fmn_desktop.services.library import EXPORT_FORMATS, export_stack_job
from fmn_desktop.services.patches import PatchItem, conflicts
from fmn_desktop.ui.models.session import Session
from fmn_desktop.ui.properties import state

MODES = ("additive", "fused")


class StackModel(QObject):
    view = "stack"  # the page its status messages belong to
    entries_changed = Signal(object)  # list[PatchItem]
    mode_changed = Signal(str)
    name_changed = Signal(str)
    conflicts_changed = Signal(object)  # list[str]
    stacks_changed = Signal(object)  # names in the registry
    exporting_changed = Signal(bool)
    force_changed = Signal(bool)
    exported = Signal(object)  # Path

    entries = state("entries", list, [], entries_changed)
    mode = state("mode", str, "additive", mode_changed)
    name = state("name", str, "", name_changed)
    conflicts = state("conflicts", list, [], conflicts_changed)
    stacks = state("stacks", list, [], stacks_changed)
    exporting = state("exporting", bool, False, exporting_changed)
    force = state("force", bool, False, force_changed)  # apply despite conflicts

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.session = session
        self._patches: dict = {}  # path -> Patch, read once for conflict checks
        self.entries_changed.connect(self._check)
        session.model_changed.connect(self._check)
        session.registry_changed.connect(self.refresh)

    # ------------------------------------------------------------- editing
    def add(self, record, strength: float = 1.0) -> None:
        if any(e.name == record.name for e in self.entries):
            self.session.post(f"{record.name} is already in the stack", self.view)
            return
        self.entries = [*self.entries, PatchItem.from_record(record, strength)]

    def remove(self, index: int) -> None:
        items = list(self.entries)
        if 0 <= index < len(items):
            del items[index]
            self.entries = items

    def move(self, index: int, delta: int) -> None:
        items = list(self.entries)
        j = index + delta
        if 0 <= index < len(items) and 0 <= j < len(items):
            items[index], items[j] = items[j], items[index]
            self.entries = items

    def set_strength(self, index: int, strength: float) -> None:
        items = list(self.entries)
        if 0 <= index < len(items) and items[index].strength != strength:
            items[index] = replace(items[index], strength=float(strength))
            self.entries = items

    def clear(self) -> None:
        self.entries = []
        self.name = ""

    def _check(self, *_):
        m = self.session.model
        fp = m.fingerprint if m else None
        found = self.session.attempt(
            "Cannot read a patch", lambda: conflicts(self.entries, fp, self._patches)
        )
        self.conflicts = found if found is not None else []

    # ------------------------------------------------------------ registry
    def refresh(self, *_):
        reg = self.session.registry()
        stacks = self.session.attempt("Registry", reg.list_stacks) if reg else None
        self.stacks = [s.name for s in stacks or []]

    def save(self, name: str | None = None) -> bool:
        """Save as a named stack in the registry (replacing one of that name)."""
        name = (name or self.name).strip()
        reg = self.session.registry()
        if reg is None:
            return False
        if not name:
            self.session.report("No name", "give the stack a name")
            return False

        def do():
            from fmn_desktop.registry import NotFoundError

            try:
                reg.delete_stack(name)
            except NotFoundError:
                pass
            m = self.session.model
            reg.create_stack(
                name, mode=self.mode, base_fingerprint=(m.fingerprint or "") if m else ""
            )
            for e in self.entries:
                reg.add_to_stack(name, e.name, strength=e.strength)
            return True

        ok = self.session.attempt("Cannot save the stack", do)
        if ok:
            self.name = name
            self.session.post(f"Saved stack {name}", self.view)
            self.session.registry_changed.emit()
        return bool(ok)

    def load(self, name: str) -> bool:
        reg = self.session.registry()
        rec = (
            self.session.attempt("Cannot open the stack", lambda: reg.get_stack(name))
            if reg
            else None
        )
        if rec is None:
            return False
        self.mode = rec.mode
        self.name = rec.name
        self.entries = [PatchItem.from_record(i.patch, i.strength) for i in rec.items]
        return True

    def delete(self, name: str) -> bool:
        reg = self.session.registry()
        ok = self.session.attempt("Cannot delete the stack", lambda: reg.delete_stack(name) or True)
        if ok:
            if self.name == name:
                self.name = ""
            self.session.registry_changed.emit()
        return bool(ok)

    # -------------------------------------------------------------- export
    def export(self, out: str, fmt: str | None = None):
        """Write the stack: one LoRA/.diff patch (registered too), or the patched model as a
        single file / diffusers folder. `fmt` defaults from the name (.safetensors: single
        file, else folder)."""
        model = self.session.require_model()
        if model is None:
            return None
        if not self.entries:
            self.session.report("Empty stack", "add patches to the stack first")
            return None
        fmt = fmt or ("single-file" if str(out).lower().endswith(".safetensors") else "diffusers")
        if fmt not in EXPORT_FORMATS:
            self.session.report("Export", f"unknown format {fmt!r}")
            return None
        items, mode, name, force = list(self.entries), self.mode, self.name, self.force
        root = self.session.settings.data_folder

        def finished(result):
            self.session.post(f"Exported {result.format} to {result.path}", self.view)
            if fmt in ("lora", "diff"):
                self.session.registry_changed.emit()
            self.exported.emit(Path(result.path))

        self.exporting = True
        return self.session.run_job(
            "export",
            # the save dialog has asked before replacing a file: overwrite
            lambda ctx: export_stack_job(
                ctx, model, items, out, fmt, mode, root, name, force, overwrite=True
            ),
            on_finished=finished,
            on_done=lambda: setattr(self, "exporting", False),
            view=self.view,
        )
