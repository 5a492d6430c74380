"""Correction and broad removal as whole workflows (solve or train, then write the patch file):
what `fmn correct` / `fmn erase-broad` run and what the desktop app's jobs call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fmn_desktop.correct.broad import BroadConfig, BroadResult, erase_broad
from fmn_desktop.correct.closed_form import CorrectConfig, CorrectResult, correct
from fmn_desktop.correct.disentangle import DisentangleConfig
from fmn_desktop.training import Progress

PATCH_FORMATS = ("diff", "lora")


def default_preserve_prompts(model, given: Sequence[str] | None, avoid: Sequence[str]) -> list[str]:
    """`given` when any; else the toy world's captions without `avoid` on the embedded model,
    the forget defaults elsewhere."""
    if given:
        return list(given)
    if model.family == "toy":
        from fmn_desktop.demo import toy_retain_prompts

        return toy_retain_prompts(list(avoid))
    from fmn_desktop.resteer.forget import DEFAULT_RETAIN_PROMPTS

    return list(DEFAULT_RETAIN_PROMPTS)


def write_correction(patch, out, fmt: str = "diff") -> str:
    """Save `patch` to `out` as exact dense deltas (`diff`) or low-rank (`lora`, SVD with at
    most 1% relative error); returns a one-line description of what was written."""
    from fmn_desktop.errors import FmnError
    from fmn_desktop.patch.format import save_patch
    from fmn_desktop.patch.lowrank import to_lora

    if fmt not in PATCH_FORMATS:
        raise FmnError(f"unknown patch format {fmt!r}; valid: {', '.join(PATCH_FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise FmnError(f"{out} is a folder; give a file name ending in .safetensors")
    extra = ""
    if fmt == "lora":
        patch, err = to_lora(patch, max_rel_error=0.01)
        patch.meta.extra["lora_relative_error"] = f"{err:.6f}"
        extra = f", LoRA relative error {err:.4f}"
    save_patch(patch, out, fmt)
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
    defaults (`default_preserve_prompts`)."""
    given = preserve_prompts or config.preserve_prompts
    config.preserve_prompts = default_preserve_prompts(model, given, [config.concept])
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
) -> CorrectionOutcome:
    """Broad removal of `config.words` (ESD-style fine-tune) on `model` (left unchanged),
    written to `out`; cancelling (`should_cancel`) raises CancelledError and writes nothing."""
    given = preserve_prompts or config.preserve_prompts
    config.preserve_prompts = default_preserve_prompts(model, given, list(config.words))
    result = erase_broad(
        model.pipe, config, model.fingerprint or "", model.family, progress, should_cancel
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
) -> CorrectionOutcome:
    """Disentangle `config.concept` from `config.dominant` on `model` (left unchanged), written
    to `out` as a ``correct`` patch; cancelling raises CancelledError and writes nothing."""
    from fmn_desktop.resteer import forget
    from fmn_desktop.workflows import with_model_defaults

    given = preserve_prompts or config.preserve_prompts
    preserve = default_preserve_prompts(model, given, [config.concept, config.dominant])
    job = with_model_defaults(model, config.forget_config(preserve))
    result = forget(
        model.pipe, job, model.fingerprint or "", model.family, progress, should_cancel
    )
    meta = result.patch.meta
    meta.kind, meta.method = "correct", "resteer-disentangle"
    meta.hyperparameters.update(
        dominant=config.dominant, strength=config.strength, seconds=round(result.seconds, 3)
    )
    message = f"{write_correction(result.patch, out, fmt)}, {result.seconds:.1f} s"
    return CorrectionOutcome(Path(out), result, message)
