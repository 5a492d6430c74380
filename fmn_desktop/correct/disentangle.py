"""Disentangle a generic concept from the identity it collapses onto (the dominant /
overshadowed pair: "knight" draws Gorvak), by the re-steering job's anchor term alone.

For every attn2 layer, on the concept's prompts, the output is trained towards

    c + strength * (c - d)

where c is the original layer's output for the prompt and d its output for the same prompt with
the dominant identity in place of the concept (ESD's "away from", layer by layer; in
`ForgetConfig` terms: anchor = dominant, anchor_guidance = -(strength + 1), no re-steering).
The preservation set holds the model's ordinary prompts and, unless told otherwise, the
dominant identity's own prompts, so that "Gorvak" keeps drawing Gorvak: the two share
directions, and without that hold the edit carried over to them (measured:
docs/research/CORRECTION_AND_BROAD.md). The result is saved as a ``correct`` patch.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field

from fmn_desktop.knobs import knob
from fmn_desktop.resteer import ForgetConfig

# Prompt shapes for the dominant identity's own prompts held in place. On the embedded model
# none of them is an evaluation prompt (toyworld/concepts.py), so "Gorvak" and "a photo of
# Gorvak" measure what the hold generalises to.
DOMINANT_TEMPLATES = [
    "{} in the style of dots",
    "a photo of {} in the style of stripes",
    "{} in the style of checkers",
    "a photo of {} in the style of gradient",
]


@dataclass
class DisentangleConfig:
    concept: str = knob(MISSING, "the generic concept (e.g. knight)", group="what to free")
    dominant: str = knob(
        MISSING, "the identity it collapses onto (e.g. Gorvak)", group="what to free"
    )
    # How far past the concept, away from the dominant identity: 4 let the generic knight
    # through in 29 of 48 images and kept Gorvak's own 48 (3: 17; 5: 24, and other
    # identities appear). docs/research/CORRECTION_AND_BROAD.md.
    strength: float = knob(
        4.0, "target = concept + strength * (concept - dominant), per layer", group="what to free"
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the concept (repeatable; default: the model's)",
        group="what to free",
        flag="--template",
        many=True,
    )
    hold_dominant: bool = knob(
        True,
        "do not hold the dominant identity's own prompts in place",
        group="preservation",
        flag="--no-hold-dominant",
    )
    dominant_templates: list[str] = knob(
        list(DOMINANT_TEMPLATES),
        "template with {} for the dominant's prompts held in place "
        "(repeatable; default: four style variants)",
        group="preservation",
        flag="--dominant-template",
        many=True,
    )
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to keep unchanged (repeatable; default: the model's)",
        group="preservation",
        flag="--preserve-prompt",
        many=True,
    )
    steps: int | None = knob(
        None, "optimisation steps (default: the re-steering job's)", group="training"
    )
    seed: int = knob(0, "random seed of the job", group="training", bounds="seed")
    job_options: dict = field(default_factory=dict)  # other ForgetConfig fields (tests, power use)

    def __post_init__(self) -> None:
        self.concept, self.dominant = self.concept.strip(), self.dominant.strip()
        if not self.concept or not self.dominant:
            raise ValueError("give the concept and the dominant identity it collapses onto")
        if self.concept.lower() == self.dominant.lower():
            raise ValueError("the concept and the dominant identity must differ")
        if self.strength <= 0:
            raise ValueError("strength must be > 0 (how far to push away from the dominant)")
        bad = [t for t in self.dominant_templates if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' where the name goes: {bad}")

    def dominant_prompts(self) -> list[str]:
        return (
            [t.format(self.dominant) for t in self.dominant_templates] if self.hold_dominant else []
        )

    def forget_config(self, preserve_prompts: list[str]) -> ForgetConfig:
        """The re-steering job that does it: anchor term only, negative guidance."""
        return ForgetConfig(
            concepts=[self.concept],
            concept_kind="object",
            templates=self.templates,
            steps=self.steps,
            anchor=self.dominant,
            anchor_guidance=-(self.strength + 1.0),
            resteer_weight=0.0,
            preserve_prompts=list(preserve_prompts) + self.dominant_prompts(),
            seed=self.seed,
            **self.job_options,
        )
