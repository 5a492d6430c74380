"""Correction patches: the closed-form solve, broad removal, files, CLI, and one measured
property on the embedded model."""

import pytest
import torch

from fmn_desktop.correct import CorrectConfig, Edit, correct, solve_map
from fmn_desktop.correct.broad import BroadConfig, erase_broad, strip_word
from fmn_desktop.correct.closed_form import objective
from fmn_desktop.errors import ConceptNotFoundError
from fmn_desktop.patch import PatchedUNet, load_patch, unet_module_names
from fmn_desktop.patch.format import save_patch

KEEP = ["a photo of a dog", "a red car on a street", "a bowl of fruit"]


def test_closed_form_is_the_minimum_of_the_objective():
    torch.manual_seed(0)
    d = 16
    c, t, e = torch.randn(40, d), torch.randn(40, d), torch.randn(200, d)
    w = torch.randn(24, d)
    m = solve_map(c, t, e, preserve_weight=0.5, ridge=0.01)
    best = objective(w, m, c, t, e, 0.5, 0.01)
    assert best < objective(w, torch.eye(d), c, t, e, 0.5, 0.01)
    for _ in range(5):  # a small step in any direction is worse
        nudged = m + 1e-3 * torch.randn(d, d)
        assert objective(w, nudged, c, t, e, 0.5, 0.01) > best


def test_deltas_vanish_when_concept_is_its_own_guide(tiny_pipe):
    r = correct(tiny_pipe, CorrectConfig("castle", "castle", preserve_prompts=KEEP))
    assert r.patch.deltas
    assert max(float(d.dense.abs().max()) for d in r.patch.deltas.values()) < 1e-4


def test_correction_moves_concept_rows_and_round_trips(tiny_pipe, tmp_path):
    r = correct(tiny_pipe, CorrectConfig("castle", "red castle", preserve_prompts=KEEP))
    assert r.report["objective_after"] < r.report["objective_before"]
    assert all(".attn2.to_" in n for n in r.patch.deltas)
    assert max(float(d.dense.abs().max()) for d in r.patch.deltas.values()) > 1e-4
    path = save_patch(r.patch, tmp_path / "fix.safetensors")
    back = load_patch(path, unet_module_names(tiny_pipe.unet))
    assert back.meta.kind == "correct" and back.meta.method == "uce-correct"
    assert back.meta.concepts == ["castle"]
    assert set(back.deltas) == set(r.patch.deltas)
    name = next(iter(back.deltas))
    assert torch.equal(back.deltas[name].dense, r.patch.deltas[name].dense)
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    with PatchedUNet(tiny_pipe.unet, [(back, 1.0)]):
        w = dict(tiny_pipe.unet.named_parameters())[name]
        assert torch.allclose(w - before[name], back.deltas[name].dense, atol=1e-6)
    for n, p in tiny_pipe.unet.named_parameters():
        assert torch.equal(p, before[n])


def test_negative_and_explicit_edits(tiny_pipe):
    cfg = CorrectConfig(
        "castle",
        "castle",
        negative="dark castle",
        strength=2.0,
        templates=["a {}"],
        edits=[Edit("a tall castle", "castle", "a tall castle", "a tall dark castle")],
        preserve_prompts=KEEP,
    )
    r = correct(tiny_pipe, cfg)
    assert r.report["objective_after"] < r.report["objective_before"]
    assert len(r.patch.meta.hyperparameters["edits"]) == 2


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(concept="castle", guide=""), ValueError),
        (dict(concept="", guide="x"), ValueError),
        (dict(concept="castle", guide="x", strength=1.0), ValueError),
        (dict(concept="castle", guide="x", templates=["no slot"]), ValueError),
        (dict(concept="castle", guide="x", targets="q"), ValueError),
        (dict(concept="castle", guide="x", ridge=0.0, preserve_weight=0.0), ValueError),
    ],
)
def test_bad_config(kw, err):
    with pytest.raises(err):
        CorrectConfig(**kw)


def test_concept_missing_from_prompt(tiny_pipe):
    cfg = CorrectConfig("castle", "tower", edits=[Edit("a tower", "castle", "a tower")])
    with pytest.raises(ConceptNotFoundError):
        correct(tiny_pipe, cfg)


def test_strip_word():
    assert strip_word("a photo of a cursed circle", "cursed") == "a photo of a circle"
    assert strip_word("cursed Zorbu", "cursed") == "Zorbu"
    assert strip_word("a cursedness", "cursed") == "a cursedness"


def test_broad_removal_on_tiny(tiny_pipe, tmp_path):
    cfg = BroadConfig(
        words=["cursed"],
        templates=["a {} castle"],
        steps=2,
        batch_size=1,
        num_references=1,
        reference_steps=2,
        preserve_prompts=KEEP,
    )
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    r = erase_broad(tiny_pipe, cfg)
    assert r.patch.meta.kind == "correct" and r.patch.meta.method == "esd-broad"
    assert len(r.history) == 2
    assert all(".attn2." in n for n in r.patch.deltas)
    assert any(float(d.dense.abs().max()) > 0 for d in r.patch.deltas.values())
    for n, p in tiny_pipe.unet.named_parameters():
        assert torch.equal(p, before[n])  # the model is left as it was
    back = load_patch(save_patch(r.patch, tmp_path / "b.safetensors"))
    assert back.meta.concepts == ["cursed"]
    with pytest.raises(ValueError):
        BroadConfig(words=[])


