"""Forgetting: a forget job written to a patch file, and forget-evaluate-register.

>>> model = open_model("default")  # doctest: +SKIP
>>> done = run_job(forget_job(JobContext(), model, ForgetRequest(config, out="p.safetensors")))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn_desktop.patch import Patch, save_patch, write_patch
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.services.progress import JobContext
from fmn_desktop.training import Progress


@dataclass
class ForgetOutcome:
    path: Path
    patch: Patch
    seconds: float
    lora_error: float | None
    final_loss: float


def forget_to_file(
    model,
    config: ForgetConfig,
    out: str | os.PathLike,
    fmt: str = "lora",
    export_rank: int | None = None,
    max_rel_error: float = 0.01,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    extra: dict[str, str] | None = None,
    harden=None,
    cache=None,
) -> ForgetOutcome:
    """Run a forget job on `model` and write the patch to `out` (LoRA or .diff).

    `harden` (attack.harden.HardenSettings) makes it an adversarially hardened job: forget,
    attack the patch, forget the prompts found too, for its rounds. Dense deltas written as
    LoRA go through truncated SVD (`write_patch`). `extra` adds string entries to the patch's
    metadata. `cache` (`services.cache.reference_cache`) reuses and keeps the reference
    latents. Nothing is written if the job fails or is cancelled.
    """
    from fmn_desktop.errors import FmnError

    out = Path(out)
    if fmt not in ("lora", "diff"):
        raise FmnError(f"unknown patch format {fmt!r}; valid: lora, diff")
    if out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    if harden is not None:
        from fmn_desktop.attack.harden import harden as run_harden

        result = run_harden(
            model.pipe,
            config,
            harden,
            model.fingerprint or "",
            model.family,
            progress,
            should_cancel,
            cache,
        ).result
    else:
        result = forget(
            model.pipe,
            config,
            fingerprint=model.fingerprint or "",
            family=model.family,
            progress=progress,
            should_cancel=should_cancel,
            cache=cache,
        )
    patch = result.patch
    patch.meta.hyperparameters["seconds"] = round(result.seconds, 3)
    patch.meta.extra.update(extra or {})
    patch, err = write_patch(patch, out, fmt, export_rank, max_rel_error)
    return ForgetOutcome(out, patch, result.seconds, err, result.history[-1].loss)


@dataclass
class ForgetRequest:
    """A forget job as the front ends ask for it: forget, then (on a model with a judge)
    score the patch, then keep the file and/or register it."""

    config: ForgetConfig
    evaluate: bool = True
    eval_seeds: int = 2
    eval_steps: int = 20
    eval_others: int | None = None  # retention over the first N other concepts (None: all)
    registry_root: str | None = None  # None: keep the file only
    out: str | None = None  # None: a temporary file (registered, then removed)
    tags: list[str] = field(default_factory=list)
    fmt: str = "lora"
    export_rank: int | None = None  # LoRA rank of dense deltas (None: within 1% error)
    harden: int = 0  # adversarial hardening rounds
    harden_spellings: int | None = None  # None: the hardening default
    source: str = "desktop app"  # recorded with the registry row
    overwrite: bool = False  # replace an existing `out`
    # The registry folder whose reference cache the job uses (services.cache); None: the
    # references are drawn afresh and not kept.
    reference_cache: str | None = None


@dataclass
class ForgetDone:
    path: Path | None  # the patch file kept outside the registry, if any
    record: Any  # PatchRecord when registered
    seconds: float
    final_loss: float
    scores: dict
    lora_error: float | None = None
    concept: str | None = None  # the concept the scores are of


def forget_job(ctx: JobContext, model, req: ForgetRequest):
    """Forget (`forget_to_file`, each step reported to `ctx.progress`), evaluate, register."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.services.defaults import with_model_defaults
    from fmn_desktop.services.output import check_output_file, scratch_file

    if req.out is None and req.registry_root is None:
        raise FmnError("give a file for the patch, or register it in the library")
    if req.out is not None:
        check_output_file(req.out, req.overwrite)
    config = with_model_defaults(model, req.config)
    with contextlib.ExitStack() as stack:
        tmp = req.out is None
        # Without a file of its own, the patch is written beside the registry it goes into
        # (a temporary name, removed afterwards; swept at the next open if killed).
        out = str(req.out or stack.enter_context(scratch_file(req.registry_root, "forget")))
        return (yield from _forget_job(ctx, model, req, config, out, tmp))


def _forget_job(ctx, model, req: ForgetRequest, config, out: str, tmp: bool):
    """`forget_job` once its patch file name is settled."""
    from fmn_desktop.services.cache import reference_cache
    from fmn_desktop.services.evaluate import evaluate_patch
    from fmn_desktop.services.library import register_file
    from fmn_desktop.services.model import scoreable_concept

    harden = None
    if req.harden:
        from fmn_desktop.attack.harden import HardenSettings

        kw = {} if req.harden_spellings is None else {"spellings": req.harden_spellings}
        harden = HardenSettings(rounds=req.harden, seed=config.seed, **kw)
    total = config.steps * (1 + req.harden)
    yield Progress("train", 0, total, text="re-steering attention")
    outcome = forget_to_file(
        model,
        config,
        out,
        fmt=req.fmt,
        export_rank=req.export_rank,
        progress=ctx.progress,
        should_cancel=ctx.should_cancel,
        harden=harden,
        cache=reference_cache(req.reference_cache, req.reference_cache is not None),
    )
    scores: dict = {}
    concept = scoreable_concept(model, config.concepts) if req.evaluate else None
    if concept is not None:
        yield Progress("evaluate", text=f"measuring M-Score and retention ({concept.name})")
        scores = evaluate_patch(
            model,
            outcome.patch,
            concept,
            req.eval_seeds,
            req.eval_steps,
            ctx.should_cancel,
            others_limit=req.eval_others,
        )
        outcome.patch.meta.scores = scores
        save_patch(outcome.patch, out)
    record = None
    if req.registry_root is not None:
        yield Progress("register", text="adding the patch to the registry")
        record = register_file(req.registry_root, model, out, req.tags, req.source)
        if scores:
            from fmn_desktop.evaluate.patch_scores import registry_rows
            from fmn_desktop.registry import open_registry

            settings = {"seeds": req.eval_seeds, "steps": req.eval_steps}
            with open_registry(req.registry_root) as reg:
                reg.add_evaluations(registry_rows(scores, concept.name, settings), patch=record.id)
    return ForgetDone(
        None if tmp else Path(out),
        record,
        outcome.seconds,
        outcome.final_loss,
        scores,
        outcome.lora_error,
        concept.name if concept is not None else None,
    )
