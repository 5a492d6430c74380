"""Patch files, low-rank conversion, and applying patches to a loaded UNet.

Names are imported on first use (`fmn_desktop.lazy`): `layout` and `summary` read a patch
file without torch."""

from typing import TYPE_CHECKING

from fmn_desktop.lazy import lazy_package

if TYPE_CHECKING:
    from fmn_desktop.patch.apply import PatchedUNet, check_compatible, patched_weights
    from fmn_desktop.patch.format import (
        Delta,
        Patch,
        PatchMeta,
        load_patch,
        read_metadata,
        save_patch,
        unet_module_names,
    )
    from fmn_desktop.patch.lowrank import svd_lowrank, to_lora, write_patch

__all__ = [
    "Delta",
    "Patch",
    "PatchMeta",
    "PatchedUNet",
    "check_compatible",
    "load_patch",
    "patched_weights",
    "read_metadata",
    "save_patch",
    "svd_lowrank",
    "to_lora",
    "unet_module_names",
    "write_patch",
]

lazy_package(
    __name__,
    {
        "PatchedUNet": "apply",
        "check_compatible": "apply",
        "patched_weights": "apply",
        **dict.fromkeys(
            [
                "Delta",
                "Patch",
                "PatchMeta",
                "load_patch",
                "read_metadata",
                "save_patch",
                "unet_module_names",
            ],
            "format",
        ),
        **dict.fromkeys(["svd_lowrank", "to_lora", "write_patch"], "lowrank"),
    },
)
