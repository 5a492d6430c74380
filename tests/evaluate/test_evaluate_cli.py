"""`fmn evaluate`: a patch's M-Score and retention before and after, from the CLI, into the
patch file's metadata and into the registry; usage errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from fmn_desktop.cli import main
from fmn_desktop.patch import load_patch
from fmn_desktop.toyworld import weights_available

READY = Path(__file__).parents[2] / "patches" / "forget-Zorbu.safetensors"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concept", "Nobody", "--patch", "p.safetensors"], "unknown concept"),
        (["./some-sd15", "--concept", "Zorbu", "--patch", "p.safetensors"], "need a judge"),
        (["--concept", "Zorbu"], "give --patch"),
        (["--stack", "s", "--patch", "p.safetensors"], "alone"),
        (["--concept", "Zorbu", "--patch", "p.safetensors", "--seeds", "0"], "out of range"),
        (
            [
                "--concept",
                "Zorbu",
                "--patch",
                "a.safetensors",
                "--patch",
                "b.safetensors",
                "--write-scores",
            ],
            "one --patch",
        ),
        (["--concept", "Zorbu", "--record", "zorbu", "--write-scores"], "name it with one --patch"),
    ],
)
def test_usage_errors(argv, message, capsys):
    try:
        code = main(["evaluate", *argv])
    except SystemExit as exc:  # refused by the argument's type
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(
    params=[
        pytest.param("few", id="4-others"),
        pytest.param("all", id="all-others", marks=pytest.mark.slow),
    ]
)
def others(request):
    """Retention over 4 other concepts at 6 sampling steps (the default run), or over all
    of them at 10 (slow)."""
    if request.param == "few":
        request.getfixturevalue("few_others")
    return request.param


@pytest.mark.skipif(not weights_available(), reason="no embedded model weights")
def test_evaluate_the_ready_zorbu_patch(tmp_path, capsys, others):
    from fmn_desktop.registry import open_registry

    steps = 6 if others == "few" else 10
    patch = tmp_path / "zorbu.safetensors"
    shutil.copy(READY, patch)
    with open_registry(tmp_path / "reg") as reg:
        reg.add_patch(patch, name="zorbu")
    out = tmp_path / "scores.json"
    code = main(
        [
            "--threads",
            "1",
            "evaluate",
            "--concept",
            "Zorbu",
            "--patch",
            str(patch),
            "--seeds",
            "1",
            "--other-seeds",
            "1",
            "--steps",
            str(steps),
            "--json",
            str(out),
            "--write-scores",
            "--record",
            "zorbu",
            "--registry",
            str(tmp_path / "reg"),
        ]
    )
    captured = capsys.readouterr()
    stdout = captured.out
    assert code == 0, stdout
    assert "Zorbu:" in stdout and "M-Score" in stdout and "other words kept" in stdout
    assert "recorded mscore, retention, coattr_retention, worst_neighbour_drop" in stdout
    assert "1 seed per forgotten concept" in stdout
    # a progress bar over every image, before and after the patches, ending full
    assert "base model" in captured.err and "patched" in captured.err
    done = re.findall(r"(\d+)/(\d+) \[", captured.err)
    assert done and done[-1][0] == done[-1][1] and int(done[-1][1]) >= 2 * 12
    scores = json.loads(out.read_text())
    # the embedded model draws Zorbu from its prompts; the shipped patch removes it
    assert scores["mscore_before"]["mean"] > 0.9 > 0.1 > scores["mscore_after"]["mean"]
    assert scores["retention_after"]["mean"] > 0.9
    assert load_patch(patch).meta.scores == scores  # stored in the file
    with open_registry(tmp_path / "reg") as reg:
        stored = {e.metric: e for e in reg.evaluations(patch="zorbu")}
    assert stored["mscore"].value == scores["mscore_after"]["mean"]
    settings = stored["retention"].settings
    assert (settings["seeds"], settings["other_seeds"], settings["steps"]) == (1, 1, steps)
    assert (settings["strength"], settings["mode"]) == (1.0, "additive")
    zorbu = scores["concepts"]["Zorbu"]
    # the held-out prompts name styles and unsafe words beside Zorbu: those are kept
    assert zorbu["coattr_after"]["n"] > 0 and zorbu["coattr_after"]["mean"] > 0.7
    assert sum(zorbu["readings_after"].values()) == pytest.approx(1.0, abs=1e-3)
    assert scores["neighbours"] and "Zorbu" not in {r["concept"] for r in scores["neighbours"]}
