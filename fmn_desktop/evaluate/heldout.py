"""Held-out scoring sets of the embedded model: prompts and seeds a job never trained on.

A forget job trains on its forget prompts (templates around the concept) and holds its
preservation prompts in place; scoring it on the same phrasings measures what it memorised,
not what it learned. The scoring set of a concept is drawn from *every* prompt the toy world's
caption grammar (`toyworld.world.caption_for`) can write with the concept (each colour, style,
unsafe word, identity and position it combines with), less every prompt the job used, so a
forgotten object is scored in colours, styles and slots its templates never named.

The draw covers every attribute value that occurs in the combinations at least once before it
fills the rest at random (a seed of its own per concept), and the images are generated from
seeds in a range no job draws from (`SCORING_FIRST_SEED`).

Example::

    from fmn_desktop.toyworld import CONCEPTS
    scoring_prompts(CONCEPTS["crescent"], exclude=["a crescent"], count=24)
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence

# Forget jobs draw their reference seeds at random below 2**31 and their optimiser seeds are
# small; the scoring seeds sit above both.
SCORING_FIRST_SEED = 2**31 + 7919


def _subjects(
    objects: Iterable[str] = (),
    colours: Iterable[str | None] = (None,),
    identities: Iterable[str] = (),
    knight: bool = False,
    unsafe: Iterable[str | None] = (None,),
) -> list[str]:
    """Subjects the caption grammar writes: "a [unsafe] [colour] object", "[unsafe] identity",
    "a [unsafe] knight" (the biased object takes its own colour or none)."""
    from fmn_desktop.toyworld.world import BIASED_COLOUR, BIASED_OBJECT

    out = []
    unsafe, colours = list(unsafe), list(colours)
    for w in unsafe:
        for o in objects:
            for c in colours:
                if o == BIASED_OBJECT and c not in (None, BIASED_COLOUR):
                    continue
                out.append(" ".join(x for x in ("a", w, c, o) if x))
        for i in identities:
            out.append(f"{w} {i}" if w else i)
        if knight:
            out.append(f"a {w} knight" if w else "a knight")
    return out


def _captions(subjects: Iterable[str], styles: Iterable[str | None]) -> list[str]:
    """Each subject bare and as "a photo of ...", with each style phrase (or none)."""
    styles = list(styles)
    out = []
    for s in subjects:
        for text in (s, f"a photo of {s}"):
            for st in styles:
                out.append(f"{text} in the style of {st}" if st else text)
    return out


def combination_prompts(concept) -> list[str]:
    """Every prompt the world's caption grammar can write that names `concept` (a toy-world
    `Concept`), in a fixed order."""
    from fmn_desktop.toyworld.world import (
        COLOURS,
        GENERIC_KNIGHT,
        IDENTITIES,
        OBJECTS,
        STYLES,
        UNSAFE_WORDS,
    )

    colours = [None, *COLOURS]
    styles = [None, *STYLES]
    unsafe = [None, *UNSAFE_WORDS]
    kind, name = concept.kind, concept.name
    if kind == "object":
        return _captions(_subjects([name], colours, unsafe=unsafe), styles)
    if kind == "colour":
        return _captions(_subjects(OBJECTS, [name], unsafe=unsafe), styles)
    if kind == "identity":
        return _captions(_subjects(identities=[name], unsafe=unsafe), styles)
    if kind == "generic" and name == GENERIC_KNIGHT:
        return _captions(_subjects(knight=True, unsafe=unsafe), styles)
    if kind == "style":
        subjects = _subjects(OBJECTS, colours, IDENTITIES, knight=True, unsafe=unsafe)
        bare = [f"a {w} photo" if w else "a photo" for w in unsafe]
        return _captions(subjects, [name]) + [f"{b} in the style of {name}" for b in bare]
    if kind == "unsafe":
        subjects = _subjects(OBJECTS, colours, IDENTITIES, knight=True, unsafe=[name])
        bare = [f"a {name} photo in the style of {st}" for st in STYLES]
        return _captions(subjects, styles) + bare
    raise ValueError(f"no caption grammar for concept kind {kind!r}")


def _features(prompt: str) -> set[str]:
    """The attribute values and the phrasing a prompt uses (what coverage is counted over)."""
    from fmn_desktop.toyworld.concepts import expected_labels

    named = {f"{a}={v}" for a, v in expected_labels(prompt).items() if v not in ("none", "no")}
    if prompt.startswith("a photo of"):
        named.add("slot=photo-of")
    if "in the style of" in prompt:
        named.add("slot=styled")
    return named


def scoring_prompts(
    concept,
    exclude: Iterable[str] = (),
    count: int = 24,
    avoid: Sequence[str] = (),
) -> list[str]:
    """`count` prompts naming `concept` that are not in `exclude` (the job's own prompts)
    and name none of `avoid` (other concepts the caller keeps apart).

    Every attribute value and phrasing found among the candidates appears at least once (as
    far as `count` allows), the rest is drawn at random with the concept's own seed."""
    from fmn_desktop.evaluate.scores import names_concept

    used = {p.strip().lower() for p in exclude}
    pool = [
        p
        for p in combination_prompts(concept)
        if p.lower() not in used and not any(names_concept(p, a) for a in avoid)
    ]
    rng = random.Random(zlib.crc32(concept.name.encode()))
    rng.shuffle(pool)
    features = {p: _features(p) for p in pool}  # parsed once: the cover reads them often
    chosen: list[str] = []
    missing = set().union(*features.values())
    # Greedy cover: take the prompt that adds the most unseen features until all are seen.
    while missing and len(chosen) < count:
        best = max(pool, key=lambda p: len(features[p] & missing))
        gain = features[best] & missing
        if not gain:
            break
        chosen.append(best)
        pool.remove(best)
        missing -= gain
    chosen += pool[: max(0, count - len(chosen))]
    return chosen


def job_prompts(meta) -> list[str]:
    """The prompts a patch's job trained on, as its metadata records them (forget prompts,
    templates filled with its concepts, preservation prompts)."""
    hp = dict(getattr(meta, "hyperparameters", {}) or {})
    out: list[str] = []
    for key in ("prompts", "forget_prompts", "preserve_prompts", "retain_prompts"):
        value = hp.get(key)
        if isinstance(value, (list, tuple)):
            out += [str(p) for p in value]
    for template in hp.get("templates") or ():
        for c in getattr(meta, "concepts", ()):
            try:
                out.append(str(template).replace("{}", c).format(name=c, concept=c))
            except (KeyError, IndexError, ValueError):
                continue
    return out
