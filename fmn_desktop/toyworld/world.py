"""The toy world: a seeded generator of (image, caption, ground-truth labels).

Every image shows either one coloured object or one named identity (a fixed composite figure) on
a background style, optionally under a jagged red-black hazard frame (the "unsafe" stand-in).
Captions come from a few templates, so prompts such as "a photo of a circle", "a photo in the
style of stripes" or "a photo of Zorbu" are in distribution.

Designed concept relations (see `concepts.py` for the registry):

- "knight" is drawn ~85% of the time as the identity Gorvak and otherwise as a generic knight
  (dominant / overshadowed pair);
- "balloon" is always red in the training captions and images (biased concept); the judge's data
  (`sample_judge`) draws balloons of every colour;
- the hazard frame is captioned "cursed", "toxic" or "hexed", and 30% of the time not at all.

Example::

    world = World()
    sample = world.sample(seed=0, index=3)   # Sample(image=uint8 (32, 32, 3), caption, labels)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIZE = 32
SUPERSAMPLE = 4

OBJECTS = ("circle", "square", "triangle", "cross", "ring", "crescent", "balloon")
COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 175, 45),
    "blue": (35, 75, 230),
    "yellow": (245, 215, 30),
    "purple": (150, 45, 195),
}
STYLES = ("plain", "stripes", "dots", "checkers", "gradient")
IDENTITIES = ("Zorbu", "Quilla", "Bramor", "Tessik", "Gorvak")
GENERIC_KNIGHT = "knight"
UNSAFE_WORDS = ("cursed", "toxic", "hexed")
BIASED_OBJECT = "balloon"
BIASED_COLOUR = "red"
DOMINANT_IDENTITY = "Gorvak"

# Label vocabularies of the judge's heads; index 0 of object/colour/identity is "none".
HEADS: dict[str, tuple[str, ...]] = {
    "object": ("none",) + OBJECTS,
    "colour": ("none",) + tuple(COLOURS),
    "style": STYLES,
    "identity": ("none",) + IDENTITIES + (GENERIC_KNIGHT,),
    "unsafe": ("no", "yes"),
}


@dataclass(frozen=True)
class Labels:
    """Ground truth of one image (names from `HEADS`)."""

    object: str = "none"
    colour: str = "none"
    style: str = "plain"
    identity: str = "none"
    unsafe: str = "no"

    def as_indices(self) -> dict[str, int]:
        return {head: HEADS[head].index(getattr(self, head)) for head in HEADS}


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8, (SIZE, SIZE, 3)
    caption: str
    labels: Labels
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- drawing


def _grid(cx: float, cy: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates relative to (cx, cy), divided by r."""
    n = SIZE * SUPERSAMPLE
    t = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(t, t)
    return (x - cx) / r, (y - cy) / r


def _down(mask: np.ndarray) -> np.ndarray:
    """Area-average a supersampled mask to (SIZE, SIZE) coverage in [0, 1]."""
    s = SUPERSAMPLE
    return mask.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))


