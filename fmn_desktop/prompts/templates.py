"""Prompt templates per concept kind; `{}` is replaced by the concept text.

The paper used "a photo of {}" for objects and identities and "a photo in the style of {}" for
styles. A few variants per kind spread the re-steering over phrasings users actually type.
"""

from __future__ import annotations

KINDS = ("object", "style", "identity")

TEMPLATES: dict[str, list[str]] = {
    "object": ["a photo of {}", "a picture of {}", "{}"],
    "style": ["a photo in the style of {}", "a painting in the style of {}", "{} style"],
    "identity": ["a photo of {}", "a portrait of {}", "{}"],
}


def prompts_for(concept: str, kind: str, templates: list[str] | None = None) -> list[str]:
    """Prompts naming `concept`, from user `templates` or the defaults of its `kind`."""
    if templates is None:
        if kind not in TEMPLATES:
            raise ValueError(f"unknown concept kind {kind!r}; valid: {', '.join(KINDS)}")
        templates = TEMPLATES[kind]
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ValueError(f"templates must contain '{{}}' where the concept goes: {bad}")
    return [t.format(concept) for t in templates]
