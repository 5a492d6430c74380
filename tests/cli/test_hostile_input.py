"""`fmn` against hostile and careless input: one line and exit 1 (2 for usage) for every error
a user can cause, never a traceback, never a non-finite weight, never a raw control
character on the terminal, never a silently replaced file."""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import reliability_harness as h
import torch
from safetensors.torch import load_file, save_file

KEY = h.kohya(f"{h.ATTN}.to_k")


@pytest.fixture(scope="module")
def world(hostile_world):
    return hostile_world


@pytest.fixture(scope="module", autouse=True)
def one_model_load(world):
    with h.cached_model(world):
        yield


def run(*argv):
    result = h.run_cli(list(argv))
    assert not result.traceback, result.escaped or result.err
    return result


def error_line(result) -> str:
    """The error: the last line of stderr, which must be the only line saying so."""
    lines = [ln for ln in result.err.splitlines() if ln.startswith("fmn")]
    assert len(lines) == 1, result.err
    return lines[0]


def _lora(path, up, down, alpha, meta=None):
    save_file(
        {f"{KEY}.lora_up.weight": up, f"{KEY}.lora_down.weight": down, f"{KEY}.alpha": alpha},
        str(path),
        metadata={"fmn.format_version": "1", "fmn.family": "sd1", **(meta or {})},
    )
    return path


@pytest.mark.parametrize("strength", ["nan", "inf", "-inf", "1e309", "1e308", "101"])
def test_non_finite_or_huge_strengths_are_usage_errors(world, tmp_path, strength):
    out = tmp_path / "m.safetensors"
    r = run("apply", world.model, f"{world.lora}:{strength}", "--out", out)
    assert r.code == 2 and not out.exists()
    r = run("stack", "add", "s", "#1", "--strength", strength, "--registry", world.registry)
    assert r.code == 2


def test_stack_export_of_an_extreme_stored_strength_writes_nothing(world, tmp_path):
    """A stack item edited behind the registry's back (an older database) is refused."""
    import sqlite3

    conn = sqlite3.connect(world.registry / "registry.db")
    with conn:
        conn.execute("update stack_items set strength = 1e308 where position = 0")
    try:
        for fmt in ("diff", "lora", "single-file"):
            out = tmp_path / f"s-{fmt}.safetensors"
            r = run(
                "stack",
                "export",
                "s",
                world.model,
                "--format",
                fmt,
                "--out",
                out,
                "--registry",
                world.registry,
            )
            assert r.code == 1 and "strength" in error_line(r) and not out.exists()
    finally:
        with conn:
            conn.execute("update stack_items set strength = 1.0 where position = 0")
        conn.close()


@pytest.mark.parametrize(
    "name, up, down, alpha, message",
    [
        ("rank0", torch.zeros(32, 0), torch.zeros(0, 32), torch.tensor(1.0), "rank 0"),
        ("nan-alpha", torch.ones(32, 2), torch.ones(2, 32), torch.tensor(float("nan")), "alpha"),
        ("inf-alpha", torch.ones(32, 2), torch.ones(2, 32), torch.tensor(float("inf")), "alpha"),
        (
            "overflow",
            torch.full((32, 2), 1e30),
            torch.full((2, 32), 1e30),
            torch.tensor(2.0),
            "overflows",
        ),
        (
            "int",
            torch.ones(32, 2, dtype=torch.int64),
            torch.ones(2, 32),
            torch.tensor(2.0),
            "dtype",
        ),
    ],
)
def test_unusable_loras_are_one_line_everywhere(world, tmp_path, name, up, down, alpha, message):
    bad = _lora(tmp_path / f"{name}.safetensors", up, down, alpha)
    out = tmp_path / "out.safetensors"
    reg = ["--registry", tmp_path / "reg"]
    for argv in (
        ["inspect", bad],
        ["apply", world.model, bad, "--out", out],
        [
            "generate",
            world.model,
            "--prompt",
            "x",
            "--patch",
            bad,
            "--steps",
            "1",
            "--seeds",
            "1",
            "--out",
            tmp_path / "g.png",
        ],
        ["patches", "import", bad, *reg],
        ["patches", "import", bad, "--model", world.model, *reg],
    ):
        r = run(*argv)
        assert r.code == 1 and message in error_line(r), (argv, r.err)
    assert not out.exists() and not (tmp_path / "g.png").exists()


