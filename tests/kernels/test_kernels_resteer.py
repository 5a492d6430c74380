"""The fused Triton kernel against the PyTorch reference: outputs and every gradient.

On the CPU these run in the Triton interpreter, so shapes stay small; the SD-size shapes, bf16
and the autotuned configs are in `test_kernels_gpu.py`.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import make_inputs, max_errors, record, run, run_eager_lowp, run_fp32_reference

from fmn_kernels import Backend, BackendUnavailableError, resteer_attention, select_backend
from fmn_kernels.triton_resteer import fits_on_chip

# (B, H, M, N, D, mask): query lengths off the 64-row block, key lengths 77, 154 and 231
# (padded to 128, 256, 256), every SD head dim (40 -> 64, 80 -> 128, 160 -> 256 padded), masks
# per sample, fractional weights, no mask.
SHAPES = [
    ((1, 2, 64, 77, 64, "concept"), "m64-n77-d64"),
    ((2, 2, 100, 77, 40, "per-sample"), "b2-m100-n77-d40"),
    ((1, 1, 130, 154, 80, "per-sample"), "m130-n154-d80"),
    ((2, 1, 17, 77, 160, "weights"), "b2-m17-n77-d160"),  # fp32: too big a tile, fp16 only
    ((2, 1, 70, 40, 160, "per-sample"), "b2-m70-n40-d160"),
    ((1, 2, 200, 77, 64, None), "m200-n77-d64-nomask"),
    ((1, 5, 33, 16, 40, "concept"), "h5-m33-n16-d40"),
    ((1, 1, 1, 231, 64, "per-sample"), "m1-n231-d64"),
]

# (dtype, atol, rtol) against the fp32 reference on the same (rounded) inputs.
DTYPES = [(torch.float32, 1e-5, 1e-4, "fp32"), (torch.float16, 1e-2, 1e-2, "fp16")]

CASES = [
    pytest.param(*shape, dtype, atol, rtol, id=f"{sid}-{did}")
    for shape, sid in SHAPES
    for dtype, atol, rtol, did in DTYPES
    if fits_on_chip(shape[3], shape[4], dtype)
]


def triton_fn(q, k, v, mask, scale):
    return resteer_attention(q, k, v, mask, scale, backend="triton")


@pytest.mark.parametrize("b,h,m,n,d,mask_kind,dtype,atol,rtol", CASES)
def test_matches_reference(kernel_device, b, h, m, n, d, mask_kind, dtype, atol, rtol):
    inputs = make_inputs(b, h, m, n, d, dtype, kernel_device, mask_kind)
    got = run(triton_fn, *inputs)
    want = run_fp32_reference(*inputs)
    errors = max_errors(got, want)
    record(dtype, errors)

    assert got[0].dtype == dtype and got[1].dtype == torch.float32
    assert [t.dtype for t in got[2:]] == [dtype] * 3
    for name, g, w in zip(errors, got, want, strict=True):
        torch.testing.assert_close(g.float(), w, atol=atol, rtol=rtol, msg=name)
    if dtype != torch.float32:
        lowp = max_errors(run_eager_lowp(*inputs), want)
        record(dtype, lowp, " eager (yardstick)")
        for name, err in errors.items():
            assert err <= 2 * lowp[name] + 1e-6, (name, err, lowp[name])


def test_resteer_only_and_out_only(kernel_device):
    """Each output alone drives the gradients (the unused one gets a zero/None grad)."""
    inputs = make_inputs(1, 2, 70, 77, 64, torch.float32, kernel_device, "per-sample")
    for kw in (dict(use_out=False), dict(use_resteer=False)):
        got = run(triton_fn, *inputs, **kw)
        want = run_fp32_reference(*inputs, **kw)
        for name, err in max_errors(got, want).items():
            assert err < 1e-5, (kw, name, err)


def test_custom_scale_broadcast_kv_and_strided_q(kernel_device):
    """Batch-1 k/v and mask broadcast to q's batch; q as a (B, M, H, D) view; an explicit scale."""
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 50, 3, 40, generator=gen).to(kernel_device).transpose(1, 2)
    k = torch.randn(1, 3, 77, 40, generator=gen).to(kernel_device)
    v = torch.randn(1, 3, 77, 40, generator=gen).to(kernel_device)
    mask = torch.zeros(1, 77, device=kernel_device)
    mask[0, 5] = 1.0
    d_out = torch.randn(2, 3, 50, 40, generator=gen).to(kernel_device)
    d_res = torch.randn(2, 3, generator=gen).to(kernel_device)
    assert not q.is_contiguous()
    got = run(triton_fn, q, k, v, mask, d_out, d_res, scale=0.3)
    want = run(
        lambda *a: resteer_attention(*a, backend="torch"), q, k, v, mask, d_out, d_res, scale=0.3
    )
    for name, err in max_errors(got, want).items():
        assert err < 1e-5, (name, err)
    assert got[3].shape == (1, 3, 77, 40)


