"""Bad inputs give a clear ModelLoadError (an FmnError), never a traceback or unpickled code."""

import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.models import FmnError, ModelLoadError, detect_family_from_keys, load_pipeline


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_pipeline(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [0, 5, 100, -1000])
def test_truncated_safetensors(saved, tmp_path, keep):
    s = saved("sd1")
    data = s.file.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelLoadError, match="truncated|empty|corrupt") as err:
        load_pipeline(bad, config=s.config)
    assert isinstance(err.value, FmnError)
    assert "\n" not in str(err.value)


def test_corrupt_header(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"\0" * 10)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_pipeline(bad)


def test_unknown_layout(tmp_path):
    f = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2), "bar.bias": torch.zeros(2)}, str(f))
    with pytest.raises(ModelLoadError, match="unknown checkpoint layout"):
        load_pipeline(f)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ModelLoadError, match="LoRA"):
        load_pipeline(lora)


def test_detect_family_rules():
    unet = "model.diffusion_model.input_blocks.0.0.weight"
    assert detect_family_from_keys([unet, "cond_stage_model.transformer.text_model.x"]) == "sd1"
    assert detect_family_from_keys([unet, "cond_stage_model.model.token_embedding.weight"]) == "sd2"
    assert (
        detect_family_from_keys([unet, "conditioner.embedders.1.model.positional_embedding"])
        == "sdxl"
    )
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_family_from_keys([unet, "conditioner.embedders.0.model.text_projection"])
    with pytest.raises(ModelLoadError, match="no text encoder"):
        detect_family_from_keys([unet])


def test_wrong_family_requested(saved):
    s = saved("sd1")
    with pytest.raises(ModelLoadError, match="not sdxl"):
        load_pipeline(s.file, config=s.config, family="sdxl")
    with pytest.raises(ValueError, match="unknown model family"):
        load_pipeline(s.file, family="sd9")


def test_unsupported_suffix_and_folder_without_index(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="unsupported file type"):
        load_pipeline(f)
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline(tmp_path)


def test_folder_with_truncated_weights(saved, tmp_path):
    s = saved("sd1")
    folder = tmp_path / "copy"
    shutil.copytree(s.folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-500])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_pipeline(folder)


class _Evil:
    """Unpickling this runs os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, suffix):
    marker = tmp_path / "pwned"
    bad = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, str(bad))
    with pytest.raises(ModelLoadError, match="refusing to unpickle"):
        load_pipeline(bad)
    assert not marker.exists()
    # a plain (non-zip) pickle too
    raw = tmp_path / f"raw{suffix}"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ModelLoadError):
        load_pipeline(raw)
    assert not marker.exists()


def test_tensor_only_pickle_loads_safely(saved, tmp_path):
    """A .ckpt holding only tensors (like A1111 ckpts) loads via weights_only and matches."""
    from safetensors.torch import load_file

    s = saved("sd1")
    state = load_file(str(s.file))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 470000}, str(ckpt))
    model = load_pipeline(ckpt, config=s.config)
    reference = load_pipeline(s.file, config=s.config)
    assert model.fingerprint == reference.fingerprint
    assert model.source == ckpt


def test_nonstandard_shapes_against_shipped_config(saved, tmp_path):
    """A tiny SD1 file without fmn's embedded configs is checked against the SD1.5 config:
    the error says what to do."""
    from safetensors.torch import load_file

    s = saved("sd1")
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(s.file)), str(bare))  # no metadata, like a file from elsewhere
    with pytest.raises(ModelLoadError, match="standard sd1 architecture"):
        load_pipeline(bare)


def test_network_guard_is_active():
    import socket

    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
