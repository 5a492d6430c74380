"""Honest evaluation on the embedded model: M-Score, retention, ConceptBench."""

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
