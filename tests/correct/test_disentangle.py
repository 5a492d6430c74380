"""`fmn disentangle`: the generic concept pushed away from the identity it draws, by the
re-steering job's anchor term; the dominant identity's own prompts held in place."""

from __future__ import annotations

import pytest
import torch

from fmn_desktop.correct.disentangle import DisentangleConfig
from fmn_desktop.patch import PatchedUNet, load_patch, unet_module_names
from fmn_desktop.prompts.encode import encode_prompts

FAST = dict(num_references=1, batch_size=1, reference_steps=2)


def test_config_is_the_anchor_term_away_from_the_dominant():
    cfg = DisentangleConfig(" knight ", "Gorvak", strength=4.0)
    job = cfg.forget_config(["a red circle"])
    assert job.concepts == ["knight"] and job.anchor == "Gorvak"
    # target = a - g (c - a) with g = -(s + 1) is c + s (c - a): s past the concept
    assert job.anchor_guidance == -5.0 and job.resteer_weight == 0.0
    assert job.preserve_prompts[0] == "a red circle"
    assert "Gorvak in the style of dots" in job.preserve_prompts
    assert DisentangleConfig("knight", "Gorvak", hold_dominant=False).forget_config(
        ["x"]
    ).preserve_prompts == ["x"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(concept="", dominant="Gorvak"),
        dict(concept="knight", dominant="Knight"),
        dict(concept="knight", dominant="Gorvak", strength=0),
        dict(concept="knight", dominant="Gorvak", dominant_templates=["no slot"]),
    ],
)
def test_bad_config(kw):
    with pytest.raises(ValueError):
        DisentangleConfig(**kw)


def test_disentangle_writes_a_correct_patch_and_holds_the_dominant(tiny_pipe, tmp_path):
    from types import SimpleNamespace

    from fmn_desktop.services.correct import disentangle_to_file

    model = SimpleNamespace(pipe=tiny_pipe, family="sd1", fingerprint="")
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([300, 700])

    def pred(prompt):
        emb, _ = encode_prompts(tiny_pipe, [prompt])
        with torch.no_grad():
            return tiny_pipe.unet(x, t, encoder_hidden_states=emb.expand(2, -1, -1)).sample

    dominant = "a photo of castle in the style of dots"
    knight0, dom0 = pred("a photo of a knight"), pred(dominant)
    moved, drift = {}, {}
    for hold in (False, True):
        cfg = DisentangleConfig(
            "knight",
            "castle",
            strength=3.0,
            steps=20,
            hold_dominant=hold,
            dominant_templates=["a photo of {} in the style of dots"],
            job_options=FAST,
        )
        out = disentangle_to_file(
            model, cfg, tmp_path / f"k{hold}.safetensors", preserve_prompts=["a tree", "a dog"]
        )
        for n, p in tiny_pipe.unet.named_parameters():
            assert torch.equal(p, before[n])  # the model is left as it was
        patch = load_patch(out.path, unet_module_names(tiny_pipe.unet))
        assert patch.meta.kind == "correct" and patch.meta.method == "resteer-disentangle"
        assert patch.meta.concepts == ["knight"]
        assert patch.deltas and all(".attn2.to_" in n for n in patch.deltas)
        with PatchedUNet(tiny_pipe.unet, [(patch, 1.0)]):
            moved[hold] = float((pred("a photo of a knight") - knight0).norm() / knight0.norm())
            drift[hold] = float((pred(dominant) - dom0).norm() / dom0.norm())
    # Holding the dominant identity's prompts keeps them nearer the base (on the embedded
    # model: Gorvak's own prompts, docs/research/CORRECTION_AND_BROAD.md), and the concept
    # still moves.
    # On this random tiny model it trims the drift by a quarter (0.116 -> 0.089 when written).
    assert moved[True] > 0.01 and drift[True] < 0.85 * drift[False], (moved, drift)


def test_cli_disentangle(model_dir, tmp_path, monkeypatch):
    from fmn_desktop.cli import main

    # The command's job with FAST's reference images (the CLI has no flag for them).
    full = DisentangleConfig.forget_config

    def forget_config(self, preserve_prompts):
        self.job_options = {**FAST, **self.job_options}
        return full(self, preserve_prompts)

    monkeypatch.setattr(DisentangleConfig, "forget_config", forget_config)

    out = tmp_path / "k.safetensors"
    base = [
        "--threads",
        "1",
        "disentangle",
        str(model_dir),
        "--device",
        "cpu",
        "--concept",
        "knight",
        "--out",
        str(out),
    ]
    assert main([*base, "--dominant", "castle", "--steps", "2", "--format", "lora"]) == 0
    assert load_patch(out).meta.method == "resteer-disentangle" and load_patch(out).is_lora
    assert main([*base, "--dominant", "knight"]) == 1  # the same word: a clear error
