"""How other tools find and apply the tensors of a kohya-named patch file, reproduced from
their sources for the readers that are not installed (diffusers is: its tests call it).

Each function cites the repository, file and function it reproduces; the logic is kept as
there (names, lookups, fall-backs, the arithmetic of applying), restricted to the UNet and to
the LoRA / `.diff` tensor kinds our files hold. Imported by name (tests/ is on sys.path).

Also the tiny UNets with the real block structure of SD1.5, SD2.1 and SDXL base: block
types, resnets per block, attention placement and SDXL's transformer depths as in the real
configs, with tiny widths.
"""

from __future__ import annotations

import re

import torch

FAMILIES = ("sd1", "sd2", "sdxl")


def real_layout_unet(family: str, seed: int = 0):
    """A tiny UNet2DConditionModel with `family`'s real block structure."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    if family == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        return UNet2DConditionModel(
            sample_size=8,
            layers_per_block=2,
            block_out_channels=(8, 16, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 3),  # real: (1, 2, 10)
            cross_attention_dim=16,
            attention_head_dim=(2, 4, 4),
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=16 + 6 * 4,
            norm_num_groups=4,
            use_linear_projection=True,
        )
    sd2 = family == "sd2"  # runwayml SD1.5 / stabilityai SD2.1 unet/config.json
    return UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=16,
        attention_head_dim=(2, 4, 4, 4) if sd2 else 2,
        use_linear_projection=sd2,
        norm_num_groups=4,
    )


# --- ComfyUI ---------------------------------------------------------------------------
# comfyanonymous/ComfyUI, comfy/utils.py: UNET_MAP_ATTENTIONS, TRANSFORMER_BLOCKS,
# UNET_MAP_RESNET, UNET_MAP_BASIC, unet_to_diffusers.
UNET_MAP_ATTENTIONS = {
    "proj_in.weight",
    "proj_in.bias",
    "proj_out.weight",
    "proj_out.bias",
    "norm.weight",
    "norm.bias",
}
TRANSFORMER_BLOCKS = {
    "norm1.weight",
    "norm1.bias",
    "norm2.weight",
    "norm2.bias",
    "norm3.weight",
    "norm3.bias",
    "attn1.to_q.weight",
    "attn1.to_k.weight",
    "attn1.to_v.weight",
    "attn1.to_out.0.weight",
    "attn1.to_out.0.bias",
    "attn2.to_q.weight",
    "attn2.to_k.weight",
    "attn2.to_v.weight",
    "attn2.to_out.0.weight",
    "attn2.to_out.0.bias",
    "ff.net.0.proj.weight",
    "ff.net.0.proj.bias",
    "ff.net.2.weight",
    "ff.net.2.bias",
}
UNET_MAP_RESNET = {
    "in_layers.2.weight": "conv1.weight",
    "in_layers.2.bias": "conv1.bias",
    "emb_layers.1.weight": "time_emb_proj.weight",
    "emb_layers.1.bias": "time_emb_proj.bias",
    "out_layers.3.weight": "conv2.weight",
    "out_layers.3.bias": "conv2.bias",
    "skip_connection.weight": "conv_shortcut.weight",
    "skip_connection.bias": "conv_shortcut.bias",
    "in_layers.0.weight": "norm1.weight",
    "in_layers.0.bias": "norm1.bias",
    "out_layers.0.weight": "norm2.weight",
    "out_layers.0.bias": "norm2.bias",
}
UNET_MAP_BASIC = {
    ("label_emb.0.0.weight", "class_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "class_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "class_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "class_embedding.linear_2.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
}


def comfy_unet_config(config) -> dict:
    """ComfyUI's unet_config for a diffusers config, in the form comfy/model_detection.py
    `detect_unet_config` builds it: transformer depth per input res block, and per output
    block listed from the last output block to the first (unet_to_diffusers pops them)."""
    n = len(config["down_block_types"])
    layers = config["layers_per_block"]
    depth = config["transformer_layers_per_block"]
    depth = [depth] * n if isinstance(depth, int) else list(depth)
    down = [depth[i] if "CrossAttn" in config["down_block_types"][i] else 0 for i in range(n)]
    up_depth = list(reversed(depth))
    out_depths = []
    for x in range(n):
        has = "CrossAttn" in config["up_block_types"][x]
        out_depths += [up_depth[x] if has else 0] * (layers + 1)
    return {
        "num_res_blocks": [layers] * n,
        "channel_mult": [1] * n,
        "transformer_depth": [d for d in down for _ in range(layers)],
        "transformer_depth_output": list(reversed(out_depths)),
        "transformer_depth_middle": depth[-1],
    }


def comfy_unet_to_diffusers(unet_config) -> dict[str, str]:
    """comfy/utils.py `unet_to_diffusers`: diffusers tensor name -> LDM tensor name."""
    num_res_blocks = unet_config["num_res_blocks"]
    channel_mult = unet_config["channel_mult"]
    transformer_depth = unet_config["transformer_depth"][:]
    transformer_depth_output = unet_config["transformer_depth_output"][:]
    num_blocks = len(channel_mult)
    transformers_mid = unet_config.get("transformer_depth_middle", None)
    diffusers_unet_map = {}
    for x in range(num_blocks):
        n = 1 + (num_res_blocks[x] + 1) * x
        for i in range(num_res_blocks[x]):
            for b in UNET_MAP_RESNET:
                diffusers_unet_map[f"down_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = (
                    f"input_blocks.{n}.0.{b}"
                )
            num_transformers = transformer_depth.pop(0)
            if num_transformers > 0:
                for b in UNET_MAP_ATTENTIONS:
                    diffusers_unet_map[f"down_blocks.{x}.attentions.{i}.{b}"] = (
                        f"input_blocks.{n}.1.{b}"
                    )
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        diffusers_unet_map[
                            f"down_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"
                        ] = f"input_blocks.{n}.1.transformer_blocks.{t}.{b}"
            n += 1
        for k in ["weight", "bias"]:
            diffusers_unet_map[f"down_blocks.{x}.downsamplers.0.conv.{k}"] = (
                f"input_blocks.{n}.0.op.{k}"
            )
    i = 0
    for b in UNET_MAP_ATTENTIONS:
        diffusers_unet_map[f"mid_block.attentions.{i}.{b}"] = f"middle_block.1.{b}"
    for t in range(transformers_mid):
        for b in TRANSFORMER_BLOCKS:
            diffusers_unet_map[f"mid_block.attentions.{i}.transformer_blocks.{t}.{b}"] = (
                f"middle_block.1.transformer_blocks.{t}.{b}"
            )
    for i, n in enumerate([0, 2]):
        for b in UNET_MAP_RESNET:
            diffusers_unet_map[f"mid_block.resnets.{i}.{UNET_MAP_RESNET[b]}"] = (
                f"middle_block.{n}.{b}"
            )
    num_res_blocks = list(reversed(num_res_blocks))
    for x in range(num_blocks):
        n = (num_res_blocks[x] + 1) * x
        length = num_res_blocks[x] + 1
        for i in range(length):
            c = 0
            for b in UNET_MAP_RESNET:
                diffusers_unet_map[f"up_blocks.{x}.resnets.{i}.{UNET_MAP_RESNET[b]}"] = (
                    f"output_blocks.{n}.0.{b}"
                )
            c += 1
            num_transformers = transformer_depth_output.pop()
            if num_transformers > 0:
                c += 1
                for b in UNET_MAP_ATTENTIONS:
                    diffusers_unet_map[f"up_blocks.{x}.attentions.{i}.{b}"] = (
                        f"output_blocks.{n}.1.{b}"
                    )
                for t in range(num_transformers):
                    for b in TRANSFORMER_BLOCKS:
                        diffusers_unet_map[
                            f"up_blocks.{x}.attentions.{i}.transformer_blocks.{t}.{b}"
                        ] = f"output_blocks.{n}.1.transformer_blocks.{t}.{b}"
            if i == length - 1:
                for k in ["weight", "bias"]:
                    diffusers_unet_map[f"up_blocks.{x}.upsamplers.0.conv.{k}"] = (
                        f"output_blocks.{n}.{c}.conv.{k}"
                    )
            n += 1
    for k in UNET_MAP_BASIC:
        diffusers_unet_map[k[1]] = k[0]
    return diffusers_unet_map


def ldm_names(unet) -> dict[str, str]:
    """diffusers parameter -> LDM parameter of this UNet, by ComfyUI's table (an independent
    source for the LDM layout); fails if the table misses any parameter."""
    table = comfy_unet_to_diffusers(comfy_unet_config(unet.config))
    params = [n for n, _ in unet.named_parameters()]
    missing = [n for n in params if n not in table]
    assert not missing, f"ComfyUI's table lacks {missing[:3]}"
    return {n: table[n] for n in params}


def comfy_key_map(unet) -> dict[str, str]:
    """comfy/lora.py `model_lora_keys_unet`, UNet part: LoRA module key -> model weight key.
    The model's state dict is the LDM one under `diffusion_model.`."""
    table = comfy_unet_to_diffusers(comfy_unet_config(unet.config))
    sdk = ["diffusion_model." + v for v in ldm_names(unet).values()]
    key_map = {}
    for k in sdk:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_lora = k[len("diffusion_model.") : -len(".weight")].replace(".", "_")
            key_map[f"lora_unet_{key_lora}"] = k
    for k in table:
        if k.endswith(".weight"):
            key_lora = k[: -len(".weight")].replace(".", "_")
            key_map[f"lora_unet_{key_lora}"] = f"diffusion_model.{table[k]}"
    return key_map


