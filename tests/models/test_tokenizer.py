"""The shipped CLIP vocabulary and each family's tokenizers give the known token ids."""

import json

import pytest

from fmn_desktop.models import config_dir, family_tokenizers
from fmn_desktop.models.families import CONFIGS_DIR

ELON = [49406, 320, 1125, 539, 20406, 19063, 49407]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_known_ids(family):
    for tok in family_tokenizers(family).values():
        assert tok("a photo of Elon Musk").input_ids == ELON
        assert tok.model_max_length == 77
        assert tok.convert_tokens_to_ids("elon</w>") == 20406


@pytest.mark.parametrize(
    "family,name,pad",
    [
        ("sd1", "tokenizer", 49407),
        ("sd2", "tokenizer", 0),
        ("sdxl", "tokenizer", 49407),
        ("sdxl", "tokenizer_2", 0),
    ],
)
def test_padding(family, name, pad):
    tok = family_tokenizers(family)[name]
    ids = tok("a photo", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[:4] == [49406, 320, 1125, 49407]
    assert set(ids[4:]) == {pad}


def test_config_folders_are_weightless_and_complete():
    for name in ("sd1", "sd2", "sd2_base", "sdxl"):
        folder = CONFIGS_DIR / name
        index = json.loads((folder / "model_index.json").read_text())
        for component, spec in index.items():
            if component.startswith("_") or not isinstance(spec, list) or spec[0] is None:
                continue
            assert (folder / component).is_dir(), (name, component)
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert all(p.suffix == ".json" for p in files), files
        assert sum(p.stat().st_size for p in files) < 50_000


def test_sd2_prediction_folders():
    v = json.loads((config_dir("sd2") / "scheduler" / "scheduler_config.json").read_text())
    eps = json.loads(
        (config_dir("sd2", "epsilon") / "scheduler" / "scheduler_config.json").read_text()
    )
    assert v["prediction_type"] == "v_prediction" and eps["prediction_type"] == "epsilon"
    unet_v = json.loads((config_dir("sd2") / "unet" / "config.json").read_text())
    unet_eps = json.loads((config_dir("sd2", "epsilon") / "unet" / "config.json").read_text())
    assert (unet_v["sample_size"], unet_eps["sample_size"]) == (96, 64)
