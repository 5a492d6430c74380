"""Loading Stable Diffusion checkpoints offline: diffusers folders and single files.

    >>> from fmn_desktop.models import load_pipeline
    >>> model = load_pipeline("v1-5-pruned-emaonly.safetensors")  # doctest: +SKIP
    >>> model.family, model.fingerprint[:12]  # doctest: +SKIP
    ('sd1', '3f0c9a1e7b2d')

- A diffusers folder is read with `from_pretrained(local_files_only=True)`; its family comes
  from `model_index.json` and the UNet / text encoder configs.
- A single `.safetensors` file in the original (LDM / A1111) layout: the family comes from
  its tensor names, and it is converted with diffusers' single-file code against a local
  config folder (`local_files_only=True`): the `config` argument if given; else the configs
  fmn's exporter embeds in its files (`fmn.configs` metadata: the exact architecture of the
  toy model or any fine-tune); else the family's shipped config folder. Tokenizers use the
  shipped CLIP vocabulary unless the config folder carries its own.
- SD2 single files do not say whether they predict v (SD 2.x 768) or epsilon (SD 2.x-base
  512). In order: the `prediction_type` argument; the file's own metadata
  (`fmn.prediction_type`, or `modelspec.prediction_type`); an A1111-style sidecar
  `<name>.yaml` (`parameterization: "v"` means v, a yaml without it means epsilon); else v,
  the SD 2.0-v / 2.1 default (as diffusers assumes). v uses the 768 px config (DDIM),
  epsilon the 512 px base config (PNDM). SD1/SDXL files are epsilon unless they carry a
  `v_pred` marker tensor (v-prediction fine-tunes) or the argument says otherwise.
- Pickled `.ckpt/.pt/.pth/.bin` files are read only with torch's restricted
  `weights_only` unpickler (see checkpoint.py), then go the same way through a temporary
  safetensors copy in the system temp folder.
Weights are read once, without a memory map (lean.py): loading peaks near the weights' own
size instead of twice it, with the very tensors diffusers' loaders would give.
Nothing here reaches the network, whatever the environment says: every load passes
`local_files_only=True`, runs with huggingface_hub's offline switch on (`hub_offline`), and
single files always get a local config folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmn_desktop.models.checkpoint import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    load_pickle_state_dict,
    read_safetensors_header,
    safetensors_metadata,
)
from fmn_desktop.models.errors import FmnError, ModelLoadError
from fmn_desktop.models.export import EMBEDDED_CONFIGS_KEY, write_embedded_configs
from fmn_desktop.models.families import (
    CLIP_TOKENIZER_DIR,
    EMBEDDED_FAMILY,
    PREDICTION_TYPES,
    check_family,
    config_dir,
    detect_family_from_folder,
    detect_family_from_keys,
    load_tokenizer,
)
from fmn_desktop.models.fingerprint import fingerprint_unet
from fmn_desktop.models.lean import folder_components, single_file_components
from fmn_desktop.models.precision import fit_half_to_cpu
from fmn_desktop.runtime import hub_offline


@functools.cache
def _load_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this model cannot be loaded" rather than a bug of ours."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError
    from safetensors import SafetensorError

    # A checkpoint with tensors missing or of the wrong kind fails deep in diffusers with
    # any of these; for a file we were handed that means "cannot load it", never a bug.
    return (
        OSError,
        ValueError,
        KeyError,
        RuntimeError,
        TypeError,
        AttributeError,
        IndexError,
        SingleFileComponentError,
        SafetensorError,
    )


def _check_complete(pipe) -> None:
    """Every weight of every component was read from the file (none left empty)."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for pname, p in component.named_parameters():
                if p is None or p.device.type == "meta":
                    raise ModelLoadError(f"the checkpoint lacks {name} weight {pname}")


