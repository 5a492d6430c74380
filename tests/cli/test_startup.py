"""`fmn` starts fast: help and the commands that read no tensor import no torch (nor
diffusers, transformers), since importing them costs seconds of CPU before anything happens.

Each check runs in a fresh interpreter: this test process has torch loaded already.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmn_desktop.cli import main

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "diffusers", "transformers", "safetensors.torch", "PySide6")
READY = ROOT / "patches" / "forget-Zorbu.safetensors"

SCRIPT = """
import contextlib, io, json, sys
from fmn_desktop.cli import build_parser, main
codes = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            codes.append(main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def run_fresh(argvs, env=None):
    """Exit codes of `fmn ARGV...` run in one fresh interpreter, and the heavy modules it
    imported."""
    import os

    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def subcommands():
    """Every `fmn` command path: ["forget"], ["patches", "list"], ..."""
    import argparse

    from fmn_desktop.cli import build_parser

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix
            return
        for name, sub in subs[0].choices.items():
            yield from walk(sub, [*prefix, name])

    return list(walk(build_parser(), []))


def test_help_of_every_command_imports_no_torch():
    argvs = [["--help"]] + [[*path, "--help"] for path in subcommands()]
    assert len(argvs) > 20  # the walk found the commands
    res = run_fresh(argvs)
    assert res["codes"] == [0] * len(argvs)
    assert res["heavy"] == []


def test_the_check_sees_torch_when_a_command_loads_it(tmp_path):
    """The same check fails for a command that does import torch (it can fail at all):
    every command not marked torch-free sets torch's thread count first."""
    res = run_fresh([["stack", "show", "nothing", "--registry", str(tmp_path / "r")]])
    assert res["codes"] == [1]
    assert "torch" in res["heavy"]


def test_library_commands_and_inspect_import_no_torch(tmp_path, capsys):
    reg = str(tmp_path / "reg")
    assert main(["patches", "import", str(READY), "--registry", reg, "--tag", "ready"]) == 0
    capsys.readouterr()
    argvs = [
        ["patches", "list", "--registry", reg],
        ["patches", "show", "1", "--registry", reg],
        ["patches", "search", "zorbu", "--registry", reg],
        ["patches", "tag", "1", "extra", "--registry", reg],
        ["stack", "list", "--registry", reg],
        ["inspect", str(READY)],
        ["inspect", str(READY), "--json"],
    ]
    res = run_fresh(argvs)
    assert res["codes"] == [0] * len(argvs)
    assert res["heavy"] == []


@pytest.mark.parametrize("argv", [["--help"], ["inspect", str(READY)]])
def test_cpu_time_of_a_fresh_start(argv):
    """Generous bound (the target is 0.5 s on an idle core): torch alone costs seconds."""
    import os

    code = (
        "import resource, sys\n"
        "from fmn_desktop.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "u = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(u.ru_utime + u.ru_stime, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = float(result.stderr.strip().splitlines()[-1])
    assert seconds < 1.5, seconds
