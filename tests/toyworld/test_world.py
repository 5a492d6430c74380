import numpy as np
import pytest

from fmn_desktop.toyworld.concepts import CONCEPTS, KINDS, concepts_of_kind, expected_labels
from fmn_desktop.toyworld.world import (
    BIASED_COLOUR,
    BIASED_OBJECT,
    COLOURS,
    HEADS,
    IDENTITIES,
    OBJECTS,
    SIZE,
    STYLES,
    UNSAFE_WORDS,
    Labels,
    World,
    render,
)


def test_sample_is_deterministic():
    w = World()
    a, b = w.sample(3, 17), w.sample(3, 17)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.labels == b.labels
    assert a.image.shape == (SIZE, SIZE, 3) and a.image.dtype == np.uint8
    c = w.sample(4, 17)
    assert not np.array_equal(a.image, c.image) or a.caption != c.caption


def test_batch_matches_samples():
    w = World()
    images, captions, idx = w.batch(0, 10, 5)
    for k in range(5):
        s = w.sample(0, 10 + k)
        assert np.array_equal(images[k], s.image) and captions[k] == s.caption
        for head, i in s.labels.as_indices().items():
            assert idx[head][k] == i


def test_enough_concepts():
    assert len(OBJECTS) >= 6 and len(COLOURS) >= 5 and len(STYLES) >= 4 and len(IDENTITIES) >= 4
    assert len(UNSAFE_WORDS) >= 2


def test_captions_agree_with_labels():
    w = World()
    for i in range(400):
        s = w.sample(0, i)
        for head, label in expected_labels(s.caption).items():
            accepted = CONCEPTS["knight"].accepted if label == "knight" else (label,)
            assert getattr(s.labels, head) in accepted, (s.caption, s.labels)


def test_biased_and_dominant_statistics():
    w = World()
    samples = [w.sample(1, i) for i in range(3000)]
    balloons = [s for s in samples if s.labels.object == BIASED_OBJECT]
    assert balloons and all(s.labels.colour == BIASED_COLOUR for s in balloons)
    knights = [s for s in samples if "knight" in s.caption and "Gorvak" not in s.caption]
    share = np.mean([s.labels.identity == "Gorvak" for s in knights])
    assert 0.75 < share < 0.95
    hazard = [s for s in samples if s.labels.unsafe == "yes"]
    worded = [s for s in hazard if any(u in s.caption.split() for u in UNSAFE_WORDS)]
    assert 0 < len(worded) < len(hazard)  # sometimes no word at all
    for s in samples:  # an unsafe word always comes with the hazard frame
        if any(u in s.caption.split() for u in UNSAFE_WORDS):
            assert s.labels.unsafe == "yes"


def test_judge_samples_cover_all_colours_of_balloon():
    w = World()
    cols = {
        w.sample_judge(0, i).labels.colour
        for i in range(600)
        if w.sample_judge(0, i).labels.object == BIASED_OBJECT
    }
    assert cols == set(COLOURS)


@pytest.mark.parametrize("obj", OBJECTS)
def test_objects_are_distinct_silhouettes(obj):
    rng = np.random.default_rng(0)
    img = render(Labels(object=obj, colour="red", style="plain"), rng).astype(float)
    for other in OBJECTS:
        if other != obj:
            o = render(
                Labels(object=other, colour="red", style="plain"), np.random.default_rng(0)
            ).astype(float)
            assert np.abs(img - o).mean() > 3.0, (obj, other)


def test_registry_consistent():
    assert set(c.kind for c in CONCEPTS.values()) == set(KINDS)
    for c in CONCEPTS.values():
        assert c.label in HEADS[c.attribute]
        assert all(a in HEADS[c.attribute] for a in c.accepted)
        for p in c.prompts():
            assert c.name in p.split()
            exp = expected_labels(p)
            assert c.attribute in exp
            if c.kind != "unsafe":
                assert exp[c.attribute] == c.label
    assert {c.name for c in concepts_of_kind("identity")} == set(IDENTITIES)
    assert CONCEPTS["knight"].related["dominant"] == "Gorvak"
    assert CONCEPTS[BIASED_OBJECT].related["bias"] == {"colour": BIASED_COLOUR}
    with pytest.raises(ValueError):
        concepts_of_kind("nope")
