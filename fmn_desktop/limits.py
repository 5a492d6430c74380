"""Bounds on the numbers a user gives that reach a model's weights (no torch here)."""

from __future__ import annotations

import math

MAX_STRENGTH = 100.0  # |strength| of a patch or a stack member; more only ever breaks a model


def strength_problem(value: object, what: str = "strength") -> str | None:
    """Why `value` is no usable strength (None when it is one)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{what} {value!r} is not a number"
    if not math.isfinite(v):
        return f"{what} must be a finite number, not {value!r}"
    if abs(v) > MAX_STRENGTH:
        return f"{what} {v:g} is out of range (at most {MAX_STRENGTH:g} either way)"
    return None
