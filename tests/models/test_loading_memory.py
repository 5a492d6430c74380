"""Peak memory of loading a real-size SD1.5-layout checkpoint (random weights), in a child
process: about the weights' size, not twice it. Slow: builds a 4 GB file, peaks near 4.6 GB."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "measure_loading_memory.py"


@pytest.mark.slow
def test_sd15_single_file_loads_in_about_its_own_size(tmp_path):
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--family", "sd1", "--dtype", "fp32"]
        + ["--scenarios", "file", "--tmp", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["weights_mb"] > 3900  # really the SD1.5 layout in fp32
    assert row["ratio"] <= 1.2, row  # peak RSS / weights, imports included
    assert row["ratio_over_imports"] <= 1.1, row  # before: 2.0
    assert not list(tmp_path.glob("**/*.safetensors"))  # the checkpoint was deleted