@dataclass
class LoadedModel:
    """A loaded pipeline and what the rest of the product needs to know about it."""

    pipe: Any
    family: str  # "sd1" | "sd2" | "sdxl"; EMBEDDED_FAMILY for the embedded default model
    source: Path
    source_kind: str  # "diffusers" | "single_file"
    prediction_type: str  # "epsilon" | "v_prediction"
    fingerprint: str | None
    dtype: torch.dtype
    device: str
    config_dir: Path | None = None  # config folder used for a single file
    notes: list[str] = field(default_factory=list)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def embedded(self) -> bool:
        """Whether this is the embedded default model (its world and concepts are known)."""
        return self.family == EMBEDDED_FAMILY

    @property
    def has_judge(self) -> bool:
        """Whether generated images can be scored (M-Score, retention): only the embedded
        model's world has a judge."""
        return self.embedded

    @property
    def architecture_family(self) -> str:
        """The UNet/text-encoder layout ("sd1", "sd2", "sdxl"), also for the embedded model."""
        return "sd1" if self.embedded else self.family

    def mark_embedded(self) -> None:
        """Record that this pipeline is the embedded default model (an SD1 layout whose
        patches carry the toy world's family in their metadata)."""
        self.family = EMBEDDED_FAMILY

    @property
    def architecture(self) -> str:
        """modelspec architecture id, e.g. "stable-diffusion-xl-v1-base" (patch metadata)."""
        from fmn_desktop.models.export import MODELSPEC_ARCH

        return MODELSPEC_ARCH.get((self.family, self.prediction_type), self.family)

    @property
    def default_size(self) -> int:
        """Native image size in pixels (512 SD1 / SD2-base, 768 SD2, 1024 SDXL)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _set_prediction_type(pipe, prediction_type: str) -> None:
    if pipe.scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, prediction_type=prediction_type
        )


def _check_prediction(prediction_type: str | None) -> str | None:
    if prediction_type is None:
        return None
    aliases = {"v": "v_prediction", "eps": "epsilon"}
    value = aliases.get(prediction_type, prediction_type)
    if value not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction type {prediction_type!r}; valid: epsilon, v_prediction"
        )
    return value


def load_pipeline(
    path: str | os.PathLike,
    *,
    family: str | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: str | os.PathLike | None = None,
    compute_fingerprint: bool = True,
) -> LoadedModel:
    """Load a diffusers folder or an LDM-layout single file, offline.

    `family` ("sd1", "sd2", "sdxl") overrides detection; `prediction_type` ("epsilon" or
    "v_prediction") overrides the scheduler's; `config` is a diffusers folder of configs to
    use for a single file instead of the shipped family config (a fine-tune with another
    architecture; the tests' tiny models). Raises ModelLoadError with a one-line reason.
    """
    path = Path(path).expanduser()
    prediction_type = _check_prediction(prediction_type)
    if family is not None:
        if family.strip().lower().replace("_", "-") == "sd2-base" and prediction_type is None:
            prediction_type = "epsilon"
        family = check_family(family)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    try:
        with hub_offline(), _quiet():
            if path.is_dir():
                model = _load_folder(path, family, prediction_type, dtype)
            else:
                model = _load_file(path, family, prediction_type, dtype, config)
            _check_complete(model.pipe)
    except FmnError:
        raise
    except _load_errors() as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load {path.name}: {message[:300]}") from exc
    model.pipe.to(device)
    realign_weights(model.pipe)
    model.notes += fit_half_to_cpu(model.pipe)
    model.pipe.set_progress_bar_config(disable=True)
    model.device = str(device)
    if compute_fingerprint:
        model.fingerprint = fingerprint_unet(model.pipe.unet)
    return model


@contextlib.contextmanager
def _quiet():
    """No progress bars or deprecation chatter from diffusers/transformers while loading."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_off, t_off = not dlog.is_progress_bar_enabled(), not tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if not d_off:
            dlog.enable_progress_bar()
        if not t_off:
            tlog.enable_progress_bar()


def realign_weights(pipe, alignment: int = 64) -> int:
    """Copy CPU weights that sit at unaligned addresses (memory-mapped safetensors) into
    fresh tensors; returns how many were copied.

    CPU matmul kernels take different code paths for unaligned data and round differently
    (~3e-7 here), so without this a folder load and a single-file load of the same weights
    would not generate bit-identical images. It also detaches weights from the file's memory map.
    """
    count = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            for registry in (module._parameters, module._buffers):
                for tensor in registry.values():
                    if tensor is None or tensor.device.type != "cpu" or tensor.numel() == 0:
                        continue
                    if tensor.data_ptr() % alignment:
                        tensor.data = tensor.data.clone()
                        count += 1
    return count


def _load_folder(path: Path, family, prediction_type, dtype) -> LoadedModel:
    detected, folder_prediction = detect_family_from_folder(path)
    if family is not None and family != detected:
        raise ModelLoadError(f"{path.name} is an {detected} pipeline, not {family}")
    for weights in path.glob("*/*.safetensors"):
        read_safetensors_header(weights)
    cls = _pipeline_class(detected)
    kwargs: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
    if detected != "sdxl":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    notes = []
    for name in ("tokenizer", "tokenizer_2") if detected == "sdxl" else ("tokenizer",):
        sub = path / name
        if not ((sub / "vocab.json").is_file() or (sub / "tokenizer.json").is_file()):
            pad_from = config_dir(detected, folder_prediction) / name
            kwargs[name] = load_tokenizer(pad_from)
            notes.append(f"{name}: shipped CLIP vocabulary ({CLIP_TOKENIZER_DIR.name})")
    variant = _folder_variant(path)
    if variant:
        kwargs["variant"] = variant
        notes.append(f"weights variant {variant}")
    # Weights read once without a memory map (lean.py); the rest as from_pretrained does.
    kwargs.update(folder_components(path, dtype, variant))
    pipe = cls.from_pretrained(str(path), **kwargs)
    prediction = prediction_type or pipe.scheduler.config.get("prediction_type", "epsilon")
    _set_prediction_type(pipe, prediction)
    return LoadedModel(
        pipe=pipe,
        family=detected,
        source=path,
        source_kind="diffusers",
        prediction_type=prediction,
        fingerprint=None,
        dtype=dtype,
        device="cpu",
        notes=notes,
    )


def _folder_variant(path: Path) -> str | None:
    """ "fp16" when the UNet ships only `*.fp16.safetensors` weights (hub-style variants)."""
    unet = path / "unet"
    plain = (
        list(unet.glob("diffusion_pytorch_model.safetensors"))
        + list(unet.glob("diffusion_pytorch_model.bin"))
        + list(unet.glob("diffusion_pytorch_model-*.safetensors"))
    )
    if plain:
        return None
    for variant in ("fp16", "bf16"):
        if list(unet.glob(f"diffusion_pytorch_model*.{variant}.safetensors")):
            return variant
    return None


def _sd2_prediction(path: Path, metadata: dict[str, str]) -> tuple[str, str]:
    """(prediction type, reason) for an SD2 single file without an explicit choice."""
    meta = metadata.get("fmn.prediction_type") or metadata.get("modelspec.prediction_type")
    if meta:
        value = {"v": "v_prediction", "eps": "epsilon"}.get(meta, meta)
        if value in PREDICTION_TYPES:
            return value, "file metadata"
    for yaml_path in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if yaml_path.is_file():
            text = yaml_path.read_text(errors="replace")
            if re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE):
                return "v_prediction", f"sidecar {yaml_path.name}"
            return "epsilon", f"sidecar {yaml_path.name}"
    return (
        "v_prediction",
        "SD2 default (768 px, v); pass prediction_type='epsilon' for 512 px base models",
    )


