import pytest
from registry_helpers import patch_bytes


@pytest.fixture
def make_patch():
    return patch_bytes


@pytest.fixture
def reg(tmp_path):
    from fmn_desktop.registry import open_registry

    with open_registry(tmp_path / "reg") as r:
        yield r
