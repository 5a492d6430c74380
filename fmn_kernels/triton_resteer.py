"""Fused cross-attention with the Forget-Me-Not re-steering term, in Triton.

What is fused
-------------
Forward, one program per (query block, batch*head), over the WHOLE key row at once:
``S = q k^T * scale``, the row softmax ``P``, ``out = P v``, the row log-sum-exp (kept, in base 2,
for backward) and the re-steering term ``sum_m sum_n w[b, n] * P[m, n]^2`` (its per-row value
is written, 4 bytes a row like the LSE, and summed over rows on the host: deterministic, and
safe when the autotuner re-runs the kernel with other block sizes). ``P`` is never
written to memory: the forward saves q, k, v, the mask and the LSE only.

Backward recomputes ``P`` from the LSE in two kernels:

* ``_resteer_bwd_dq_kernel`` (whole key row per query block): ``dP = dO v^T + 2 g_b w_n P``,
  ``delta = rowsum(P * dP)``, ``dS = P * (dP - delta)``, ``dQ = scale * dS k``; stores dQ and
  ``delta`` (one fp32 per query row).
* ``_resteer_bwd_dkdv_kernel`` (one key tile per program, looping over a chunk of query rows):
  ``dV = P^T dO``, ``dK = scale * dS^T q``, accumulated in fp32 registers; each chunk writes its own
  fp32 partial, summed on the host (no atomics: deterministic, and safe to re-run by autotune).

Limits
------
* q (B, H, M, D), k/v (B, H, N, D) with equal B and H (the dispatcher expands a batch-1 k/v).
* Any strides; ``out`` is returned contiguous in q's dtype; gradients are contiguous.
* ``N`` is padded to a power-of-two block ``BLOCK_N`` and ``D`` to ``BLOCK_D`` (>= 16) with masks.
  A whole key row must fit on chip: ``BLOCK_N * BLOCK_D * itemsize <= MAX_TILE_BYTES`` (64 KiB per
  k or v tile: fp16/bf16 N <= 128 at D = 160, N <= 256 at D <= 128, N <= 512 at D <= 64; fp32
  half of that); the registry falls back to the reference beyond. This bound is a design choice,
  not measured: a GPU with less shared memory may still refuse a config (see below).
* fp16 / bf16 / fp32 inputs, fp32 accumulation. P is rounded to the input dtype before the
  ``P v`` and ``dS q`` products (as in flash attention). fp32 inputs use ``input_precision="ieee"``
  (no TF32), for fidelity over speed.
* No gradient w.r.t. the concept mask (it is a constant selection of columns). Inputs that
  need no gradient are skipped in backward (no dQ product; no dK/dV kernel if neither needs one).

Cautions
--------
* Written and verified on a CPU-only machine: the kernels have run under the Triton interpreter
  only. Their compilation on a GPU, the autotune configs, on-chip fit and speed are unverified
  until ``bench/gpu_check.sh`` runs on one (see docs/research/BENCHMARKS.md).
* ``TRITON_INTERPRET=1`` must be set before this module is imported for the CPU interpreter;
  the kernels are decorated at import time.
* Under the interpreter (Triton 3.9) bf16 is silently wrong and ``autotune``/``do_bench`` fail:
  the interpreter path uses one fixed config and the registry refuses bf16 there.
* On CUDA the kernels are autotuned per (M, N, D, dtype) unless ``FMN_TRITON_AUTOTUNE=0``; the
  first call of each shape pays compilation and tuning. The autotuner skips configs that do not
  fit; if none fits (``OutOfResources``), ``auto`` dispatch warns, runs the reference and
  remembers the (device, dtype, N, D) so later calls go straight to the reference; a failing
  backward recomputes the gradients with the reference.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
import triton
import triton.language as tl
from triton.runtime import errors as _triton_errors

from fmn_kernels.reference import resteer_attention_reference

LOG2E = 1.4426950408889634
MAX_TILE_BYTES = 65536  # largest k (or v) tile, BLOCK_N * BLOCK_D * itemsize, kept on chip
ROWS_ALIGN = 128  # split chunks are multiples of every BLOCK_M in the configs
MIN_ROWS_PER_SPLIT = 256  # dK/dV: fewest query rows one program reduces on a GPU


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def block_sizes(n: int, d: int) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_D): key length and head dim padded to powers of two, at least 16."""
    return max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(d))


