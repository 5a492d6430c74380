"""The attack check: do prompts bring a forgotten concept back? (what `fmn attack` runs for a
library patch; the search itself is `fmn_desktop.attack`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fmn_desktop.services.patches import PatchSpec, composed_patches
from fmn_desktop.training import Progress


@dataclass
class AttackRequest:
    """Attack a concept before and after patches; with `record`, the figures are stored with
    that registry patch (then `patches` may only be that patch, or empty for its stored copy).
    """

    patches: list[PatchSpec]
    concept: str
    settings: Any  # attack.AttackSettings
    registry_root: str | None = None
    record: str | int | None = None
    out_dir: str | None = None  # also write attack.json / attack.png there
    judge: str | None = None  # judge file for a toy-world checkpoint (None: the embedded one)
    force: bool = False  # apply patches made for another base model, or that conflict
    mode: str = "additive"  # how several patches compose, as a stack does


@dataclass
class AttackDone:
    report: Any  # attack.AttackReport
    table: str  # attack.format_table
    grid: Any  # PIL image: attack.report_grid
    rows: list  # EvaluationRecord stored with the patch
    paths: dict = field(default_factory=dict)
    record: Any = None  # the PatchRecord the figures went to
    images: Any = None  # imaging.ImageTable: the grid's images and texts, unrendered


ATTACKABLE_KIND = "forget"


def attack_refusal(record) -> str | None:
    """Why a registry patch is not one to attack-check, or None when it is. The check searches
    for prompts that draw a removed concept again; a correction patch does not remove its
    concept, it redirects it (towards a guide), so there is nothing for an attack to bring back.
    """
    if record.kind == ATTACKABLE_KIND:
        return None
    what = ", ".join(record.concepts) or "its concept"
    return (
        f"{record.name} is a {record.kind} patch: it redirects {what} rather than removing it, "
        f"so there is nothing for an attack to bring back. The attack check is for forget patches."
    )


def attackable_patches(registry) -> list:
    """The registry's patches the attack check applies to (forget patches), newest first."""
    return sorted(registry.list_patches(kind=ATTACKABLE_KIND), key=lambda r: r.id, reverse=True)


def attack_targets(concept: str, settings) -> int:
    """How many targets one state of the attack has (prompts x seeds)."""
    from fmn_desktop.toyworld import CONCEPTS

    return len(CONCEPTS[concept].prompts()) * settings.seeds


def attack_job(ctx, model, req: AttackRequest):
    """`attack.run_attack` before and after the patches, then `record_in_registry`;
    progress is one report per target attacked."""
    from fmn_desktop.attack import format_table, record_in_registry, run_attack, write_report
    from fmn_desktop.attack.candidates import prompt_words
    from fmn_desktop.attack.run import report_grid, report_table
    from fmn_desktop.errors import CancelledError, FmnError
    from fmn_desktop.services.evaluate import record_for
    from fmn_desktop.services.model import judged_concept, model_name
    from fmn_desktop.toyworld import CONCEPTS, load_judge

    concept = judged_concept(model, req.concept, req.judge)
    s = req.settings
    if s.budget < 1 or s.seeds < 1 or s.chance < 0:
        raise FmnError("budget and seeds must be at least 1, chance at least 0")
    if not 0.0 < s.threshold < 1.0:
        raise FmnError("the threshold must be between 0 and 1")
    if not req.patches and req.record is None:
        raise FmnError("give a patch file, or a registry patch to attack")
    specs, record = record_for(req.registry_root, req.patches, req.record)
    refusal = attack_refusal(record) if record is not None else None
    if refusal:
        raise FmnError(refusal)
    total = 2 * attack_targets(req.concept, s)
    yield Progress("attack", 0, total, text="loading the judge and the patch")
    judge = load_judge(req.judge)
    composed = composed_patches(model, specs, req.mode, req.force)
    if composed.meta.kind != ATTACKABLE_KIND:  # only corrections: nothing was removed
        names = ", ".join(sp.path.name for sp in specs)
        raise FmnError(
            f"{names}: correction patches redirect their concept rather than remove it, so "
            "there is nothing for an attack to bring back. The attack check is for forget "
            "patches."
        )
    words = prompt_words(p for c in CONCEPTS.values() for p in c.prompts())
    done = [0]

    def log(line: str) -> None:
        done[0] += 1
        ctx.progress(Progress("attack", done[0], total, text=line))
        if ctx.should_cancel():
            raise CancelledError("attack check cancelled; nothing was recorded")

    yield Progress("attack", 0, total, text=f"attacking {req.concept} before the patch")
    report = run_attack(
        model.pipe,
        judge,
        concept,
        [(composed, 1.0)],
        s,
        fingerprint=model.fingerprint,
        force=True,  # checked when composed
        extra_words=words,
        model_name=model_name(model),
        patch_info=[{"file": str(s.path), "strength": s.strength} for s in specs],
        log=log,
    )
    yield Progress("report", total, total, text="drawing the best prompts found")
    grid = report_grid(report)
    paths = write_report(report, req.out_dir) if req.out_dir else {}
    rows = []
    if record is not None:
        from fmn_desktop.registry import open_registry

        yield Progress("register", total, total, text="recording the figures with the patch")
        with open_registry(req.registry_root) as reg:
            rows = record_in_registry(reg, record.id, report, strength=specs[0].strength)
    return AttackDone(report, format_table(report), grid, rows, paths, record, report_table(report))
