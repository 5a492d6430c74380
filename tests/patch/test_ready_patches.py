"""The ready-made patches in `patches/`: listed in the manifest, intact, made for the embedded
model, and measured (scores within the targets they were shipped with)."""

import hashlib
import json
from pathlib import Path

import pytest

from fmn_desktop.patch import load_patch, unet_module_names
from fmn_desktop.patch.apply import check_compatible

PATCHES = Path(__file__).resolve().parents[2] / "patches"


def _manifest() -> dict:
    return json.loads((PATCHES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def embedded_model():
    from fmn_desktop.services.model import open_model

    return open_model("default")


def test_manifest_covers_an_identity_an_object_and_a_style():
    kinds = {e["kind"] for e in _manifest()["patches"]}
    assert {"identity", "object", "style"} <= kinds


@pytest.mark.parametrize("entry", _manifest()["patches"], ids=lambda e: e["concept"])
def test_ready_patch_is_intact_and_fits_the_embedded_model(entry, embedded_model):
    path = PATCHES / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    patch = load_patch(path, unet_module_names(embedded_model.pipe.unet))
    assert patch.meta.concepts == [entry["concept"]]
    assert patch.meta.base_fingerprint == entry["base_fingerprint"] == embedded_model.fingerprint
    check_compatible(patch, embedded_model.pipe.unet, embedded_model.fingerprint)
    scores = patch.meta.scores
    assert scores == entry["scores"]
    # What the manifest promises: the concept forgotten (M-Score <= 0.1), the others kept.
    assert scores["mscore_before"]["mean"] >= 0.8
    assert scores["mscore_after"]["mean"] <= 0.1
    drop = scores["retention_before"]["mean"] - scores["retention_after"]["mean"]
    assert drop <= 0.03
