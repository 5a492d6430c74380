"""Model families, their shipped configs, and telling them apart.

Each family has a diffusers-layout folder of configs under `data/configs/<name>/` (no weights):
the real configs of SD 1.5, SD 2.1 (768 px, v-prediction), SD 2.1-base (512 px, epsilon) and
SDXL base 1.0. The safety checker and feature extractor are left out of `model_index.json`
(no weights for them ship, and single-file checkpoints never contain them).

Tokenizer folders hold only `tokenizer_config.json` / `special_tokens_map.json` (which set the
pad token); the 1.5 MB BPE vocabulary is shared from `data/clip_tokenizer/`. SD1 and SDXL's
first tokenizer pad with `<|endoftext|>` (49407); SD2 and SDXL's second tokenizer pad with
"!" (id 0), as the OpenCLIP models were trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fmn_desktop.models.errors import ModelLoadError

# The family the embedded default model's patches record (`fmn.family`); its layout is SD1.
EMBEDDED_FAMILY = "toy"

DATA_DIR = Path(__file__).resolve().parent / "data"
CLIP_TOKENIZER_DIR = DATA_DIR / "clip_tokenizer"
CONFIGS_DIR = DATA_DIR / "configs"

FAMILIES = ("sd1", "sd2", "sdxl")
PREDICTION_TYPES = ("epsilon", "v_prediction")

# (family, prediction type) -> shipped config folder name
_CONFIG_NAMES = {
    ("sd1", "epsilon"): "sd1",
    ("sd2", "v_prediction"): "sd2",
    ("sd2", "epsilon"): "sd2_base",
    ("sdxl", "epsilon"): "sdxl",
}
DEFAULT_PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}

# LDM (original / A1111) key prefixes that identify each text encoder layout.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_CLIP_SD1 = "cond_stage_model.transformer."
LDM_OPENCLIP_SD2 = "cond_stage_model.model."
LDM_CLIP_SDXL = "conditioner.embedders.0.transformer."
LDM_OPENCLIP_SDXL = "conditioner.embedders.1.model."


def check_family(family: str) -> str:
    """Normalise a family name ("sd1", "sd2", "sdxl"; aliases like "sd15", "sd21", "xl")."""
    aliases = {
        "sd1": "sd1",
        "sd15": "sd1",
        "sd1.5": "sd1",
        "v1": "sd1",
        "sd2": "sd2",
        "sd21": "sd2",
        "sd2.1": "sd2",
        "v2": "sd2",
        "sd2-base": "sd2",
        "sdxl": "sdxl",
        "xl": "sdxl",
        "sdxl-base": "sdxl",
    }
    key = family.strip().lower().replace("_", "-")
    if key not in aliases:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    return aliases[key]


def config_dir(family: str, prediction_type: str | None = None) -> Path:
    """The shipped diffusers config folder for a family (and SD2's prediction type).

    >>> config_dir("sd2", "epsilon").name
    'sd2_base'
    """
    family = check_family(family)
    prediction = prediction_type or DEFAULT_PREDICTION[family]
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {PREDICTION_TYPES}")
    name = _CONFIG_NAMES.get((family, prediction))
    if name is None:  # e.g. an SD1 or SDXL v-prediction fine-tune: same config, other scheduler
        name = _CONFIG_NAMES[(family, DEFAULT_PREDICTION[family])]
    return CONFIGS_DIR / name


def load_tokenizer(subfolder: str | Path):
    """A CLIPTokenizer from the shared vocabulary with the pad token of `subfolder`'s config.

    `subfolder` is a tokenizer folder of a shipped config (e.g. `config_dir("sdxl")/"tokenizer_2"`).
    """
    from transformers import CLIPTokenizer

    pad = "<|endoftext|>"
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins
        file = Path(subfolder) / name
        if file.is_file():
            value = json.loads(file.read_text()).get("pad_token", pad)
            pad = value["content"] if isinstance(value, dict) else value
    return CLIPTokenizer.from_pretrained(
        str(CLIP_TOKENIZER_DIR), local_files_only=True, pad_token=pad
    )


def family_tokenizers(family: str, prediction_type: str | None = None) -> dict:
    """Tokenizers a family's pipeline needs, by pipeline component name."""
    folder = config_dir(family, prediction_type)
    names = ["tokenizer", "tokenizer_2"] if check_family(family) == "sdxl" else ["tokenizer"]
    return {name: load_tokenizer(folder / name) for name in names}


def detect_family_from_keys(keys: Iterable[str]) -> str:
    """Family of an LDM-layout checkpoint from its tensor names (shapes are not needed).

    Raises ModelLoadError for layouts this product does not handle (SDXL refiner, diffusers
    state dicts saved as one file, UNet-only files, unknown layouts).
    """
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if not has(LDM_UNET):
        if any(k.startswith(("down_blocks.", "unet.", "lora_")) for k in keys) or any(
            "lora" in k for k in list(keys)[:50]
        ):
            raise ModelLoadError(
                "this file is not a full checkpoint in the original (LDM/A1111) layout: it looks "
                "like a diffusers state dict or a LoRA; give a diffusers folder or a full "
                "checkpoint"
            )
        raise ModelLoadError(
            "unknown checkpoint layout: no 'model.diffusion_model.*' tensors, so this is not a "
            "Stable Diffusion 1.x/2.x/XL checkpoint in the original (LDM/A1111) layout"
        )
    if has(LDM_OPENCLIP_SDXL):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise ModelLoadError("SDXL refiner checkpoints are not supported (only SDXL base)")
    if has(LDM_OPENCLIP_SD2):
        return "sd2"
    if has(LDM_CLIP_SD1):
        return "sd1"
    raise ModelLoadError(
        "this checkpoint has a UNet but no text encoder this product recognises "
        "(expected cond_stage_model.* or conditioner.embedders.*); UNet-only files are "
        "not supported"
    )


def detect_family_from_folder(folder: Path) -> tuple[str, str | None]:
    """(family, prediction type or None) of a diffusers folder from its configs."""
    index_path = folder / "model_index.json"
    unet_path = folder / "unet" / "config.json"
    try:
        index = json.loads(index_path.read_text())
        unet = json.loads(unet_path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{folder} is not a diffusers pipeline folder: {Path(exc.filename).name} is missing"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{folder}: a config file is not valid JSON ({exc})") from None
    pipeline = index.get("_class_name", "")
    prediction = None
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        try:
            prediction = json.loads(sched.read_text()).get("prediction_type")
        except json.JSONDecodeError:
            prediction = None
    if "XL" in pipeline or "text_encoder_2" in index:
        if unet.get("addition_embed_type") != "text_time":
            raise ModelLoadError(f"{folder}: an XL pipeline whose UNet is not SDXL-like")
        if "Img2Img" in pipeline or index.get("text_encoder") in (None, [None, None]):
            raise ModelLoadError("SDXL refiner pipelines are not supported (only SDXL base)")
        return "sdxl", prediction
    if pipeline and not pipeline.startswith("StableDiffusion"):
        raise ModelLoadError(f"{folder}: unsupported pipeline {pipeline!r}")
    if unet.get("in_channels", 4) != 4:
        raise ModelLoadError(
            f"{folder}: UNet takes {unet.get('in_channels')} input channels (inpainting or "
            "other variant); only text-to-image UNets with 4 channels are supported"
        )
    text_config = folder / "text_encoder" / "config.json"
    hidden_act = None
    if text_config.is_file():
        hidden_act = json.loads(text_config.read_text()).get("hidden_act")
    # SD2's OpenCLIP text encoder uses gelu; SD1's OpenAI CLIP uses quick_gelu.
    if hidden_act == "gelu" or unet.get("cross_attention_dim") == 1024:
        return "sd2", prediction
    return "sd1", prediction


_PARAM_NAMES: dict[str, frozenset[str]] = {}


def unet_parameter_names(unet_config_folder: str | Path) -> frozenset[str]:
    """The parameter names of the UNet a diffusers config folder describes, built on the
    meta device (no memory, no weights; cached)."""
    key = str(Path(unet_config_folder).resolve())
    if key not in _PARAM_NAMES:
        import torch
        from diffusers import UNet2DConditionModel

        config = UNet2DConditionModel.load_config(key)
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(config)
        _PARAM_NAMES[key] = frozenset(n for n, _ in unet.named_parameters())
    return _PARAM_NAMES[key]
