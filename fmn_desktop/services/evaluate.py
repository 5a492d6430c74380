"""Scoring patches on a model that has a judge: M-Score and retention, stored where asked
(the patch file, the registry), as `fmn evaluate` and the library's Measure button run it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmn_desktop.errors import FmnError
from fmn_desktop.services.patches import PatchSpec, spec_entries
from fmn_desktop.services.progress import JobContext
from fmn_desktop.training import Progress


def evaluate_patch(
    model,
    patch,
    concept,
    seeds: int = 2,
    steps: int = 20,
    should_cancel=None,
    other_seeds: int = 1,
    others_limit: int | None = None,
    progress=None,
) -> dict:
    """Scores of one patch at strength 1 against its concept(s) (`evaluate.patch_scores`)."""
    from fmn_desktop.evaluate.patch_scores import ScoringPlan, evaluate_patches

    concepts = list(concept) if isinstance(concept, (list, tuple)) else [concept]
    plan = ScoringPlan(seeds=seeds, other_seeds=other_seeds, steps=steps, others_limit=others_limit)
    return evaluate_patches(
        model,
        [(patch, 1.0)],
        concepts,
        plan,
        exclude=training_prompts(model, [c.name for c in concepts]),
        should_cancel=should_cancel,
        progress=progress,
    )


def training_prompts(model, concepts: Sequence[str]) -> list[str]:
    """What the model's default jobs train on for `concepts`: never a scoring prompt, even
    for a patch whose file does not record its own (imports, older files)."""
    from fmn_desktop.services.defaults import TOY_TEMPLATES, preservation_prompts

    out = list(preservation_prompts(model, None, concepts))
    for templates in TOY_TEMPLATES.values():
        out += [t.format(c) for t in templates for c in concepts]
    return out


class RecordMismatchError(FmnError):
    """Patch files given with a registry record are not that record's patch."""


def record_for(registry_root: str | None, specs: Sequence[PatchSpec], ref: str | int | None):
    """The patch specs to score and the registry record the figures go to.

    Figures belong to one patch: with a record, `specs` may only name that patch's file, or
    be empty (the registry's copy is scored)."""
    specs = list(specs)
    if ref is None:
        return specs, None
    from fmn_desktop.registry import open_registry
    from fmn_desktop.registry.store import sha256_file

    with open_registry(registry_root) as reg:
        record = reg.get_patch(ref)
    if not specs:
        specs = [PatchSpec(record.path, 1.0)]
    elif len(specs) != 1 or sha256_file(specs[0].path) != record.sha256:
        raise RecordMismatchError(
            f"the figures of {ref} belong to one patch; give that patch alone (or none, to "
            "use the registry's copy)"
        )
    return specs, record


@dataclass
class EvaluateRequest:
    concepts: list[str]  # empty: the concepts the patches forget, from their metadata
    specs: list[PatchSpec]
    seeds: int = 2  # per held-out prompt of a forgotten concept
    other_seeds: int = 1  # per held-out prompt of every other concept
    steps: int = 20
    prompts: int = 24  # held-out prompts per forgotten concept
    neighbour_prompts: int = 3  # held-out prompts per other concept
    mode: str | None = None  # how several patches compose: additive | fused (None: additive)
    judge: str | None = None  # a judge file for a toy-world checkpoint; None: the embedded one
    force: bool = False  # apply patches made for another base model, or that conflict
    record: str | int | None = None  # registry patch the figures are stored with
    stack: str | int | None = None  # or a registry stack: its patches, mode and figures
    registry_root: str | None = None
    write_scores: bool = False  # store the figures in the (one) patch file too
    json_out: str | None = None  # and/or in a JSON file
    overwrite: bool = False  # replace an existing json_out


@dataclass
class EvaluateDone:
    scores: dict
    concepts: list[str]
    record: object = None  # the PatchRecord or StackRecord the figures went to
    rows: list = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def concept(self) -> str:
        return ", ".join(self.concepts)


