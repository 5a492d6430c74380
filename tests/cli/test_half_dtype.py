"""`--dtype fp16/bf16` on the CPU: runs the half path, with a note that it is slow there."""

import pytest
import torch

from fmn_desktop.cli import main
from fmn_desktop.patch import load_patch

FAST = ["--steps", "1", "--num-references", "2", "--batch-size", "2"]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_forget_in_half_on_the_cpu_prints_the_note_and_writes_a_patch(
    model_dir, tmp_path, capsys, dtype
):
    out = tmp_path / "p.safetensors"
    argv = ["forget", str(model_dir), "--device", "cpu", "--dtype", dtype, "--concept", "castle"]
    code = main([*argv, *FAST, "--format", "diff", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"note: {dtype} on the CPU is slow" in err
    deltas = load_patch(out).deltas.values()
    assert deltas and all(torch.isfinite(d.dense).all() and d.dense.abs().sum() > 0 for d in deltas)


def test_fp32_on_the_cpu_prints_no_note(model_dir, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    argv = ["forget", str(model_dir), "--device", "cpu", "--concept", "castle", *FAST]
    assert main([*argv, "--out", str(out)]) == 0
    assert "on the CPU is slow" not in capsys.readouterr().err
