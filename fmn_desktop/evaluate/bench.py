"""ConceptBench (toy): forget each concept of each category on the embedded model, measure.

For every item (one concept, or the unsafe stand-in's words together) the runner forgets it
with the given settings, applies the patch, regenerates the fixed evaluation set and records
the M-Score of the forgotten concept before/after, retention of all other concepts
before/after, and the time the forget took. Results go to JSON, a markdown table and a PNG.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fmn_desktop.errors import FmnError
from fmn_desktop.evaluate.scores import (
    Estimate,
    EvalSettings,
    generate_eval_set,
    mscore,
    retention,
)
from fmn_desktop.models.families import EMBEDDED_FAMILY


@dataclass
class BenchItem:
    name: str
    category: str  # identity | object | style | unsafe
    concepts: list[str]
    kind: str  # prompt-template kind for the forget job


@dataclass
class BenchRow:
    item: str
    category: str
    mscore_before: dict
    mscore_after: dict
    retention_before: dict
    retention_after: dict
    forget_seconds: float
    extra: dict = field(default_factory=dict)


def default_items() -> list[BenchItem]:
    from fmn_desktop.toyworld import concepts_of_kind

    items = [
        BenchItem(c.name, "identity", [c.name], "identity") for c in concepts_of_kind("identity")
    ]
    items += [BenchItem(c.name, "object", [c.name], "object") for c in concepts_of_kind("object")]
    items += [BenchItem(c.name, "style", [c.name], "style") for c in concepts_of_kind("style")]
    unsafe = [c.name for c in concepts_of_kind("unsafe")]
    items.append(BenchItem("unsafe (" + ", ".join(unsafe) + ")", "unsafe", unsafe, "object"))
    return items


def _mscore_of(images, names: Sequence[str]) -> Estimate:
    from fmn_desktop.toyworld import CONCEPTS

    return mscore(images, [CONCEPTS[n] for n in names])


def run_bench(
    pipe,
    judge,
    make_config: Callable[[BenchItem], object],
    fingerprint: str = "",
    items: Sequence[BenchItem] | None = None,
    settings: EvalSettings | None = None,
    log: Callable[[str], None] = print,
    cache=None,
) -> list[BenchRow]:
    """Run ConceptBench; `make_config(item)` returns the ForgetConfig used for that item;
    `cache` (a `resteer.refcache.ReferenceCache`) keeps the reference latents between runs."""
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.resteer import forget
    from fmn_desktop.toyworld import CONCEPTS

    items = list(items or default_items())
    settings = settings or EvalSettings()
    concepts = list(CONCEPTS.values())
    log(f"base model: generating {len(concepts)} concepts x {settings.seeds} seeds ...")
    base = generate_eval_set(pipe, judge, concepts, settings)
    rows = []
    for i, item in enumerate(items, 1):
        started = time.perf_counter()
        result = forget(
            pipe, make_config(item), fingerprint=fingerprint, family=EMBEDDED_FAMILY, cache=cache
        )
        seconds = time.perf_counter() - started
        with PatchedUNet(pipe.unet, [(result.patch, 1.0)]):
            after = generate_eval_set(pipe, judge, concepts, settings)
        row = BenchRow(
            item=item.name,
            category=item.category,
            mscore_before=_mscore_of(base, item.concepts).as_dict(),
            mscore_after=_mscore_of(after, item.concepts).as_dict(),
            retention_before=retention(base, item.concepts).as_dict(),
            retention_after=retention(after, item.concepts).as_dict(),
            forget_seconds=round(seconds, 2),
        )
        rows.append(row)
        log(
            f"[{i}/{len(items)}] {item.name}: M-Score {row.mscore_before['mean']:.3f} -> "
            f"{row.mscore_after['mean']:.3f}, retention {row.retention_before['mean']:.3f} -> "
            f"{row.retention_after['mean']:.3f} ({seconds:.1f} s)"
        )
    return rows


def write_report(
    rows: Sequence[BenchRow], out_dir: str | Path, title: str, settings: dict
) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "bench.png"}
    paths["json"].write_text(
        json.dumps(
            {"title": title, "settings": settings, "rows": [asdict(r) for r in rows]}, indent=1
        )
    )
    paths["md"].write_text(markdown_table(rows, title, settings))
    plot(rows, paths["png"], title)
    return paths


def _fmt(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['low']:.2f}, {e['high']:.2f}]"


def markdown_table(rows: Sequence[BenchRow], title: str, settings: dict) -> str:
    lines = [
        f"# {title}",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "",
        "| item | category | M-Score before | M-Score after | retention before | "
        "retention after | Δ retention (pts) | forget s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = 100 * (r.retention_after["mean"] - r.retention_before["mean"])
        lines.append(
            f"| {r.item} | {r.category} | {_fmt(r.mscore_before)} | "
            f"{_fmt(r.mscore_after)} | {_fmt(r.retention_before)} | "
            f"{_fmt(r.retention_after)} | {delta:+.1f} | {r.forget_seconds:.1f} |"
        )
    lines += [
        "",
        "M-Score: judge's mean probability of the concept on images from prompts "
        "naming it (lower after = forgotten). Retention: judge accuracy on prompts not "
        "naming it. Brackets: 95% confidence intervals.",
        "",
    ]
    return "\n".join(lines)


def require_plots() -> None:
    """Raise FmnError when matplotlib, an optional dependency (the `plots` extra), is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise FmnError(
            "the bench chart (bench.png) needs matplotlib, which is not installed: "
            "pip install 'forget-me-not-studio[plots]'"
        )


def plot(rows: Sequence[BenchRow], path: Path, title: str) -> None:
    require_plots()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.item if len(r.item) < 18 else r.item[:16] + "…" for r in rows]
    x = range(len(rows))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6, 0.55 * len(rows) + 2), 6), sharex=True)
    w = 0.4
    a1.bar([i - w / 2 for i in x], [r.mscore_before["mean"] for r in rows], w, label="before")
    a1.bar([i + w / 2 for i in x], [r.mscore_after["mean"] for r in rows], w, label="after")
    a1.set_ylabel("M-Score")
    a1.set_ylim(0, 1)
    a1.legend(loc="upper right", fontsize=8)
    a1.set_title(title, fontsize=10)
    a2.bar([i - w / 2 for i in x], [r.retention_before["mean"] for r in rows], w, label="before")
    a2.bar([i + w / 2 for i in x], [r.retention_after["mean"] for r in rows], w, label="after")
    a2.set_ylabel("retention")
    a2.set_ylim(0, 1)
    a2.set_xticks(list(x))
    a2.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
