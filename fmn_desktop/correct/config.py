"""The settings of a correction job (`CorrectConfig`) and of broad removal (`BroadConfig`).

Without torch: the CLI builds its options from these fields before any command runs
(`fmn_desktop.lazy`). The methods are in `closed_form` and `broad`.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass

from fmn_desktop.knobs import knob
from fmn_desktop.prompts.tokens import POSITION_MODES

TARGET_SETS = ("kv", "k", "v")
DEFAULT_TEMPLATES = ["a {}", "a photo of a {}", "{}", "a photo of {}"]


@dataclass
class Edit:
    """One prompt pair: `source` names `concept`; its rows go to `target`'s (and away from
    `negative`'s) aligned rows."""

    source: str
    concept: str
    target: str
    negative: str | None = None


@dataclass
class CorrectConfig:
    """A correction job; every field but the prompts lists is stored in the patch metadata."""

    concept: str = knob(MISSING, "text of the concept to redirect", group="what to correct")
    guide: str = knob(MISSING, "text the concept should read as", group="what to correct")
    negative: str | None = knob(
        None, "text to push the concept away from (needs --strength)", group="what to correct"
    )
    strength: float = knob(
        0.0, "target = guide + strength * (guide - negative)", group="what to correct"
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the concept (repeatable; default: 'a {}', "
        "'a photo of a {}', '{}', 'a photo of {}')",
        group="what to correct",
        flag="--template",
        many=True,
    )
    edits: list[Edit] | None = None  # explicit pairs, added to the templates' ones
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to keep unchanged (repeatable; default: the toy world's captions on the "
        "embedded model, a built-in set elsewhere)",
        group="solve",
        flag="--preserve-prompt",
        many=True,
    )
    preserve_weight: float = knob(
        1.0, "weight of the preserved prompts' keys and values", group="solve", bounds="nonneg"
    )
    ridge: float = knob(
        0.01,
        "ridge term that keeps the edit near the original weights",
        group="solve",
        bounds="nonneg",
    )
    positions: str = knob(
        "concept+following+eot", "token positions edited", group="solve", choices=POSITION_MODES
    )
    targets: str = knob("kv", "which projections are edited", group="solve", choices=TARGET_SETS)

    def __post_init__(self) -> None:
        if not self.concept.strip():
            raise ValueError("give a non-empty concept")
        if not self.guide.strip():
            raise ValueError("give a non-empty guide (what the concept should become)")
        if self.positions not in POSITION_MODES:
            raise ValueError(
                f"unknown positions {self.positions!r}; valid: {', '.join(POSITION_MODES)}"
            )
        if self.targets not in TARGET_SETS:
            raise ValueError(f"unknown targets {self.targets!r}; valid: {', '.join(TARGET_SETS)}")
        if self.preserve_weight < 0 or self.ridge < 0:
            raise ValueError("preserve weight and ridge must be >= 0")
        if self.ridge == 0 and self.preserve_weight == 0:
            raise ValueError("ridge and preserve weight cannot both be 0 (the solve is singular)")
        if self.strength and not self.negative:
            raise ValueError("strength pushes away from a negative: give --negative too")
        bad = [t for t in (self.templates or []) if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' where the concept goes: {bad}")

    def all_edits(self) -> list[Edit]:
        templates = self.templates if self.templates is not None else DEFAULT_TEMPLATES
        out = [
            Edit(
                t.format(self.concept),
                self.concept,
                t.format(self.guide),
                t.format(self.negative) if self.negative else None,
            )
            for t in templates
        ]
        return out + list(self.edits or [])


DEFAULT_BROAD_TEMPLATES = [  # none is an evaluation prompt of the toy world (concepts.py)
    "a {} circle",
    "a photo of a {} square",
    "a {} triangle in the style of dots",
    "{} Zorbu",
    "a {} photo in the style of stripes",
    "a photo of a {} ring",
    "a photo of {} Bramor",
    "a {} crescent",
]


@dataclass
class BroadConfig:
    words: list[str] = knob(
        MISSING,
        "a word that draws the attribute (repeatable)",
        group="what to remove",
        flag="--words",
        many=True,
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the word (repeatable; default: a built-in set)",
        group="what to remove",
        flag="--template",
        many=True,
    )
    eta: float = knob(
        1.0,
        "negative guidance: how far past the base prediction, away from "
        "the attribute, the target lies",
        group="training",
    )
    steps: int = knob(150, "optimisation steps", group="training")
    # lr: the measured setting (docs/research/CORRECTION_AND_BROAD.md)
    lr: float = knob(1e-3, "learning rate", group="training", bounds="positive")
    trainable: str = knob(
        "attn2",
        "what changes: attn2 K/V, or all of attn2",
        group="training",
        choices=("kv", "attn2"),
    )
    # The word-less prompts' term. 4 left 1 frame in 384 word-free images at CFG 1 (base 25;
    # weight 1: 9) and none at CFG 2/5, retention 0.999 -> 0.997
    # (docs/research/CORRECTION_AND_BROAD.md).
    uncaptioned_weight: float = knob(
        4.0,
        "weight of the same prompts without the words (the attribute drawn with no word)",
        group="loss terms",
        bounds="nonneg",
    )
    preserve_weight: float = knob(
        1.0, "weight of the preserved prompts' predictions", group="loss terms", bounds="nonneg"
    )
    # Hold the unconditional ("") prediction: classifier-free guidance measures every prompt
    # against it, and a patch that moved it away from the attribute drew the attribute on
    # word-free prompts (measured: docs/research/CORRECTION_AND_BROAD.md).
    hold_unconditional: bool = True
    # Latents drawn from the preservation prompts, on which those prompts and "" also keep
    # their base predictions: the references above all show the attribute, and a patch held
    # only there was free to move where ordinary prompts' samples go.
    ordinary_references: int = knob(
        16,
        'latents drawn from the preservation prompts, on which they and "" keep the base '
        "prediction (0: only on the attribute's references)",
        group="loss terms",
        bounds="nonneg",
    )
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to keep unchanged (repeatable; default: the model's world on the "
        "embedded model, a built-in set elsewhere)",
        group="loss terms",
        flag="--preserve-prompt",
        many=True,
    )
    batch_size: int = knob(4, "samples per step", group="training")
    num_references: int = knob(16, "reference images of the attribute, generated", group="training")
    reference_steps: int = 20
    guidance_scale: float = 5.0
    grad_clip: float = 1.0
    seed: int = knob(0, "random seed of the job", group="training", bounds="seed")

    def __post_init__(self) -> None:
        if not self.words or any(not w.strip() for w in self.words):
            raise ValueError("give at least one non-empty word (--words)")
        if self.steps < 1 or self.batch_size < 1 or self.num_references < 1:
            raise ValueError("steps, batch size and number of references must be positive")
        if self.ordinary_references < 0:
            raise ValueError("the number of ordinary references cannot be negative")
        if self.lr <= 0 or self.eta < 0:
            raise ValueError("lr must be > 0 and eta >= 0")
        if self.trainable not in ("kv", "attn2"):
            raise ValueError(f"unknown trainable set {self.trainable!r}; valid: kv, attn2")
        bad = [t for t in (self.templates or []) if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' where the word goes: {bad}")

    def prompt_pairs(self) -> list[tuple[str, str]]:
        """(prompt with a word, the same prompt without it) for every word and template."""
        templates = self.templates or DEFAULT_BROAD_TEMPLATES
        return [(t.format(w), strip_word(t.format(w), w)) for w in self.words for t in templates]


def strip_word(prompt: str, word: str) -> str:
    out = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)\s*", "", prompt, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", out).strip() or "a photo"
