"""The re-steering processor on a half-precision UNet through the fused kernel's backend
checks, in the Triton interpreter at the tiny model's shapes: fp16 runs the kernel and gives
the reference's gradients on the fp32 deltas; bf16 (silently wrong in the interpreter) is
refused when forced and falls back to the reference otherwise."""

from __future__ import annotations

import os

import pytest
import torch

from fmn_desktop.models.precision import fit_half_to_cpu
from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.training.loop import watch_steps
from fmn_kernels import BackendUnavailableError
from fmn_kernels import triton_resteer as tr
from fmn_kernels.backends import ENV_VAR

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") != "1", reason="needs the Triton interpreter"
)

FAST = dict(num_references=2, reference_steps=2, batch_size=2, steps=1)


def _pipe(dtype):
    from tiny import tiny_sd_pipeline

    pipe = tiny_sd_pipeline().to(dtype=dtype)
    fit_half_to_cpu(pipe)
    return pipe


def _gradients(pipe, backend, monkeypatch):
    """The fp32 deltas' gradients of one forget step (clipping off), and the kernel's calls."""
    calls = []
    kernel = tr.resteer_attention_triton

    def counted(*args, **kwargs):
        calls.append(args[0].dtype)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(tr, "resteer_attention_triton", counted)
    grads = []

    def keep(opt, step):
        grads.append(torch.cat([p.grad.flatten() for p in opt.params]))

    with watch_steps(keep):
        forget(pipe, ForgetConfig(concepts=["castle"], backend=backend, grad_clip=0, **FAST))
    return grads[0], calls


def test_fp16_unet_runs_the_fused_kernel_with_the_references_gradients(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    pipe = _pipe(torch.float16)
    fused, calls = _gradients(pipe, "triton", monkeypatch)
    reference, none = _gradients(pipe, "torch", monkeypatch)
    assert calls and set(calls) == {torch.float16} and not none
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    assert fused.abs().sum() > 0
    cosine = torch.nn.functional.cosine_similarity(fused, reference, dim=0)
    assert cosine > 0.999, float(cosine)
    assert float((fused - reference).norm() / reference.norm()) < 0.05


def test_bf16_unet_is_refused_by_the_forced_kernel_and_falls_back_in_auto(monkeypatch):
    pipe = _pipe(torch.bfloat16)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(BackendUnavailableError, match="bf16"):
        forget(pipe, ForgetConfig(concepts=["castle"], backend="triton", **FAST))
    monkeypatch.setenv(ENV_VAR, "auto")
    grads, calls = _gradients(pipe, None, monkeypatch)
    assert not calls and torch.isfinite(grads).all() and grads.abs().sum() > 0
