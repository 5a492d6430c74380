"""Textual inversion: learn tokens for a concept known only from images (Forget-Me-Not's
first stage for identities), install them in a pipeline for a while, keep them as small
embedding files, and find the words the model already uses for the same thing.

Names are imported on first use (`fmn_desktop.lazy`): `InversionConfig` without torch."""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.inversion.config import DEFAULT_TEMPLATES, InversionConfig
    from fmn_desktop.inversion.embedding import (
        LearnedTokens,
        installed_tokens,
        load_embedding,
        save_embedding,
        token_names,
    )
    from fmn_desktop.inversion.train import (
        InversionResult,
        learn_tokens,
        learn_tokens_steps,
        read_images,
    )

__all__ = [
    "DEFAULT_TEMPLATES",
    "InversionConfig",
    "InversionResult",
    "LearnedTokens",
    "installed_tokens",
    "learn_tokens",
    "learn_tokens_steps",
    "load_embedding",
    "read_images",
    "save_embedding",
    "token_names",
]

lazy_package(
    __name__,
    {
        "DEFAULT_TEMPLATES": "config",
        "InversionConfig": "config",
        "LearnedTokens": "embedding",
        "installed_tokens": "embedding",
        "load_embedding": "embedding",
        "save_embedding": "embedding",
        "token_names": "embedding",
        "InversionResult": "train",
        "learn_tokens": "train",
        "learn_tokens_steps": "train",
        "read_images": "train",
    },
)
