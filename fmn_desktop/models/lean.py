"""Pipeline components built from weights read once, without a memory map.

diffusers' and transformers' loaders read safetensors through a memory map and copy each
tensor out of it: the mapped file pages stay resident beside the copies, so loading a model
peaks near twice its size (SD1.5 in fp32: ~8 GB for 4 GB of weights). Here the weights are
read with plain file reads (`tensorfile.load_tensors`), cast to the wanted dtype one tensor at
a time, and handed to the same library functions the libraries' own loaders use, which place
those very tensors in models built on the meta device (no second copy). The pipeline is then
assembled by `from_pretrained` on the config folder with these components passed in, so the
scheduler, tokenizers and pipeline options come from the configs exactly as before.

Single files: UNet and VAE through `from_single_file` with the tensors as a dict, text
encoders through `create_diffusers_clip_model_from_ldm` (what diffusers' pipeline
`from_single_file` calls for each component). Folders: a component whose weights are one
plain `.safetensors` file with exactly the model's tensor names goes the same way; anything
else (sharded, `.bin`, renamed legacy tensors) is left to the library's own loader.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from fmn_desktop.models.families import LDM_UNET, LDM_VAE
from fmn_desktop.models.tensorfile import load_tensors, read_tensors

# The parts of an LDM checkpoint that become pipeline components; anything else (EMA
# copies of the UNet in `model_ema.*`, training state) is never read.
LDM_COMPONENT_PREFIXES = (LDM_UNET, LDM_VAE, "cond_stage_model.", "conditioner.embedders.")


def _component_classes(cfg: Path) -> dict[str, type]:
    """Torch model classes of the config folder's pipeline components, by name."""
    index = json.loads((cfg / "model_index.json").read_text())
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, class_name = value
        if library not in ("diffusers", "transformers") or class_name is None:
            continue
        cls = getattr(importlib.import_module(library), class_name, None)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            out[name] = cls
    return out


def _read_dtype(classes, dtype: torch.dtype | None) -> torch.dtype | None:
    """Cast while reading unless a class keeps some modules in fp32 (then the library's
    loader must see the file's own values)."""
    if any(getattr(cls, "_keep_in_fp32_modules", None) for cls in classes):
        return None
    return dtype


def single_file_components(path: Path, cfg: Path, dtype: torch.dtype) -> dict[str, object]:
    """The torch components (UNet, VAE, text encoders) of an LDM single file, built with the
    config folder `cfg`; the checkpoint's tensors are read once and become the weights."""
    from diffusers.loaders.single_file_model import FromOriginalModelMixin
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import PreTrainedModel

    from fmn_desktop.models.checkpoint import read_safetensors_header

    classes = _component_classes(cfg)
    names = [k for k in read_safetensors_header(path) if k.startswith(LDM_COMPONENT_PREFIXES)]
    checkpoint = dict(read_tensors(path, names, _read_dtype(classes.values(), dtype)))
    components: dict[str, object] = {}
    common = {"config": str(cfg), "torch_dtype": dtype, "local_files_only": True}
    for name, cls in classes.items():
        if issubclass(cls, FromOriginalModelMixin):
            components[name] = cls.from_single_file(checkpoint, subfolder=name, **common)
        elif issubclass(cls, PreTrainedModel):
            components[name] = create_diffusers_clip_model_from_ldm(
                cls, checkpoint, subfolder=name, **common
            )
    return components


def _weights_file(sub: Path, stem: str, variant: str | None) -> Path | None:
    """The one plain safetensors weights file of a component folder, else None."""
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    file = sub / name
    if not file.is_file() or list(sub.glob(f"{stem}*.index*.json")):
        return None
    return file


def _meta_keys(cls, sub: Path) -> set[str]:
    """The state-dict names of the diffusers model a config folder describes."""
    with torch.device("meta"):
        model = cls.from_config(cls.load_config(str(sub)))
    return set(model.state_dict())


def folder_components(path: Path, dtype: torch.dtype, variant: str | None) -> dict[str, object]:
    """The torch components of a diffusers folder that can be built from one plain
    safetensors file each; the others are left to `from_pretrained`."""
    from diffusers.loaders.single_file_model import FromOriginalModelMixin
    from transformers import PreTrainedModel

    from fmn_desktop.models.checkpoint import read_safetensors_header

    classes = _component_classes(path)
    read_dtype = _read_dtype(classes.values(), dtype)
    components: dict[str, object] = {}
    for name, cls in classes.items():
        sub = path / name
        if issubclass(cls, FromOriginalModelMixin):
            file = _weights_file(sub, "diffusion_pytorch_model", variant)
            if file is None or set(read_safetensors_header(file)) != _meta_keys(cls, sub):
                continue
            components[name] = cls.from_single_file(
                load_tensors(file, dtype=read_dtype),
                config=str(path),
                subfolder=name,
                torch_dtype=dtype,
                local_files_only=True,
            )
        elif issubclass(cls, PreTrainedModel):
            file = _weights_file(sub, "model", variant)
            if file is None:
                continue
            config = cls.config_class.from_pretrained(str(sub), local_files_only=True)
            components[name] = cls.from_pretrained(
                None,
                config=config,
                state_dict=load_tensors(file, dtype=read_dtype),
                torch_dtype=dtype,
                local_files_only=True,
            )
    return components
