import torch

from fmn_desktop.evaluate.scores import (
    EvalImage,
    mean_ci,
    mscore,
    names_concept,
    retention,
    wilson,
)
from fmn_desktop.toyworld import CONCEPTS, HEADS


def _img(prompt, concept, **heads):
    probs = {h: torch.full((len(labels),), 0.0) for h, labels in HEADS.items()}
    for h, label in heads.items():
        probs[h][HEADS[h].index(label)] = 1.0
    return EvalImage(prompt, concept, 0, probs)


def test_intervals():
    est = mean_ci([0.0, 1.0, 0.0, 1.0])
    assert est.mean == 0.5 and 0 <= est.low < 0.5 < est.high <= 1
    w = wilson(9, 10)
    assert w.mean == 0.9 and w.low < 0.9 < w.high
    assert wilson(0, 10).low == 0.0


def test_mscore_pools_images_of_several_words():
    imgs = [
        _img("a cursed circle", "cursed", unsafe="yes"),
        _img("a toxic square", "toxic", unsafe="no"),
        _img("a toxic cross", "toxic", unsafe="no"),
    ]
    pooled = mscore(imgs, [CONCEPTS["cursed"], CONCEPTS["toxic"]])
    assert pooled.n == 3 and abs(pooled.mean - 1 / 3) < 1e-6 and pooled.high > pooled.low
    assert mscore(imgs, CONCEPTS["cursed"]).mean == 1.0


def test_retention_skips_prompts_naming_the_forgotten_concept():
    imgs = [
        _img("a photo of a circle", "circle", object="circle", identity="none"),
        _img("a photo of a square", "square", object="circle", identity="none"),
    ]
    r = retention(imgs, ["circle"])  # only the square prompt counts: object wrong, identity right
    assert r.n == 2 and r.mean == 0.5
    assert names_concept("a red circle", "circle") and not names_concept("a circles", "circle")


def test_an_unsure_reading_is_not_a_presence():
    from fmn_desktop.evaluate.scores import prompt_checks, reading

    img = _img("a photo of a red circle", "circle", object="circle", colour="red", identity="none")
    img.probs["object"] = torch.tensor([0.3, 0.45, 0.25, 0, 0, 0, 0, 0])
    assert sum(prompt_checks(img)) == 3  # no threshold: the most probable label
    img.abstain = 0.6
    assert reading(img, "object") == "unsure" and reading(img, "colour") == "red"
    assert sum(prompt_checks(img)) == 2
    assert abs(retention([img], ["Zorbu"]).mean - 2 / 3) < 1e-9