def fits_on_chip(n: int, d: int, dtype: torch.dtype) -> bool:
    """Whether a whole padded k (or v) tile stays within `MAX_TILE_BYTES`."""
    block_n, block_d = block_sizes(n, d)
    return block_n * block_d * dtype.itemsize <= MAX_TILE_BYTES


# Launches that ran out of on-chip resources: (device, dtype, N, D) -> the error text.
OutOfResources = _triton_errors.OutOfResources
RESOURCE_ERRORS = tuple(
    getattr(_triton_errors, name)
    for name in ("OutOfResources", "PTXASError")
    if hasattr(_triton_errors, name)
)
UNFIT: dict[tuple[str, torch.dtype, int, int], str] = {}


def unfit_key(q: torch.Tensor, n: int) -> tuple[str, torch.dtype, int, int]:
    return (str(q.device), q.dtype, n, q.shape[-1])


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _dot(a, b, FP32_IEEE: tl.constexpr):
    """``a @ b`` with fp32 accumulation; full fp32 products (no TF32) for fp32 inputs."""
    if FP32_IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _resteer_fwd_kernel(
    Q, K, V, W, Out, Lse, RowTerm,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_wb,
    H, M, N, D, qk_scale,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    FP32_IEEE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    n_ok = offs_n < N
    d_ok = offs_d < D

    q_ptrs = (
        Q
        + b * stride_qb
        + h * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd
    )
    k_ptrs = (
        K
        + b * stride_kb
        + h * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd
    )
    v_ptrs = (
        V
        + b * stride_vb
        + h * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_d[None, :] * stride_vd
    )
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k = tl.load(k_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)

    # Scores in the log2 domain: exp2(s * scale * log2 e) == exp(s * scale).
    s = _dot(q, tl.trans(k), FP32_IEEE) * qk_scale
    s = tl.where(n_ok[None, :], s, float("-inf"))
    row_max = tl.max(s, 1)
    p = tl.exp2(s - row_max[:, None])
    row_sum = tl.sum(p, 1)
    p = p * (1.0 / row_sum)[:, None]

    v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    acc = _dot(p.to(v.dtype), v, FP32_IEEE)
    o_ptrs = Out + pid_bh.to(tl.int64) * M * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * M + offs_m, row_max + tl.log2(row_sum), mask=m_ok)

    if HAS_MASK:
        w = tl.load(W + b * stride_wb + offs_n, mask=n_ok, other=0.0)
        r = tl.sum(p * p * w[None, :], 1)
        tl.store(RowTerm + pid_bh.to(tl.int64) * M + offs_m, r, mask=m_ok)


