"""Correction, disentangling and broad removal as whole actions: solve or train, write the
patch file, register it when asked."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmn_desktop.correct.broad import BroadConfig, BroadResult, erase_broad
from fmn_desktop.correct.closed_form import CorrectConfig, CorrectResult, correct
from fmn_desktop.correct.disentangle import DisentangleConfig
from fmn_desktop.services.defaults import preservation_prompts
from fmn_desktop.services.output import scratch_file
from fmn_desktop.training import Progress

PATCH_FORMATS = ("diff", "lora")


def write_correction(patch, out, fmt: str = "diff") -> str:
    """Save `patch` to `out` as exact dense deltas (`diff`) or low-rank (`lora`, SVD with at
    most 1% relative error); returns a one-line description of what was written."""
    from fmn_desktop.patch import write_patch

    _, err = write_patch(patch, out, fmt)
    extra = "" if err is None else f", LoRA relative error {err:.4f}"
    out = Path(out)
    return f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB{extra})"


@dataclass
class CorrectionOutcome:
    path: Path
    result: CorrectResult | BroadResult | object  # or a resteer ForgetResult (disentangle)
    message: str  # what the CLI prints

    @property
    def patch(self):
        return self.result.patch


def correct_to_file(
    model,
    config: CorrectConfig,
    out,
    fmt: str = "diff",
    preserve_prompts: Sequence[str] | None = None,
) -> CorrectionOutcome:
    """Closed-form correction of `config.concept` on `model` (left unchanged), written to
    `out`. Preservation prompts: `preserve_prompts`, else `config.preserve_prompts`, else the
    defaults (`preservation_prompts`)."""
    given = preserve_prompts or config.preserve_prompts
    config.preserve_prompts = preservation_prompts(model, given, [config.concept])
    result = correct(model.pipe, config, model.fingerprint or "", model.family)
    r = result.report
    message = (
        f"{write_correction(result.patch, out, fmt)}; objective {r['objective_before']:.4g} "
        f"-> {r['objective_after']:.4g}, preservation drift {r['preserve_drift']:.4f}, "
        f"concept energy outside the preserved span {r['outside_preserve_span']:.4f}"
    )
    return CorrectionOutcome(Path(out), result, message)


def erase_broad_to_file(
    model,
    config: BroadConfig,
    out,
    fmt: str = "diff",
    preserve_prompts: Sequence[str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache=None,
) -> CorrectionOutcome:
    """Broad removal of `config.words` (ESD-style fine-tune) on `model` (left unchanged),
    written to `out`; cancelling (`should_cancel`) raises CancelledError and writes nothing.
    `cache` (`services.cache.reference_cache`) reuses and keeps the reference latents."""
    given = preserve_prompts or config.preserve_prompts
    config.preserve_prompts = preservation_prompts(model, given, list(config.words))
    result = erase_broad(
        model.pipe, config, model.fingerprint or "", model.family, progress, should_cancel, cache
    )
    result.patch.meta.hyperparameters["seconds"] = round(result.seconds, 3)
    message = f"{write_correction(result.patch, out, fmt)}, {result.seconds:.1f} s"
    return CorrectionOutcome(Path(out), result, message)


def disentangle_to_file(
    model,
    config: DisentangleConfig,
    out,
    fmt: str = "diff",
    preserve_prompts: Sequence[str] | None = None,
    progress: Callable | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache=None,
) -> CorrectionOutcome:
    """Disentangle `config.concept` from `config.dominant` on `model` (left unchanged), written
    to `out` as a ``correct`` patch; cancelling raises CancelledError and writes nothing.
    `cache` as for `erase_broad_to_file`."""
    from fmn_desktop.resteer import forget
    from fmn_desktop.services.defaults import with_model_defaults

    given = preserve_prompts or config.preserve_prompts
    preserve = preservation_prompts(model, given, [config.concept, config.dominant])
    job = with_model_defaults(model, config.forget_config(preserve))
    result = forget(
        model.pipe, job, model.fingerprint or "", model.family, progress, should_cancel, cache
    )
    meta = result.patch.meta
    meta.kind, meta.method = "correct", "resteer-disentangle"
    meta.hyperparameters.update(
        dominant=config.dominant, strength=config.strength, seconds=round(result.seconds, 3)
    )
    message = f"{write_correction(result.patch, out, fmt)}, {result.seconds:.1f} s"
    return CorrectionOutcome(Path(out), result, message)


# ------------------------------------------------------------ jobs: write, then register
@dataclass
class CorrectRequest:
    """A closed-form correction (`config` a CorrectConfig: `fmn correct`), a broad removal
    (a BroadConfig: `fmn erase-broad`) or a disentangling (a DisentangleConfig: `fmn
    disentangle`), written as `fmt` and registered."""

    config: Any
    fmt: str = "diff"
    registry_root: str | None = None  # None: keep the file only
    out: str | None = None  # None: a temporary file (registered, then removed)
    tags: list[str] = field(default_factory=list)
    preserve_prompts: list[str] | None = None
    # The registry folder whose reference cache a trained correction uses (services.cache);
    # None: references drawn afresh, none kept.
    reference_cache: str | None = None


@dataclass
class CorrectDone:
    path: Path | None  # the patch file kept outside the registry, if any
    record: Any  # PatchRecord when registered
    seconds: float
    message: str  # the CLI's line: what was written, and the solve's figures
    report: dict  # closed form: the solve's figures; broad: {}
    losses: list[float] = field(default_factory=list)


def _correction_job(ctx, model, req: CorrectRequest, run, what: str):
    tmp = None
    out = req.out
    if out is None:
        # beside the registry it goes into; swept at the next open if the process is killed
        tmp = contextlib.ExitStack()
        out = str(
            tmp.enter_context(scratch_file(req.registry_root or tempfile.gettempdir(), "correct"))
        )
    try:
        yield Progress("solve", 0, getattr(req.config, "steps", 0), text=what)
        outcome = run(out)
        record = None
        if req.registry_root is not None:
            from fmn_desktop.services.library import register_file

            yield Progress("register", text="adding the patch to the registry")
            record = register_file(req.registry_root, model, out, req.tags)
        result = outcome.result
        return CorrectDone(
            None if tmp else Path(out),
            record,
            result.seconds,
            outcome.message,
            dict(getattr(result, "report", {}) or {}),
            [h.loss for h in getattr(result, "history", []) if h.phase == "train"],
        )
    finally:
        if tmp is not None:
            tmp.close()


def correct_job(ctx, model, req: CorrectRequest):
    """`correct_to_file`, then register."""
    return _correction_job(
        ctx,
        model,
        req,
        lambda out: correct_to_file(model, req.config, out, req.fmt, req.preserve_prompts),
        f"solving the correction of {req.config.concept!r} towards {req.config.guide!r}",
    )


def _trained_correction_job(ctx, model, req: CorrectRequest, to_file, what: str):
    """A correction that trains (`to_file`: one of the `*_to_file` functions above), reporting each
    step and honouring cancel, then register."""
    from fmn_desktop.services.cache import reference_cache

    cache = reference_cache(req.reference_cache, req.reference_cache is not None)
    return _correction_job(
        ctx,
        model,
        req,
        lambda out: to_file(
            model,
            req.config,
            out,
            req.fmt,
            req.preserve_prompts,
            progress=ctx.progress,
            should_cancel=ctx.should_cancel,
            cache=cache,
        ),
        what,
    )


def broad_job(ctx, model, req: CorrectRequest):
    """`erase_broad_to_file`, then register."""
    what = f"removing {', '.join(req.config.words)}"
    return _trained_correction_job(ctx, model, req, erase_broad_to_file, what)


def disentangle_job(ctx, model, req: CorrectRequest):
    """`disentangle_to_file`, then register."""
    c = req.config
    what = f"letting {c.concept!r} come through without {c.dominant!r}"
    return _trained_correction_job(ctx, model, req, disentangle_to_file, what)
