"""Search finds patches by what they are, not only by their indexed text."""

from pathlib import Path

import pytest

from fmn_desktop.registry import open_registry
from fmn_desktop.registry.keywords import EMBEDDED_FAMILY

READY = Path(__file__).resolve().parents[2] / "patches"


@pytest.fixture
def reg(tmp_path):
    with open_registry(tmp_path / "reg") as reg:
        for name in ("forget-Zorbu", "forget-circle", "forget-stripes"):
            reg.add_patch(READY / f"{name}.safetensors", tags=["ready"])
        yield reg


def names(reg, query):
    return [p.name for p in reg.search(query)]


def test_search_by_concept_kind_method_format_and_file_name(reg):
    assert names(reg, "identity") == ["forget-zorbu"]
    assert names(reg, "style") == ["forget-stripes"]
    assert names(reg, "object") == ["forget-circle"]
    assert names(reg, "zorbu identity") == ["forget-zorbu"]
    assert names(reg, "zorbu style") == []
    assert len(names(reg, "lora resteer")) == 3
    assert names(reg, "correct") == []
    assert names(reg, "forget-stripes") == ["forget-stripes"]  # the file's name
    assert names(reg, "ident") == ["forget-zorbu"]  # a word's start


def test_indexed_text_still_ranks_first(reg):
    assert names(reg, "circle") == ["forget-circle"]
    assert names(reg, "ready")[0:3] and len(names(reg, "ready")) == 3  # tags
    assert names(reg, '"zorbu') == ["forget-zorbu"]  # FTS syntax is plain text


def test_world_kinds_only_for_the_embedded_family():
    from fmn_desktop.models.families import EMBEDDED_FAMILY as MODELS_EMBEDDED
    from fmn_desktop.registry.keywords import keywords

    assert EMBEDDED_FAMILY == MODELS_EMBEDDED
    row = {"kind": "forget", "family": EMBEDDED_FAMILY, "concepts": '["red"]'}
    assert "colour" in keywords(row)
    assert "colour" not in keywords({**row, "family": "sd1"})
