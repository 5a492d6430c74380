"""Shared helpers for the kernel tests: inputs, a loss that touches both outputs, errors."""

from __future__ import annotations

import torch

from fmn_kernels import resteer_attention_eager, resteer_attention_reference


def make_mask(kind: str | None, b: int, n: int, gen: torch.Generator) -> torch.Tensor | None:
    """None, the same concept columns for every sample, different ones, or fractional weights."""
    if kind is None:
        return None
    mask = torch.zeros(b, n)
    if kind == "concept":
        mask[:, 2:4] = 1.0
    elif kind == "per-sample":
        for i in range(b):
            mask[i, 1 + 3 * i : 3 + 4 * i] = 1.0
        mask[-1, n - 1] = 1.0  # the last real column, next to the padding
    elif kind == "weights":
        mask = torch.rand(b, n, generator=gen)
    else:
        raise ValueError(kind)
    return mask


def make_inputs(b, h, m, n, d, dtype, device, mask_kind, seed=0):
    """(q, k, v, mask, d_out, d_resteer) on ``device``; q/k/v in ``dtype`` and requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, m, d, generator=gen)
    k = torch.randn(b, h, n, d, generator=gen)
    v = torch.randn(b, h, n, d, generator=gen)
    d_out = torch.randn(b, h, m, d, generator=gen)
    d_resteer = torch.randn(b, h, generator=gen) / m
    mask = make_mask(mask_kind, b, n, gen)
    to = dict(device=device)
    q, k, v = (t.to(dtype=dtype, **to).requires_grad_() for t in (q, k, v))
    mask = None if mask is None else mask.to(**to)
    return q, k, v, mask, d_out.to(dtype=dtype, **to), d_resteer.to(**to)


def run(fn, q, k, v, mask, d_out, d_resteer, scale=None, use_out=True, use_resteer=True):
    """Outputs and input gradients, as fp32 tensors: [out, resteer, dq, dk, dv]."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, resteer = fn(q, k, v, mask, scale)
    loss = 0.0
    if use_out:
        loss = loss + (out.float() * d_out.float()).sum()
    if use_resteer:
        loss = loss + (resteer * d_resteer).sum()
    grads = torch.autograd.grad(loss, (q, k, v), allow_unused=True)
    pairs = zip((q, k, v), grads, strict=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in pairs]
    return [out.detach(), resteer.detach(), *grads]


def run_fp32_reference(q, k, v, mask, d_out, d_resteer, **kw):
    """The ground truth: the reference on the same inputs upcast to fp32."""
    up = [t.detach().float() for t in (q, k, v)]
    return run(resteer_attention_reference, *up, mask, d_out.float(), d_resteer, **kw)


def run_eager_lowp(q, k, v, mask, d_out, d_resteer, **kw):
    """The eager path in the inputs' own precision (the low-precision yardstick)."""
    return run(resteer_attention_eager, q, k, v, mask, d_out, d_resteer, **kw)


NAMES = ("out", "resteer", "dq", "dk", "dv")


def max_errors(got, want) -> dict[str, float]:
    return {
        name: (g.float() - w.float()).abs().max().item()
        for name, g, w in zip(NAMES, got, want, strict=True)
    }


# Largest error seen per (dtype, quantity) in this session, printed in the terminal summary.
WORST: dict[tuple[str, str], float] = {}


def record(dtype: torch.dtype, errors: dict[str, float], label: str = "") -> None:
    for name, err in errors.items():
        key = (str(dtype).replace("torch.", "") + label, name)
        WORST[key] = max(WORST.get(key, 0.0), err)
