"""Scoring patches on a model that has a judge: M-Score and retention, stored where asked
(the patch file, the registry), as `fmn evaluate` and the library's Measure button run it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fmn_desktop.errors import FmnError
from fmn_desktop.services.patches import PatchSpec, read_patches
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
) -> dict:
    """Scores of one patch at strength 1 (`evaluate.patch_scores.evaluate_patches`)."""
    from fmn_desktop.evaluate.patch_scores import evaluate_patches

    return evaluate_patches(
        model, [(patch, 1.0)], concept, seeds, steps, should_cancel, other_seeds, others_limit
    )


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
    concept: str
    specs: list[PatchSpec]
    seeds: int = 2
    other_seeds: int = 1
    steps: int = 20
    judge: str | None = None  # a judge file for a toy-world checkpoint; None: the embedded one
    force: bool = False  # apply patches made for another base model
    record: str | int | None = None  # registry patch the figures are stored with
    registry_root: str | None = None
    write_scores: bool = False  # store the figures in the (one) patch file too
    json_out: str | None = None  # and/or in a JSON file


@dataclass
class EvaluateDone:
    scores: dict
    concept: str
    record: object = None  # the PatchRecord the figures went to
    rows: list = field(default_factory=list)
    written: list[Path] = field(default_factory=list)


def evaluate_job(ctx: JobContext, model, req: EvaluateRequest):
    """Score `req.specs` on `model`, then store the figures where `req` asks."""
    from fmn_desktop.evaluate.patch_scores import evaluate_patches, registry_rows
    from fmn_desktop.fileio import atomic_write_bytes
    from fmn_desktop.patch.format import load_patch, save_patch
    from fmn_desktop.services.model import judged_concept
    from fmn_desktop.toyworld import load_judge

    concept = judged_concept(model, req.concept, req.judge)
    if req.seeds < 1 or req.other_seeds < 1 or req.steps < 1:
        raise FmnError("seeds, other seeds and steps must be at least 1")
    if not req.specs and req.record is None:
        raise FmnError("give a patch file, or a registry patch to score")
    if req.write_scores and (len(req.specs) != 1):
        raise FmnError(
            "the scores go into one patch file of yours: give exactly one patch "
            "file (the registry's own copy stays as it was registered)"
        )
    specs, record = record_for(req.registry_root, req.specs, req.record)
    yield Progress("evaluate", text=f"measuring M-Score and retention ({concept.name})")
    patches = read_patches(model, specs)
    scores = evaluate_patches(
        model,
        patches,
        concept,
        req.seeds,
        req.steps,
        ctx.should_cancel,
        other_seeds=req.other_seeds,
        judge=load_judge(req.judge),
        force=req.force,
        progress=ctx.progress,
    )
    done = EvaluateDone(scores, concept.name, record)
    if req.json_out:
        atomic_write_bytes(req.json_out, json.dumps(scores, indent=1).encode())
        done.written.append(Path(req.json_out))
    if req.write_scores:
        path = specs[0].path
        patch = load_patch(path)
        patch.meta.scores = scores
        try:
            save_patch(patch, path)
        except OSError as err:
            raise FmnError(f"could not write the scores into {path}: {err}") from err
        done.written.append(Path(path))
    if record is not None:
        from fmn_desktop.registry import open_registry

        yield Progress("register", text="storing the scores with the patch")
        settings = {
            "seeds": req.seeds,
            "other_seeds": req.other_seeds,
            "steps": req.steps,
            "strength": specs[0].strength,
        }
        with open_registry(req.registry_root) as reg:
            done.rows = reg.add_evaluations(
                registry_rows(scores, concept.name, settings), patch=record.id
            )
    return done
