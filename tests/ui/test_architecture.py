"""Qt only inside fmn_desktop/ui; the app's jobs are the services' plain generators, usable
with no Qt event loop at all."""

from __future__ import annotations

import ast
from pathlib import Path

import fmn_desktop
from fmn_desktop.services import images

PACKAGE = Path(fmn_desktop.__file__).parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_qt_is_imported_only_in_the_ui_package():
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "ui" not in p.relative_to(PACKAGE).parts[:1] and {"PySide6", "PyQt6"} & _imports(p)
    ]
    assert offenders == []


class _Ctx:
    def progress(self, value):
        pass

    def should_cancel(self):
        return False


def test_compare_job_runs_headless(loaded_model):
    gen = images.compare_job(
        _Ctx(),
        loaded_model,
        images.CompareRequest(prompts=["a castle"], seeds=[0], patches=[], steps=2),
    )
    phases = []
    try:
        while True:
            phases.append(next(gen))
    except StopIteration as stop:
        done = stop.value
    assert [p.step for p in phases] == [0, 1, 2]
    assert done.base.size == done.patched.size
