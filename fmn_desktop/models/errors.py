"""User-facing errors: the CLI prints their message on one line (no traceback) and exits 1.

`FmnError` is the project-wide base for errors a user can fix (bad file, wrong model, bad
option); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FmnError(Exception):
    """Base of every error caused by user input rather than by a bug."""


class ModelLoadError(FmnError):
    """A checkpoint could not be read or recognised (missing, truncated, pickled, unknown)."""


class FingerprintMismatch(FmnError):
    """A patch was made for another base model than the one it is applied to."""

    def __init__(self, expected: str, actual: str, what: str = "patch") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"this {what} was made for base model {expected[:12]}, but the loaded model is "
            f"{actual[:12]}; use another base model, or force it (--force) if you know they match"
        )
