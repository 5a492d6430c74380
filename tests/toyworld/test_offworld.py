"""Off-world samples (empty, faint, partial, blended) and their honest soft labels; the judge's
abstain rule."""

import numpy as np
import pytest
import torch

from fmn_desktop.toyworld.judge import UNSURE, read
from fmn_desktop.toyworld.world import HEADS, OFFWORLD_KINDS, STYLES, World, background


def test_offworld_samples_are_deterministic_and_labelled_as_drawn():
    w = World()
    for kind in OFFWORLD_KINDS:
        a, b = w.sample_offworld(21, 3, kind), w.sample_offworld(21, 3, kind)
        assert np.array_equal(a.image, b.image) and a.kind == kind
        assert a.image.shape == (32, 32, 3) and a.image.dtype == np.uint8
        for h, t in a.targets.items():
            assert t.shape == (len(HEADS[h]),) and abs(float(t.sum()) - 1) < 1e-5


def test_empty_frames_say_none_and_keep_their_background():
    w = World()
    images, kinds, targets = w.batch_offworld(22, 0, 40, kind="empty")
    assert set(kinds) == {"empty"}
    for h in ("object", "colour", "identity"):
        assert (targets[h][:, 0] == 1).all()  # "none"
    assert (targets["style"].max(1) == 1).all()
    # no object is painted: every pixel is a grey of the background or the hazard frame
    plain = [i for i in range(40) if HEADS["unsafe"][targets["unsafe"][i].argmax()] == "no"]
    assert plain and all(np.ptp(images[i].astype(int), axis=-1).max() == 0 for i in plain)


def test_blends_split_their_labels_by_the_mixing_weight():
    w = World()
    for i in range(20):
        s = w.sample_offworld(23, i, "blend")
        heads = [h for h in ("object", "identity") if s.targets[h].max() < 1]
        assert heads  # two different subjects
        for h in heads:
            top = sorted(s.targets[h].tolist())[-2:]
            assert abs(max(top) - max(s.weight, 1 - s.weight)) < 1e-5
    faint = w.sample_offworld(23, 0, "faint")
    assert 0.1 <= faint.weight <= 0.6
    subject = "object" if faint.targets["object"][0] < 1 else "identity"
    assert abs(float(faint.targets[subject][0]) - (1 - faint.weight)) < 1e-5


def test_style_blend_with_plain_is_a_faint_texture():
    rng = np.random.default_rng(0)
    assert set(STYLES) >= {"plain", "stripes", "dots"}
    g = background("stripes", rng)
    assert np.ptp(g) > 40
    s = [World().sample_offworld(24, i, "style_blend") for i in range(30)]
    assert all(abs(float(x.targets["style"].max()) - max(x.weight, 1 - x.weight)) < 1e-5 for x in s)


def test_read_abstains_under_the_threshold():
    p = torch.tensor([[0.05, 0.9, 0.05, 0, 0, 0, 0, 0], [0.4, 0.35, 0.25, 0, 0, 0, 0, 0]])
    assert read(p, "object") == ["circle", "none"]
    assert read(p, "object", 0.5) == ["circle", UNSURE]
    assert read(p[1], "object", 0.3) == ["none"]


@pytest.mark.parametrize("kind", ["partial", "faint"])
def test_partial_and_faint_keep_part_of_the_subject(kind):
    w = World()
    weights = [w.sample_offworld(25, i, kind).weight for i in range(20)]
    assert all(0.09 <= a <= 0.81 for a in weights)