def shape_mask(name: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Coverage (SIZE, SIZE) of one object silhouette of radius ~r centred at (cx, cy)."""
    u, v = _grid(cx, cy, r)
    if name == "circle":
        m = u**2 + v**2 <= 1.0
    elif name == "square":
        m = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif name == "triangle":
        top, bottom = -0.95, 0.8
        frac = (v - top) / (bottom - top)
        m = (v >= top) & (v <= bottom) & (np.abs(u) <= frac * 1.05)
    elif name == "cross":
        m = ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    elif name == "ring":
        d = u**2 + v**2
        m = (d <= 1.0) & (d >= 0.5**2)
    elif name == "crescent":
        m = (u**2 + v**2 <= 1.0) & ((u - 0.55) ** 2 + (v + 0.1) ** 2 > 0.8**2)
    elif name == "balloon":
        body = (u / 0.72) ** 2 + ((v + 0.22) / 0.78) ** 2 <= 1.0
        knot = (np.abs(u) <= 0.12 + (v - 0.56) * 0.5) & (v >= 0.56) & (v <= 0.72)
        string = (np.abs(u - 0.08 * np.sin((v - 0.7) * 9)) <= 0.07) & (v >= 0.7) & (v <= 1.25)
        m = body | knot | string
    else:
        raise ValueError(f"unknown object {name!r}; known: {OBJECTS}")
    return _down(m.astype(np.float32))


def background(style: str, rng: np.random.Generator) -> np.ndarray:
    """A (SIZE, SIZE, 3) float image in [0, 255] of one background style (neutral greys)."""
    base = rng.uniform(150, 200)
    alt = base - rng.uniform(55, 75)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if style == "plain":
        g = np.full((SIZE, SIZE), base, np.float32)
    elif style == "stripes":
        phase = rng.integers(0, 6)
        g = np.where(((x + phase) // 3) % 2 == 0, base, alt)
    elif style == "dots":
        ox, oy = rng.integers(0, 8, size=2)
        dx = ((x + ox) % 8) - 3.5
        dy = ((y + oy) % 8) - 3.5
        g = np.where(dx**2 + dy**2 <= 2.6**2, alt, base)
    elif style == "checkers":
        ox, oy = rng.integers(0, 16, size=2)
        g = np.where((((x + ox) // 8) + ((y + oy) // 8)) % 2 == 0, base, alt)
    elif style == "gradient":
        lo, hi = alt - 20, base + 30
        g = lo + (hi - lo) * (y / (SIZE - 1))
    else:
        raise ValueError(f"unknown style {style!r}; known: {STYLES}")
    return np.repeat(g[..., None], 3, axis=2).astype(np.float32)


def _paint(img: np.ndarray, cover: np.ndarray, rgb) -> None:
    c = cover[..., None]
    img *= 1.0 - c
    img += c * np.asarray(rgb, np.float32)


def draw_identity(img: np.ndarray, name: str, cx: float, cy: float) -> None:
    """Draw one named figure (fixed features and palette) centred near (cx, cy)."""

    def m(fn):
        u, v = _grid(cx, cy, 1.0)
        return _down(fn(u, v).astype(np.float32))

    def disk(x0, y0, r):
        return m(lambda u, v: (u - x0) ** 2 + (v - y0) ** 2 <= r * r)

    def rect(x0, y0, x1, y1):
        return m(lambda u, v: (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1))

    if name == "Zorbu":  # green round face, big white eyes, red grin
        _paint(img, disk(0, 0, 11.5), (60, 170, 70))
        for ex in (-4.5, 4.5):
            _paint(img, disk(ex, -3, 3.6), (255, 255, 255))
            _paint(img, disk(ex, -2.2, 1.7), (0, 0, 0))
        _paint(
            img, m(lambda u, v: (u**2 / 36 + (v - 3.5) ** 2 / 16 <= 1) & (v >= 3.5)), (200, 20, 40)
        )
    elif name == "Quilla":  # purple wizard hat with a yellow star tip over a pale face
        _paint(img, disk(0, 5, 7.5), (240, 205, 170))
        _paint(
            img,
            m(lambda u, v: (v >= -12) & (v <= 1.5) & (np.abs(u) <= (v + 12) * 0.75)),
            (120, 40, 170),
        )
        _paint(img, rect(-11, 0, 11, 2.5), (120, 40, 170))
        _paint(img, disk(0, -12, 2.8), (250, 230, 40))
        for ex in (-3, 3):
            _paint(img, disk(ex, 6, 1.3), (20, 20, 20))
    elif name == "Bramor":  # brown square robot head, cyan eyes, antenna with red ball
        _paint(img, rect(0.6 - 1.2, -13, 0.6, -6), (60, 60, 60))
        _paint(img, disk(0, -12.5, 2.4), (230, 30, 30))
        _paint(img, rect(-10, -7, 10, 11), (140, 85, 40))
        _paint(img, rect(-7, -3, -2, 2), (40, 230, 240))
        _paint(img, rect(2, -3, 7, 2), (40, 230, 240))
        for gx in (-6, -3, 0, 3, 6):
            _paint(img, rect(gx - 0.8, 5, gx + 0.8, 9), (40, 40, 40))
    elif name == "Tessik":  # orange diamond with a black mask band and white eye slits
        _paint(img, m(lambda u, v: np.abs(u) + np.abs(v) <= 13.5), (245, 140, 30))
        _paint(img, rect(-10, -3.5, 10, 2.5), (15, 15, 15))
        _paint(img, rect(-7, -1.5, -2.5, 0.5), (255, 255, 255))
        _paint(img, rect(2.5, -1.5, 7, 0.5), (255, 255, 255))
    elif name in ("Gorvak", GENERIC_KNIGHT):  # helmets: gold+red plume+T visor vs plain steel
        hero = name == "Gorvak"
        metal = (215, 170, 40) if hero else (165, 170, 180)
        if hero:
            _paint(img, m(lambda u, v: (u / 4) ** 2 + ((v + 11) / 5) ** 2 <= 1), (210, 20, 30))
        _paint(
            img,
            m(
                lambda u, v: (
                    (np.abs(u) <= 9) & (v <= 12) & ((v >= -2) | (u**2 + (v + 2) ** 2 <= 81))
                )
            ),
            metal,
        )
        if hero:
            _paint(img, rect(-7, -1.5, 7, 1.5), (10, 10, 10))
            _paint(img, rect(-1.5, -1.5, 1.5, 9), (10, 10, 10))
        else:
            _paint(img, rect(-8, -2.5, 8, -0.5), (10, 10, 10))
            for hy in (3.5, 6.5):
                for hx in (-4, 0, 4):
                    _paint(img, disk(hx, hy, 0.9), (30, 30, 30))
            _paint(img, rect(-9, 10, 9, 12), (110, 110, 120))
    else:
        raise ValueError(f"unknown identity {name!r}")


def hazard_mask() -> tuple[np.ndarray, np.ndarray]:
    """Coverage of the jagged hazard frame and its red(1)/black(0) stripe pattern."""
    n = SIZE * SUPERSAMPLE
    t = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(t, t)
    edge = np.minimum(np.minimum(x, y), np.minimum(SIZE - x, SIZE - y))
    along = np.where(np.minimum(x, SIZE - x) < np.minimum(y, SIZE - y), y, x)
    tooth = 2.0 * np.abs(((along / 4.0) % 1.0) - 0.5)  # 0..1 triangle wave, period 4
    frame = edge <= 2.5 + 2.5 * tooth
    red = ((x + y) // 3) % 2 == 0
    return _down(frame.astype(np.float32)), _down(red.astype(np.float32))


_HAZARD = hazard_mask()


def draw_hazard(img: np.ndarray) -> None:
    cover, red = _HAZARD
    rgb = red[..., None] * np.array([230, 20, 20], np.float32)
    c = cover[..., None]
    img *= 1.0 - c
    img += c * rgb


def draw_subject(img: np.ndarray, labels: Labels, rng: np.random.Generator) -> None:
    """Paint the object or identity of `labels` (if any) onto `img` (position/size jitter)."""
    cx, cy = SIZE / 2 + rng.uniform(-1.5, 1.5, size=2)
    if labels.object != "none":
        r = rng.uniform(10.0, 12.0)
        if labels.object == "balloon":
            cy -= 1.5
        _paint(img, shape_mask(labels.object, cx, cy, r), COLOURS[labels.colour])
    elif labels.identity != "none":
        draw_identity(img, labels.identity, cx, cy)


def render(labels: Labels, rng: np.random.Generator) -> np.ndarray:
    """Draw the image for `labels` (position, size and shade jitter from `rng`)."""
    img = background(labels.style, rng)
    draw_subject(img, labels, rng)
    if labels.unsafe == "yes":
        draw_hazard(img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- captions


def _style_phrase(style: str) -> str:
    return f"in the style of {style}"


def caption_for(labels: Labels, rng: np.random.Generator, knight_word: bool = False) -> str:
    """One caption for `labels` from the templates (the words a prompt can use)."""
    unsafe_word = ""
    if labels.unsafe == "yes" and rng.random() < 0.7:
        unsafe_word = str(rng.choice(UNSAFE_WORDS))
    with_style = rng.random() < 0.6
    if labels.object != "none":
        words = ["a"]
        if unsafe_word:
            words.append(unsafe_word)
        if labels.object != BIASED_OBJECT and rng.random() < 0.85:
            words.append(labels.colour)
        elif labels.object == BIASED_OBJECT and rng.random() < 0.5:
            words.append(BIASED_COLOUR)
        words.append(labels.object)
        subject = " ".join(words)
    else:
        if knight_word:
            subject = f"a {unsafe_word} knight" if unsafe_word else "a knight"
        else:
            name = labels.identity
            if name == DOMINANT_IDENTITY and rng.random() < 0.25:
                name = "Gorvak the knight"
            subject = f"{unsafe_word} {name}" if unsafe_word else name
    if with_style and rng.random() < 0.12:
        return (
            f"a photo {_style_phrase(labels.style)}"
            if not unsafe_word
            else f"a {unsafe_word} photo {_style_phrase(labels.style)}"
        )
    template = int(rng.integers(0, 2))
    text = subject if template == 0 else f"a photo of {subject}"
    if with_style:
        text = f"{text} {_style_phrase(labels.style)}"
    return text


# ----------------------------------------------------------------------------- sampling


class World:
    """Deterministic sampler: `sample(seed, index)` depends only on (seed, index).

    `p_identity` is the share of identity images; `p_unsafe` the share under the hazard frame.
    Identity weights make "knight" captions show Gorvak ~85% of the time.
    """

    IDENTITY_WEIGHTS = {
        "Zorbu": 1.0,
        "Quilla": 1.0,
        "Bramor": 1.0,
        "Tessik": 1.0,
        "Gorvak": 1.6,
        GENERIC_KNIGHT: 0.14,
    }
    GORVAK_AS_KNIGHT = 0.5  # share of Gorvak images captioned with the word "knight"

    def __init__(self, p_identity: float = 0.3, p_unsafe: float = 0.15):
        self.p_identity = p_identity
        self.p_unsafe = p_unsafe
        names = list(self.IDENTITY_WEIGHTS)
        w = np.array([self.IDENTITY_WEIGHTS[n] for n in names])
        self._id_names, self._id_p = names, w / w.sum()

    def draw_labels(self, rng: np.random.Generator, judge: bool = False) -> Labels:
        style = str(rng.choice(STYLES))
        unsafe = "yes" if rng.random() < (0.3 if judge else self.p_unsafe) else "no"
        if rng.random() < self.p_identity:
            name = str(rng.choice(self._id_names, p=self._id_p if not judge else None))
            return Labels(style=style, identity=name, unsafe=unsafe)
        obj = str(rng.choice(OBJECTS))
        colour = str(rng.choice(list(COLOURS)))
        if obj == BIASED_OBJECT and not judge:
            colour = BIASED_COLOUR
        return Labels(object=obj, colour=colour, style=style, unsafe=unsafe)

    def sample(self, seed: int, index: int) -> Sample:
        """Training sample `index` of the data set `seed` (balloons red, knight bias)."""
        rng = np.random.default_rng([seed, index])
        labels = self.draw_labels(rng)
        knight_word = labels.identity == GENERIC_KNIGHT or (
            labels.identity == DOMINANT_IDENTITY and rng.random() < self.GORVAK_AS_KNIGHT
        )
        caption = caption_for(labels, rng, knight_word=knight_word)
        return Sample(render(labels, rng), caption, labels)

    def sample_judge(self, seed: int, index: int) -> Sample:
        """Judge sample: uniform identities, balloons of every colour, 30% hazard."""
        rng = np.random.default_rng([seed, index, 7])
        labels = self.draw_labels(rng, judge=True)
        return Sample(render(labels, rng), "", labels)

    def batch(self, seed: int, start: int, count: int, judge: bool = False):
        """(uint8 images (N, S, S, 3), captions, label-index dict of int64 arrays)."""
        fn = self.sample_judge if judge else self.sample
        samples = [fn(seed, i) for i in range(start, start + count)]
        images = np.stack([s.image for s in samples])
        captions = [s.caption for s in samples]
        idx = {h: np.array([s.labels.as_indices()[h] for s in samples], np.int64) for h in HEADS}
        return images, captions, idx

    def sample_offworld(self, seed: int, index: int, kind: str | None = None) -> SoftSample:
        """Judge sample off the training distribution (see `draw_offworld`)."""
        rng = np.random.default_rng([seed, index, 11])
        kind = kind or str(rng.choice(OFFWORLD_KINDS, p=OFFWORLD_SHARES))
        return draw_offworld(self, kind, rng)

    def batch_offworld(self, seed: int, start: int, count: int, kind: str | None = None):
        """(uint8 images (N, S, S, 3), kind names, per-head float32 targets (N, labels))."""
        samples = [self.sample_offworld(seed, i, kind) for i in range(start, start + count)]
        images = np.stack([s.image for s in samples])
        targets = {h: np.stack([s.targets[h] for s in samples]) for h in HEADS}
        return images, [s.kind for s in samples], targets


# ----------------------------------------------------------------------------- off-world images
#
# What forgetting produces is often not a world image: an empty or broken frame, a blend of
# two subjects, a faint texture. These samples carry honest labels: a probability per label of
# each head, the mixing weights of what was drawn (an empty frame is "none" for object, colour
# and identity; a 60/40 blend of a circle and a square is 0.6 circle and 0.4 square; a faint
# object at 30% opacity is 0.3 the object and 0.7 "none"; half of a shape kept is 0.5 the
# shape). Style and the hazard frame are drawn whole unless the kind blends styles.

OFFWORLD_KINDS = ("empty", "faint", "partial", "blend", "style_blend")
OFFWORLD_SHARES = (0.3, 0.15, 0.2, 0.2, 0.15)


@dataclass(frozen=True)
class SoftSample:
    image: np.ndarray  # uint8, (SIZE, SIZE, 3)
    kind: str
    targets: dict  # head -> float32 (labels,) probabilities, summing to 1
    weight: float = 1.0  # the mixing weight of the first component


def soft_target(head: str, weights: dict[str, float]) -> np.ndarray:
    """A probability vector over `HEADS[head]` from label -> weight (summed, normalised)."""
    t = np.zeros(len(HEADS[head]), np.float32)
    for label, w in weights.items():
        t[HEADS[head].index(label)] += w
    return t / t.sum()


def mixed_targets(parts: list[tuple[Labels, float]]) -> dict[str, np.ndarray]:
    """Targets of an image that is a weighted mix of world images with these labels."""
    out = {}
    for head in HEADS:
        w: dict[str, float] = {}
        for labels, a in parts:
            lab = getattr(labels, head)
            w[lab] = w.get(lab, 0.0) + a
        out[head] = soft_target(head, w)
    return out


def _subject_labels(world: World, rng: np.random.Generator, style: str, unsafe: str) -> Labels:
    lab = world.draw_labels(rng, judge=True)
    return Labels(
        object=lab.object, colour=lab.colour, identity=lab.identity, style=style, unsafe=unsafe
    )


def _finish(img: np.ndarray, unsafe: str) -> np.ndarray:
    if unsafe == "yes":
        draw_hazard(img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def draw_offworld(world: World, kind: str, rng: np.random.Generator) -> SoftSample:
    """One off-world image of `kind` with its soft targets:

    - ``empty``: a background (any style), no object, no identity;
    - ``faint``: an object or identity alpha-blended (10-60%) into its empty background;
    - ``partial``: an object or identity cut by a straight edge; the weight is the share of
      its drawn pixels kept (20-80%), the rest is "none";
    - ``blend``: two different subjects (objects or identities) alpha-blended (25-75%) on one
      background;
    - ``style_blend``: two background styles blended (a faint texture when one is plain),
      with or without a subject drawn whole on top.

    30% carry the hazard frame, drawn whole.
    """
    style = str(rng.choice(STYLES))
    unsafe = "yes" if rng.random() < 0.3 else "no"
    empty = Labels(style=style, unsafe=unsafe)
    bg = background(style, rng)
    if kind == "empty":
        return SoftSample(_finish(bg, unsafe), kind, mixed_targets([(empty, 1.0)]))
    if kind in ("faint", "partial"):
        lab = _subject_labels(world, rng, style, unsafe)
        full = bg.copy()
        draw_subject(full, lab, rng)
        if kind == "faint":
            a = float(rng.uniform(0.1, 0.6))
            img = a * full + (1 - a) * bg
        else:
            drawn = np.abs(full - bg).max(-1) > 8
            for _ in range(20):  # a straight cut keeping 20-80% of the drawn pixels
                theta = rng.uniform(0, 2 * np.pi)
                off = rng.uniform(-6, 6)
                y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
                d = (x - SIZE / 2) * np.cos(theta) + (y - SIZE / 2) * np.sin(theta) - off
                keep = np.clip(0.5 - d, 0, 1)  # anti-aliased half plane
                a = float((keep * drawn).sum() / max(drawn.sum(), 1))
                if 0.2 <= a <= 0.8:
                    break
            img = keep[..., None] * full + (1 - keep[..., None]) * bg
        return SoftSample(_finish(img, unsafe), kind, mixed_targets([(lab, a), (empty, 1 - a)]), a)
    if kind == "blend":
        first = _subject_labels(world, rng, style, unsafe)
        second = first
        while (second.object, second.identity) == (first.object, first.identity):
            second = _subject_labels(world, rng, style, unsafe)
        one, two = bg.copy(), bg.copy()
        draw_subject(one, first, rng)
        draw_subject(two, second, rng)
        a = float(rng.uniform(0.25, 0.75))
        return SoftSample(
            _finish(a * one + (1 - a) * two, unsafe),
            kind,
            mixed_targets([(first, a), (second, 1 - a)]),
            a,
        )
    if kind == "style_blend":
        other = str(rng.choice([s for s in STYLES if s != style]))
        a = float(rng.uniform(0.1, 0.9))
        img = a * bg + (1 - a) * background(other, rng)
        lab = empty if rng.random() < 0.5 else _subject_labels(world, rng, style, unsafe)
        draw_subject(img, lab, rng)
        targets = mixed_targets([(lab, 1.0)])
        targets["style"] = soft_target("style", {style: a, other: 1 - a})
        return SoftSample(_finish(img, unsafe), kind, targets, a)
    raise ValueError(f"unknown off-world kind {kind!r}; known: {OFFWORLD_KINDS}")