def _entries(model, req: EvaluateRequest):
    """The stack entries to score, the mode they compose in, and the registry record the
    figures go to (a patch record, a stack record, or None)."""
    if req.stack is not None:
        if req.specs or req.record is not None:
            raise FmnError("score a registry stack alone (no patch files or patch record)")
        from fmn_desktop.registry import open_registry
        from fmn_desktop.services.library import registry_stack_entries

        with open_registry(req.registry_root) as reg:
            rec, entries = registry_stack_entries(reg, req.stack, model)
        return entries, req.mode or rec.mode, rec
    specs, record = record_for(req.registry_root, req.specs, req.record)
    entries = spec_entries(model, specs)
    if record is not None:
        entries[0].patch.meta.concepts = list(record.concepts) or entries[0].patch.meta.concepts
    return entries, req.mode or "additive", record


def evaluate_job(ctx: JobContext, model, req: EvaluateRequest):
    """Score `req`'s patches (or registry stack) on `model`, then store the figures where
    `req` asks."""
    from fmn_desktop.evaluate.patch_scores import ScoringPlan, evaluate_patches, registry_rows
    from fmn_desktop.fileio import atomic_write_bytes
    from fmn_desktop.patch.format import load_patch, save_patch
    from fmn_desktop.services.model import judged_concept
    from fmn_desktop.services.output import check_output_file
    from fmn_desktop.toyworld import load_judge

    counts = (req.seeds, req.other_seeds, req.steps, req.prompts, req.neighbour_prompts)
    if min(counts) < 1:
        raise FmnError("seeds, other seeds, steps, prompts and neighbour prompts must be >= 1")
    if not req.specs and req.record is None and req.stack is None:
        raise FmnError("give a patch file, or a registry patch or stack to score")
    if req.write_scores and (len(req.specs) != 1):
        raise FmnError(
            "the scores go into one patch file of yours: give exactly one patch "
            "file (the registry's own copy stays as it was registered)"
        )
    if req.json_out:
        check_output_file(req.json_out, req.overwrite)
    entries, mode, record = _entries(model, req)
    names = list(req.concepts) or [c for e in entries for c in e.patch.meta.concepts]
    names = list(dict.fromkeys(names))
    if not names:
        raise FmnError("the patches name no concept: say which to score (--concept)")
    concepts = [judged_concept(model, n, req.judge) for n in names]
    plan = ScoringPlan(
        prompts=req.prompts,
        seeds=req.seeds,
        neighbour_prompts=req.neighbour_prompts,
        other_seeds=req.other_seeds,
        steps=req.steps,
    )
    yield Progress("evaluate", text=f"scoring {', '.join(names)} on held-out prompts")
    scores = evaluate_patches(
        model,
        entries,
        concepts,
        plan,
        exclude=training_prompts(model, names),
        mode=mode,
        force=req.force,
        should_cancel=ctx.should_cancel,
        progress=ctx.progress,
        judge=load_judge(req.judge),
    )
    done = EvaluateDone(scores, names, record)
    if req.json_out:
        atomic_write_bytes(req.json_out, json.dumps(scores, indent=1).encode())
        done.written.append(Path(req.json_out))
    if req.write_scores:
        path = req.specs[0].path
        patch = load_patch(path)
        patch.meta.scores = scores
        try:
            save_patch(patch, path)
        except OSError as err:
            raise FmnError(f"could not write the scores into {path}: {err}") from err
        done.written.append(Path(path))
    if record is not None:
        from fmn_desktop.registry import open_registry

        yield Progress(
            "register",
            text="storing the scores with the " + ("stack" if req.stack is not None else "patch"),
        )
        settings = {**plan.as_dict(), "mode": mode, "strength": entries[0].strength}
        owner = {"stack": record.id} if req.stack is not None else {"patch": record.id}
        with open_registry(req.registry_root) as reg:
            done.rows = reg.add_evaluations(
                registry_rows(scores, ", ".join(names), settings), **owner
            )
    return done
