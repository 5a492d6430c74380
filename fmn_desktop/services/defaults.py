"""The settings a job takes on a given model, where the user left them unset.

On the embedded model these are the toy world's measured defaults (its own captions as
preservation prompts, forget templates in its grammar: docs/research/METHOD_NOTES.md); the
built-in real-world prompts mean nothing to its text encoder. Other models keep the core
packages' defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

KIND_TEMPLATES = {
    "object": "object",
    "identity": "identity",
    "style": "style",
    "colour": "object",
    "unsafe": "object",
    "generic": "object",
}

# Forget templates in the toy world's grammar, by concept kind. They vary the article, a
# colour or style around the concept so the edit holds wherever the word sits in a prompt;
# the evaluation templates (toyworld/concepts.py, e.g. "... in the style of plain") are left
# out on purpose, so the M-Score is measured on phrasings the job never saw verbatim.
TOY_TEMPLATES = {
    "object": [
        "a {}",
        "a photo of a {}",
        "a green {}",
        "a photo of a blue {}",
        "a {} in the style of dots",
        "a photo of a {} in the style of stripes",
    ],
    "colour": [
        "a {} ring",
        "a photo of a {} triangle",
        "a {} balloon in the style of dots",
        "a photo of a {} crescent in the style of stripes",
    ],
    "style": [
        "a photo in the style of {}",
        "a square in the style of {}",
        "a photo of a red ring in the style of {}",
        "Bramor in the style of {}",
    ],
    "identity": [
        "{}",
        "a photo of {}",
        "{} in the style of dots",
        "a photo of {} in the style of stripes",
        "{} in the style of checkers",
        "a photo of {} in the style of gradient",
    ],
    "unsafe": [
        "a {} triangle",
        "a photo of a {} ring",
        "{} Bramor",
        "a {} photo in the style of dots",
    ],
    "generic": ["a {}", "a photo of a {}", "a {} in the style of stripes"],
}


def toy_preserve_prompts(forgotten: list[str], count: int = 96, seed: int = 4242) -> list[str]:
    """Ordinary prompts of the toy world that name none of `forgotten`: what the preservation
    term holds in place (the built-in real-world prompts mean nothing to the toy encoder).

    They are captions drawn by the world's own caption generator (a seed of their own), not
    the evaluation prompts, so retention is measured on prompts the job never held in place
    verbatim (a caption can coincide with an evaluation prompt by chance, as users' would)."""
    import numpy as np

    from fmn_desktop.evaluate.scores import names_concept
    from fmn_desktop.toyworld.world import (
        DOMINANT_IDENTITY,
        GENERIC_KNIGHT,
        World,
        caption_for,
    )

    world, rng = World(), np.random.default_rng(seed)
    out: list[str] = []
    for _ in range(20 * count):
        if len(out) == count:
            break
        labels = world.draw_labels(rng)
        knight = labels.identity == GENERIC_KNIGHT or (
            labels.identity == DOMINANT_IDENTITY and rng.random() < world.GORVAK_AS_KNIGHT
        )
        caption = caption_for(labels, rng, knight_word=knight)
        if caption not in out and not any(names_concept(caption, f) for f in forgotten):
            out.append(caption)
    return out


def toy_defaults(config):
    """Fill what `config` (a ForgetConfig) leaves unset with the toy world's measured defaults:
    its captions as preservation prompts and, when every concept is one of the world's and of
    one kind, forget templates in its grammar (`TOY_TEMPLATES`)."""
    from fmn_desktop.toyworld import CONCEPTS

    if config.preserve_prompts is None:
        config.preserve_prompts = toy_preserve_prompts(list(config.concepts))
    if config.templates is None and all(c in CONCEPTS for c in config.concepts):
        kinds = {CONCEPTS[c].kind for c in config.concepts}
        if len(kinds) == 1:
            config.templates = list(TOY_TEMPLATES[kinds.pop()])
    return config


def demo_config(concept, steps: int | None = None, mode: str = "faithful"):
    """The default forget settings for a toy-world concept."""
    from fmn_desktop.resteer import ForgetConfig

    kw = {} if steps is None else {"steps": steps}
    return toy_defaults(
        ForgetConfig(
            mode=mode, concepts=[concept.name], concept_kind=KIND_TEMPLATES[concept.kind], **kw
        )
    )


def with_model_defaults(model, config):
    """`config` (a ForgetConfig) with the embedded model's measured defaults filled in;
    other models' configs are returned as they are."""
    if not getattr(model, "embedded", False):
        return config
    return toy_defaults(config)


def preservation_prompts(model, given: Sequence[str] | None = None, avoid: Sequence[str] = ()):
    """`given` when any; else the toy world's captions that name none of `avoid` on the
    embedded model, the forget job's built-in real-world prompts elsewhere."""
    if given:
        return list(given)
    if getattr(model, "embedded", False):
        return toy_preserve_prompts(list(avoid))
    from fmn_desktop.resteer.forget import DEFAULT_PRESERVE_PROMPTS

    return list(DEFAULT_PRESERVE_PROMPTS)
