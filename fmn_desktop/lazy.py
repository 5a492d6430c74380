"""Package namespaces that import their modules on first use.

A core package re-exports its public names (`from fmn_desktop.resteer import ForgetConfig`),
but importing the package must not import torch: the CLI builds its parser from the config
dataclasses, and `fmn --help` or `fmn patches list` would otherwise pay seconds of start-up
for a library they never call. Each package maps its names to the module defining them and
imports that module when a name is first read (PEP 562).
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # Loading submodule `resteer.forget` binds it on the package, which would hide the
        # function `resteer.forget` it exports; the exported name wins, as with eager imports.
        exports = self.__dict__.get("__lazy_exports__", {})
        if (
            name in exports
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            return
        super().__setattr__(name, value)


def lazy_package(package: str, exports: dict[str, str]) -> None:
    """Make `package` (its `__name__`) export each name `n` of `exports` from the module
    `exports[n]`: a submodule's short name ("config") or a full module name. Submodules not
    named in `exports` are imported on first attribute access too."""
    module = sys.modules[package]
    module.__lazy_exports__ = exports
    module.__class__ = _LazyPackage

    def __getattr__(name: str):
        if name in exports:
            target = exports[name]
            full = target if "." in target else f"{package}.{target}"
            value = getattr(importlib.import_module(full), name)
            module.__dict__[name] = value  # later reads skip this function
            return value
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *exports})

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
