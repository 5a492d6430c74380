"""Correction patches (kind ``correct``): redirect a concept instead of erasing it, and
broad removal of an attribute drawn under several words or none (see each module)."""

from fmn_desktop.correct.closed_form import (
    CorrectConfig,
    CorrectResult,
    Edit,
    correct,
    solve_map,
)

__all__ = ["CorrectConfig", "CorrectResult", "Edit", "correct", "solve_map"]
