"""The layers the code is built in, checked from its imports (function-local ones included):

    cli, ui  ->  services  ->  core packages (models, patch, prompts, resteer, correct, ...)

No package imports a layer above it, the front ends do not import each other (the CLI's
`gui` command only starts the app), and the package graph has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fmn_desktop

PACKAGE = Path(fmn_desktop.__file__).parent
FRONT_ENDS = {"cli", "ui"}
SERVICES = "services"


def _edges() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported package, importing file)} over every import statement."""
    edges: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1 and rel.name == "__init__.py":
            continue
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "fmn_desktop" and len(parts) > 1 and parts[1] != src:
                    edges[src].add((parts[1], str(rel)))
    return edges


def test_core_packages_import_no_service_or_front_end():
    bad = [
        f"{file} imports {dst}"
        for src, targets in _edges().items()
        if src not in FRONT_ENDS | {SERVICES}
        for dst, file in targets
        if dst in FRONT_ENDS | {SERVICES}
    ]
    assert bad == []


def test_services_import_no_front_end():
    bad = [f"{file} imports {dst}" for dst, file in _edges()[SERVICES] if dst in FRONT_ENDS]
    assert bad == []


def test_front_ends_do_not_import_each_other():
    edges = _edges()
    bad = [f"{file} imports ui" for dst, file in edges["cli"] if dst == "ui"]
    bad = [b for b in bad if not b.startswith("cli/app.py")]  # `fmn gui` starts the app
    bad += [f"{file} imports cli" for dst, file in edges["ui"] if dst == "cli"]
    assert bad == []


def test_the_package_graph_has_no_cycle():
    graph = {src: {dst for dst, _ in targets} for src, targets in _edges().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checks_see_real_edges():
    """The walk finds the arrows it should (a check that found nothing would pass vacuously)."""
    edges = _edges()
    assert ("services", "cli/forget.py") in edges["cli"]
    assert any(dst == "patch" for dst, _ in edges["resteer"])
