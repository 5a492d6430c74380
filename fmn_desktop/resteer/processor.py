"""The re-steering attention processor for the UNet's cross-attention (attn2) layers.

Installed like any diffusers processor, it computes attention through
`fmn_kernels.resteer_attention` (the fused Triton kernel on CUDA, the PyTorch reference
elsewhere), which also returns each sample's squared attention probability on the concept
columns. The processor adds that term to a shared `ResteerState`; with a preservation set it
also compares the layer's output on preservation samples against the same layer with its original
weights, on the very same input, so other prompts are held in place layer by layer.

`resteer_hooks` installs the processors and restores the previous ones afterwards, and fails
loudly when something (xformers, an SDPA swap, gradient checkpointing) bypassed them, which
left the public code training on an empty loss.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from fmn_desktop.errors import TrainingError
from fmn_desktop.resteer.config import (  # noqa: F401  (re-exported)
    LAYER_WEIGHTINGS,
    PRESERVE_MODES,
    RESTEER_TERMS,
)
from fmn_kernels import resteer_attention


@dataclass
class ResteerState:
    """What the processors read (mask, rows) and write (per-layer terms) during one forward."""

    mask: Tensor | None = None  # (B, L) concept-position weights; None: no re-steering term
    preserve_rows: Tensor | None = None  # (B,) bool, samples whose outputs are held in place
    # (A, L, C) text states of anchor prompts for the first A samples: their outputs are pulled
    # towards the original layer's output under the anchor (the concept replaced or removed).
    anchor_states: Tensor | None = None
    # ESD-style push past the anchor: target = anchor - guidance * (concept - anchor), each the
    # original layer's output; 0 pulls to the anchor itself.
    anchor_guidance: float = 0.0
    layer_weighting: str = "pixels"
    term: str = "squares"  # one of RESTEER_TERMS
    preserve_mode: str = (
        "output"  # what is held in place on preservation rows: attn2 outputs or maps
    )
    backend: str | None = None
    terms: list[Tensor] = field(default_factory=list)  # per layer: (B,) weighted sums
    preserve_errors: list[Tensor] = field(default_factory=list)  # per layer: relative MSE
    anchor_errors: list[Tensor] = field(default_factory=list)  # per layer: relative MSE
    layers_called: int = 0

    def reset(self) -> None:
        self.terms.clear()
        self.preserve_errors.clear()
        self.anchor_errors.clear()
        self.layers_called = 0

    def resteer_per_sample(self) -> Tensor:
        """(B,) sum over layers (weighted), heads, pixels and concept columns of P^2."""
        if not self.terms:
            raise TrainingError("no cross-attention layer reported a re-steering term")
        return torch.stack(self.terms).sum(0)

    def preserve_error(self) -> Tensor | None:
        return torch.stack(self.preserve_errors).mean() if self.preserve_errors else None

    def anchor_error(self) -> Tensor | None:
        return torch.stack(self.anchor_errors).mean() if self.anchor_errors else None


class ResteerProcessor:
    """Attention processor for one attn2 module (see module docstring)."""

    def __init__(self, state: ResteerState, attn: torch.nn.Module):
        self.state = state
        # Frozen originals for the preservation term, taken when the hooks are installed.
        self.base = {
            name: getattr(attn, name).weight.detach().clone() for name in ("to_q", "to_k", "to_v")
        }
        out = attn.to_out[0]
        self.base["to_out"] = out.weight.detach().clone()
        self.base["to_out_bias"] = None if out.bias is None else out.bias.detach().clone()

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        state = self.state
        state.layers_called += 1
        if encoder_hidden_states is None:
            raise TrainingError("re-steering processor installed on a self-attention layer")
        if attention_mask is not None:
            raise TrainingError("text attention masks are not supported by the re-steering path")
        residual = hidden_states
        hidden_states, encoder_hidden_states, shape = attn2_inputs(
            attn, hidden_states, encoder_hidden_states, temb
        )

        heads = attn.heads
        q = _split_heads(attn.to_q(hidden_states), heads)
        k = _split_heads(attn.to_k(encoder_hidden_states), heads)
        v = _split_heads(attn.to_v(encoder_hidden_states), heads)
        mask = state.mask
        if mask is not None:
            if mask.shape != (q.shape[0], k.shape[2]):
                raise TrainingError(
                    f"concept mask {tuple(mask.shape)} does not match batch {q.shape[0]} "
                    f"x key length {k.shape[2]}"
                )
            mask = mask.to(q.device)
        if state.term in ("mass", "logmass") and mask is not None:
            out, resteer = _mass_attention(q, k, v, mask, attn.scale, state.term)
        else:
            out, resteer = resteer_attention(
                q, k, v, mask, scale=attn.scale, backend=_backend_for(q, state.backend)
            )
        if mask is not None:
            per_sample = resteer.sum(1)  # (B,) over heads
            if state.layer_weighting == "uniform":
                per_sample = per_sample / q.shape[2]  # each layer counts the same, not by pixels
            state.terms.append(per_sample)
        out = _merge_heads(out)
        hidden = attn.to_out[0](out)
        if state.preserve_rows is not None and state.preserve_rows.any():
            rows = state.preserve_rows
            x, enc = hidden_states[rows], encoder_hidden_states[rows]
            with torch.no_grad():
                reference = self._base(x, enc, heads, attn.scale, state.preserve_mode)
            current = (
                hidden[rows]
                if state.preserve_mode == "output"
                else _probs(q[rows], k[rows], attn.scale)
            )
            state.preserve_errors.append(relative_mse(current, reference))
        if state.anchor_states is not None:
            n = state.anchor_states.shape[0]
            anchor = state.anchor_states.to(hidden_states.device, hidden_states.dtype)
            if attn.norm_cross:
                anchor = attn.norm_encoder_hidden_states(anchor)
            with torch.no_grad():
                x = hidden_states[:n]
                target = self._base(x, anchor, heads, attn.scale, "output")
                if state.anchor_guidance:
                    concept = self._base(x, encoder_hidden_states[:n], heads, attn.scale, "output")
                    target = target - state.anchor_guidance * (concept - target)
            state.anchor_errors.append(relative_mse(hidden[:n], target))
        return attn2_output(attn, attn.to_out[1](hidden), residual, shape)

    def _base(self, x: Tensor, enc: Tensor, heads: int, scale: float, what: str) -> Tensor:
        """The layer's original attention maps or output on the same input."""
        base = self.base
        q = _split_heads(F.linear(x, base["to_q"].to(x.dtype)), heads)
        k = _split_heads(F.linear(enc, base["to_k"].to(x.dtype)), heads)
        if what == "maps":
            return _probs(q, k, scale)
        v = _split_heads(F.linear(enc, base["to_v"].to(x.dtype)), heads)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        bias = base["to_out_bias"]
        return F.linear(
            _merge_heads(out),
            base["to_out"].to(x.dtype),
            None if bias is None else bias.to(x.dtype),
        )