def _load_file(path: Path, family, prediction_type, dtype, config) -> LoadedModel:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        state = load_pickle_state_dict(path)
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="fmn-ckpt-") as tmp:
            tmp_file = Path(tmp) / (path.stem + ".safetensors")
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_file))
            del state
            model = _load_safetensors(tmp_file, family, prediction_type, dtype, config)
        model.source = path
        model.notes.append("pickled checkpoint read with torch.load(weights_only=True)")
        return model
    if suffix not in SAFETENSORS_SUFFIXES:
        raise ModelLoadError(
            f"{path.name}: unsupported file type {suffix or '(none)'}; give a .safetensors "
            "file, a pickled .ckpt/.pt/.pth/.bin (read safely), or a diffusers folder"
        )
    return _load_safetensors(path, family, prediction_type, dtype, config)


def _load_safetensors(path: Path, family, prediction_type, dtype, config) -> LoadedModel:
    header = read_safetensors_header(path)
    detected = detect_family_from_keys(header.keys())
    if family is not None and family != detected:
        raise ModelLoadError(f"{path.name} holds an {detected} checkpoint, not {family}")
    metadata = safetensors_metadata(path)
    embedded = metadata.get(EMBEDDED_CONFIGS_KEY) if config is None else None
    unet_in = header.get("model.diffusion_model.input_blocks.0.0.weight", {}).get("shape")
    if unet_in and len(unet_in) == 4 and unet_in[1] != 4 and config is None and not embedded:
        raise ModelLoadError(
            f"{path.name}: its UNet takes {unet_in[1]} input channels (inpainting or another "
            "variant); only 4-channel text-to-image checkpoints are supported"
        )
    notes = []
    if prediction_type is None and detected == "sd2":
        prediction, reason = _sd2_prediction(path, metadata)
        notes.append(f"prediction type {prediction} from {reason}")
    else:
        prediction = prediction_type or ("epsilon" if detected != "sd2" else "v_prediction")
        if prediction_type is None and "v_pred" in header:
            # SDXL/SD1 v-prediction fine-tunes (e.g. NoobAI-XL v-pred) carry a `v_pred` marker
            prediction = "v_prediction"
            notes.append("prediction type v_prediction from the file's v_pred marker")
    if config is not None:
        cfg = Path(config)
        if not (cfg / "model_index.json").is_file():
            raise ModelLoadError(f"config folder {cfg} has no model_index.json")
        return _from_single_file(path, detected, cfg, prediction, dtype, notes, standard=False)
    if embedded:
        with tempfile.TemporaryDirectory(prefix="fmn-config-") as tmp:
            try:
                write_embedded_configs(embedded, Path(tmp))
            except ValueError as exc:
                raise ModelLoadError(f"{path.name}: {exc}; give --config DIR") from None
            notes.append("configs embedded in the file by fmn's exporter")
            model = _from_single_file(
                path, detected, Path(tmp), prediction, dtype, notes, standard=False
            )
        model.config_dir = None
        return model
    cfg = config_dir(detected, prediction)
    return _from_single_file(path, detected, cfg, prediction, dtype, notes, standard=True)


