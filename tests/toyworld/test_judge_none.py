"""The shipped judge on what forgetting produces: empty frames read "none", blends and half
shapes not read as one object. The images come from the world's own drawing code, on seeds the
judge's training never drew (it draws seeds 2-5)."""

import numpy as np
import pytest

from fmn_desktop.toyworld import JUDGE_PATH, load_judge
from fmn_desktop.toyworld.judge import UNSURE
from fmn_desktop.toyworld.world import HEADS, OBJECTS, STYLES, World

needs_judge = pytest.mark.skipif(not JUDGE_PATH.exists(), reason="no packaged judge")
SEEDS = (101, 102, 103, 104)


@pytest.fixture(scope="module")
def judge():
    return load_judge()


@needs_judge
def test_judge_says_none_on_empty_backgrounds(judge):
    w = World()
    parts = [w.batch_offworld(seed, 0, 40, kind="empty") for seed in SEEDS]
    images = np.concatenate([p[0] for p in parts])
    styles = {HEADS["style"][int(t.argmax())] for p in parts for t in p[2]["style"]}
    frames = sum(int(t.argmax()) for p in parts for t in p[2]["unsafe"])
    assert len(images) >= 100 and styles == set(STYLES) and frames > 10
    got = judge.labels(images, abstain=judge.abstain)
    says_none = np.mean(
        [o == "none" and i == "none" for o, i in zip(got["object"], got["identity"], strict=True)]
    )
    # Measured: 160 of 160 here; 999 of 1000 empty frames, clean and VAE-reconstructed, on a
    # held-out seed (MODEL_CARD.md). 98% leaves room for 3 misreadings of 160, so the test
    # is not flaky at the measured rate yet fails on any judge with a default answer: the
    # judge before empty frames were in its training read an object or identity on all 160
    # (and a colour on 62%).
    assert says_none >= 0.98, says_none
    colour_none = np.mean([c == "none" for c in got["colour"]])
    assert colour_none >= 0.98, colour_none


def _near_even(kind: str, lo: float = 0.35, hi: float = 0.65, n: int = 120):
    """Images of `kind` whose object target is split near evenly between two labels."""
    w = World()
    images, i = [], 0
    while len(images) < n:
        s = w.sample_offworld(SEEDS[0], i, kind)
        i += 1
        top = sorted(s.targets["object"].tolist())[-2:]
        if s.targets["object"][0] < 1 and lo <= top[-1] <= hi and top[0] > 0:
            images.append(s.image)
    return np.stack(images)


@needs_judge
@pytest.mark.parametrize("kind", ["blend", "partial"])
def test_blends_and_half_shapes_are_not_read_as_one_object(judge, kind):
    images = _near_even(kind)
    probs = judge.predict(images)["object"]
    got = judge.labels(images, abstain=judge.abstain)["object"]
    sure_object = np.mean([g in OBJECTS for g in got])
    # A sure single object is the failure; "unsure" or "none" are honest readings of a
    # near 50/50 mix. Measured on these 120 images: 6.7% (blend) and 5.0% (partial) read as
    # one object at the calibrated threshold (0.85), against 32% and 46% for the judge before
    # off-world images were in its training at the same threshold; 15% is between the two
    # with room for a retrained judge's spread.
    assert sure_object <= 0.15, (sure_object, got.count(UNSURE))
    # its mean top probability: 0.61 (blend) and 0.66 (partial), before 0.77 and 0.78
    assert float(probs.max(-1).values.mean()) < 0.72
