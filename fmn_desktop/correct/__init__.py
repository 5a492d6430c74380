"""Correction patches (kind ``correct``): redirect a concept instead of erasing it, and
broad removal of an attribute drawn under several words or none (see each module).

Names are imported on first use (`fmn_desktop.lazy`): the configs without torch."""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.correct.closed_form import CorrectResult, correct, solve_map
    from fmn_desktop.correct.config import CorrectConfig, Edit

__all__ = ["CorrectConfig", "CorrectResult", "Edit", "correct", "solve_map"]

lazy_package(
    __name__,
    {
        "CorrectConfig": "config",
        "Edit": "config",
        "CorrectResult": "closed_form",
        "correct": "closed_form",
        "solve_map": "closed_form",
    },
)
