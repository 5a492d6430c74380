"""GPU-only kernel tests: SD layer shapes, bf16, the autotuned configs, determinism, memory.

Skipped without CUDA or under TRITON_INTERPRET (the interpreter gets bf16 silently wrong and
cannot autotune). Run with ``pytest -m gpu tests/kernels`` (see ``bench/gpu_check.sh``).
None of these has run yet: no GPU was available when they were written.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import make_inputs, max_errors, record, run, run_eager_lowp, run_fp32_reference

from fmn_kernels import Backend, resteer_attention, select_backend
from fmn_kernels.triton_resteer import fits_on_chip

pytestmark = pytest.mark.gpu

# (B, H, M, N, D): SD1.5 512 px (8 heads, D 40/80/160), SD2.1 768 px (D 64, 5/10/20 heads),
# SDXL 1024 px (D 64, 10/20 heads), a 154-token prompt, SD1.5 at 1024 px (M = 16384).
SD_SHAPES = [
    ((2, 8, 4096, 77, 40), "sd15-64x64"),
    ((2, 8, 1024, 77, 80), "sd15-32x32"),
    ((2, 8, 256, 77, 160), "sd15-16x16"),
    ((2, 8, 64, 77, 160), "sd15-mid"),
    ((2, 5, 2304, 77, 64), "sd21-48x48"),
    ((2, 10, 4096, 77, 64), "sdxl-64x64"),
    ((2, 20, 1024, 77, 64), "sdxl-32x32"),
    ((2, 10, 1024, 154, 64), "sdxl-32x32-n154"),
    ((1, 8, 16384, 77, 40), "sd15-1024px"),
]

# (dtype, atol, rtol) against the fp32 reference; low precision also meets the 2x rule. fp16
# runs every shape; bf16 and fp32 a subset covering each head dim (each new dtype/shape class
# compiles every autotune config: the GPU check has a time budget).
BF16_SHAPES = {"sd15-64x64", "sd15-32x32", "sd15-16x16", "sdxl-32x32-n154"}
FP32_SHAPES = {"sd15-32x32", "sdxl-32x32-n154"}

CASES = (
    [pytest.param(*shape, torch.float16, 1e-2, 1e-2, id=f"{sid}-fp16") for shape, sid in SD_SHAPES]
    + [
        pytest.param(*shape, torch.bfloat16, 5e-2, 5e-2, id=f"{sid}-bf16")
        for shape, sid in SD_SHAPES
        if sid in BF16_SHAPES
    ]
    + [
        pytest.param(*shape, torch.float32, 1e-4, 1e-4, id=f"{sid}-fp32")
        for shape, sid in SD_SHAPES
        if sid in FP32_SHAPES and fits_on_chip(shape[3], shape[4], torch.float32)
    ]
)


def triton_fn(q, k, v, mask, scale):
    return resteer_attention(q, k, v, mask, scale, backend="triton")


@pytest.fixture(autouse=True)
def _autotune_on(monkeypatch):
    monkeypatch.delenv("FMN_TRITON_AUTOTUNE", raising=False)
    monkeypatch.delenv("FMN_ATTN_BACKEND", raising=False)


@pytest.mark.parametrize("b,h,m,n,d,dtype,atol,rtol", CASES)
def test_sd_shapes_match_reference(b, h, m, n, d, dtype, atol, rtol):
    inputs = make_inputs(b, h, m, n, d, dtype, "cuda", "per-sample")
    got = run(triton_fn, *inputs)
    want = run_fp32_reference(*inputs)
    errors = max_errors(got, want)
    record(dtype, errors)
    for name, g, w in zip(errors, got, want, strict=True):
        torch.testing.assert_close(g.float(), w, atol=atol, rtol=rtol, msg=name)
    if dtype != torch.float32:
        lowp = max_errors(run_eager_lowp(*inputs), want)
        record(dtype, lowp, " eager (yardstick)")
        for (name, err), w in zip(errors.items(), want, strict=True):
            bound = 2 * lowp[name] + 1e-5 * w.abs().max().item()
            assert err <= bound, (name, err, lowp[name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_auto_picks_triton_on_cuda(dtype):
    q, k, v, mask, _, _ = make_inputs(1, 2, 64, 77, 64, dtype, "cuda", "concept")
    assert select_backend(q, k, v, mask) is Backend.TRITON


def test_autotuned_agrees_with_fixed_config(monkeypatch):
    inputs = make_inputs(2, 10, 1024, 77, 64, torch.float16, "cuda", "per-sample")
    tuned = run(triton_fn, *inputs)
    monkeypatch.setenv("FMN_TRITON_AUTOTUNE", "0")
    fixed = run(triton_fn, *inputs)
    for name, err in max_errors(tuned, fixed).items():
        assert err < 2e-2, (name, err)


def test_deterministic():
    """No atomics: two runs give bitwise equal outputs and gradients."""
    inputs = make_inputs(2, 8, 4096, 77, 40, torch.float16, "cuda", "per-sample")
    first = run(triton_fn, *inputs)
    second = run(triton_fn, *inputs)
    for name, a, b in zip(("out", "resteer", "dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), name


def _kept_for_backward(fn, inputs) -> int:
    q, k, v, mask = inputs[:4]
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out, resteer = fn(q, k, v, mask, None)
    torch.cuda.synchronize()
    kept = torch.cuda.memory_allocated() - before
    del out, resteer
    return kept


def test_forward_keeps_no_probabilities():
    """What the forward leaves alive (outputs + saved tensors) is far below the eager path's."""
    b, h, m, n, d = 2, 8, 4096, 77, 40
    inputs = make_inputs(b, h, m, n, d, torch.float16, "cuda", "concept")
    fused = _kept_for_backward(triton_fn, inputs)
    eager = _kept_for_backward(lambda *a: resteer_attention(*a, backend="torch"), inputs)
    probs_fp16 = b * h * m * n * 2
    assert fused < probs_fp16, (fused, probs_fp16)
    assert fused < eager / 2, (fused, eager)


def test_long_prompt_231_tokens():
    inputs = make_inputs(2, 10, 1024, 231, 64, torch.float16, "cuda", "per-sample")
    got = run(triton_fn, *inputs)
    want = run_fp32_reference(*inputs)
    for name, err in max_errors(got, want).items():
        assert err < 2e-2, (name, err)
