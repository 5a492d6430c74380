"""The package as installed: one version, no import-time side effects, offline model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fmn_desktop
from fmn_desktop.cli import main
from fmn_desktop.toyworld import weights_available

ROOT = Path(__file__).resolve().parents[1]
HF_VARS = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "DIFFUSERS_VERBOSITY",
    "TRANSFORMERS_VERBOSITY",
)


def _python(code: str, timeout: float = 300) -> dict:
    """Run `code` in a fresh interpreter without the HF variables; it prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fmn_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fmn {fmn_desktop.__version__}"


def test_the_version_has_one_source():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "fmn_desktop.__version__"


def test_importing_the_package_leaves_the_environment_alone():
    result = _python(
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import fmn_desktop, fmn_desktop.runtime\n"
        "print(json.dumps({'same': dict(os.environ) == before,"
        " 'hf': sorted(k for k in os.environ if k.startswith(('HF_', 'TRANSFORMERS_')))}))\n"
    )
    assert result == {"same": True, "hf": []}


NO_NETWORK_LOAD = """
import json, os, socket
before = dict(os.environ)
attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] or args))
    raise OSError("network access attempted")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = refuse
socket.getaddrinfo = refuse

import torch
from fmn_desktop.services.model import open_model
import huggingface_hub.constants as hub

same_after_import = dict(os.environ) == before
model = open_model("default")
ids = model.pipe.tokenizer("a photo of a red circle", return_tensors="pt").input_ids
with torch.no_grad():
    hidden = model.pipe.text_encoder(ids)[0]
print(json.dumps({
    "same_after_import": same_after_import,
    "same_after_load": dict(os.environ) == before,
    "hub_offline_after": hub.HF_HUB_OFFLINE,
    "attempts": attempts,
    "family": model.family,
    "finite": bool(torch.isfinite(hidden).all()),
}))
"""


@pytest.mark.skipif(not weights_available(), reason="embedded model not installed")
def test_embedded_model_loads_without_the_offline_variables():
    """A library user who never ran an entry point: HF_HUB_OFFLINE unset, every socket refused.

    The load still works, makes no connection attempt, and leaves the process as it was."""
    result = _python(NO_NETWORK_LOAD)
    assert result["attempts"] == []
    assert result["same_after_import"] and result["same_after_load"]
    assert result["hub_offline_after"] is False
    assert result["family"] == "toy" and result["finite"]


def test_entry_points_put_the_process_offline(monkeypatch):
    import huggingface_hub.constants as hub

    from fmn_desktop.runtime import configure_runtime, hub_offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    with hub_offline(), hub_offline():
        assert hub.is_offline_mode()
    assert not hub.is_offline_mode()
    configure_runtime()
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.is_offline_mode()
