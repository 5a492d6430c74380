"""Settings fields that describe themselves: each default, its help and its place in a group live
once, on the config dataclass; the CLI builds its flags from them (`fmn_desktop.cli.common`).

    @dataclass
    class Config:
        steps: int | None = knob(None, "optimisation steps", group="optimiser",
                                 by_mode={"faithful": 70, "fast": 35})
"""

from __future__ import annotations

import dataclasses
from typing import Any


def knob(
    default: Any = None,
    help: str = "",
    *,
    group: str = "",
    flag: str | None = None,
    choices: tuple | list | None = None,
    metavar: str | None = None,
    by_mode: dict[str, Any] | None = None,
    many: bool = False,
    bounds: str = "",
) -> Any:
    """A dataclass field with what a front end needs to offer it.

    `flag` overrides the option name (default: `--field-name`); `by_mode` gives the default
    per mode when `default` is None (resolved once, by the config); `many` makes a list field
    a repeatable option. `bounds` ("positive", "nonneg", "seed"; default: any finite number)
    is what a front end accepts for a number. List defaults are copied per instance.
    """
    meta = {
        "help": help,
        "group": group,
        "flag": flag,
        "choices": tuple(choices) if choices is not None else None,
        "metavar": metavar,
        "by_mode": dict(by_mode) if by_mode else None,
        "many": many,
        "bounds": bounds,
    }
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def knob_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` declared with `knob` (those a front end offers)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def resolve_by_mode(config, mode: str) -> None:
    """Fill each unset (None) knob that has per-mode defaults with the value for `mode`."""
    for f in knob_fields(type(config)):
        by_mode = f.metadata["by_mode"]
        if by_mode and getattr(config, f.name) is None:
            setattr(config, f.name, by_mode[mode])


def default_text(f: dataclasses.Field) -> str:
    """The default of a knob as a person reads it: "6 faithful, 3 fast", "squares", ..."""
    by_mode = f.metadata.get("by_mode")
    if by_mode:
        return ", ".join(
            f"{v:g} {m}" if isinstance(v, float) else f"{v} {m}" for m, v in by_mode.items()
        )
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None or value == [] or value == "" or isinstance(value, bool):
        return ""
    return str(value)
