"""Errors a user can cause and fix: the CLI prints their message on one line, without a traceback."""

from __future__ import annotations


class FmnError(Exception):
    """Base of every error whose message is meant for the user."""


class PatchFormatError(FmnError):
    """A patch file is unreadable, truncated, or not a patch of a supported layout."""


class PatchMismatchError(FmnError):
    """A patch does not fit the model it is applied to (keys, shapes or base fingerprint)."""


class TrainingError(FmnError):
    """A forget/correct job could not produce a patch (NaN loss, missing hooks, bad concept)."""


class ConceptNotFoundError(FmnError):
    """The concept's tokens do not occur in the prompt built for it."""


class CancelledError(FmnError):
    """A long job was cancelled by its caller; nothing was written."""


class EmbeddingFormatError(FmnError):
    """A textual-inversion embedding file is unreadable, or does not fit the model's text encoder."""


class NonFiniteError(FmnError):
    """A value that would reach a model's weights or a written file is NaN or infinite."""


class NonFinitePatchError(NonFiniteError, PatchFormatError):
    """A patch file holds NaN or inf (or values whose product overflows)."""