def test_metadata_of_the_wrong_type_is_one_line(world, tmp_path):
    bad = _lora(
        tmp_path / "p.safetensors",
        torch.ones(32, 2),
        torch.ones(2, 32),
        torch.tensor(2.0),
        {"fmn.hyperparameters": "[1, 2]"},
    )
    r = run("inspect", bad)
    assert r.code == 1 and "JSON object" in error_line(r)


def test_control_characters_from_files_are_shown_escaped(world, tmp_path):
    evil = "\x1b]0;pwned\x07\x1b[2J\rcastle\x00\nsecond line\u202e"
    tensors = load_file(str(world.lora))
    from safetensors import safe_open

    with safe_open(str(world.lora), "pt") as fh:
        meta = dict(fh.metadata())
    meta.update(
        {
            "modelspec.title": evil,
            "fmn.concepts": json.dumps([evil]),
            "fmn.extra.note": evil,
        }
    )
    bad = tmp_path / "evil.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    reg = ["--registry", tmp_path / "reg"]
    outputs = [run("inspect", bad), run("patches", "import", bad, "--notes", evil, *reg)]
    outputs += [run("patches", "list", *reg), run("patches", "show", "#1", *reg)]
    for r in outputs:
        assert r.code == 0, r.err
        assert not h.RAW_CONTROL.search(r.out.replace("\n", "")), repr(r.out)
        assert "\u202e" not in r.out
    assert "\\x1b" in outputs[0].out and "second line" in outputs[3].out
    r = run("patches", "show", evil, *reg)  # a hostile reference echoed in the error
    assert r.code == 1 and not h.RAW_CONTROL.search(r.err.replace("\n", ""))


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "MODEL", "--prompt", "x", "--seeds", "0"],
        ["generate", "MODEL", "--prompt", "x", "--size", "-64"],
        ["generate", "MODEL", "--prompt", "x", "--size", "100000"],
        ["generate", "MODEL", "--prompt", "x", "--steps", "0"],
        ["generate", "MODEL", "--prompt", "x", "--cfg", "nan"],
        ["--threads", "0", "patches", "list"],
        ["stack", "export", "s", "MODEL", "--preserve-weight", "nan"],
        ["stack", "export", "s", "MODEL", "--rank", "0"],
        ["patches", "export", "#1", "--max-error", "inf"],
        ["forget", "MODEL", "--concept", "x", "--steps", "0"],
        ["correct", "MODEL", "--concept", "x", "--guide", "y", "--ridge", "nan"],
    ],
)
def test_bad_numbers_are_usage_errors(world, tmp_path, argv):
    argv = [world.model if a == "MODEL" else a for a in argv]
    if "--out" not in argv and argv[0] != "--threads":
        argv += ["--out", tmp_path / "o.safetensors"]
    r = run(
        *argv, *(["--registry", world.registry] if "stack" in argv or "patches" in argv else [])
    )
    assert r.code == 2 and "error:" in r.err.splitlines()[-1]


def test_generate_refuses_more_steps_than_the_scheduler_has(world, tmp_path):
    r = run(
        "generate", world.model, "--prompt", "x", "--steps", "4104", "--out", tmp_path / "g.png"
    )
    assert r.code == 1 and "out of range" in error_line(r)


