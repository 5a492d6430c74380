"""Attention re-steering: concept tokens, the attn2 processor, trainable deltas, forget jobs."""

from fmn_desktop.prompts.tokens import POSITION_MODES, concept_mask
from fmn_desktop.resteer.forget import (
    ForgetConfig,
    ForgetResult,
    changed_parameters,
    default_lr,
    forget,
    forget_steps,
)

__all__ = [
    "POSITION_MODES",
    "ForgetConfig",
    "ForgetResult",
    "changed_parameters",
    "concept_mask",
    "default_lr",
    "forget",
    "forget_steps",
]
