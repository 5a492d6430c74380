"""Typed Qt properties with a `<name>_changed` signal, declared in one line.

    class ForgetModel(QObject):
        concept_changed = Signal(str)
        concept = state("concept", str, "", concept_changed)

The setter stores the value and emits the signal only when the value changed, so widgets bound
both ways (widget -> model -> widget) do not loop.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Property, Signal


def state(name: str, type_: type, default: Any, notify: Signal) -> Property:
    attr = f"_p_{name}"

    def getter(self):
        return getattr(self, attr, default)

    def setter(self, value):
        if type_ in (int, float, str, bool) and value is not None:
            value = type_(value)
        if getattr(self, attr, default) == value:
            return
        setattr(self, attr, value)
        getattr(self, f"{name}_changed").emit(value)

    qt_type = type_ if type_ in (int, float, str, bool) else object
    return Property(qt_type, getter, setter, notify=notify)
