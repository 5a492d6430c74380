"""The backend registry: names, the environment override, constraint checks and fallback."""

from __future__ import annotations

import pytest
import torch

import fmn_kernels
from fmn_kernels import Backend, BackendUnavailableError, resteer_attention, select_backend
from fmn_kernels.backends import ENV_VAR, check_triton, parse_backend, valid_names


def _qkv(dtype=torch.float32, device="cpu", m=8, n=77, d=64, b=1, h=2):
    q = torch.randn(b, h, m, d, dtype=dtype, device=device)
    k = torch.randn(b, h, n, d, dtype=dtype, device=device)
    v = torch.randn(b, h, n, d, dtype=dtype, device=device)
    return q, k, v


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    return monkeypatch


def test_valid_names_and_unknown_name(no_env):
    assert valid_names() == ("auto", "torch", "triton")
    assert parse_backend("Triton") is Backend.TRITON
    assert parse_backend("auto") is None and parse_backend(None) is None
    with pytest.raises(ValueError, match="auto, torch, triton"):
        resteer_attention(*_qkv(), backend="cuda")


def test_unknown_name_in_env_raises(no_env):
    no_env.setenv(ENV_VAR, "flash")
    with pytest.raises(ValueError, match="valid names"):
        select_backend(*_qkv())


def test_cpu_without_interpreter_defaults_to_reference(no_env):
    no_env.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv()
    assert select_backend(q, k, v) is Backend.TORCH
    assert any("CUDA" in p for p in check_triton(q, k, v, None))
    with pytest.raises(BackendUnavailableError, match="needs CUDA"):
        resteer_attention(q, k, v, backend="triton")
    out, resteer = resteer_attention(q, k, v, torch.ones(1, 77))
    ref_out, ref_resteer = fmn_kernels.resteer_attention_reference(q, k, v, torch.ones(1, 77))
    assert torch.equal(out, ref_out) and torch.equal(resteer, ref_resteer)


def test_interpreter_makes_triton_the_auto_choice(no_env):
    no_env.setenv("TRITON_INTERPRET", "1")
    assert select_backend(*_qkv()) is Backend.TRITON
    assert select_backend(*_qkv(torch.float16)) is Backend.TRITON


def test_env_forces_a_backend_and_argument_wins(no_env):
    no_env.setenv("TRITON_INTERPRET", "1")
    q, k, v = _qkv()
    no_env.setenv(ENV_VAR, "torch")
    assert select_backend(q, k, v) is Backend.TORCH
    assert select_backend(q, k, v, backend="auto") is Backend.TORCH
    assert select_backend(q, k, v, backend="triton") is Backend.TRITON
    no_env.setenv(ENV_VAR, "triton")
    assert select_backend(q, k, v) is Backend.TRITON
    no_env.delenv("TRITON_INTERPRET")
    with pytest.raises(BackendUnavailableError):
        select_backend(q, k, v)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("bf16", "bf16 is silently wrong"),
        ("float64", "not in"),
        ("head-dim-320", "head dim 320"),
        ("n-200-at-d160", "does not fit on chip"),
        ("mixed-dtype", "dtypes differ"),
        ("bad-mask", "concept_mask"),
        ("batch-mismatch", "neither 1 nor"),
    ],
)
def test_triton_constraints_fall_back_in_auto(no_env, case, expect):
    no_env.setenv("TRITON_INTERPRET", "1")
    mask = None
    if case == "bf16":
        q, k, v = _qkv(torch.bfloat16)
    elif case == "float64":
        q, k, v = _qkv(torch.float64)
    elif case == "head-dim-320":
        q, k, v = _qkv(d=320)
    elif case == "n-200-at-d160":
        q, k, v = _qkv(n=200, d=160)
    elif case == "mixed-dtype":
        q, k, v = _qkv()
        k = k.half()
    elif case == "bad-mask":
        q, k, v = _qkv()
        mask = torch.ones(1, 76)
    else:
        q, k, v = _qkv(b=3)
        k, v = k[:2], v[:2]
    problems = check_triton(q, k, v, mask)
    assert any(expect in p for p in problems), problems
    with pytest.raises(BackendUnavailableError, match=expect):
        select_backend(q, k, v, mask, backend="triton")
    if case not in ("bad-mask", "batch-mismatch"):
        assert select_backend(q, k, v, mask) is Backend.TORCH


def test_auto_dispatch_runs_the_kernel_under_the_interpreter(no_env, kernel_device):
    if kernel_device.type != "cpu":
        pytest.skip("interpreter-only check")
    q, k, v = _qkv(m=20)
    mask = torch.zeros(1, 77)
    mask[0, 3] = 1
    out, resteer = resteer_attention(q, k, v, mask)
    ref_out, ref_resteer = fmn_kernels.resteer_attention_reference(q, k, v, mask)
    assert (out - ref_out).abs().max() < 1e-5
    assert (resteer - ref_resteer).abs().max() < 1e-5
    assert select_backend(q, k, v, mask) is Backend.TRITON