def test_no_mask_gives_zero_term(kernel_device):
    q, k, v, _, _, _ = make_inputs(2, 2, 20, 77, 64, torch.float32, kernel_device, None)
    out, resteer = resteer_attention(q, k, v, None, backend="triton")
    assert resteer.shape == (2, 2) and resteer.dtype == torch.float32
    assert torch.count_nonzero(resteer) == 0


def test_forward_never_saves_the_probabilities(kernel_device):
    """Only q, k, v, the mask and the row LSE are kept for backward: nothing of size M x N."""
    b, h, m, n, d = 1, 2, 96, 77, 64
    q, k, v, mask, _, _ = make_inputs(b, h, m, n, d, torch.float32, kernel_device, "concept")
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, resteer = resteer_attention(q, k, v, mask, backend="triton")
    assert saved, "nothing saved: the hook did not see the autograd Function"
    assert all(m * n > 0 and (m not in s or n not in s) for s in saved), saved
    largest = max(torch.Size(s).numel() for s in saved)
    assert largest <= b * h * m * d


def test_resource_error_falls_back_in_auto_and_in_backward(kernel_device, monkeypatch):
    """A config that does not fit: auto warns and uses the reference; backward recomputes."""
    from fmn_kernels import triton_resteer as tr

    monkeypatch.setattr(tr, "UNFIT", {})
    inputs = make_inputs(1, 2, 40, 77, 64, torch.float32, kernel_device, "concept")
    want = run_fp32_reference(*inputs)

    def no_fit(*args, **kwargs):
        raise tr.OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(tr, "resteer_backward", no_fit)
    with pytest.warns(RuntimeWarning, match="gradients recomputed"):
        got = run(triton_fn, *inputs)
    for name, err in max_errors(got, want).items():
        assert err < 1e-5, (name, err)

    assert tr.UNFIT, "the unfit shape is remembered"
    with pytest.raises(BackendUnavailableError, match="ran out of resources"):
        run(triton_fn, *inputs)

    monkeypatch.setattr(tr, "UNFIT", {})
    monkeypatch.setattr(tr, "resteer_forward", no_fit)
    with pytest.raises(tr.OutOfResources):
        run(triton_fn, *inputs)  # forced: the error goes through
    monkeypatch.setattr(tr, "UNFIT", {})
    with pytest.warns(RuntimeWarning, match="did not fit"):
        got = run(lambda *a: resteer_attention(*a), *inputs)
    for name, err in max_errors(got, want).items():
        assert err < 1e-5, (name, err)
    assert select_backend(*inputs[:4]) is Backend.TORCH


@pytest.mark.parametrize("trainable", ["k", "q", "kv"])
def test_partial_requires_grad(kernel_device, trainable):
    """Only some inputs need gradients (the fast mode trains K on cached queries)."""
    q, k, v, mask, d_out, d_res = make_inputs(
        1, 2, 90, 77, 40, torch.float32, kernel_device, "concept"
    )
    grads = {}
    for backend in ("triton", "torch"):
        leaves = {
            name: t.detach().requires_grad_(name in trainable)
            for name, t in zip("qkv", (q, k, v), strict=True)
        }
        out, resteer = resteer_attention(*leaves.values(), mask, backend=backend)
        loss = (out * d_out).sum() + (resteer * d_res).sum()
        wanted = [leaves[name] for name in trainable]
        grads[backend] = torch.autograd.grad(loss, wanted)
    for got, want in zip(grads["triton"], grads["torch"], strict=True):
        assert (got - want).abs().max() < 1e-5


def test_autotuned_launch_path_with_one_surviving_config(kernel_device, monkeypatch):
    """The autotuned wrappers, grids and prune hooks, without benchmarking (one config survives
    each prune, so the autotuner launches it directly: this runs in the interpreter too)."""
    import triton

    from fmn_kernels import triton_resteer as tr

    if kernel_device.type != "cpu":
        pytest.skip("on CUDA the GPU tests exercise real autotuning")
    monkeypatch.setattr(tr, "_TUNED", {})
    monkeypatch.setattr(tr, "_autotune_enabled", lambda device: True)
    monkeypatch.setattr(
        tr,
        "_row_configs",
        lambda: [triton.Config({"BLOCK_M": 32}), triton.Config({"BLOCK_M": 1024})],
    )
    monkeypatch.setattr(
        tr,
        "_dkdv_configs",
        lambda: [
            triton.Config({"BLOCK_M": 32, "BLOCK_N2": 32}),
            triton.Config({"BLOCK_M": 32, "BLOCK_N2": 1024}),
        ],
    )
    inputs = make_inputs(2, 2, 150, 77, 40, torch.float32, kernel_device, "per-sample")
    got = run(triton_fn, *inputs)
    want = run_fp32_reference(*inputs)
    for name, err in max_errors(got, want).items():
        assert err < 1e-5, (name, err)
    assert set(tr._TUNED) == {"fwd", "dq", "dkdv"}
