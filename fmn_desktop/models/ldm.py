"""diffusers -> original (LDM / A1111) key layout, for single-file export.

diffusers ships only the other direction (`loaders/single_file_utils.py`:
`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_open_clip_checkpoint`); these functions are its exact inverse, so that
`from_single_file` rebuilds the same tensors. Every tensor is mapped by a rule or the export
fails: nothing is silently dropped.

Layouts:
- UNet `model.diffusion_model.*` (input_blocks / middle_block / output_blocks numbering).
- VAE `first_stage_model.*` (mid attention weights as 1x1 convolutions).
- SD1 text encoder `cond_stage_model.transformer.text_model.*` (HF CLIP names).
- SD2 text encoder `cond_stage_model.model.*` (OpenCLIP names, q/k/v concatenated into
  `in_proj_weight`); diffusers keeps 23 of OpenCLIP-H's 24 blocks (SD2 uses the penultimate
  layer), so an export holds 23 blocks and no `text_projection`: diffusers reloads it exactly;
  tools that build the full 24-block OpenCLIP model load it non-strictly (the last block is
  unused by SD2's penultimate-layer conditioning).
- SDXL `conditioner.embedders.0.transformer.text_model.*` (CLIP-L) and
  `conditioner.embedders.1.model.*` (OpenCLIP-bigG with `text_projection`).
"""

from __future__ import annotations

import re

import torch

from fmn_desktop.models.families import (
    LDM_CLIP_SD1,
    LDM_CLIP_SDXL,
    LDM_OPENCLIP_SD2,
    LDM_OPENCLIP_SDXL,
    LDM_UNET,
    LDM_VAE,
)

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet_rest(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    if head not in table:
        raise KeyError(rest)
    return f"{table[head]}.{tail}"


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map a diffusers UNet2DConditionModel state dict to LDM names (without the prefix)."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-block layers_per_block lists have no LDM layout")
    up_types = list(config["up_block_types"])
    step = layers + 1
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _unet_key(key, layers, step, up_types)
        if new in out:
            raise ValueError(f"two UNet tensors map to {new}")
        out[new] = value
    return out