@triton.jit
def _resteer_bwd_dq_kernel(
    Q, K, V, DO, W, G, Lse, Delta, DQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_wb,
    H, M, N, D, qk_scale, sm_scale,
    HAS_MASK: tl.constexpr, COMPUTE_DQ: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    FP32_IEEE: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    n_ok = offs_n < N
    d_ok = offs_d < D
    md_ok = m_ok[:, None] & d_ok[None, :]
    nd_ok = n_ok[:, None] & d_ok[None, :]

    q = tl.load(
        Q
        + b * stride_qb
        + h * stride_qh
        + offs_m[:, None] * stride_qm
        + offs_d[None, :] * stride_qd,
        mask=md_ok,
        other=0.0,
    )
    k = tl.load(
        K
        + b * stride_kb
        + h * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd,
        mask=nd_ok,
        other=0.0,
    )
    v = tl.load(
        V
        + b * stride_vb
        + h * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_d[None, :] * stride_vd,
        mask=nd_ok,
        other=0.0,
    )
    do = tl.load(
        DO
        + b * stride_dob
        + h * stride_doh
        + offs_m[:, None] * stride_dom
        + offs_d[None, :] * stride_dod,
        mask=md_ok,
        other=0.0,
    )
    lse = tl.load(Lse + pid_bh.to(tl.int64) * M + offs_m, mask=m_ok, other=0.0)

    s = _dot(q, tl.trans(k), FP32_IEEE) * qk_scale
    s = tl.where(n_ok[None, :], s, float("-inf"))
    p = tl.exp2(s - lse[:, None])
    dp = _dot(do, tl.trans(v), FP32_IEEE)
    if HAS_MASK:
        g = tl.load(G + pid_bh)
        w = tl.load(W + b * stride_wb + offs_n, mask=n_ok, other=0.0)
        dp += (2.0 * g) * w[None, :] * p
    delta = tl.sum(p * dp, 1)
    if COMPUTE_DQ:
        ds = p * (dp - delta[:, None])
        dq = _dot(ds.to(k.dtype), k, FP32_IEEE) * sm_scale
        dq_ptrs = DQ + pid_bh.to(tl.int64) * M * D + offs_m[:, None] * D + offs_d[None, :]
        tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=md_ok)
    tl.store(Delta + pid_bh.to(tl.int64) * M + offs_m, delta, mask=m_ok)


@triton.jit
def _resteer_bwd_dkdv_kernel(
    Q, K, V, DO, W, G, Lse, Delta, DKp, DVp,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_wb,
    H, M, N, D, qk_scale, sm_scale, rows_per_split, n_split,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N2: tl.constexpr, BLOCK_D: tl.constexpr,
    FP32_IEEE: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N2 + tl.arange(0, BLOCK_N2)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    nd_ok = n_ok[:, None] & d_ok[None, :]

    k = tl.load(
        K
        + b * stride_kb
        + h * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :] * stride_kd,
        mask=nd_ok,
        other=0.0,
    )
    v = tl.load(
        V
        + b * stride_vb
        + h * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_d[None, :] * stride_vd,
        mask=nd_ok,
        other=0.0,
    )
    if HAS_MASK:
        g = tl.load(G + pid_bh)
        w2 = (2.0 * g) * tl.load(W + b * stride_wb + offs_n, mask=n_ok, other=0.0)

    dk = tl.zeros([BLOCK_N2, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N2, BLOCK_D], dtype=tl.float32)
    lo = pid_s * rows_per_split
    hi = tl.minimum(lo + rows_per_split, M)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    row_base = pid_bh.to(tl.int64) * M
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < hi
        md_ok = m_ok[:, None] & d_ok[None, :]
        q = tl.load(
            q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
            mask=md_ok,
            other=0.0,
        )
        do = tl.load(
            do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
            mask=md_ok,
            other=0.0,
        )
        lse = tl.load(Lse + row_base + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(Delta + row_base + offs_m, mask=m_ok, other=0.0)

        s_t = _dot(k, tl.trans(q), FP32_IEEE) * qk_scale
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(n_ok[:, None] & m_ok[None, :], p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, FP32_IEEE)
        dp_t = _dot(v, tl.trans(do), FP32_IEEE)
        if HAS_MASK:
            dp_t += w2[:, None] * p_t
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, FP32_IEEE)

    part = (pid_bh.to(tl.int64) * n_split + pid_s) * N * D
    out_offs = offs_n[:, None] * D + offs_d[None, :]
    tl.store(DKp + part + out_offs, dk * sm_scale, mask=nd_ok)
    tl.store(DVp + part + out_offs, dv, mask=nd_ok)


# --------------------------------------------------------------------------------------------
# Configs: one fixed config (interpreter, FMN_TRITON_AUTOTUNE=0) or autotuned on CUDA
# --------------------------------------------------------------------------------------------


def _fixed_warps(block_n: int, block_d: int) -> int:
    """Warps for the fixed (non-autotuned) config: 8 once a tile is large."""
    return 8 if block_n * block_d >= 128 * 128 else 4