def relative_mse(current: Tensor, reference: Tensor) -> Tensor:
    """Mean squared error relative to the reference's mean square: scale-free, so terms of
    layers of different widths can be averaged."""
    return (current - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12)


def attn2_inputs(attn, hidden: Tensor, enc: Tensor, temb: Tensor | None):
    """What diffusers' AttnProcessor does before the projections: norms and the 4-D reshape.
    Returns (hidden (B, HW, C), text states, original 4-D shape or None)."""
    if attn.spatial_norm is not None:
        hidden = attn.spatial_norm(hidden, temb)
    shape = None
    if hidden.ndim == 4:
        shape = hidden.shape
        b, c, h, w = shape
        hidden = hidden.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
    if attn.norm_cross:
        enc = attn.norm_encoder_hidden_states(enc)
    return hidden, enc, shape


def attn2_output(attn, hidden: Tensor, residual: Tensor, shape) -> Tensor:
    """What diffusers' AttnProcessor does after the output projection."""
    if shape is not None:
        hidden = hidden.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        hidden = hidden + residual
    return hidden / attn.rescale_output_factor


def _mass_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, term: str):
    """Attention and, per (batch, head), a term of each row's marked mass m = sum_n w_n P_mn:
    "mass" sums m^2; "logmass" sums -log(1 - m), whose gradient does not vanish as m -> 1."""
    probs = (q.float() @ k.float().transpose(-1, -2) * scale).softmax(-1)
    out = (probs @ v.float()).to(q.dtype)
    mass = (probs * mask.float()[:, None, None, :]).sum(-1)
    if term == "logmass":
        return out, -torch.log1p(-mass.clamp(max=1 - 1e-6)).sum(-1)
    return out, mass.square().sum(-1)


def _backend_for(q: Tensor, requested: str | None) -> str | None:
    """The kernel registry's choice, except that on the CPU the reference runs unless asked
    otherwise: Triton there is only its interpreter, a test harness (TRITON_INTERPRET=1)."""
    if requested is None and not q.is_cuda and not os.environ.get("FMN_ATTN_BACKEND"):
        return "torch"
    return requested


def _probs(q: Tensor, k: Tensor, scale: float) -> Tensor:
    return (q.float() @ k.float().transpose(-1, -2) * scale).softmax(-1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def cross_attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """attn2 modules by path; every SD UNet has at least one."""
    found = {name: m for name, m in unet.named_modules() if name.endswith("attn2")}
    if not found:
        raise TrainingError("this UNet has no cross-attention (attn2) layers")
    return found


@contextlib.contextmanager
def resteer_hooks(unet: torch.nn.Module, state: ResteerState):
    """Install re-steering processors on every attn2, restore the previous ones on exit."""
    if getattr(unet, "is_gradient_checkpointing", False):
        raise TrainingError(
            "gradient checkpointing is on: it can drop the graph of the collected attention "
            "terms; disable it for re-steering"
        )
    previous = unet.attn_processors
    mods = cross_attention_modules(unet)
    ours = {name: ResteerProcessor(state, mod) for name, mod in mods.items()}
    replaced = {f"{name}.processor": ours[name] for name in mods}
    unet.set_attn_processor({k: replaced.get(k, v) for k, v in previous.items()})
    try:
        yield ours
    finally:
        unet.set_attn_processor(previous)


def check_hooks_ran(unet: torch.nn.Module, state: ResteerState, expected: int) -> None:
    """Fail loudly when a forward pass bypassed our processors (it would train on nothing)."""
    if state.layers_called != expected:
        raise TrainingError(
            f"only {state.layers_called} of {expected} cross-attention layers ran the "
            "re-steering processor: another processor (xformers, SDPA) replaced ours"
        )
