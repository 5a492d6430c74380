import os

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from fmn_desktop.errors import TrainingError
from fmn_desktop.prompts.encode import encode_prompts
from fmn_desktop.prompts.tokens import concept_mask
from fmn_desktop.resteer.processor import (
    ResteerState,
    check_hooks_ran,
    cross_attention_modules,
    resteer_hooks,
)
from fmn_kernels import resteer_attention_reference


def _inputs(pipe, n):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([10, 500, 900, 300][:n])


def test_processor_output_matches_default_attention(tiny_pipe):
    unet = tiny_pipe.unet
    emb, _ = encode_prompts(tiny_pipe, ["a photo of a castle", "a dog"])
    x, t = _inputs(tiny_pipe, 2)
    with torch.no_grad():
        unet.set_attn_processor(AttnProcessor())
        expected = unet(x, t, encoder_hidden_states=emb).sample
        state = ResteerState(
            mask=concept_mask(
                tiny_pipe.tokenizer, ["a photo of a castle", "a dog"], ["castle", "dog"]
            )
        )
        with resteer_hooks(unet, state):
            got = unet(x, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert state.layers_called == len(cross_attention_modules(unet))
    # the previous processors are back
    assert all(type(p).__name__ == "AttnProcessor" for p in unet.attn_processors.values())


def test_terms_are_indexed_per_sample_and_head(tiny_pipe):
    """Batch of 2 with different masks gives each sample exactly its own term."""
    unet = tiny_pipe.unet
    prompts = ["a photo of a castle", "a red dog"]
    emb, _ = encode_prompts(tiny_pipe, prompts)
    mask = concept_mask(tiny_pipe.tokenizer, prompts, ["castle", "red"])
    x, t = _inputs(tiny_pipe, 2)
    captured = []

    def hook(module, args, kwargs, output):
        captured.append(
            (
                kwargs["hidden_states"] if "hidden_states" in kwargs else args[0],
                kwargs["encoder_hidden_states"],
                module,
            )
        )

    mods = cross_attention_modules(unet)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods.values()]
    state = ResteerState(mask=mask)
    with torch.no_grad(), resteer_hooks(unet, state):
        unet(x, t, encoder_hidden_states=emb)
    for h in handles:
        h.remove()
    expected = torch.zeros(2)
    torch.set_grad_enabled(False)
    for hidden, enc, attn in captured:
        hidden = hidden if hidden.ndim == 3 else hidden.flatten(2).transpose(1, 2)
        heads = attn.heads
        for b in range(2):  # each sample on its own: no batch/head interleaving to get wrong
            q = attn.to_q(hidden[b : b + 1])
            k = attn.to_k(enc[b : b + 1])
            q = q.view(1, -1, heads, q.shape[-1] // heads).transpose(1, 2)
            k = k.view(1, -1, heads, k.shape[-1] // heads).transpose(1, 2)
            _, term = resteer_attention_reference(q, k, k, mask[b : b + 1], attn.scale)
            expected[b] += term.sum()
    torch.set_grad_enabled(True)
    torch.testing.assert_close(state.resteer_per_sample(), expected, atol=1e-6, rtol=1e-5)
    assert expected[0] != pytest.approx(expected[1].item())


def test_replaced_processor_fails_loudly(tiny_pipe):
    unet = tiny_pipe.unet
    emb, _ = encode_prompts(tiny_pipe, ["a castle"])
    x, t = _inputs(tiny_pipe, 1)
    state = ResteerState(mask=concept_mask(tiny_pipe.tokenizer, ["a castle"], ["castle"]))
    with resteer_hooks(unet, state):
        unet.set_attn_processor(AttnProcessor())  # what enabling xformers/SDPA late does
        state.reset()
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=emb)
        with pytest.raises(TrainingError, match="replaced ours"):
            check_hooks_ran(unet, state, len(cross_attention_modules(unet)))
        with pytest.raises(TrainingError, match="no cross-attention layer"):
            state.resteer_per_sample()


def test_gradient_checkpointing_is_refused(tiny_pipe):
    tiny_pipe.unet.enable_gradient_checkpointing()
    with pytest.raises(TrainingError, match="gradient checkpointing"):
        with resteer_hooks(tiny_pipe.unet, ResteerState()):
            pass


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter"
)
def test_fused_kernel_backend_matches_reference_in_the_unet(tiny_pipe):
    """The processor through the Triton kernel (interpreted) gives the reference's terms and grads."""
    unet = tiny_pipe.unet
    prompts = ["a photo of a castle", "a red dog"]
    emb, _ = encode_prompts(tiny_pipe, prompts)
    mask = concept_mask(tiny_pipe.tokenizer, prompts, ["castle", "red"])
    x, t = _inputs(tiny_pipe, 2)
    results = {}
    for backend in ("torch", "triton"):
        unet.zero_grad(set_to_none=True)
        state = ResteerState(mask=mask, backend=backend)
        with resteer_hooks(unet, state):
            out = unet(x, t, encoder_hidden_states=emb).sample
        term = state.resteer_per_sample()
        (out.square().mean() + term.sum()).backward()
        grad = dict(unet.named_parameters())[
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        ].grad.clone()
        results[backend] = (out.detach(), term.detach(), grad)
    for a, b in zip(results["torch"], results["triton"]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-4)
