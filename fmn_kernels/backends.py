"""Backends for `resteer_attention`, chosen by name, each with its constraint checks.

Names: ``torch`` (the pure-PyTorch reference, always available), ``triton`` (the fused kernel of
`fmn_kernels.triton_resteer`) and ``auto`` (``triton`` when all its constraints hold, else
``torch``).

Choice, first match wins:

1. an explicit ``backend="torch"`` or ``backend="triton"`` argument;
2. the environment variable ``FMN_ATTN_BACKEND`` (``torch``, ``triton`` or ``auto``), read at
   every call, when the argument is None or ``"auto"``;
3. ``auto``.

A forced backend whose constraints fail raises `BackendUnavailableError` with the reasons
(never a silent fallback); ``auto`` falls back to the reference. An unknown name raises
`ValueError` listing the valid names.

>>> select_backend(q, k, v, mask)  # doctest: +SKIP
<Backend.TORCH: 'torch'>
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fmn_kernels.reference import resteer_attention_reference

ENV_VAR = "FMN_ATTN_BACKEND"
AUTO = "auto"

Check = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], "list[str]"]
Impl = Callable[..., "tuple[Tensor, Tensor]"]


class Backend(str, enum.Enum):
    """The implementations of `resteer_attention`."""

    TORCH = "torch"
    TRITON = "triton"


class BackendUnavailableError(RuntimeError):
    """A backend was forced but its constraints do not hold for these inputs."""


@dataclass(frozen=True)
class BackendSpec:
    """A registered backend: its implementation and its constraint check.

    ``check(q, k, v, concept_mask)`` returns the list of failed constraints (empty: usable).
    ``load()`` returns the implementation (imported lazily: triton is optional).
    """

    backend: Backend
    load: Callable[[], Impl]
    check: Check


_REGISTRY: dict[Backend, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> None:
    """Add or replace a backend in the registry."""
    _REGISTRY[spec.backend] = spec


def valid_names() -> tuple[str, ...]:
    """Every name `resteer_attention(backend=...)` and ``FMN_ATTN_BACKEND`` accept."""
    return (AUTO, *(b.value for b in Backend))


def parse_backend(name: str | Backend | None) -> Backend | None:
    """A `Backend` for a name, None for ``auto``/None; ValueError for anything else."""
    if name is None or isinstance(name, Backend):
        return name
    key = str(name).strip().lower()
    if key == AUTO:
        return None
    for b in Backend:
        if b.value == key:
            return b
    raise ValueError(f"unknown attention backend {name!r}; valid names: {', '.join(valid_names())}")


# --------------------------------------------------------------------------------------------
# Constraint checks
# --------------------------------------------------------------------------------------------


def _shape_problems(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> list[str]:
    """Shape rules every backend shares."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return [
            f"q, k, v must be 4-D (B, H, L, D); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        ]
    problems = []
    if k.shape != v.shape:
        problems.append(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if k.shape[1] != q.shape[1] or k.shape[3] != q.shape[3]:
        problems.append(f"heads/head dim of k {tuple(k.shape)} do not match q {tuple(q.shape)}")
    if k.shape[0] not in (1, q.shape[0]):
        problems.append(f"k/v batch {k.shape[0]} is neither 1 nor q's batch {q.shape[0]}")
    if mask is not None and (
        mask.dim() != 2 or mask.shape[1] != k.shape[2] or mask.shape[0] not in (1, q.shape[0])
    ):
        problems.append(
            f"concept_mask {tuple(mask.shape)} is not (B, N) = ({q.shape[0]}, {k.shape[2]})"
        )
    return problems


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_MAX_HEAD_DIM = 256


def check_torch(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> list[str]:
    """The reference takes any device and floating dtype."""
    return _shape_problems(q, k, v, mask)


def check_triton(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> list[str]:
    """Device, dtype, head dim and key length the fused kernel supports."""
    problems = _shape_problems(q, k, v, mask)
    if problems:
        return problems
    if not _triton_installed():
        return ["triton is not installed"]
    interp = _interpreting()
    devices = {t.device for t in (q, k, v)} | ({mask.device} if mask is not None else set())
    if len(devices) != 1:
        problems.append(f"tensors on several devices: {sorted(str(d) for d in devices)}")
    if q.device.type != "cuda" and not (interp and q.device.type == "cpu"):
        problems.append(f"device {q.device} needs CUDA (or CPU with TRITON_INTERPRET=1)")
    if q.device.type == "cuda" and interp:
        problems.append("TRITON_INTERPRET=1 is set: CUDA tensors would run in the interpreter")
    if not (q.dtype == k.dtype == v.dtype):
        problems.append(f"dtypes differ: q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if q.dtype not in TRITON_DTYPES:
        problems.append(f"dtype {q.dtype} not in {TRITON_DTYPES}")
    if q.dtype == torch.bfloat16 and interp:
        problems.append("bf16 is silently wrong under the Triton 3.9 interpreter")
    d, n = q.shape[-1], k.shape[2]
    if d > TRITON_MAX_HEAD_DIM:
        problems.append(f"head dim {d} > {TRITON_MAX_HEAD_DIM}")
    if q.shape[2] == 0 or n == 0:
        problems.append("empty query or key length")
    if not problems:
        from fmn_kernels import triton_resteer as tr

        if not tr.fits_on_chip(n, d, q.dtype):
            block_n, block_d = tr.block_sizes(n, d)
            problems.append(
                f"key length {n} at head dim {d} needs a {block_n}x{block_d} "
                f"{q.dtype} tile (> {tr.MAX_TILE_BYTES} bytes): a whole key row "
                "does not fit on chip"
            )
        elif tr.unfit_key(q, n) in tr.UNFIT:
            problems.append(
                f"the kernel ran out of resources here before: {tr.UNFIT[tr.unfit_key(q, n)]}"
            )
    return problems


def _load_torch() -> Impl:
    return resteer_attention_reference


def _load_triton() -> Impl:
    from fmn_kernels.triton_resteer import resteer_attention_triton

    return resteer_attention_triton


register_backend(BackendSpec(Backend.TORCH, _load_torch, check_torch))
register_backend(BackendSpec(Backend.TRITON, _load_triton, check_triton))


# --------------------------------------------------------------------------------------------
# Selection and dispatch
# --------------------------------------------------------------------------------------------


def requested_backend(backend: str | Backend | None = None) -> Backend | None:
    """The backend asked for by the argument, else by ``FMN_ATTN_BACKEND``; None means auto."""
    chosen = parse_backend(backend)
    if chosen is None:
        chosen = parse_backend(os.environ.get(ENV_VAR) or None)
    return chosen


def select_backend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    concept_mask: Tensor | None = None,
    backend: str | Backend | None = None,
) -> Backend:
    """The backend that will run these inputs (see the module docstring for the order)."""
    forced = requested_backend(backend)
    if forced is not None:
        problems = _REGISTRY[forced].check(q, k, v, concept_mask)
        if problems:
            raise BackendUnavailableError(
                f"attention backend {forced.value!r} cannot run these inputs: "
                + "; ".join(problems)
            )
        return forced
    if not _REGISTRY[Backend.TRITON].check(q, k, v, concept_mask):
        return Backend.TRITON
    return Backend.TORCH


def resteer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    concept_mask: Tensor | None = None,
    scale: float | None = None,
    backend: str | Backend | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention output and per-(sample, head) re-steering term through the chosen backend.

    q (B, H, M, D); k, v (B, H, N, D) (a batch of 1 is broadcast); concept_mask (B, N) float
    column weights or None. Returns ``out`` (B, H, M, D) in q's dtype and ``resteer`` (B, H)
    fp32 = sum_m sum_n mask[b, n] * softmax(q k^T * scale)[b, h, m, n]^2, differentiable
    w.r.t. q, k and v.

    >>> out, resteer = resteer_attention(q, k, v, mask)  # doctest: +SKIP
    >>> loss = resteer.sum(); loss.backward()  # doctest: +SKIP
    """
    chosen = select_backend(q, k, v, concept_mask, backend)
    impl = _REGISTRY[chosen].load()
    if chosen is not Backend.TRITON or requested_backend(backend) is not None:
        return impl(q, k, v, concept_mask, scale)
    from fmn_kernels import triton_resteer as tr

    try:
        return impl(q, k, v, concept_mask, scale)
    except tr.RESOURCE_ERRORS as err:  # auto only: a forced backend lets the error through
        tr.UNFIT[tr.unfit_key(q, k.shape[2])] = str(err)
        warnings.warn(
            f"fused attention kernel did not fit on {q.device} ({err}); using the "
            "reference for this shape from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return _REGISTRY[Backend.TORCH].load()(q, k, v, concept_mask, scale)
