"""The settings of a textual-inversion job (`InversionConfig`), without torch: the CLI reads
their defaults when it builds its options (`fmn_desktop.lazy`)."""

from __future__ import annotations

from dataclasses import dataclass

# The identity templates of `fmn_desktop.prompts.templates` ("a photo of {}", ...), which are
# also the prompts the forget job then re-steers.
DEFAULT_TEMPLATES = ("a photo of {}", "a portrait of {}", "{}")


@dataclass
class InversionConfig:
    placeholder: str = "<concept>"
    num_vectors: int = 4
    steps: int = 500
    lr: float = 1e-3
    init_word: str | None = None  # None: random rows with the vocabulary's spread
    batch_size: int = 4
    templates: list[str] | None = None  # None: DEFAULT_TEMPLATES
    flip_p: float = 0.5  # chance of a horizontally mirrored image (diffusers' default)
    weight_decay: float = 1e-2  # AdamW, on the new rows only (diffusers' default)
    seed: int = 0
    eval_samples: int = 32  # fixed (image, t, noise) draws for the before/after loss

    def __post_init__(self) -> None:
        if self.num_vectors < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("vectors, steps and batch size must be positive")
        if not self.lr > 0:
            raise ValueError("the learning rate must be positive")
        bad = [t for t in (self.templates or []) if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' where the token goes: {bad}")

    def prompts(self) -> list[str]:
        return [t.format(self.placeholder) for t in (self.templates or DEFAULT_TEMPLATES)]
