"""Checks that a patch can be applied at all, made once for every reader (inspect, apply,
generate, import, stacks) and every writer (no NaN/inf ever reaches a file or a weight).

A delta is usable when its tensors are floating point, non-empty and finite; a LoRA's
factors fit each other (up ``(out, r[, 1, 1])``, down ``(r, in[, kh, kw])``, rank r >= 1),
its alpha is one finite number, and the product ``up @ down * alpha / r`` is finite too
(finite factors can still overflow).
"""

from __future__ import annotations

import torch

from fmn_desktop.errors import NonFiniteError, NonFinitePatchError, PatchFormatError
from fmn_desktop.limits import strength_problem
from fmn_desktop.patch.layout import (
    check_alpha_form,
    check_factors,
    check_form,
    check_rank_nonzero,
)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_strength(value: float, what: str = "strength") -> float:
    """`value` as a float, refused (NonFiniteError) when not finite or beyond MAX_STRENGTH."""
    problem = strength_problem(value, what)
    if problem:
        raise NonFiniteError(problem)
    return float(value)


def is_finite(t: torch.Tensor) -> bool:
    return not t.is_floating_point() or bool(torch.isfinite(t).all())


def alpha_value(t: torch.Tensor, where: str) -> float:
    """A LoRA `alpha` tensor as a float: one finite number."""
    check_alpha_form(_name(t), tuple(t.shape), where)
    value = float(t.reshape(()).item())
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFinitePatchError(f"{where}: alpha is {value}")
    return value


def _name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _float(t: torch.Tensor, where: str, what: str) -> None:
    check_form(_name(t), tuple(t.shape), where, what)
    if not is_finite(t):
        raise NonFinitePatchError(f"{where}: {what} contains NaN or inf")


def validate_delta(name: str, delta, where: str = "") -> None:
    """Raise PatchFormatError / NonFiniteError if `delta` (a `format.Delta`) is unusable."""
    at = f"{where}: {name}" if where else name
    if delta.dense is not None:
        _float(delta.dense, at, "delta")
        return
    up, down = delta.up, delta.down
    if up is None or down is None:
        raise PatchFormatError(f"{at}: lora_up and lora_down come in pairs")
    check_rank_nonzero(tuple(down.shape), at)
    _float(up, at, "lora_up")
    _float(down, at, "lora_down")
    check_factors(tuple(up.shape), tuple(down.shape), at)
    if delta.alpha is not None:
        a = float(delta.alpha)
        if a != a or a in (float("inf"), float("-inf")):
            raise NonFinitePatchError(f"{at}: alpha is {a}")
    if not bool(torch.isfinite(delta.to_dense()).all()):
        raise NonFinitePatchError(f"{at}: lora_up x lora_down x alpha/rank overflows to inf or NaN")


def validate_deltas(deltas: dict, where: str = "") -> None:
    if not deltas:
        raise PatchFormatError(f"{where or 'patch'} holds no deltas")
    for name, delta in deltas.items():
        validate_delta(name, delta, where)


def check_finite_tensors(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse to write a file whose tensors hold NaN or inf."""
    bad = [k for k, t in tensors.items() if not is_finite(t)]
    if bad:
        shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"refusing to write {where}: NaN or inf in {shown}")