def _no_extras(cls, components: dict) -> dict:
    """None for the optional parts a single file never holds (safety checker, feature
    extractor, image encoder), so that a config folder naming them does not load them."""
    extras = ("safety_checker", "feature_extractor", "image_encoder")
    out: dict[str, Any] = {n: None for n in extras if n in cls._optional_components}
    if "safety_checker" in out:
        out["requires_safety_checker"] = False
    return {k: v for k, v in out.items() if k not in components}


def _from_single_file(path, detected, cfg: Path, prediction, dtype, notes, *, standard: bool):
    tokenizers = {}
    for name in ("tokenizer", "tokenizer_2") if detected == "sdxl" else ("tokenizer",):
        sub = cfg / name
        if (sub / "vocab.json").is_file() or (sub / "tokenizer.json").is_file():
            from transformers import CLIPTokenizer

            tokenizers[name] = CLIPTokenizer.from_pretrained(str(sub), local_files_only=True)
        else:
            pad_files = ("special_tokens_map.json", "tokenizer_config.json")
            has_pad = any((sub / f).is_file() for f in pad_files)
            shipped = sub if has_pad else config_dir(detected, prediction) / name
            tokenizers[name] = load_tokenizer(shipped)
    cls = _pipeline_class(detected)
    try:
        # What diffusers' from_single_file does, with the file read once and without a
        # memory map (lean.py): peak memory about the weights' size, not twice it.
        components = single_file_components(path, cfg, dtype)
        pipe = cls.from_pretrained(
            str(cfg),
            local_files_only=True,
            torch_dtype=dtype,
            **_no_extras(cls, components),
            **components,
            **tokenizers,
        )
    except _load_errors() as exc:
        if not standard or "shape" not in str(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(
            f"{path.name} looks like an {detected} checkpoint but its tensor shapes differ from "
            f"the standard {detected} architecture ({first[:160]}); load it with a matching "
            "diffusers config folder (config=...)"
        ) from exc
    _set_prediction_type(pipe, prediction)
    return LoadedModel(
        pipe=pipe,
        family=detected,
        source=path,
        source_kind="single_file",
        prediction_type=prediction,
        fingerprint=None,
        dtype=dtype,
        device="cpu",
        config_dir=cfg,
        notes=notes,
    )


def read_model_index(folder: str | os.PathLike) -> dict:
    """model_index.json of a diffusers folder (for callers that want the raw components)."""
    return json.loads((Path(folder) / "model_index.json").read_text())