@pytest.mark.slow  # two 25-step jobs; test_broad_removal_on_tiny runs the job by default
def test_broad_removal_holds_the_unconditional_prediction(tiny_pipe):
    # Classifier-free guidance compares every prompt with "": the hold keeps that reference
    # nearer its base than a job without it (same seed, same steps).
    from fmn_desktop.patch import PatchedUNet
    from fmn_desktop.prompts.encode import encode_prompts

    empty, _ = encode_prompts(tiny_pipe, [""])
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([200, 700])

    def uncond():
        with torch.no_grad():
            return tiny_pipe.unet(x, t, encoder_hidden_states=empty.expand(2, -1, -1)).sample

    base = uncond()
    moved = {}
    for hold in (False, True):
        cfg = BroadConfig(
            words=["cursed"],
            templates=["a {} castle", "{}"],
            steps=25,
            batch_size=2,
            num_references=2,
            reference_steps=2,
            lr=1e-3,
            preserve_prompts=KEEP,
            hold_unconditional=hold,
            uncaptioned_weight=1.0,
        )  # the weight this was measured at
        patch = erase_broad(tiny_pipe, cfg).patch
        with PatchedUNet(tiny_pipe.unet, [(patch, 1.0)]):
            moved[hold] = float((uncond() - base).norm() / base.norm())
    # On this random tiny model "" shares most of its tokens with every prompt, so the hold
    # only trims the drift (0.084 -> 0.071 when written); on the embedded model it cut the
    # frames drawn on word-free prompts at CFG 5 from 29 to 6 of 384 (CORRECTION_AND_BROAD).
    assert moved[True] < 0.9 * moved[False]


def test_broad_removal_draws_ordinary_references(tiny_pipe, monkeypatch):
    # Preservation (and the "" hold) also apply on latents the preservation prompts draw, not
    # only on the attribute's references: held there alone, the patch drew the attribute on
    # word-free prompts at CFG 2 and 5 (4 and 6 of 384; with these, 1 and 0: the doc).
    drawn = []
    call = type(tiny_pipe).__call__

    def recording(self, prompt, *a, **kw):
        drawn.append(prompt)
        return call(self, prompt, *a, **kw)

    monkeypatch.setattr(type(tiny_pipe), "__call__", recording)
    cfg = BroadConfig(
        words=["cursed"],
        templates=["a {} castle"],
        steps=2,
        batch_size=2,
        num_references=1,
        reference_steps=2,
        preserve_prompts=KEEP,
        ordinary_references=4,
    )
    erase_broad(tiny_pipe, cfg)
    assert drawn == ["a cursed castle", *KEEP, KEEP[0]]
    drawn.clear()
    cfg.ordinary_references = 0
    erase_broad(tiny_pipe, cfg)
    assert drawn == ["a cursed castle"]
    with pytest.raises(ValueError):
        BroadConfig(words=["cursed"], ordinary_references=-1)


def test_cli_correct_and_erase_broad(tmp_path):
    from tiny import tiny_sd_pipeline

    from fmn_desktop.cli import main

    model = tmp_path / "tiny"
    tiny_sd_pipeline().save_pretrained(model)
    out = tmp_path / "fix.safetensors"
    base = ["--threads", "1", "correct", str(model), "--concept", "castle", "--device", "cpu"]
    assert main([*base, "--guide", "red castle", "--out", str(out)]) == 0
    assert load_patch(out).meta.kind == "correct"
    assert main([*base, "--guide", "x", "--strength", "2", "--out", str(out)]) == 1
    out2 = tmp_path / "broad.safetensors"
    args = [
        "--threads",
        "1",
        "erase-broad",
        str(model),
        "--device",
        "cpu",
        "--words",
        "cursed",
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--num-references",
        "1",
        "--ordinary-references",
        "2",
        "--out",
        str(out2),
    ]
    assert main(args) == 0
    meta = load_patch(out2).meta
    assert meta.method == "esd-broad" and meta.hyperparameters["ordinary_references"] == 2


@pytest.mark.slow  # a measurement on the embedded model; the tiny tests above run the job
@pytest.mark.skipif(
    not __import__("fmn_desktop.toyworld", fromlist=["weights_available"]).weights_available(),
    reason="embedded model weights not installed",
)
def test_embedded_balloon_colour_bias_is_corrected():
    """Measured property: the base model draws 'a green balloon' red (the bias); a debias
    correction trained on blue/yellow/purple (green held out) makes the judge read green."""
    from fmn_desktop.services.defaults import toy_preserve_prompts
    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld import HEADS, load_judge

    pipe, judge = open_model("default").pipe, load_judge(None)
    pipe.set_progress_bar_config(disable=True)

    def colours():
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(6)]
        im = pipe(
            ["a green balloon"] * 6,
            num_inference_steps=12,
            guidance_scale=5.0,
            generator=gens,
            output_type="pt",
        ).images
        return [HEADS["colour"][int(i)] for i in judge.predict(im.float())["colour"].argmax(1)]

    before = colours()
    cfg = CorrectConfig(
        "balloon",
        "balloon",
        negative="red balloon",
        strength=2.0,
        templates=["a {}", "a photo of a {}", "a blue {}", "a yellow {}", "a purple {}"],
        preserve_prompts=toy_preserve_prompts(["balloon"]),
    )
    with PatchedUNet(pipe.unet, [(correct(pipe, cfg).patch, 1.0)]):
        after = colours()
    assert before.count("green") <= 1
    assert after.count("green") >= 5
