"""A tiny pipeline saved as a diffusers folder and as one LDM file reloads to the same images."""

import pytest
import torch
from model_helpers import FAMILY_NAMES, generate, tiny_pipeline

from fmn_desktop.models import load_pipeline
from fmn_desktop.models.checkpoint import safetensors_metadata

COMPONENTS = {
    "sd1": ("unet", "vae", "text_encoder"),
    "sd2": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, bad[:5]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_folder_and_single_file_reload_exactly(saved, family):
    s = saved(family)
    folder = load_pipeline(s.folder)
    single = load_pipeline(s.file, config=s.config)
    assert folder.family == single.family == family
    assert folder.source_kind == "diffusers" and single.source_kind == "single_file"
    for name in COMPONENTS[family]:
        _same_weights(getattr(s.pipe, name), getattr(folder.pipe, name))
        _same_weights(getattr(s.pipe, name), getattr(single.pipe, name))
    img_folder, img_single = generate(folder.pipe), generate(single.pipe)
    assert img_folder.shape == (1, 3, 64, 64)
    assert torch.equal(img_folder, s.image)
    assert torch.equal(img_single, s.image)
    assert folder.fingerprint == single.fingerprint
    assert folder.prediction_type == single.prediction_type


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_diffusers_from_single_file_reads_our_export(saved, family):
    """diffusers' own loader is the independent reader of the exported file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    s = saved(family)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    tokenizers = {k: getattr(s.pipe, k) for k in ("tokenizer", "tokenizer_2") if hasattr(s.pipe, k)}
    pipe = cls.from_single_file(
        str(s.file), config=str(s.config), local_files_only=True, **tokenizers
    )
    for name in COMPONENTS[family]:
        _same_weights(getattr(s.pipe, name), getattr(pipe, name))


def test_export_metadata_and_sd2_prediction(saved, tmp_path):
    s = saved("sd2")
    meta = safetensors_metadata(s.file)
    assert meta["fmn.family"] == "sd2"
    assert meta["fmn.prediction_type"] == "v_prediction"
    eps = load_pipeline(s.file, config=s.config, prediction_type="epsilon")
    assert eps.prediction_type == "epsilon"
    assert eps.pipe.scheduler.config.prediction_type == "epsilon"


def test_sd2_sidecar_yaml_decides_prediction(saved, tmp_path):
    from fmn_desktop.models.loading import _sd2_prediction

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    assert _sd2_prediction(f, {})[0] == "v_prediction"
    (tmp_path / "model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert _sd2_prediction(f, {})[0] == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert _sd2_prediction(f, {})[0] == "epsilon"
    assert _sd2_prediction(f, {"modelspec.prediction_type": "v"})[0] == "v_prediction"


def test_fp16_export_and_load_dtype(saved, tmp_path):
    from fmn_desktop.models import export_single_file

    s = saved("sd1")
    half = export_single_file(s.pipe, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < s.file.stat().st_size * 0.6
    model = load_pipeline(half, config=s.config, dtype=torch.float16)
    assert model.pipe.unet.dtype == torch.float16
    # fingerprints hash a float16 canonical form: an fp16 copy matches the fp32 original
    full = load_pipeline(s.file, config=s.config)
    assert model.fingerprint == full.fingerprint


def test_atomic_export_leaves_no_temp_files(saved, tmp_path):
    from fmn_desktop.models import export_single_file

    s = saved("sd1")
    out = export_single_file(s.pipe, tmp_path / "sub" / "m.safetensors")
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.safetensors"]
    with pytest.raises(ValueError):
        export_single_file(s.pipe, tmp_path / "m.ckpt")


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_config_folder_without_vocab_uses_shipped_vocab(saved, tmp_path, family):
    """A config folder may carry only tokenizer configs: the shipped vocabulary is used,
    with the folder's pad token ("!" for OpenCLIP tokenizers)."""
    import shutil

    s = saved(family)
    config = tmp_path / "config"
    shutil.copytree(s.config, config)
    for name in ("tokenizer", "tokenizer_2"):
        for f in ("tokenizer.json", "vocab.json", "merges.txt"):
            (config / name / f).unlink(missing_ok=True)
    model = load_pipeline(s.file, config=config)
    assert model.pipe.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    if family == "sdxl":
        assert model.pipe.tokenizer_2.pad_token == "!"
    assert torch.equal(generate(model.pipe), s.image)


def test_shipped_config_folders_detect_as_their_family():
    from fmn_desktop.models import config_dir
    from fmn_desktop.models.families import detect_family_from_folder

    assert detect_family_from_folder(config_dir("sd1")) == ("sd1", "epsilon")
    assert detect_family_from_folder(config_dir("sd2")) == ("sd2", "v_prediction")
    assert detect_family_from_folder(config_dir("sd2", "epsilon")) == ("sd2", "epsilon")
    assert detect_family_from_folder(config_dir("sdxl")) == ("sdxl", "epsilon")


def test_single_file_with_extra_real_world_keys(saved, tmp_path):
    """Real files carry EMA leftovers, position_ids and OpenCLIP logit_scale: all ignored."""
    from safetensors.torch import load_file, save_file

    s = saved("sdxl")
    sd = load_file(str(s.file))
    sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[
        None
    ].float()
    sd["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    f = tmp_path / "extra.safetensors"
    save_file(sd, str(f))
    model = load_pipeline(f, config=s.config)
    assert torch.equal(generate(model.pipe), s.image)


def test_export_with_lora_adapter_fused_or_refused(tmp_path):
    """A UNet carrying a PEFT LoRA: unfused -> refused; merged -> exported as plain weights."""
    from peft import LoraConfig

    from fmn_desktop.models import export_single_file, fingerprint_unet, save_config_folder

    pipe = tiny_pipeline("sd1")
    config = save_config_folder(pipe, tmp_path / "config")
    pipe.unet.add_adapter(
        LoraConfig(
            r=2, lora_alpha=2, target_modules=["attn2.to_k", "attn2.to_v"], init_lora_weights=False
        )
    )
    with pytest.raises(ValueError, match="unfused LoRA"):
        export_single_file(pipe, tmp_path / "x.safetensors")
    for module in pipe.unet.modules():
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
    expected = generate(pipe)
    out = export_single_file(pipe, tmp_path / "merged.safetensors")
    model = load_pipeline(out, config=config)
    assert torch.equal(generate(model.pipe), expected)
    assert model.architecture == "stable-diffusion-v1"
    assert model.fingerprint == fingerprint_unet(model.pipe.unet)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_our_exports_reload_without_a_config_folder(saved, family):
    """fmn's exporter embeds the pipeline configs: no config= needed, same images."""
    s = saved(family)
    model = load_pipeline(s.file)
    assert model.family == family and model.config_dir is None
    assert torch.equal(generate(model.pipe), s.image)
    if family == "sdxl":
        assert model.pipe.tokenizer_2.pad_token == "!"


def test_folder_with_fp16_variant_only(tmp_path):
    """Hub-style folders that hold only `*.fp16.safetensors` weights load too."""

    pipe = tiny_pipeline("sd1").to(torch.float16)
    pipe.save_pretrained(str(tmp_path / "m"), variant="fp16")
    model = load_pipeline(tmp_path / "m", dtype=torch.float16)
    assert "weights variant fp16" in model.notes
    assert model.pipe.unet.dtype == torch.float16


def test_v_pred_marker_in_sdxl_file(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    s = saved("sdxl")
    sd = load_file(str(s.file))
    sd["v_pred"] = torch.tensor([])
    f = tmp_path / "vpred.safetensors"
    save_file(sd, str(f))
    model = load_pipeline(f, config=s.config)
    assert model.prediction_type == "v_prediction"
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
