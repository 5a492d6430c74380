"""`fmn forget --harden`: forget, attack the patch with the white-box step, forget the found
word sequences too. On a tiny pipeline: the rounds, the aliases, the metadata, and that the
next round's patch holds the sequences the attack found against the previous one."""

from __future__ import annotations

import pytest
import torch

from fmn_desktop.attack import whitebox as wb
from fmn_desktop.attack.harden import HardenSettings, harden
from fmn_desktop.patch import PatchedUNet
from fmn_desktop.resteer import ForgetConfig, forget

FAST = dict(num_references=1, batch_size=1, reference_steps=2, preserve_prompts=["a dog"])


def test_settings_are_checked():
    for kw in (dict(rounds=0), dict(prompts=0), dict(aliases_per_prompt=0)):
        with pytest.raises(ValueError):
            HardenSettings(**kw)


def test_harden_rounds_add_what_the_attack_found(tiny_pipe):
    before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    config = ForgetConfig(concepts=["castle"], steps=12, **FAST)
    settings = HardenSettings(rounds=1, prompts=1, aliases_per_prompt=2, iters=4, spellings=0)
    phases, steps = [], []

    def progress(p):
        phases.append(p.phase)
        if p.phase == "train":
            steps.append((p.step, p.total))

    out = harden(tiny_pipe, config, settings, progress=progress)
    for n, p in tiny_pipe.unet.named_parameters():
        assert torch.equal(p, before[n])  # the model is left as it was
    assert phases.count("train") == 2 * 12 and phases.count("attack") == 1
    assert steps == [(k, 24) for k in range(1, 25)]  # counted over both rounds
    assert len(out.rounds) == 1 and out.aliases == out.rounds[0].aliases
    assert 1 <= len(out.aliases) <= 2 and all("castle" not in a for a in out.aliases)
    meta = out.result.patch.meta
    assert meta.concepts == ["castle"] and meta.hyperparameters["hardened_aliases"] == out.aliases
    assert out.result.seconds > 0

    # The sequences found against round 0 are further from the base K/V under the final patch.
    first = forget(tiny_pipe, config).patch  # round 0 again (same seed)
    prompt = "a photo of castle"
    targets = wb.kv_targets(tiny_pipe, prompt)

    def loss(patch, alias):
        ids = wb._ids(tiny_pipe.tokenizer, [f"a photo of {alias}"], "cpu")
        with PatchedUNet(tiny_pipe.unet, [(patch, 1.0)]), torch.no_grad():
            return float(wb.kv_loss(tiny_pipe, wb.encode(tiny_pipe, ids), targets)[0])

    for alias in out.aliases:
        assert loss(out.result.patch, alias) > loss(first, alias)


def test_spelling_variants_nearest_the_base_are_added(tiny_pipe):
    from fmn_desktop.attack.candidates import misspellings

    config = ForgetConfig(concepts=["castle"], steps=2, **FAST)
    settings = HardenSettings(rounds=1, prompts=1, aliases_per_prompt=1, iters=2, spellings=3)
    out = harden(tiny_pipe, config, settings)
    spelled = [a for a in out.aliases if a in misspellings("castle")]
    assert len(spelled) == 3 and len(out.aliases) == 4
    with pytest.raises(ValueError):
        HardenSettings(spellings=-1)


def test_harden_needs_one_concept(tiny_pipe):
    from fmn_desktop.errors import FmnError

    config = ForgetConfig(concepts=["castle", "tree"], steps=1, **FAST)
    with pytest.raises(FmnError, match="one concept"):
        harden(tiny_pipe, config, HardenSettings(rounds=1))