def comfy_load_lora(lora: dict[str, torch.Tensor], to_load: dict[str, str]):
    """comfy/lora.py `load_lora`, the kohya LoRA and diff / diff_b parts: returns the patch
    dict (model key -> ("lora", (up, down, alpha)) or ("diff", (tensor,))) and the file keys
    it did not load (ComfyUI logs "lora key not loaded" and drops them)."""
    patch_dict, loaded_keys = {}, set()
    for x in to_load:
        alpha_name = f"{x}.alpha"
        alpha = None
        if alpha_name in lora:
            alpha = lora[alpha_name].item()
            loaded_keys.add(alpha_name)
        regular_lora = f"{x}.lora_up.weight"
        if regular_lora in lora:
            down_name = f"{x}.lora_down.weight"
            patch_dict[to_load[x]] = ("lora", (lora[regular_lora], lora[down_name], alpha))
            loaded_keys.update({regular_lora, down_name})
        diff_name = f"{x}.diff"
        if diff_name in lora:
            patch_dict[to_load[x]] = ("diff", (lora[diff_name],))
            loaded_keys.add(diff_name)
        diff_bias_name = f"{x}.diff_b"
        if diff_bias_name in lora:
            bias_key = "{}.bias".format(to_load[x][: -len(".weight")])
            patch_dict[bias_key] = ("diff", (lora[diff_bias_name],))
            loaded_keys.add(diff_bias_name)
    return patch_dict, [k for k in lora if k not in loaded_keys]


