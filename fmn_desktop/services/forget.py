"""Forgetting: a forget job written to a patch file, and forget-evaluate-register.

>>> model = open_model("default")  # doctest: +SKIP
>>> done = run_job(forget_job(JobContext(), model, ForgetRequest(config, out="p.safetensors")))
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn_desktop.patch import Patch, save_patch, write_patch
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.services.progress import JobContext
from fmn_desktop.training import Progress

log = logging.getLogger(__name__)
FORMATS = ("auto", "lora", "diff")


@dataclass
class ForgetOutcome:
    path: Path
    patch: Patch
    seconds: float
    lora_error: float | None
    final_loss: float
    fmt: str = "lora"  # the layout written
    notes: list[str] = field(default_factory=list)


def choose_format(model, config: ForgetConfig, fmt: str) -> tuple[str, str | None]:
    """The layout ("lora" or "diff") a forget job with `config` writes, decided before it
    trains, and a note when "auto" picked .diff.

    "auto" is LoRA where a LoRA can hold every parameter the job changes (linear weights and
    1x1 convolutions: the default attn2 K/V), else .diff (biases and 3x3 convolutions of
    `--trainable attn2` / `unet`). An explicit "lora" that cannot hold them is refused here,
    not after training.
    """
    from fmn_desktop.errors import FmnError
    from fmn_desktop.patch.lowrank import lora_unfit, unfit_summary
    from fmn_desktop.resteer import changed_parameters

    if fmt not in FORMATS:
        raise FmnError(f"unknown patch format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "diff":
        return "diff", None
    names = set(changed_parameters(model.pipe.unet, config))
    shapes = {n: tuple(p.shape) for n, p in model.pipe.unet.named_parameters() if n in names}
    if not lora_unfit(shapes):
        return "lora", None
    what = unfit_summary(shapes)
    if fmt == "lora":
        raise FmnError(
            f"a LoRA cannot hold what trainable set {config.trainable!r} changes: {what}; "
            "write it as .diff (--format diff), or train a LoRA (--lora-rank)"
        )
    return "diff", (
        f"writing a .diff patch (full deltas), not LoRA: trainable set {config.trainable!r} "
        f"changes parameters a LoRA cannot hold: {what}. ComfyUI and A1111 read .diff; "
        "diffusers' load_lora_weights and kohya's scripts read LoRA only"
    )


def forget_to_file(
    model,
    config: ForgetConfig,
    out: str | os.PathLike,
    fmt: str = "auto",
    export_rank: int | None = None,
    max_rel_error: float = 0.01,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    extra: dict[str, str] | None = None,
    harden=None,
    cache=None,
) -> ForgetOutcome:
    """Run a forget job on `model` and write the patch to `out` as `fmt` (see
    `choose_format`: "auto", "lora" or "diff"; the layout is settled before training).

    `harden` (attack.harden.HardenSettings) makes it an adversarially hardened job: forget,
    attack the patch, forget the prompts found too, for its rounds. Dense deltas written as
    LoRA go through truncated SVD (`write_patch`). `extra` adds string entries to the patch's
    metadata. `cache` (`services.cache.reference_cache`) reuses and keeps the reference
    latents. Nothing is written if the job fails or is cancelled.
    """
    from fmn_desktop.errors import FmnError

    out = Path(out)
    if out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    fmt, note = choose_format(model, config, fmt)
    notes = [note] if note else []
    if note:
        log.info(note)
        if progress is not None:
            progress(Progress("format", text=note))
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
    return ForgetOutcome(out, patch, result.seconds, err, result.history[-1].loss, fmt, notes)


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
    fmt: str = "auto"  # auto (LoRA where it can hold the changes, else .diff), lora, diff
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
    fmt: str = "lora"  # the layout written
    notes: list[str] = field(default_factory=list)  # e.g. why .diff was written


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
    from fmn_desktop.services.model import scoreable_concepts

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
    concepts = scoreable_concepts(model, config.concepts) if req.evaluate else None
    named = ", ".join(c.name for c in concepts or [])
    if concepts:
        yield Progress("evaluate", text=f"scoring {named} on held-out prompts")
        scores = evaluate_patch(
            model,
            outcome.patch,
            concepts,
            req.eval_seeds,
            req.eval_steps,
            ctx.should_cancel,
            others_limit=req.eval_others,
            progress=ctx.progress,
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
                reg.add_evaluations(registry_rows(scores, named, settings), patch=record.id)
    return ForgetDone(
        None if tmp else Path(out),
        record,
        outcome.seconds,
        outcome.final_loss,
        scores,
        outcome.lora_error,
        named or None,
        outcome.fmt,
        outcome.notes,
    )
