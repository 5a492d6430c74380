"""The anchor term: forget prompts' attn2 outputs pulled towards the original model's outputs
for the prompt with the concept replaced (or removed), optionally pushed past it."""

import pytest
import torch

from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.tokens import concept_mask
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.resteer.forget import FAITHFUL_STEPS, FAST_STEPS, anchor_prompt
from fmn_desktop.resteer.processor import ResteerState, resteer_hooks

FAST = dict(num_references=2, reference_steps=2, batch_size=2, preserve_weight=0.0)


@pytest.mark.parametrize(
    ("prompt", "concept", "anchor", "expected"),
    [
        ("a photo of Zorbu in the style of dots", "Zorbu", "", "a photo of in the style of dots"),
        (
            "a photo of a circle in the style of dots",
            "circle",
            "",
            "a photo of in the style of dots",
        ),
        ("a green circle", "circle", "", "a green"),
        ("Zorbu", "Zorbu", "", ""),
        ("a photo of zorbu", "Zorbu", "a person", "a photo of a person"),
        ("a photo in the style of checkers", "checkers", "", "a photo in the style of"),
    ],
)
def test_anchor_prompt(prompt, concept, anchor, expected):
    assert anchor_prompt(prompt, concept, anchor) == expected


def test_defaults_depend_on_mode_and_fast_mode_refuses_an_anchor():
    faithful = ForgetConfig(concepts=["x"])
    assert (faithful.steps, faithful.anchor_weight, faithful.preserve_weight) == (
        FAITHFUL_STEPS,
        3.0,
        6.0,
    )
    fast = ForgetConfig(concepts=["x"], mode="fast")
    assert (fast.steps, fast.anchor_weight, fast.preserve_weight) == (FAST_STEPS, 0.0, 3.0)
    assert ForgetConfig(concepts=["x"], mode="fast", anchor_weight=1.0).anchor_weight == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        ForgetConfig(concepts=["x"], resteer_weight=-1.0)
    with pytest.raises(ValueError, match="nothing to train"):
        ForgetConfig(concepts=["x"], resteer_weight=0.0, anchor_weight=0.0)
    # A negative guidance is a valid target: past the concept, away from the anchor.
    assert ForgetConfig(concepts=["x"], anchor_guidance=-4.0).anchor_guidance == -4.0


def _anchor_errors(pipe, guidance: float, anchor_prompt_text: str = "a photo of a house"):
    """Per-layer anchor errors for the forget prompt "a photo of a castle" on a fixed input."""
    prompts = ["a photo of a castle"]
    emb, _ = encode_prompts(pipe, prompts)
    anchor, _ = encode_prompts(pipe, [anchor_prompt_text])
    state = ResteerState(
        mask=concept_mask(pipe.tokenizer, prompts, ["castle"]),
        anchor_states=anchor,
        anchor_guidance=guidance,
    )
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with resteer_hooks(pipe.unet, state):
        pipe.unet(x, torch.tensor([400]), encoder_hidden_states=emb)
    return torch.stack(state.anchor_errors)


def test_anchor_error_is_zero_at_the_concept_itself_and_grows_with_guidance(tiny_pipe):
    with torch.no_grad():
        own = _anchor_errors(tiny_pipe, 0.0, "a photo of a castle")
        plain = _anchor_errors(tiny_pipe, 0.0)
        pushed = _anchor_errors(tiny_pipe, 2.0)
        own_pushed = _anchor_errors(tiny_pipe, 2.0, "a photo of a castle")
    # Anchor == concept: the target is the output itself, at any guidance.
    assert own.abs().max() < 1e-10 and own_pushed.abs().max() < 1e-10
    assert (plain > 0).all()
    assert (pushed > plain).all()  # the target a - g (c - a) lies further from c


def test_minimising_the_anchor_error_through_kv_reaches_the_anchor(tiny_pipe):
    # The term's gradient reaches the K/V weights and leads to the anchor's output.
    unet = tiny_pipe.unet
    for p in unet.parameters():
        p.requires_grad_(False)
    kv = [m.weight for n, m in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    for w in kv:
        w.requires_grad_(True)
    opt = torch.optim.Adam(kv, lr=1e-2)
    first = None
    for _ in range(60):
        err = _anchor_errors(tiny_pipe, 0.0).mean()
        first = err.item() if first is None else first
        opt.zero_grad()
        err.backward()
        opt.step()
    assert err.item() < 0.1 * first


def test_forget_job_uses_the_anchor_term(tiny_pipe):
    cfg = dict(concepts=["castle"], steps=3, seed=1, **FAST)
    without = forget(tiny_pipe, ForgetConfig(anchor_weight=0.0, **cfg))
    with_anchor = forget(tiny_pipe, ForgetConfig(anchor_weight=10.0, anchor="house", **cfg))
    assert with_anchor.patch.meta.hyperparameters["anchor_weight"] == 10.0
    assert with_anchor.patch.meta.hyperparameters["anchor"] == "house"
    assert with_anchor.history[0].loss > without.history[0].loss  # the term is in the loss


def test_fast_mode_uses_the_anchor_term_when_asked(tiny_pipe):
    cfg = dict(concepts=["castle"], mode="fast", steps=3, seed=1, **FAST)
    plain = forget(tiny_pipe, ForgetConfig(**cfg)).patch
    anchored = forget(tiny_pipe, ForgetConfig(anchor_weight=10.0, anchor="house", **cfg)).patch
    assert set(plain.deltas) == set(anchored.deltas)
    assert any(
        not torch.allclose(plain.deltas[n].dense, anchored.deltas[n].dense) for n in plain.deltas
    )
