"""`fmn cache info|clear`, `--no-cache`, and the progress bar during reference images."""

import json

from fmn_desktop.cli import main
from fmn_desktop.patch import load_patch
from fmn_desktop.training import Progress

JOB = ["--concept", "castle", "--steps", "2", "--num-references", "2", "--batch-size", "2"]


def _info(registry, capsys) -> dict:
    capsys.readouterr()
    assert main(["cache", "info", "--registry", str(registry), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _forget(model_dir, out, registry, *extra) -> None:
    argv = ["--threads", "1", "forget", str(model_dir), *JOB, "--out", str(out)]
    assert main([*argv, "--registry", str(registry), *extra]) == 0


def test_forget_keeps_and_reuses_references_and_cache_commands(model_dir, tmp_path, capsys):
    reg = tmp_path / "reg"
    assert _info(reg, capsys)["files"] == 0
    _forget(model_dir, tmp_path / "a.safetensors", reg)
    info = _info(reg, capsys)
    assert info["files"] == 2 and info["bytes"] > 0
    assert info["folder"] == str(reg / "cache" / "references")
    _forget(model_dir, tmp_path / "b.safetensors", reg)
    _forget(model_dir, tmp_path / "c.safetensors", reg, "--seed", "5", "--no-cache")
    assert _info(reg, capsys)["files"] == 2  # --no-cache kept nothing
    a, b = (load_patch(tmp_path / f"{n}.safetensors") for n in "ab")
    for name, delta in a.deltas.items():
        assert (delta.to_dense() == b.deltas[name].to_dense()).all()
    capsys.readouterr()
    assert main(["cache", "clear", "--registry", str(reg)]) == 0
    assert "removed 2 reference latents" in capsys.readouterr().out
    assert _info(reg, capsys)["files"] == 0


def test_the_bar_counts_reference_images_then_steps():
    from fmn_desktop.cli.common import step_bar

    bar, progress = step_bar(5, "re-steering")
    try:
        progress(Progress("references", 0, 3))
        assert bar.desc.rstrip(": ") == "reference images" and (bar.n, bar.total) == (0, 3)
        progress(Progress("references", 2, 3))
        assert bar.n == 2
        progress(Progress("train", 1, 5, loss=0.5))
        assert bar.desc.rstrip(": ") == "re-steering" and (bar.n, bar.total) == (1, 5)
        progress(Progress("attack"))
        assert bar.desc.rstrip(": ") == "attack"
        progress(Progress("references", 1, 4))  # the next hardening round
        assert bar.desc.rstrip(": ") == "reference images" and (bar.n, bar.total) == (1, 4)
        progress(Progress("train", 3, 10, loss=0.4))
        assert bar.desc.rstrip(": ") == "re-steering" and (bar.n, bar.total) == (3, 10)
    finally:
        bar.close()
