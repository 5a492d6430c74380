"""User-facing errors of model loading: the CLI prints their message on one line (no
traceback) and exits 1.

`FmnError` is the project-wide base (defined in `fmn_desktop.errors`, re-exported here) for
errors a user can fix (bad file, wrong model, bad option); anything else is a bug and keeps
its traceback. `FingerprintMismatch` is a `PatchMismatchError`.
"""

from __future__ import annotations

from fmn_desktop.errors import FmnError, PatchMismatchError

__all__ = ["FingerprintMismatch", "FmnError", "ModelLoadError"]


class ModelLoadError(FmnError):
    """A checkpoint could not be read or recognised (missing, truncated, pickled, unknown)."""


class FingerprintMismatch(PatchMismatchError):
    """A patch was made for another base model than the one it is applied to."""

    def __init__(self, expected: str, actual: str, what: str = "patch") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"this {what} was made for base model {expected[:12]}, but the loaded model is "
            f"{actual[:12]}; use another base model, or force it (--force) if you know they match"
        )
