"""Registry errors: each message is meant for the user (the CLI prints it on one line)."""

from __future__ import annotations

from fmn_desktop.errors import FmnError


class RegistryError(FmnError):
    """The registry cannot do what was asked (unknown name, corrupt database, ...)."""


class NotFoundError(RegistryError, LookupError):
    """No patch / stack / job with that id or name."""


class PatchInUseError(RegistryError):
    """A patch is still part of a stack; remove it there first or ask for a cascade."""


class RegistryBusyError(RegistryError):
    """Another process held the database lock longer than the busy timeout."""


class RegistryCorruptError(RegistryError):
    """The database or a stored patch file is damaged."""
