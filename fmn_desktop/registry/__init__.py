"""The local registry: patches, base models, stacks, evaluations and jobs (SQLite).

No Qt and no tensor math here; files are handled as bytes. See `repository.Registry`.

>>> from fmn_desktop.registry import open_registry
>>> with open_registry("/tmp/fmn-reg") as reg:  # doctest: +SKIP
...     [p.name for p in reg.list_patches()]

Names are imported on first use (`fmn_desktop.lazy`): sqlite_utils only when a command opens
the registry.
"""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.registry.errors import (
        NotFoundError,
        PatchInUseError,
        RegistryBusyError,
        RegistryCorruptError,
        RegistryError,
    )
    from fmn_desktop.registry.location import ENV_VAR, registry_dir
    from fmn_desktop.registry.records import (
        BaseModelRecord,
        EvaluationRecord,
        JobRecord,
        PatchRecord,
        StackItemRecord,
        StackRecord,
    )
    from fmn_desktop.registry.repository import STACK_MODES, Registry, open_registry

__all__ = [
    "ENV_VAR",
    "STACK_MODES",
    "BaseModelRecord",
    "EvaluationRecord",
    "JobRecord",
    "NotFoundError",
    "PatchInUseError",
    "PatchRecord",
    "Registry",
    "RegistryBusyError",
    "RegistryCorruptError",
    "RegistryError",
    "StackItemRecord",
    "StackRecord",
    "open_registry",
    "registry_dir",
]

lazy_package(
    __name__,
    {
        **dict.fromkeys(
            [
                "NotFoundError",
                "PatchInUseError",
                "RegistryBusyError",
                "RegistryCorruptError",
                "RegistryError",
            ],
            "errors",
        ),
        "ENV_VAR": "location",
        "registry_dir": "location",
        **dict.fromkeys(
            [
                "BaseModelRecord",
                "EvaluationRecord",
                "JobRecord",
                "PatchRecord",
                "StackItemRecord",
                "StackRecord",
            ],
            "records",
        ),
        "STACK_MODES": "repository",
        "Registry": "repository",
        "open_registry": "repository",
    },
)