def unet_key_to_ldm(key: str, config) -> str:
    """The LDM name (without the prefix) of one diffusers UNet tensor name; KeyError if none."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise KeyError(key)
    return _unet_key(key, layers, layers + 1, list(config["up_block_types"]))


def _unet_key(key: str, layers: int, step: int, up_types: list[str]) -> str:
    for src, dst in _UNET_TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src) :]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{1 + i * step + j}.0.{_resnet_rest(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{1 + i * step + j}.1.{rest}"
        return f"input_blocks.{1 + i * step + layers}.0.op.{rest.removeprefix('conv.')}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "attentions":
            return f"middle_block.{2 * j + 1}.{rest}"
        return f"middle_block.{2 * j}.{_resnet_rest(rest, _UNET_RESNET)}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{i * step + j}.0.{_resnet_rest(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{i * step + j}.1.{rest}"
        slot = 2 if "CrossAttn" in up_types[i] or "Attn" in up_types[i] else 1
        return f"output_blocks.{i * step + layers}.{slot}.{rest}"
    raise KeyError(f"no LDM name for UNet tensor {key!r}")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map a diffusers AutoencoderKL state dict to LDM names (without the prefix)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new, value = _vae_key(key, value, n_up)
        out[new] = value
    return out


def _vae_key(key: str, value: torch.Tensor, n_up: int) -> tuple[str, torch.Tensor]:
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key, value
    m = re.match(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(.+)$", key)
    if m:
        name = "norm_out" if m[2] == "conv_norm_out" else m[2]
        return f"{m[1]}.{name}.{m[3]}", value
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = m[1], m[2], m[3], m[4]
        if kind == "downsamplers":
            return f"encoder.down.{i}.downsample.{rest}", value
        return f"encoder.down.{i}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}", value
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        i, kind, j, rest = n_up - 1 - int(m[1]), m[2], m[3], m[4]
        if kind == "upsamplers":
            return f"decoder.up.{i}.upsample.{rest}", value
        return f"decoder.up.{i}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}", value
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$", key)
    if m:
        rest = m[3].replace("conv_shortcut", "nin_shortcut")
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}", value
    m = re.match(
        r"(encoder|decoder)\.mid_block\.attentions\.0\."
        r"(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$",
        key,
    )
    if m:
        if m[3] == "weight" and m[2] != "group_norm" and value.ndim == 2:
            value = value[:, :, None, None]
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}", value
    raise KeyError(f"no LDM name for VAE tensor {key!r}")


def _strip_text_model(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP names without the `text_model.` wrapper (transformers 5 dropped it)."""
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP text encoder (SD1, SDXL's first): HF names under `text_model.`."""
    out = {}
    for key, value in _strip_text_model(state_dict).items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_projection"):
            raise KeyError("a CLIP-L text encoder with a projection has no LDM layout here")
        out[f"text_model.{key}"] = value
    return out


_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text encoder (SD2, SDXL's second) from HF CLIP names.

    q/k/v projections are concatenated (in that order) into `attn.in_proj_weight`/`_bias`;
    `text_projection.weight` is stored transposed as `text_projection`.
    """
    sd = _strip_text_model(state_dict)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        m = re.match(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            raise KeyError(f"no LDM name for OpenCLIP tensor {key!r}")
        layer, module, kind = int(m[1]), m[2], m[3]
        pm = re.match(r"self_attn\.(q|k|v)_proj$", module)
        if pm:
            qkv.setdefault((layer, kind), {})[pm[1]] = value
            continue
        if module not in _OPENCLIP_LAYER:
            raise KeyError(f"no LDM name for OpenCLIP tensor {key!r}")
        out[f"transformer.resblocks.{layer}.{_OPENCLIP_LAYER[module]}.{kind}"] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {layer}: incomplete q/k/v {kind}")
        cat = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = cat
    return out


def text_encoder_layout(text_encoder) -> str:
    """ "clip" (OpenAI CLIP, quick_gelu) or "open_clip" (OpenCLIP, gelu) for a HF CLIP model."""
    act = getattr(text_encoder.config, "hidden_act", "quick_gelu")
    return "open_clip" if act == "gelu" else "clip"


def pipeline_family(pipe) -> str:
    """Family of a loaded diffusers pipeline: "sdxl" if it has two text encoders, else by
    the first text encoder's layout ("sd2" for OpenCLIP, "sd1" for OpenAI CLIP)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if text_encoder_layout(pipe.text_encoder) == "open_clip" else "sd1"


_PEFT_PARAM = re.compile(r"\.lora_[A-Za-z_]+\.|\.lora_magnitude_vector\.")


def plain_state_dict(module: torch.nn.Module, *, strict: bool = True) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with PEFT/LoRA wrappers removed: base weights, plain names.

    Fused adapters (`pipe.fuse_lora()`) are already in the base weights. With `strict`,
    unfused adapters (which an export would lose) are an error; without, they are ignored
    (the fingerprint of a model with an unfused adapter is its base model's).
    """
    sd = module.state_dict()
    if not any(".base_layer." in k or _PEFT_PARAM.search(k) for k in sd):
        return sd
    for name, sub in module.named_modules() if strict else ():
        if hasattr(sub, "base_layer") and hasattr(sub, "merged") and not sub.merged:
            raise ValueError(
                f"{name} has an unfused LoRA adapter; fuse it (pipe.fuse_lora()) or unload it "
                "before exporting a single file"
            )
    return {k.replace(".base_layer.", "."): v for k, v in sd.items() if not _PEFT_PARAM.search(k)}


def pipeline_to_ldm(pipe, family: str | None = None) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoders) as one LDM-layout state dict.

    Tensors are the models' own (no copies except q/k/v concatenations and transposes).
    """
    family = family or pipeline_family(pipe)
    out: dict[str, torch.Tensor] = {}

    def put(prefix: str, mapped: dict[str, torch.Tensor]) -> None:
        for k, v in mapped.items():
            name = prefix + k
            if name in out:
                raise ValueError(f"duplicate LDM tensor {name}")
            out[name] = v

    put(LDM_UNET, unet_to_ldm(plain_state_dict(pipe.unet), pipe.unet.config))
    put(LDM_VAE, vae_to_ldm(plain_state_dict(pipe.vae), pipe.vae.config))
    te = plain_state_dict(pipe.text_encoder)
    if family == "sd1":
        put(LDM_CLIP_SD1, clip_to_ldm(te))
    elif family == "sd2":
        put(LDM_OPENCLIP_SD2, open_clip_to_ldm(te))
    elif family == "sdxl":
        put(LDM_CLIP_SDXL, clip_to_ldm(te))
        put(LDM_OPENCLIP_SDXL, open_clip_to_ldm(plain_state_dict(pipe.text_encoder_2)))
    else:
        raise ValueError(f"unknown family {family!r}")
    return out
