"""Our own patch files read with no model at hand (import without `--model`): every delta
usable, made for a family fmn knows, every key a UNet module of that family."""

from __future__ import annotations

from fmn_desktop.errors import PatchFormatError
from fmn_desktop.patch.format import load_patch, read_metadata


def family_parameter_names() -> dict[str, frozenset[str]]:
    """UNet parameter names per family a patch may be made for (SD1, SD2, SDXL and the
    embedded model), from the shipped configs."""
    from fmn_desktop.models.families import EMBEDDED_FAMILY, config_dir, unet_parameter_names
    from fmn_desktop.toyworld import WEIGHTS_DIR

    out = {f: unet_parameter_names(config_dir(f) / "unet") for f in ("sd1", "sd2", "sdxl")}
    if (WEIGHTS_DIR / "unet" / "config.json").is_file():
        out[EMBEDDED_FAMILY] = unet_parameter_names(WEIGHTS_DIR / "unet")
    return out


def load_standalone(path) -> object:
    """Read a patch file of ours with no model at hand, checking what can be checked: every
    delta usable (`validate_deltas`), made for a family fmn knows, and every key a UNet
    module of that family (of some family when it names none). Returns the `Patch`."""
    from pathlib import Path

    from fmn_desktop.errors import PatchMismatchError

    where = Path(path).name
    family = read_metadata(path).get("fmn.family", "")
    names = family_parameter_names()
    if family and family not in names:
        raise PatchFormatError(
            f"{where}: made for model family {family!r}; fmn applies patches to "
            f"{', '.join(sorted(names))}"
        )
    problem = None
    for fam in [family] if family else sorted(names):
        modules = sorted({n.rpartition(".")[0] for n in names[fam]})
        try:
            patch = load_patch(path, modules)
        except PatchMismatchError as exc:
            problem = exc
            continue
        unknown = sorted(n for n in patch.deltas if n not in names[fam])
        if not unknown:
            return patch
        problem = f"{unknown[0]} is no parameter of it"
    raise PatchFormatError(
        f"{where}: not a patch of {family or 'any Stable Diffusion family fmn knows'} ({problem})"
    )