def _default_block_n2(block_n: int, block_d: int) -> int:
    return min(block_n, max(16, 8192 // block_d))


# Few configs on purpose: every (dtype, N, D, alignment) class compiles each of them once, and
# the GPU check must stay under its time budget.
def _row_configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm}, num_warps=nw, num_stages=1)
        for bm, nw in ((32, 4), (64, 4), (64, 8), (128, 8))
    ]


def _arg(name, named_args, kwargs):
    return kwargs[name] if name in kwargs else named_args[name]


def _prune_row_configs(configs, named_args, **kwargs):
    block_n, block_d = _arg("BLOCK_N", named_args, kwargs), _arg("BLOCK_D", named_args, kwargs)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] * max(block_n, block_d) <= 16384]
    return kept or configs[:1]


def _dkdv_configs() -> list[triton.Config]:
    shapes = [(64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N2": bn}, num_warps=nw, num_stages=ns)
        for bm, bn, nw, ns in shapes
    ]


def _prune_dkdv_configs(configs, named_args, **kwargs):
    block_d = _arg("BLOCK_D", named_args, kwargs)
    block_n = max(16, triton.next_power_of_2(int(_arg("N", named_args, kwargs))))
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_N2"] <= block_n
        and c.kwargs["BLOCK_N2"] * block_d <= 16384
        and c.kwargs["BLOCK_M"] * block_d <= 16384
    ]
    return kept or configs[:1]


_TUNED: dict[str, object] = {}


def _autotune_enabled(device: torch.device) -> bool:
    flag = os.environ.get("FMN_TRITON_AUTOTUNE", "1").lower() not in ("0", "false", "off", "no")
    return flag and device.type == "cuda" and not interpreting()


def _tuned(name: str):
    """Autotuned wrappers, built on first use so that nothing autotunes under the interpreter."""
    if name not in _TUNED:
        key = ["M", "N", "D"]
        if name == "fwd":
            fn = triton.autotune(
                _row_configs(), key=key, prune_configs_by={"early_config_prune": _prune_row_configs}
            )(_resteer_fwd_kernel)
        elif name == "dq":
            fn = triton.autotune(
                _row_configs(), key=key, prune_configs_by={"early_config_prune": _prune_row_configs}
            )(_resteer_bwd_dq_kernel)
        else:
            fn = triton.autotune(
                _dkdv_configs(),
                key=key,
                prune_configs_by={"early_config_prune": _prune_dkdv_configs},
            )(_resteer_bwd_dkdv_kernel)
        _TUNED[name] = fn
    return _TUNED[name]


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())  # type: ignore[return-value]