def test_outputs_are_replaced_only_with_overwrite(world, tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    r = run("apply", world.model, world.lora, "--out", out)
    assert r.code == 2 and "--overwrite" in error_line(r) and out.read_bytes() == b"precious"
    r = run("patches", "export", "#1", "--out", out, "--registry", world.registry)
    assert r.code == 2 and out.read_bytes() == b"precious"
    r = run("stack", "export", "s", world.model, "--out", out, "--registry", world.registry)
    assert r.code == 2 and out.read_bytes() == b"precious"
    r = run("apply", world.model, world.lora, "--out", out, "--overwrite")
    assert r.code == 0 and h.finite_file(out)
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not 0600
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    for flag in ([], ["--overwrite"]):
        r = run("apply", world.model, world.lora, "--out", folder, *flag)
        assert r.code == 2 and (folder / "thesis.txt").exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bad_output_places_are_one_line(world, tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    r = run("apply", world.model, world.lora, "--out", tmp_path)  # an existing folder
    assert r.code == 2 and "not empty" in error_line(r)
    r = run("generate", world.model, "--prompt", "x", "--out", tmp_path)
    assert r.code == 2 and "is a folder" in error_line(r)
    r = run("apply", world.model, world.lora, "--out", world.lora / "x.safetensors")
    assert r.code == 1 and "is a file" in error_line(r)
    r = run("apply", world.model, world.lora, "--out", tmp_path / ("n" * 300 + ".safetensors"))
    assert r.code == 1 and "too long" in error_line(r).lower()

    from fmn_desktop import fileio

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)  # the disk fills up while writing
    out = tmp_path / "full.safetensors"
    r = run("apply", world.model, world.lora, "--out", out)
    assert r.code == 1 and "No space left on device" in error_line(r)
    assert not out.exists() and h.temporaries(tmp_path) == []


def test_unwritable_output_folder_is_one_line(world):
    base = Path(tempfile.mkdtemp())
    os.chmod(base, 0o555)
    out = base / "m.safetensors"

    def write():
        r = h.run_cli(["apply", world.model, world.lora, "--out", out])
        print(f"exit {r.code}: {r.err.splitlines()[-1]}")

    try:
        text = h.as_other_user(write)
    finally:
        os.chmod(base, 0o755)
        shutil.rmtree(base)
    assert text.startswith("exit 1: fmn apply: error: cannot write") and "not writable" in text


def test_tracebacks_only_when_asked(world, tmp_path, monkeypatch):
    import fmn_desktop.services.patches as sp

    def broken(*a, **k):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(sp, "describe_patch", broken)
    r = h.run_cli(["inspect", world.lora])
    assert r.code == 1 and "internal error: TypeError: a bug of ours" in r.err
    assert "Traceback" not in r.err
    r = h.run_cli(["--debug", "inspect", world.lora])
    assert r.code == 1 and "Traceback (most recent call last)" in r.err
    monkeypatch.undo()
    monkeypatch.setenv("FMN_DEBUG", "1")
    r = h.run_cli(["inspect", tmp_path / "missing.safetensors"])
    assert r.code == 1 and "Traceback" in r.err and "no such patch file" in r.err


def test_renamed_pickles_are_named_as_pickles(world, tmp_path):
    import pickle

    p = tmp_path / "model.safetensors"
    p.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    for argv in (
        ["inspect", p],
        ["apply", p, world.lora, "--out", tmp_path / "o.safetensors"],
        ["patches", "import", p, "--registry", tmp_path / "reg"],
    ):
        r = run(*argv)
        assert r.code == 1 and "pickle" in error_line(r), r.err


def test_import_without_a_model_refuses_what_can_never_be_applied(world, tmp_path):
    reg = ["--registry", tmp_path / "reg"]
    tensors = load_file(str(world.lora))
    from safetensors import safe_open

    with safe_open(str(world.lora), "pt") as fh:
        meta = dict(fh.metadata())
    cases = {
        "family": ({**meta, "fmn.family": "sd3"}, tensors, "family 'sd3'"),
        "keys": (
            meta,
            {k.replace("down_blocks_0", "down_blocks_7"): v for k, v in tensors.items()},
            "not a patch of sd1",
        ),
        "bool": (
            meta,
            {k: (v.bool() if "lora_up" in k else v) for k, v in tensors.items()},
            "dtype bool",
        ),
    }
    for name, (m, t, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(t, str(path), metadata=m)
        r = run("patches", "import", path, *reg)
        assert r.code == 1 and message in error_line(r), (name, r.err)
    r = run("patches", "import", world.lora, "--force", *reg)
    assert r.code == 2 and "--model" in error_line(r)
    r = run("patches", "list", "--json", *reg)
    assert r.out.strip() == "[]"


def test_a_digit_only_hash_prefix_is_found(world, tmp_path):
    from fmn_desktop.registry import open_registry

    reg_root = tmp_path / "reg"
    with open_registry(reg_root) as reg:
        for i in range(400):
            rec = reg.add_patch(_variant(world.lora, i))
            if re.fullmatch(r"\d{6}", rec.sha256[:6]):
                break
        else:
            pytest.skip("no digit-only prefix found")
    r = run("patches", "show", rec.sha256[:6], "--registry", reg_root)
    assert r.code == 0 and rec.sha256 in r.out


def _variant(path, i) -> bytes:
    from fmn_desktop.patch.format import load_patch, patch_bytes

    patch = load_patch(path, None)
    patch.meta.concepts = [f"c{i}"]
    return patch_bytes(patch, "lora")
