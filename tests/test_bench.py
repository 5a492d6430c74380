"""The GPU estimator's accounting (fast) and the GPU check's CPU dry run (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import estimate_gpu  # noqa: E402

MIB = 2**20


def test_live_bytes_follows_autograd_lifetimes():
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = estimate_gpu.LiveBytes(fake)
    with fake, tracker:
        a = torch.empty(256, 1024, requires_grad=True)  # 1 MiB
        assert tracker.live == MIB
        b = a.exp()  # exp keeps its output for backward
        c = b.sum()
        del b
        assert tracker.live == 2 * MIB + 512  # the 4-byte sum takes one 512-byte block
        c.backward()
        del c  # the graph and exp's output go
        assert tracker.live == 2 * MIB  # a and its gradient
        assert tracker.peak >= 3 * MIB  # exp's output, a, and a.grad during backward
        tracker.reset_peak()
        assert tracker.peak == tracker.live


def test_shadows_let_boolean_row_masks_through():
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = estimate_gpu.LiveBytes(fake)
    tracker.shadowing = True
    with fake, tracker:
        x = torch.empty(6, 4)
        rows = torch.arange(6) >= 2
        assert bool(rows.any())
        assert x[rows].shape == (4, 4)
        assert torch.randint(0, 5, (3,)).tolist() != []


def _kept_by_forward(backend: str) -> int:
    """Bytes an SD1.5 64x64 cross-attention forward keeps for backward, above its inputs."""
    from fmn_kernels import resteer_attention

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = estimate_gpu.LiveBytes(fake)
    with fake, tracker, estimate_gpu.fused_backend_modelled():
        q = torch.empty(2, 8, 4096, 40, dtype=torch.float16, requires_grad=True)
        k = torch.empty(2, 8, 77, 40, dtype=torch.float16, requires_grad=True)
        v = torch.empty(2, 8, 77, 40, dtype=torch.float16, requires_grad=True)
        mask = torch.zeros(2, 77)
        before = tracker.live
        out, term = resteer_attention(q, k, v, mask, backend=backend)
        kept = tracker.live - before
        (out.float().sum() + term.sum()).backward()
    return kept


def test_fused_model_keeps_no_probabilities():
    probs = 2 * 8 * 4096 * 77 * 4  # fp32, what the reference keeps
    eager, fused = _kept_by_forward("torch"), _kept_by_forward("triton")
    assert eager - fused >= probs
    # The fused kernel keeps out (fp16), the fp32 log-sum-exp and row terms, the mask weights.
    assert fused <= 2 * 8 * 4096 * (40 * 2 + 4 + 4) + 4096


@pytest.mark.slow
def test_estimator_on_toy_widths():
    import argparse

    args = argparse.Namespace(batch_size=2, references=2, checkpoint=None, tiny=True)
    eager, fused = estimate_gpu.estimate("sd1", ["faithful-eager", "faithful-fused"], args)
    for row in (eager, fused):
        assert row["peak_gib"] > row["weights_gib"] > 0
        assert row["job_tflop"] > row["default_steps"] * row["step_tflop"] > 0
    assert fused["peak_gib"] < eager["peak_gib"]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """`bash bench/gpu_check.sh --dry-run`: every step runs on the CPU and the forget table
    lists every job of both architectures."""
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    for name in ("gpu_tests", "bench_attention", "bench_forget"):
        assert f"{name}: rc=0" in summary
    table = (tmp_path / "forget_table.md").read_text()
    assert "tiny dry run: not a measurement" in table
    for arch in ("sd1", "sdxl"):
        for variant in estimate_gpu.VARIANTS:
            assert f"| {arch} | 64 | {variant} |" in table
    # The checkout's BENCHMARKS.md is left alone; the copy gets the tables.
    assert (tmp_path / "BENCHMARKS.md").read_text().startswith("# Benchmarks")
