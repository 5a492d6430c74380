"""Loading without a second copy of the weights gives exactly what the libraries' loaders give.

`load_pipeline` reads weights once, without a memory map (models/lean.py, models/tensorfile.py);
these tests hold it to diffusers' own `from_single_file` / `from_pretrained` on tiny models of
each family: the same components, tensor names, dtypes and bits.
"""

import json
import struct

import pytest
import torch
from model_helpers import FAMILY_NAMES

from fmn_desktop.models import family_tokenizers, load_pipeline
from fmn_desktop.models.errors import ModelLoadError
from fmn_desktop.models.tensorfile import TensorSpec, load_tensors, write_tensors


def _pipeline_class(family):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def assert_same_weights(expected, got):
    modules = {n for n, c in expected.components.items() if isinstance(c, torch.nn.Module)}
    assert modules == {n for n, c in got.components.items() if isinstance(c, torch.nn.Module)}
    for name in modules:
        a = expected.components[name].state_dict()
        b = got.components[name].state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            assert a[key].dtype == b[key].dtype, (name, key)
            assert torch.equal(a[key], b[key]), (name, key)
    assert type(expected.scheduler) is type(got.scheduler)
    assert dict(expected.scheduler.config) == dict(got.scheduler.config)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_single_file_matches_diffusers_from_single_file(saved, family):
    s = saved(family)
    model = load_pipeline(s.file, config=s.config)
    reference = _pipeline_class(family).from_single_file(
        str(s.file), config=str(s.config), local_files_only=True, **family_tokenizers(family)
    )
    assert_same_weights(reference, model.pipe)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_folder_matches_diffusers_from_pretrained(saved, family, dtype):
    s = saved(family)
    model = load_pipeline(s.folder, dtype=dtype)
    reference = _pipeline_class(family).from_pretrained(
        str(s.folder), local_files_only=True, torch_dtype=dtype
    )
    assert_same_weights(reference, model.pipe)


def test_fp16_file_loaded_as_fp32_matches(saved, tmp_path):
    from fmn_desktop.models import export_single_file

    s = saved("sd1")
    half = export_single_file(s.pipe, tmp_path / "half.safetensors", dtype=torch.float16)
    model = load_pipeline(half, config=s.config, dtype=torch.float32)
    reference = _pipeline_class("sd1").from_single_file(
        str(half),
        config=str(s.config),
        local_files_only=True,
        torch_dtype=torch.float32,
        **family_tokenizers("sd1"),
    )
    assert_same_weights(reference, model.pipe)


def test_write_and_read_tensors_round_trip(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=gen),
        "b": torch.randn(7, generator=gen).to(torch.bfloat16),
        "c": torch.randn(2, 2, 2, generator=gen).half(),
        "ids": torch.arange(11),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    path = write_tensors(tmp_path / "t.safetensors", specs, tensors.__getitem__, {"k": "v"})
    for read in (load_file(str(path)), load_tensors(path)):  # safetensors' reader and ours
        assert read.keys() == tensors.keys()
        for k, v in tensors.items():
            assert read[k].dtype == v.dtype and torch.equal(read[k], v), k
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"k": "v"}
    cast = load_tensors(path, ["b", "ids"], dtype=torch.float32)
    assert cast["b"].dtype == torch.float32 and cast["ids"].dtype == torch.int64
    assert torch.equal(cast["b"], tensors["b"].float())
    # every tensor starts at a multiple of its element size
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8 : 8 + n])
    assert n % 8 == 0
    for k, v in tensors.items():
        assert header[k]["data_offsets"][0] % v.element_size() == 0


def test_write_tensors_refuses_a_wrong_tensor_and_leaves_nothing(tmp_path):
    specs = {"a": TensorSpec(torch.float32, (2, 2)), "b": TensorSpec(torch.float32, (3,))}
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="header says"):
        write_tensors(out, specs, lambda n: torch.zeros(2, 2) if n == "a" else torch.zeros(4))
    assert list(tmp_path.iterdir()) == []

    def check(name, tensor):
        raise ValueError(f"refused {name}")

    with pytest.raises(ValueError, match="refused"):
        write_tensors(out, specs, lambda n: torch.zeros(specs[n].shape), check=check)
    assert list(tmp_path.iterdir()) == []


def test_read_tensors_fails_clearly_on_a_truncated_file(tmp_path):
    specs = {"a": TensorSpec(torch.float32, (64,))}
    path = write_tensors(tmp_path / "t.safetensors", specs, lambda n: torch.ones(64))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_tensors(path)
    with pytest.raises(ModelLoadError, match="lacks tensor"):
        load_tensors(
            write_tensors(tmp_path / "u.safetensors", specs, lambda n: torch.ones(64)), ["zz"]
        )
