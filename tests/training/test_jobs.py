"""Every trainer reports the same Progress: preparation first, then one "train" item per step,
the steps counted 1..total, the history the train items themselves (tiny pipelines)."""

from __future__ import annotations

import torch

from fmn_desktop.training import Progress, run_to_end

FORGET = dict(num_references=1, batch_size=1, reference_steps=1, preserve_prompts=["a dog"])


def _run(job):
    seen = []
    result = run_to_end(job, seen.append, None, "")
    assert all(isinstance(p, Progress) for p in seen)
    return seen, result


def _split(seen, references):
    """The reference images' items (counted 0..references, one per image drawn), then the rest."""
    refs = seen[: references + 1]
    assert [(p.phase, p.step, p.total) for p in refs] == [
        ("references", i, references) for i in range(references + 1)
    ]
    return seen[references + 1 :]


def _check_steps(train, total):
    assert [p.step for p in train] == list(range(1, total + 1))
    assert {p.total for p in train} == {total} and all(p.loss is not None for p in train)


def test_faithful_forget(tiny_pipe):
    from fmn_desktop.resteer import ForgetConfig, forget_steps

    seen, result = _run(
        forget_steps(tiny_pipe, ForgetConfig(concepts=["castle"], steps=3, **FORGET))
    )
    train = _split(seen, 1)
    _check_steps(train, 3)
    assert result.history == train
    assert set(train[0].terms) == {"forget", "preserve"}


def test_fast_forget_counts_layer_steps_with_the_layer_as_text(tiny_pipe):
    from fmn_desktop.resteer import ForgetConfig, forget_steps
    from fmn_desktop.resteer.processor import cross_attention_modules

    layers = list(cross_attention_modules(tiny_pipe.unet))
    config = ForgetConfig(concepts=["castle"], steps=2, mode="fast", **FORGET)
    seen, result = _run(forget_steps(tiny_pipe, config))
    train = _split(seen, 1)
    assert {p.phase for p in train} == {"train"}
    _check_steps(train, 2 * len(layers))
    assert [p.text for p in train] == [name for name in layers for _ in range(2)]
    assert result.history == train


def test_hardening_counts_every_rounds_steps_in_fast_mode_too(tiny_pipe):
    from fmn_desktop.attack.harden import HardenSettings, harden_steps
    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.resteer.processor import cross_attention_modules

    per_round = 2 * len(cross_attention_modules(tiny_pipe.unet))
    config = ForgetConfig(concepts=["castle"], steps=2, mode="fast", **FORGET)
    settings = HardenSettings(rounds=1, prompts=1, aliases_per_prompt=1, iters=2, spellings=0)
    seen, _ = _run(harden_steps(tiny_pipe, config, settings))
    assert [p.phase for p in seen].count("attack") == 1
    _check_steps([p for p in seen if p.phase == "train"], 2 * per_round)


def test_broad_removal(tiny_pipe):
    from fmn_desktop.correct.broad import BroadConfig, broad_steps

    config = BroadConfig(
        words=["castle"],
        steps=2,
        num_references=1,
        ordinary_references=0,
        reference_steps=1,
        batch_size=1,
    )
    seen, result = _run(broad_steps(tiny_pipe, config))
    train = _split(seen, 1)
    _check_steps(train, 2)
    assert result.history == train


def test_textual_inversion(tiny_pipe):
    from fmn_desktop.inversion import InversionConfig, learn_tokens_steps

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    config = InversionConfig(
        placeholder="<zz>", num_vectors=1, steps=2, batch_size=1, eval_samples=2
    )
    seen, result = _run(learn_tokens_steps(tiny_pipe, images, config))
    assert [p.phase for p in seen] == ["latents", "train", "train"]
    _check_steps(seen[1:], 2)
    assert result.history == seen[1:]
