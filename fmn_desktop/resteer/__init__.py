"""Attention re-steering: concept tokens, the attn2 processor, trainable deltas, forget jobs.

Names are imported on first use (`fmn_desktop.lazy`): `ForgetConfig` without torch."""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.prompts.tokens import POSITION_MODES, concept_mask
    from fmn_desktop.resteer.config import ForgetConfig, default_lr
    from fmn_desktop.resteer.forget import (
        ForgetResult,
        changed_parameters,
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

lazy_package(
    __name__,
    {
        "POSITION_MODES": "fmn_desktop.prompts.tokens",
        "concept_mask": "fmn_desktop.prompts.tokens",
        "ForgetConfig": "config",
        "default_lr": "config",
        "ForgetResult": "forget",
        "forget": "forget",
        "forget_steps": "forget",
        "changed_parameters": "forget",
    },
)
