"""Writing pipelines out: one LDM-layout `.safetensors` file, or a weightless config folder.

    >>> from fmn_desktop.models import export_single_file
    >>> export_single_file(model.pipe, "patched.safetensors")  # doctest: +SKIP

The file is written atomically: a temporary file in the destination folder, fsync, rename, so
an interrupted export never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from fmn_desktop.fileio import atomic_folder
from fmn_desktop.models.families import LDM_UNET
from fmn_desktop.models.ldm import pipeline_family, pipeline_to_ldm, plain_state_dict, unet_to_ldm
from fmn_desktop.models.tensorfile import TensorSpec, write_tensors
from fmn_desktop.training import Progress

MODELSPEC_ARCH = {
    ("sd1", "epsilon"): "stable-diffusion-v1",
    ("sd2", "v_prediction"): "stable-diffusion-v2-768-v",
    ("sd2", "epsilon"): "stable-diffusion-v2-512",
    ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base",
}


def export_single_file(
    pipe,
    path: str | os.PathLike,
    *,
    family: str | None = None,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    progress: Callable[[Progress], None] | None = None,
    unet_weights: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> Path:
    """Write `pipe`'s UNet, VAE and text encoder(s) as one LDM-layout safetensors file.

    `dtype` casts floating tensors (e.g. torch.float16 halves the file); default keeps them.
    `unet_weights(name, weight)`, when given, returns what to write for each UNet parameter
    (by its diffusers name): a patched copy is written without touching `pipe`.
    The file is written tensor by tensor (each cast, checked for NaN/inf and written in
    turn), so an export needs no second copy of the model in memory.
    The file records `fmn.family` and `fmn.prediction_type` (read back by load_pipeline,
    which settles SD2's v/epsilon question) and `modelspec.architecture`.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(
            f"single-file export writes .safetensors, not {path.suffix or 'no suffix'}"
        )
    family = family or pipeline_family(pipe)
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    state = pipeline_to_ldm(pipe, family)
    unet_names = {}
    if unet_weights is not None:
        # LDM name -> diffusers name: the mapping passes values through, so map the names
        names = {k: k for k in plain_state_dict(pipe.unet)}
        unet_names = {LDM_UNET + k: v for k, v in unet_to_ldm(names, pipe.unet.config).items()}

    def out_dtype(value: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and value.is_floating_point() else value.dtype

    specs = {name: TensorSpec(out_dtype(v), tuple(v.shape)) for name, v in state.items()}
    total = len(specs)
    done = 0

    def produce(name: str) -> torch.Tensor:
        nonlocal done
        value = state.pop(name).detach()  # dropped once written (q/k/v concatenations)
        if name in unet_names:
            value = unet_weights(unet_names[name], value)
        value = value.to(device="cpu", dtype=out_dtype(value))
        done += 1
        if progress is not None and (done % 200 == 1 or done == total):
            progress(Progress("export", done, total))
        return value

    meta = {
        "format": "pt",
        "fmn.family": family,
        "fmn.prediction_type": prediction,
        "modelspec.architecture": MODELSPEC_ARCH.get((family, prediction), family),
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
    }
    meta[EMBEDDED_CONFIGS_KEY] = embedded_configs(pipe)
    meta.update(metadata or {})
    return write_tensors(path, specs, produce, meta, check=_check_one_finite)


def _check_one_finite(name: str, tensor: torch.Tensor) -> None:
    check_finite({name: tensor})


EMBEDDED_CONFIGS_KEY = "fmn.configs"
_CONFIG_FILES = (
    "model_index.json",
    "config.json",
    "scheduler_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def embedded_configs(pipe) -> str:
    """The pipeline's config files (no weights, no vocabulary) as one JSON string.

    Stored in every exported file's metadata so that `load_pipeline` can rebuild the exact
    architecture of a non-standard model (the embedded toy model, a tiny test model) with no
    config folder; standard checkpoints from elsewhere use the shipped family configs.
    """
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fmn-config-") as tmp:
        folder = save_config_folder(pipe, tmp)
        files = {
            str(p.relative_to(folder)): p.read_text()
            for p in sorted(folder.rglob("*.json"))
            if p.name in _CONFIG_FILES
        }
    return json.dumps(files, sort_keys=True)


def write_embedded_configs(text: str, folder: Path) -> Path:
    """Materialise `embedded_configs` output as a diffusers config folder."""
    import json

    try:
        files = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the embedded configs are not valid JSON ({exc})") from None
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ValueError("the embedded configs are not a map of file names to texts")
    for rel, content in files.items():
        target = (folder / rel).resolve()
        if folder.resolve() not in target.parents:  # no path tricks from a file's metadata
            raise ValueError(f"bad embedded config path {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return folder


def save_config_folder(pipe, folder: str | os.PathLike) -> Path:
    """Write a diffusers-layout folder with `pipe`'s configs and tokenizers, and no weights.

    Such a folder is what `load_pipeline(file, config=folder)` and diffusers'
    `from_single_file(config=...)` need for a checkpoint whose architecture is not one of the
    shipped families.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(str(folder))
    for name, component in pipe.components.items():
        if component is None:
            continue
        sub = folder / name
        if (
            hasattr(component, "save_vocabulary")
            or hasattr(component, "save_pretrained")
            and not (isinstance(component, torch.nn.Module))
        ):
            component.save_pretrained(str(sub))
        elif hasattr(component, "config"):
            sub.mkdir(parents=True, exist_ok=True)
            config = component.config
            if hasattr(config, "save_pretrained"):  # transformers config
                config.save_pretrained(str(sub))
            else:  # diffusers FrozenDict config
                component.save_config(str(sub))
    return folder


def check_finite(tensors: dict[str, torch.Tensor], what: str = "model") -> None:
    """Refuse to write weights holding NaN or inf (a bad patch or strength got through)."""
    from fmn_desktop.errors import NonFiniteError

    bad = [
        name
        for name, t in tensors.items()
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(f"refusing to write a {what} with NaN or inf weights ({shown})")


def pipeline_tensors(pipe) -> dict[str, torch.Tensor]:
    """Every weight of `pipe`'s modules, as `component.name` -> tensor (no copies)."""
    out = {}
    for comp_name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for name, t in component.state_dict().items():
                out[f"{comp_name}.{name}"] = t
    return out


def save_model(
    pipe, out: str | os.PathLike, family: str | None = None, replace: bool = False
) -> Path:
    """Write `pipe` as one LDM-layout `.safetensors` file (an `out` ending in .safetensors)
    or a diffusers folder, atomically either way. `family` None: detected from the UNet.
    `replace`: an existing diffusers model folder is replaced (else refused); a file is
    always replaced, so callers check first (services.output)."""
    out = Path(out)
    if out.suffix.lower() == ".safetensors":
        return export_single_file(pipe, out, family=family)
    _save_folder_atomically(pipe, out, replace)
    return out


def _save_folder_atomically(pipe, out: Path, replace: bool = False) -> None:
    """save_pretrained into a temporary sibling, then rename: no half-written model folder."""
    from fmn_desktop.errors import FmnError

    if out.exists() and not out.is_dir():
        raise FmnError(f"{out} is a file; a diffusers model is written as a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not replace:
            raise FmnError(f"{out} exists and is not empty; choose a new folder")
        if not (out / "model_index.json").is_file():
            raise FmnError(
                f"{out} is not a diffusers model folder; it is not replaced (choose a new folder)"
            )
    check_finite(pipeline_tensors(pipe))
    with atomic_folder(out, replace=replace) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
