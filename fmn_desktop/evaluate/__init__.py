"""Honest evaluation on the embedded model: M-Score, retention, ConceptBench.

Names are imported on first use (`fmn_desktop.lazy`): `evaluate.patch_scores` without torch."""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.evaluate.scores import (
        Estimate,
        EvalSettings,
        generate_eval_set,
        mscore,
        prompt_following,
        retention,
    )

__all__ = [
    "Estimate",
    "EvalSettings",
    "generate_eval_set",
    "mscore",
    "prompt_following",
    "retention",
]

lazy_package(__name__, dict.fromkeys(__all__, "scores"))
