"""Tensor names on disk: kohya keys (``lora_unet_<module path, dots as _>``) <-> UNet modules.

Readers look modules up in different namings (the tables are reproduced in the tests,
`tests/patch/readers.py`):

- diffusers' `load_lora_weights` reads diffusers module paths, and LDM paths
  (``input_blocks.4.1...``) only on SDXL, where it remaps blocks with the UNet's config;
- kohya's sd-scripts name SD1/SD2 modules by diffusers paths (its SD1 UNet copies diffusers'
  names) and SDXL modules by LDM paths (its SDXL UNet is the original one); its merge
  scripts skip every other name;
- ComfyUI takes either naming;
- AUTOMATIC1111 converts diffusers paths with fixed tables that miss the UNet's top-level
  `conv_norm_out` and `add_embedding` and put SDXL's first upsampler in the wrong slot, then
  falls back to LDM paths, which it finds for every module.

So a file names block modules as kohya does (diffusers paths on SD1/SD2 and the embedded
model, LDM paths on SDXL) and the top-level modules (`time_embed`, `input_blocks.0.0`,
`out.0`, `out.2`, `label_emb`) by their LDM paths on every family: the one naming every
reader above finds for them. Reading takes both namings, so files of earlier versions
(diffusers paths throughout) still load.
"""

from __future__ import annotations

from collections.abc import Iterable

from fmn_desktop.patch.layout import LORA_PREFIX

BLOCK_HEADS = ("down_blocks", "mid_block", "up_blocks")
LDM_BLOCK_HEADS = ("input_blocks", "middle_block", "output_blocks")
# The layout kohya's SDXL tools assume (sd-scripts `make_unet_conversion_map`): SDXL
# checkpoints all share it, so a patch names SDXL blocks without the UNet at hand.
SDXL_LAYOUT = {
    "layers_per_block": 2,
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
}


def _ldm_param(param_name: str, layout) -> str | None:
    from fmn_desktop.models.ldm import unet_key_to_ldm

    try:
        return unet_key_to_ldm(param_name, layout)
    except (KeyError, IndexError):  # not a diffusers UNet name (or an unresolved file key)
        return None


def file_key(param_name: str, family: str) -> tuple[str, str]:
    """(kohya module key, 'weight' | 'bias') under which a UNet parameter is written."""
    module, _, leaf = param_name.rpartition(".")
    if family == "sdxl" or not module.startswith(BLOCK_HEADS):
        ldm = _ldm_param(param_name, SDXL_LAYOUT)
        if ldm is not None:
            module = ldm.rpartition(".")[0]
    return LORA_PREFIX + module.replace(".", "_"), leaf


def layout_of(module_names: Iterable[str]) -> dict | None:
    """The LDM-relevant layout of a diffusers UNet from its module paths (None if it has no
    down blocks): resnets per down block, and which up blocks have attentions."""
    names = set(module_names)
    layers = 0
    while f"down_blocks.0.resnets.{layers}" in names:
        layers += 1
    if not layers:
        return None
    ups = []
    while f"up_blocks.{len(ups)}" in names:
        attn = f"up_blocks.{len(ups)}.attentions.0" in names
        ups.append("CrossAttnUpBlock2D" if attn else "UpBlock2D")
    return {"layers_per_block": layers, "up_block_types": ups}


def ldm_modules(module_names: Iterable[str]) -> dict[str, str]:
    """diffusers module path -> LDM module path, for every module that has one."""
    names = list(module_names)
    layout = layout_of(names)
    if layout is None:
        return {}
    out, taken = {}, set()
    # Deepest first: a container can share its leaf's LDM path (`downsamplers.0` and
    # `downsamplers.0.conv` are both `op`), and the parameters live in the leaf.
    for module in sorted(names, key=lambda m: -m.count(".")):
        ldm = _ldm_param(f"{module}.weight", layout)
        if ldm is not None and ldm not in taken:
            taken.add(ldm)
            out[module] = ldm.rpartition(".")[0]
    return out


def key_lookup(module_names: Iterable[str]) -> dict[str, str]:
    """Every kohya module key a file may use for this UNet -> its diffusers module path:
    diffusers paths and LDM paths alike."""
    names = list(module_names)
    lookup = {LORA_PREFIX + m.replace(".", "_"): m for m in names}
    for module, ldm in ldm_modules(names).items():
        lookup.setdefault(LORA_PREFIX + ldm.replace(".", "_"), module)
    return lookup


def uses_ldm_blocks(keys: Iterable[str]) -> bool:
    """Whether file keys name blocks by LDM paths (as SDXL files do)."""
    heads = tuple(LORA_PREFIX + h for h in LDM_BLOCK_HEADS)
    conv_in = LORA_PREFIX + "input_blocks_0_0."  # top-level: every family names it so
    return any(k.startswith(heads) and not k.startswith(conv_in) for k in keys)
