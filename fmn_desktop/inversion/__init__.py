"""Textual inversion: learn tokens for a concept known only from images (Forget-Me-Not's
first stage for identities), install them in a pipeline for a while, keep them as small
embedding files, and find the words the model already uses for the same thing."""

from fmn_desktop.inversion.embedding import (
    LearnedTokens,
    installed_tokens,
    load_embedding,
    save_embedding,
    token_names,
)
from fmn_desktop.inversion.train import (
    DEFAULT_TEMPLATES,
    InversionConfig,
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
