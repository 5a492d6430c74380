"""The `fmn` command end to end on tiny pipelines: files written, exit codes, messages."""

import argparse
import json
import pickle

import pytest
import torch
from PIL import Image

from fmn_desktop.cli import main
from fmn_desktop.models import export_single_file, load_pipeline
from fmn_desktop.patch import PatchedUNet, load_patch, unet_module_names

FAST = ["--steps", "3", "--num-references", "2", "--batch-size", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def single_file(model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "tiny.safetensors"
    export_single_file(load_pipeline(model_dir).pipe, path)
    return path


@pytest.fixture(scope="module")
def patch_file(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "castle.safetensors"
    assert (
        main(
            [
                "--threads",
                "1",
                "forget",
                str(model_dir),
                "--concept",
                "castle",
                "--out",
                str(out),
                *FAST[:6],
            ]
        )
        == 0
    )
    return out


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_forget_on_folder_is_read_by_diffusers(model_dir, patch_file):
    from tiny import tiny_sd_pipeline

    patch = load_patch(patch_file)
    assert patch.is_lora and patch.meta.concepts == ["castle"]
    assert patch.meta.base_fingerprint == load_pipeline(model_dir).fingerprint
    pipe = tiny_sd_pipeline()
    pipe.load_lora_weights(str(patch_file))  # the independent reader
    assert pipe.get_list_adapters()


def test_forget_on_single_file(single_file, model_dir, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    code, stdout, err = _run(
        [
            *FAST[6:],
            "forget",
            str(single_file),
            "--config",
            str(model_dir),
            "--concept",
            "castle",
            "--format",
            "diff",
            "--out",
            str(out),
            *FAST[:6],
        ],
        capsys,
    )
    assert code == 0 and out.exists() and "wrote" in stdout, err
    patch = load_patch(out)
    assert not patch.is_lora
    # Same weights, same fingerprint, whichever way the model was stored.
    assert patch.meta.base_fingerprint == load_pipeline(model_dir).fingerprint


def test_inspect_text_and_json(patch_file, capsys):
    code, out, _ = _run(["inspect", str(patch_file)], capsys)
    assert code == 0 and "castle" in out and "lora" in out
    code, out, _ = _run(["inspect", str(patch_file), "--json"], capsys)
    info = json.loads(out)
    assert info["concepts"] == ["castle"] and info["kind"] == "forget" and info["ranks"]


def test_apply_writes_patched_folder_and_single_file(model_dir, patch_file, tmp_path, capsys):
    code, _, _ = _run(
        ["apply", str(model_dir), f"{patch_file}:0.5", "--out", str(tmp_path / "m")], capsys
    )
    assert code == 0
    written = load_pipeline(tmp_path / "m").pipe.unet
    expected = load_pipeline(model_dir).pipe.unet
    PatchedUNet(expected, [(load_patch(patch_file, unet_module_names(expected)), 0.5)]).apply()
    for (n, a), (_, b) in zip(written.named_parameters(), expected.named_parameters()):
        assert torch.equal(a, b), n
    code, _, _ = _run(
        ["apply", str(model_dir), str(patch_file), "--out", str(tmp_path / "m.safetensors")], capsys
    )
    assert code == 0 and (tmp_path / "m.safetensors").stat().st_size > 0


def test_generate_grid_before_after(model_dir, patch_file, tmp_path, capsys):
    out = tmp_path / "g.png"
    code, _, _ = _run(
        [
            "generate",
            str(model_dir),
            "--prompt",
            "a castle",
            "--prompt",
            "a dog",
            "--patch",
            str(patch_file),
            "--seeds",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    img = Image.open(out)
    assert img.width > 2 * 2 * 16 and img.height >= 2 * 16


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["forget"])  # no --concept
    assert exc.value.code == 2
    assert main(["forget", "--concept", "x"]) == 2  # neither --out nor --register
    assert "--out" in capsys.readouterr().err


def test_missing_model_is_one_line_exit_1(tmp_path, capsys):
    code, _, err = _run(
        [
            "forget",
            str(tmp_path / "nope"),
            "--concept",
            "x",
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        capsys,
    )
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "not found" in errors[0]
    assert "Traceback" not in err


def test_pickled_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": Evil()}))
    code, _, err = _run(
        ["forget", str(ckpt), "--concept", "x", "--out", str(tmp_path / "p.safetensors")], capsys
    )
    assert code == 1 and not marker.exists() and "Traceback" not in err


def test_unknown_concept_token_is_a_clear_error(model_dir, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    code, _, err = _run(
        [
            "forget",
            str(model_dir),
            "--concept",
            "castle",
            "--template",
            "a photo of {} ",
            "--template",
            "a picture",
            "--out",
            str(out),
            *FAST[:6],
        ],
        capsys,
    )
    assert code == 1 and "{}" in err and not out.exists()


def test_nan_writes_no_patch(model_dir, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    code, _, err = _run(
        [
            "forget",
            str(model_dir),
            "--concept",
            "castle",
            "--lr",
            "1e30",
            "--out",
            str(out),
            *FAST[:6],
        ],
        capsys,
    )
    assert code == 1 and not out.exists()
    assert "no patch" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # not a finite number: refused as usage
        main(["forget", str(model_dir), "--concept", "castle", "--lr", "inf", "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()


def test_truncated_patch_and_wrong_base(model_dir, patch_file, tmp_path, capsys):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(patch_file.read_bytes()[:200])
    code, _, err = _run(["apply", str(model_dir), str(cut), "--out", str(tmp_path / "m")], capsys)
    assert code == 1 and "cut.safetensors" in err and not (tmp_path / "m").exists()

    from tiny import tiny_sd_pipeline

    other = tmp_path / "other"
    tiny_sd_pipeline(seed=5).save_pretrained(other)
    code, _, err = _run(
        ["apply", str(other), str(patch_file), "--out", str(tmp_path / "m2")], capsys
    )
    assert code == 1 and "force" in err and not (tmp_path / "m2").exists()
    code, _, _ = _run(
        ["apply", str(other), str(patch_file), "--force", "--out", str(tmp_path / "m3")], capsys
    )
    assert code == 0


def _leaf_parsers(parser, path=()):
    """(command path, parser) of every runnable command, nested ones included."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_parsers(child, (*path, name))


def test_every_command_has_a_handler():
    from fmn_desktop.cli import build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    missing = [" ".join(path) for path, p in leaves.items() if p.get_default("handler") is None]
    assert missing == []
    for name in ("forget", "apply", "generate", "inspect", "demo", "bench", "evaluate"):
        assert (name,) in leaves
    assert ("stack", "export") in leaves and ("patches", "import") in leaves


def test_a_closed_pipe_is_not_a_traceback():
    # `fmn ... | head -1`: the reader leaves early; exit quietly with status 0. A command with
    # more output than the pipe holds, so that writing really fails.
    import subprocess
    import sys

    code = (
        "import sys; from fmn_desktop.cli import apply, main; "
        "apply.cmd_inspect.__code__ = (lambda a: [print('x' * 99) for _ in range(20000)] "
        "and 0).__code__; sys.exit(main(['inspect', 'p.safetensors']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"x" * 99
    proc.stdout.close()  # the reader goes away with output still to come
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err and "Broken" not in err, err


def test_forget_options_come_from_the_config(capsys):
    """Every ForgetConfig knob is an option, its default and mode defaults shown once."""
    from fmn_desktop.cli import build_parser
    from fmn_desktop.knobs import knob_fields
    from fmn_desktop.resteer import ForgetConfig

    parser = build_parser()
    args = parser.parse_args(["forget", "--concept", "Zorbu", "--out", "p.safetensors"])
    for f in knob_fields(ForgetConfig):
        assert hasattr(args, f.name), f.name
    with pytest.raises(SystemExit):
        parser.parse_args(["forget", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--preserve-weight" in text and "(default: 6 faithful, 3 fast)" in text
    assert "--retain-weight" not in text  # old names work but are not offered


def test_old_option_names_still_work_with_a_note(capsys):
    from fmn_desktop.cli import build_parser
    from fmn_desktop.cli.common import config_from_args
    from fmn_desktop.resteer import ForgetConfig

    args = build_parser().parse_args(
        [
            "forget",
            "--concept",
            "x",
            "--retain-weight",
            "2",
            "--kind",
            "style",
            "--retain-prompt",
            "a",
            "--retain-prompt",
            "b",
            "--preserve",
            "maps",
        ]
    )
    config = config_from_args(ForgetConfig, args)
    assert config.preserve_weight == 2.0 and config.concept_kind == "style"
    assert config.preserve_prompts == ["a", "b"] and config.preserve_mode == "maps"
    err = capsys.readouterr().err
    assert "--retain-weight is deprecated" in err and "use --preserve-weight" in err
    assert "--kind is deprecated" in err


def test_forget_straight_into_the_registry(model_dir, tmp_path, capsys):
    """`fmn forget --register` keeps the patch in the library only, with its tags; scoring is
    skipped (said on stderr) on a model that has no judge."""
    from fmn_desktop.registry import open_registry

    reg = tmp_path / "reg"
    code, out, err = _run(
        [
            *FAST[6:],
            "forget",
            str(model_dir),
            "--concept",
            "castle",
            "--register",
            "--tag",
            "mine",
            "--evaluate",
            "--registry",
            str(reg),
            *FAST[:6],
        ],
        capsys,
    )
    assert code == 0, err
    assert "registered" in out and "not scored" in err
    with open_registry(reg) as r:
        (rec,) = r.list_patches()
    assert rec.concepts == ["castle"] and "mine" in rec.tags and rec.path.is_file()


def test_forget_writes_diff_where_lora_cannot_hold_the_trainable_set(
    model_dir, tmp_path, capsys, monkeypatch
):
    """--trainable attn2 changes biases: the default format (auto) picks .diff before training
    and says so; an explicit --format lora is refused before any training."""
    out = tmp_path / "attn2.safetensors"
    args = ["--threads", "1", "forget", str(model_dir), "--concept", "castle", *FAST[:6]]
    code, stdout, err = _run([*args, "--trainable", "attn2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "writing a .diff patch" in err and "the bias of" in err and "(.diff," in stdout
    patch = load_patch(out)
    assert not patch.is_lora and any(n.endswith(".bias") for n in patch.deltas)

    import fmn_desktop.services.forget as service

    def no_training(*a, **k):
        raise AssertionError("trained before checking the format")

    monkeypatch.setattr(service, "forget", no_training)
    refused = tmp_path / "refused.safetensors"
    code, _, err = _run(
        [*args, "--trainable", "unet", "--format", "lora", "--out", str(refused)], capsys
    )
    assert code == 1 and "a LoRA cannot hold" in err and "convolution" in err
    assert not refused.exists()