def _choose_split(m: int, bh: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    """(rows_per_split, n_split): split the query rows so dK/dV programs fill the device."""
    if device.type == "cuda" and not interpreting():
        # About 4 programs per SM, but at least MIN_ROWS_PER_SPLIT rows each: every split
        # writes an N x D fp32 partial, which must stay small next to the q/dO rows it reads.
        # A heuristic, not tuned on hardware yet.
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = triton.cdiv(4 * sms, max(1, bh * n_tiles))
        n_split = max(1, min(triton.cdiv(m, MIN_ROWS_PER_SPLIT), want))
    else:
        n_split = min(triton.cdiv(m, ROWS_ALIGN), 2)  # exercises the split path in CPU tests
    rows = triton.cdiv(triton.cdiv(m, n_split), ROWS_ALIGN) * ROWS_ALIGN
    return rows, triton.cdiv(m, rows)


# --------------------------------------------------------------------------------------------
# Host functions
# --------------------------------------------------------------------------------------------


def _mask_args(weights: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, int]:
    if weights is None:
        return q.new_empty(1, dtype=torch.float32), 0
    return weights, weights.stride(0)


def resteer_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: (out (B,H,M,D) in q's dtype, lse2 (B*H, M) fp32, resteer (B, H) fp32).

    ``weights`` is None or a contiguous fp32 (B, N) tensor (row stride 0 allowed).
    """
    bsz, heads, m, d = q.shape
    n = k.shape[2]
    block_n, block_d = block_sizes(n, d)
    out = torch.empty((bsz, heads, m, d), device=q.device, dtype=q.dtype)
    lse = torch.empty((bsz * heads, m), device=q.device, dtype=torch.float32)
    w, stride_wb = _mask_args(weights, q)
    rows = m if weights is not None else 1
    row_term = torch.zeros((bsz * heads, rows), device=q.device, dtype=torch.float32)
    args = (
        q,
        k,
        v,
        w,
        out,
        lse,
        row_term,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        stride_wb,
        heads,
        m,
        n,
        d,
        scale * LOG2E,
    )
    meta = dict(
        HAS_MASK=weights is not None,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        FP32_IEEE=q.dtype == torch.float32,
    )
    if _autotune_enabled(q.device):
        grid = lambda mt: (triton.cdiv(m, mt["BLOCK_M"]), bsz * heads)  # noqa: E731
        _tuned("fwd")[grid](*args, **meta)
    else:
        _resteer_fwd_kernel[(triton.cdiv(m, 64), bsz * heads)](
            *args, BLOCK_M=64, num_warps=_fixed_warps(block_n, block_d), **meta
        )
    resteer = row_term.sum(dim=1).view(bsz, heads)
    return out, lse, resteer


def resteer_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weights: torch.Tensor | None,
    lse: torch.Tensor,
    scale: float,
    d_out: torch.Tensor,
    d_resteer: torch.Tensor | None,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Backward from the saved LSE: (dq, dk, dv), contiguous, in the inputs' dtypes.

    ``needs`` (autograd's ``needs_input_grad`` for q, k, v) skips the dQ product when q needs no
    gradient (the row ``delta`` is still computed) and the dK/dV kernel when neither k nor v do.
    """
    bsz, heads, m, d = q.shape
    n = k.shape[2]
    bh = bsz * heads
    block_n, block_d = block_sizes(n, d)
    d_out = d_out.to(q.dtype)
    has_mask = weights is not None and d_resteer is not None
    g = d_resteer.float().contiguous().view(bh) if has_mask else q.new_zeros(1, dtype=torch.float32)
    w, stride_wb = _mask_args(weights if has_mask else None, q)
    dq = (
        torch.empty((bsz, heads, m, d), device=q.device, dtype=q.dtype)
        if needs[0]
        else q.new_empty(1)
    )
    delta = torch.empty((bh, m), device=q.device, dtype=torch.float32)
    common = (
        *_strides(q),
        *_strides(k),
        *_strides(v),
        *_strides(d_out),
        stride_wb,
        heads,
        m,
        n,
        d,
        scale * LOG2E,
        scale,
    )
    meta = dict(HAS_MASK=has_mask, BLOCK_D=block_d, FP32_IEEE=q.dtype == torch.float32)
    tuned = _autotune_enabled(q.device)

    dq_args = (q, k, v, d_out, w, g, lse, delta, dq, *common)
    if tuned:
        grid = lambda mt: (triton.cdiv(m, mt["BLOCK_M"]), bh)  # noqa: E731
        _tuned("dq")[grid](*dq_args, BLOCK_N=block_n, COMPUTE_DQ=needs[0], **meta)
    else:
        _resteer_bwd_dq_kernel[(triton.cdiv(m, 64), bh)](
            *dq_args,
            BLOCK_M=64,
            BLOCK_N=block_n,
            COMPUTE_DQ=needs[0],
            num_warps=_fixed_warps(block_n, block_d),
            **meta,
        )
    if not (needs[1] or needs[2]):
        return (dq if needs[0] else None), None, None

    block_n2 = _default_block_n2(block_n, block_d)
    rows, n_split = _choose_split(m, bh, triton.cdiv(n, block_n2), q.device)
    dk_part = torch.empty((bh, n_split, n, d), device=q.device, dtype=torch.float32)
    dv_part = torch.empty_like(dk_part)
    kv_args = (q, k, v, d_out, w, g, lse, delta, dk_part, dv_part, *common, rows, n_split)
    if tuned:
        grid = lambda mt: (triton.cdiv(n, mt["BLOCK_N2"]), bh, n_split)  # noqa: E731
        _tuned("dkdv")[grid](*kv_args, **meta)
    else:
        grid = (triton.cdiv(n, block_n2), bh, n_split)
        _resteer_bwd_dkdv_kernel[grid](
            *kv_args,
            BLOCK_M=64,
            BLOCK_N2=block_n2,
            num_warps=_fixed_warps(block_n2, block_d),
            **meta,
        )
    dk = dk_part.sum(dim=1).view(bsz, heads, n, d).to(k.dtype) if needs[1] else None
    dv = dv_part.sum(dim=1).view(bsz, heads, n, d).to(v.dtype) if needs[2] else None
    return (dq if needs[0] else None), dk, dv


def _device_of(t: torch.Tensor):
    """Launch on the tensor's GPU, not on whichever is current (several-GPU machines)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class ResteerAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the mask weights and the LSE, never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, weights, scale):  # type: ignore[override]
        with _device_of(q):
            out, lse, resteer = resteer_forward(q, k, v, weights, scale)
        ctx.save_for_backward(q, k, v, weights, lse)
        ctx.scale = scale
        if weights is None:
            ctx.mark_non_differentiable(resteer)
        return out, resteer

    @staticmethod
    def backward(ctx, d_out, d_resteer):  # type: ignore[override]
        q, k, v, weights, lse = ctx.saved_tensors
        if d_out is None:
            d_out = torch.zeros_like(q)
        try:
            with _device_of(q):
                dq, dk, dv = resteer_backward(
                    q,
                    k,
                    v,
                    weights,
                    lse,
                    ctx.scale,
                    d_out,
                    d_resteer,
                    needs=tuple(ctx.needs_input_grad[:3]),
                )
        except RESOURCE_ERRORS as err:
            UNFIT[unfit_key(q, k.shape[2])] = str(err)
            warnings.warn(
                f"fused attention backward did not fit ({err}); gradients recomputed "
                "with the reference",
                RuntimeWarning,
                stacklevel=2,
            )
            dq, dk, dv = _reference_backward(q, k, v, weights, ctx.scale, d_out, d_resteer)
        return dq, dk, dv, None, None


def _reference_backward(q, k, v, weights, scale, d_out, d_resteer):
    with torch.enable_grad():
        qr, kr, vr = (t.detach().requires_grad_() for t in (q, k, v))
        out, resteer = resteer_attention_reference(qr, kr, vr, weights, scale)
        outputs, grads = [out], [d_out.to(out.dtype)]
        if weights is not None and d_resteer is not None:
            outputs.append(resteer)
            grads.append(d_resteer)
        return torch.autograd.grad(outputs, (qr, kr, vr), grads)


def resteer_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    concept_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused attention + re-steering term; same contract as `resteer_attention_reference`.

    Call through `fmn_kernels.resteer_attention`, which checks the constraints first.

    >>> out, resteer = resteer_attention_triton(q, k, v, mask)  # doctest: +SKIP
    """
    bsz = q.shape[0]
    if k.shape[0] != bsz:
        k = k.expand(bsz, *k.shape[1:])
    if v.shape[0] != bsz:
        v = v.expand(bsz, *v.shape[1:])
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    weights = None
    if concept_mask is not None:
        weights = concept_mask.to(device=q.device, dtype=torch.float32).contiguous()
        if weights.shape[0] != bsz:
            weights = weights.expand(bsz, weights.shape[1])
    out, resteer = ResteerAttentionFunction.apply(q, k, v, weights, scale)
    if concept_mask is None:
        resteer = q.new_zeros(bsz, q.shape[1], dtype=torch.float32)
    return out, resteer


__all__ = [
    "MAX_TILE_BYTES",
    "RESOURCE_ERRORS",
    "UNFIT",
    "fits_on_chip",
    "ResteerAttentionFunction",
    "block_sizes",
    "interpreting",
    "resteer_attention_triton",
    "resteer_backward",
    "resteer_forward",
]
