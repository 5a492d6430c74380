"""The held-out scoring set and the figures computed from it: prompts disjoint from what jobs
train on, every attribute value covered, and co-attribute retention, neighbours and
substitution read right from judged images."""

from __future__ import annotations

import pytest
import torch

from fmn_desktop.evaluate.heldout import (
    SCORING_FIRST_SEED,
    combination_prompts,
    job_prompts,
    scoring_prompts,
)
from fmn_desktop.evaluate.patch_scores import (
    coattr_retention,
    named_attributes,
    neighbour_table,
    readings,
    score_images,
)
from fmn_desktop.evaluate.scores import EvalImage, names_concept
from fmn_desktop.patch.format import PatchMeta
from fmn_desktop.services.defaults import TOY_TEMPLATES, toy_preserve_prompts
from fmn_desktop.toyworld import CONCEPTS, HEADS
from fmn_desktop.toyworld.world import COLOURS, STYLES, UNSAFE_WORDS


@pytest.mark.parametrize("name", ["crescent", "Zorbu", "stripes", "cursed", "green", "knight"])
def test_scoring_prompts_never_hold_a_training_prompt(name):
    concept = CONCEPTS[name]
    trained = [t.format(name) for ts in TOY_TEMPLATES.values() for t in ts]
    trained += toy_preserve_prompts([name])
    chosen = scoring_prompts(concept, trained, count=24)
    assert len(chosen) == 24 and len(set(chosen)) == 24
    assert not {p.lower() for p in chosen} & {p.lower() for p in trained}
    assert all(names_concept(p, name) for p in chosen)


def test_an_object_is_scored_in_every_colour_style_and_unsafe_word():
    chosen = " | ".join(scoring_prompts(CONCEPTS["crescent"], count=24))
    for word in (*COLOURS, *STYLES, *UNSAFE_WORDS, "a photo of"):
        assert word in chosen, word


def test_the_biased_object_only_takes_its_own_colour():
    balloon = combination_prompts(CONCEPTS["balloon"])
    assert any("red balloon" in p for p in balloon)
    assert not any(f"{c} balloon" in p for p in balloon for c in COLOURS if c != "red")


def test_a_stack_keeps_other_forgotten_concepts_out_of_neighbour_prompts():
    chosen = scoring_prompts(CONCEPTS["stripes"], count=30, avoid=["Zorbu", "circle"])
    assert not any(names_concept(p, w) for p in chosen for w in ("Zorbu", "circle"))


def test_the_draw_is_deterministic_and_seeds_are_out_of_the_jobs_range():
    a = scoring_prompts(CONCEPTS["Quilla"], count=10)
    assert a == scoring_prompts(CONCEPTS["Quilla"], count=10)
    assert SCORING_FIRST_SEED >= 2**31  # forget jobs draw reference seeds below 2**31


def test_job_prompts_reads_the_patch_metadata():
    meta = PatchMeta(
        concepts=["circle"],
        hyperparameters={"templates": ["a {}", "a photo of a {}"], "retain_prompts": ["a ring"]},
    )
    assert set(job_prompts(meta)) == {"a circle", "a photo of a circle", "a ring"}


def _image(prompt: str, concept: str, **labels: str) -> EvalImage:
    """A judged image whose judge is sure of `labels` (others: the head's first label)."""
    probs = {}
    for head, names in HEADS.items():
        p = torch.zeros(len(names))
        p[names.index(labels.get(head, names[0]))] = 1.0
        probs[head] = p
    return EvalImage(prompt, concept, 0, probs, abstain=0.85)


def test_named_attributes_leave_out_the_forgotten_ones():
    got = named_attributes("a photo of a cursed red crescent in the style of dots", ["crescent"])
    assert got == {"unsafe": ("yes",), "colour": ("red",), "style": ("dots",)}
    assert "object" in named_attributes("a cursed red crescent", ["cursed"])


def test_coattributes_neighbours_and_substitution_from_judged_images():
    crescent, circle = CONCEPTS["crescent"], CONCEPTS["circle"]
    prompt = "a red crescent in the style of dots"
    base = [
        _image(prompt, "crescent", object="crescent", colour="red", style="dots"),
        _image("a circle", "circle", object="circle"),
        _image("a photo of a circle", "circle", object="circle"),
    ]
    after = [
        # the crescent became a circle and lost its colour; the style held
        _image(prompt, "crescent", object="circle", colour="none", style="dots"),
        _image("a circle", "circle", object="circle"),
        _image("a photo of a circle", "circle", object="square"),
    ]
    assert coattr_retention(base, crescent, ["crescent"]).mean == 1.0
    assert coattr_retention(after, crescent, ["crescent"]).mean == 0.5
    assert readings(after, crescent) == {"circle": 1.0}
    table = neighbour_table(base, after, [circle])
    assert table[0]["concept"] == "circle" and table[0]["drop"] == 0.5
    scores = score_images(base, after, [crescent], [circle])
    assert scores["worst_neighbour"] == "circle" and scores["worst_neighbour_drop"] == 0.5
    assert scores["concepts"]["crescent"]["readings_before"] == {"crescent": 1.0}


def test_an_unsure_reading_is_no_presence():
    circle = CONCEPTS["circle"]
    img = _image("a circle", "circle", object="circle")
    img.probs["object"] = torch.full((len(HEADS["object"]),), 1 / len(HEADS["object"]))
    assert readings([img], circle) == {"unsure": 1.0}