def comfy_apply(weight: torch.Tensor, patch) -> torch.Tensor:
    """comfy/lora.py `calculate_weight` for "diff" and "lora" at strength 1."""
    kind, v = patch
    if kind == "diff":
        assert v[0].shape == weight.shape, "ComfyUI skips a diff of another shape"
        return weight + v[0]
    up, down, alpha = v
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    lora_diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1))
    return weight + scale * lora_diff.reshape(weight.shape)


# --- AUTOMATIC1111 ---------------------------------------------------------------------
# AUTOMATIC1111/stable-diffusion-webui, extensions-builtin/Lora/networks.py:
# suffix_conversion, convert_diffusers_name_to_compvis (UNet part), the key matching of
# load_network, and the module names of assign_network_names_to_compvis_modules.
_SUFFIX_CONVERSION = {
    "attentions": {},
    "resnets": {
        "conv1": "in_layers_2",
        "conv2": "out_layers_3",
        "norm1": "in_layers_0",
        "norm2": "out_layers_0",
        "time_emb_proj": "emb_layers_1",
        "conv_shortcut": "skip_connection",
    },
}
_RE_DIGITS = re.compile(r"\d+")
_RE_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def a1111_convert(key: str) -> str:
    """`convert_diffusers_name_to_compvis`, UNet keys."""

    def match(match_list, regex_text):
        r = re.match(regex_text, key)
        if not r:
            return False
        match_list.clear()
        match_list.extend([int(x) if re.match(_RE_DIGITS, x) else x for x in r.groups()])
        return True

    m = []
    if match(m, r"lora_unet_conv_in(.*)"):
        return f"diffusion_model_input_blocks_0_0{m[0]}"
    if match(m, r"lora_unet_conv_out(.*)"):
        return f"diffusion_model_out_2{m[0]}"
    if match(m, r"lora_unet_time_embedding_linear_(\d+)(.*)"):
        return f"diffusion_model_time_embed_{m[0] * 2 - 2}{m[1]}"
    if match(m, r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        part = 1 if m[1] == "attentions" else 0
        return f"diffusion_model_input_blocks_{1 + m[0] * 3 + m[2]}_{part}_{suffix}"
    if match(m, r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _SUFFIX_CONVERSION.get(m[0], {}).get(m[2], m[2])
        return f"diffusion_model_middle_block_{1 if m[0] == 'attentions' else m[1] * 2}_{suffix}"
    if match(m, r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)"):
        suffix = _SUFFIX_CONVERSION.get(m[1], {}).get(m[3], m[3])
        part = 1 if m[1] == "attentions" else 0
        return f"diffusion_model_output_blocks_{m[0] * 3 + m[2]}_{part}_{suffix}"
    if match(m, r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv"):
        return f"diffusion_model_input_blocks_{3 + m[0] * 3}_0_op"
    if match(m, r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv"):
        return f"diffusion_model_output_blocks_{2 + m[0] * 3}_{2 if m[0] > 0 else 1}_conv"
    return key


def a1111_layer_mapping(unet) -> set[str]:
    """`assign_network_names_to_compvis_modules`, UNet part: every module of the LDM UNet
    (`sd_model.model`, so under `diffusion_model.`), dots as underscores."""
    out = set()
    for ldm in ldm_names(unet).values():
        parts = ("diffusion_model." + ldm).split(".")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("_".join(parts[:i]))
    return out


def a1111_match(sd: dict[str, torch.Tensor], mapping: set[str]):
    """`load_network`'s matching: LDM module key (underscores) -> {network part: tensor},
    and the file keys that matched nothing (A1111 logs them at debug level only)."""
    matched: dict[str, dict[str, torch.Tensor]] = {}
    failed = []
    for key_network, weight in sd.items():
        base, _, network_part = key_network.partition(".")
        key = a1111_convert(base)
        found = key in mapping
        if not found:
            m = _RE_X_PROJ.match(key)
            found = bool(m) and m.group(1) in mapping
            key = m.group(1) if found else key
        if not found and "lora_unet" in base:
            key = base.replace("lora_unet", "diffusion_model")
            found = key in mapping
        if not found:
            failed.append(key_network)
            continue
        matched.setdefault(key, {})[network_part] = weight
    return matched, failed


def a1111_updown(w: dict[str, torch.Tensor], weight: torch.Tensor):
    """network_lora.py / network_full.py `calc_updown` at multiplier 1: (weight delta, bias
    delta or None)."""
    if "diff" in w:
        return w["diff"].reshape(weight.shape), w.get("diff_b")
    if "diff_b" in w:  # a bias alone: ModuleTypeFull needs "diff"
        raise AssertionError("A1111 takes a diff_b only beside its diff")
    up, down = w["lora_up.weight"], w["lora_down.weight"]
    alpha = w["alpha"].item() if "alpha" in w else None
    scale = alpha / down.shape[0] if alpha is not None else 1.0
    updown = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return updown * scale, None


# --- kohya sd-scripts ------------------------------------------------------------------
# kohya-ss/sd-scripts, networks/lora.py LoRANetwork.UNET_TARGET_REPLACE_MODULE and
# UNET_TARGET_REPLACE_MODULE_CONV2D_3X3; networks/merge_lora.py and sdxl_merge_lora.py
# `merge_to_sd_model` (name_to_module, LoRA branch). The SD1/SD2 UNet there
# (library/original_unet.py) uses diffusers' module names and classes; the SDXL one
# (library/sdxl_original_unet.py) the LDM names that library/sdxl_model_util.py
# `make_unet_conversion_map` converts diffusers names to.
KOHYA_TARGETS = ["Transformer2DModel"] + ["ResnetBlock2D", "Downsample2D", "Upsample2D"]


def sdxl_unet_conversion_map() -> list[tuple[str, str]]:
    """library/sdxl_model_util.py `make_unet_conversion_map`: (SDXL LDM, diffusers) prefixes."""
    layer = []
    for i in range(3):
        for j in range(2):
            layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(3):
            layer.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            layer.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        layer.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
        layer.append((f"output_blocks.{3 * i + 2}.2.", f"up_blocks.{i}.upsamplers.0."))
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    resnet = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ]
    out = []
    for sd, hf in layer:
        if "resnets" in hf:
            out += [(sd + sd_res, hf + hf_res) for sd_res, hf_res in resnet]
        else:
            out.append((sd, hf))
    for j in range(2):
        out.append((f"time_embed.{j * 2}.", f"time_embedding.linear_{j + 1}."))
        out.append((f"label_emb.0.{j * 2}.", f"add_embedding.linear_{j + 1}."))
    out += [
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."),
        ("out.2.", "conv_out."),
    ]
    return out


def sdxl_convert(diffusers_key: str) -> str:
    """sdxl_model_util.py `convert_unet_state_dict` with the map above, one key."""
    conversion = {hf: sd for sd, hf in sdxl_unet_conversion_map()}
    fragments = diffusers_key.split(".")[:-1]
    while fragments:
        prefix = ".".join(fragments) + "."
        if prefix in conversion:
            return conversion[prefix] + diffusers_key[len(prefix) :]
        fragments.pop()
    raise KeyError(diffusers_key)


def kohya_name_to_module(unet, family: str) -> dict[str, str]:
    """`merge_to_sd_model`'s name_to_module, UNet part: LoRA module key -> diffusers
    parameter (weight) it changes."""
    out = {}
    for name, module in unet.named_modules():
        if module.__class__.__name__ in KOHYA_TARGETS:
            for child_name, child in module.named_modules():
                if child.__class__.__name__ in ("Linear", "Conv2d"):
                    param = f"{name}.{child_name}.weight"
                    kohya_path = sdxl_convert(param) if family == "sdxl" else param
                    lora_name = ("lora_unet." + kohya_path.rpartition(".")[0]).replace(".", "_")
                    out[lora_name] = param
    return out


def kohya_merge(lora_sd: dict[str, torch.Tensor], name_to_module: dict[str, str], weights):
    """`merge_to_sd_model`, LoRA branch at ratio 1: merges into `weights` (diffusers name ->
    tensor) and returns the keys it skipped ("no module found for LoRA weight")."""
    skipped = []
    for key in lora_sd:
        if "lora_down" in key:
            up_key = key.replace("lora_down", "lora_up")
            alpha_key = key[: key.index("lora_down")] + "alpha"
            module_name = ".".join(key.split(".")[:-2])
            if module_name not in name_to_module:
                skipped.append(key)
                continue
            param = name_to_module[module_name]
            down, up = lora_sd[key], lora_sd[up_key]
            dim = down.size()[0]
            alpha = lora_sd.get(alpha_key, dim)
            scale = alpha / dim
            weight = weights[param]
            if len(weight.size()) == 2:
                if len(up.size()) == 4:
                    up, down = up.squeeze(3).squeeze(2), down.squeeze(3).squeeze(2)
                weight = weight + (up @ down) * scale
            else:
                assert down.size()[2:4] == (1, 1)
                merged = up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)
                weight = weight + merged.unsqueeze(2).unsqueeze(3) * scale
            weights[param] = weight
    return skipped
