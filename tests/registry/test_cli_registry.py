"""`fmn patches ...` and `fmn stack ...` end to end on a tiny model folder."""

import json

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model folder and two forget patches (castle, dog) made for it."""
    from tiny import tiny_sd_pipeline

    from fmn_desktop.models import load_pipeline
    from fmn_desktop.patch import save_patch
    from fmn_desktop.resteer import ForgetConfig, forget

    root = tmp_path_factory.mktemp("world")
    tiny_sd_pipeline().save_pretrained(root / "model")
    model = load_pipeline(root / "model")
    cfg = dict(steps=2, num_references=1, reference_steps=1, batch_size=1)
    files = {}
    for concept in ("castle", "dog"):
        patch = forget(
            model.pipe, ForgetConfig(concepts=[concept], **cfg), fingerprint=model.fingerprint
        ).patch
        files[concept] = save_patch(patch, root / f"{concept}.safetensors", "diff")
    return {"root": root, "model": root / "model", "fp": model.fingerprint, **files}


def run(capsys, *argv):
    code = main(["--threads", "1", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_patches_import_list_show_search_tag(world, tmp_path, capsys):
    reg = ["--registry", tmp_path / "reg"]
    code, out, _ = run(
        capsys, "patches", "import", world["castle"], world["dog"], "--tag", "demo", *reg
    )
    assert code == 0 and "imported: #1 forget-castle (fmn)" in out and "#2 forget-dog" in out
    code, out, _ = run(capsys, "patches", "import", world["castle"], *reg)
    assert code == 0 and "already registered: #1" in out
    code, out, _ = run(capsys, "patches", "list", *reg)
    lines = out.splitlines()
    assert lines[0].split() == ["id", "name", "kind", "concepts", "format", "base", "size", "tags"]
    assert lines[2].split()[:5] == ["1", "forget-castle", "forget", "castle", "diff"]
    assert world["fp"][:12] in lines[2]
    code, out, _ = run(capsys, "patches", "list", "--json", *reg)
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["forget-castle", "forget-dog"]
    assert rows[0]["base_fingerprint"] == world["fp"] and rows[0]["tags"] == ["demo"]
    code, out, _ = run(capsys, "patches", "search", "dog", "--json", *reg)
    assert [r["id"] for r in json.loads(out)] == [2]
    code, out, _ = run(capsys, "patches", "tag", "forget-dog", "pets", "keep", *reg)
    assert out.strip() == "#2 forget-dog: tags demo, keep, pets"
    code, out, _ = run(capsys, "patches", "show", "2", *reg)
    assert code == 0 and "concepts" in out and "pets" in out and "positions" in out
    code, out, err = run(capsys, "patches", "show", "nope", *reg)
    assert (
        code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "no patch 'nope'" in err
    )
    out_file = tmp_path / "exported.safetensors"
    code, out, _ = run(capsys, "patches", "export", "forget-castle", "--out", out_file, *reg)
    assert out_file.read_bytes() == world["castle"].read_bytes()
    code, out, _ = run(
        capsys,
        "patches",
        "export",
        "1",
        "--out",
        tmp_path / "l.safetensors",
        "--format",
        "lora",
        "--max-error",
        "0.05",
        *reg,
    )
    assert code == 0 and "LoRA relative error" in out


def test_other_tools_files_need_the_model_and_must_fit(world, tmp_path, capsys):
    from fmn_desktop.patch import to_lora
    from fmn_desktop.patch.format import load_patch

    reg = ["--registry", tmp_path / "reg"]
    lora, _ = to_lora(load_patch(world["castle"]), rank=2)
    tensors = {}
    for name, d in lora.deltas.items():
        key = "lora_unet_" + name.rpartition(".")[0].replace(".", "_")
        tensors[f"{key}.lora_up.weight"] = d.up
        tensors[f"{key}.lora_down.weight"] = d.down
    kohya = tmp_path / "from_elsewhere.safetensors"
    save_file(tensors, kohya, metadata={"ss_network_dim": "2"})
    code, _, err = run(capsys, "patches", "import", kohya, *reg)
    assert code == 1 and "give the base model (--model)" in err
    code, out, err = run(
        capsys,
        "patches",
        "import",
        kohya,
        "--model",
        world["model"],
        "--concept",
        "castle",
        "--name",
        "their-castle",
        *reg,
    )
    assert code == 0, err
    assert "imported: #1 their-castle (kohya)" in out and "concept embeddings computed" in out
    # made for another base: refused with both fingerprints, accepted with --force
    other = load_patch(world["dog"])
    other.meta.base_fingerprint = "0123456789ab" * 5
    from fmn_desktop.patch import save_patch

    path = save_patch(other, tmp_path / "other.safetensors", "diff")
    code, _, err = run(capsys, "patches", "import", path, "--model", world["model"], *reg)
    assert code == 1 and "made for base model 0123456789ab" in err
    code, out, _ = run(
        capsys, "patches", "import", path, "--model", world["model"], "--force", *reg
    )
    assert code == 0 and "imported: #2" in out
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(world["dog"].read_bytes()[:300])
    code, _, err = run(capsys, "patches", "import", bad, *reg)
    assert code == 1 and len(err.strip().splitlines()) == 1


def test_stacks_from_the_cli(world, tmp_path, capsys):
    from tiny import tiny_sd_pipeline

    from fmn_desktop.models import load_pipeline

    reg = ["--registry", tmp_path / "reg"]
    assert run(capsys, "patches", "import", world["castle"], world["dog"], *reg)[0] == 0
    code, out, _ = run(capsys, "stack", "create", "clean", "--mode", "fused", *reg)
    assert out.strip() == "created stack 'clean' (fused)"
    run(capsys, "stack", "add", "clean", "forget-castle", *reg)
    code, out, _ = run(capsys, "stack", "add", "clean", "forget-dog", "--strength", "0.5", *reg)
    assert "1  forget-dog" in out and "0.5" in out
    code, out, _ = run(capsys, "stack", "show", "clean", "--json", *reg)
    shown = json.loads(out)
    assert [(i["patch"]["name"], i["strength"]) for i in shown["items"]] == [
        ("forget-castle", 1.0),
        ("forget-dog", 0.5),
    ]
    assert shown["conflicts"] == [] and shown["mode"] == "fused"
    code, _, err = run(capsys, "patches", "rm", "forget-dog", *reg)
    assert code == 1 and "used by stack(s) clean" in err
    # export as one LoRA: diffusers' own reader loads it
    lora = tmp_path / "clean.safetensors"
    code, out, err = run(
        capsys,
        "stack",
        "export",
        "clean",
        world["model"],
        "--out",
        lora,
        "--max-error",
        "0.02",
        "--register",
        *reg,
    )
    assert code == 0, err
    assert "LoRA rank" in out and "registered as #3" in out
    pipe = tiny_sd_pipeline()
    pipe.load_lora_weights(str(lora))
    assert pipe.get_list_adapters()
    # apply: a patched folder whose K/V differ from the base, others identical
    folder = tmp_path / "patched"
    code, out, err = run(capsys, "stack", "apply", "clean", world["model"], "--out", folder, *reg)
    assert code == 0, err
    base = dict(load_pipeline(world["model"]).pipe.unet.named_parameters())
    got = dict(load_pipeline(folder).pipe.unet.named_parameters())
    changed = {n for n in base if not torch.equal(base[n], got[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    code, out, _ = run(
        capsys,
        "stack",
        "export",
        "clean",
        world["model"],
        "--out",
        tmp_path / "clean.diff.safetensors",
        "--format",
        "diff",
        "--mode",
        "additive",
        "--json",
        *reg,
    )
    assert json.loads(out)["format"] == "diff"
    code, out, _ = run(capsys, "stack", "remove", "clean", "forget-dog", *reg)
    assert code == 0 and "forget-dog" not in out
    code, out, _ = run(capsys, "stack", "list", *reg)
    assert "clean" in out and "forget-castle" in out
    code, out, _ = run(capsys, "patches", "rm", "forget-dog", *reg)
    assert code == 0 and out.strip() == "removed #2 forget-dog"
    code, out, _ = run(capsys, "stack", "delete", "clean", *reg)
    assert out.strip() == "deleted stack 'clean' (1 patch(es) stay registered)"
    assert "forget-castle" in run(capsys, "patches", "list", *reg)[1]


def test_conflicting_stack_is_reported_and_refused(world, tmp_path, capsys):
    reg = ["--registry", tmp_path / "reg"]
    run(capsys, "patches", "import", world["castle"], *reg)
    run(
        capsys,
        "patches",
        "import",
        world["dog"],
        "--kind",
        "correct",
        "--concept",
        "castle",
        "--name",
        "fix-castle",
        *reg,
    )
    run(capsys, "stack", "create", "mixed", *reg)
    run(capsys, "stack", "add", "mixed", "forget-castle", *reg)
    code, out, _ = run(capsys, "stack", "add", "mixed", "fix-castle", *reg)
    assert "conflict (forget-and-correct): castle is forgotten by 'forget-castle'" in out
    out_file = tmp_path / "m.safetensors"
    code, _, err = run(capsys, "stack", "export", "mixed", world["model"], "--out", out_file, *reg)
    assert code == 1 and "stack has conflicts" in err and not out_file.exists()
    code, _, err = run(
        capsys, "stack", "export", "mixed", world["model"], "--out", out_file, "--force", *reg
    )
    assert code == 0 and "warning: conflict" in err and out_file.exists()
    code, out, _ = run(capsys, "patches", "list", "--kind", "correct", "--json", *reg)
    assert [r["name"] for r in json.loads(out)] == ["fix-castle"]


def test_usage_and_registry_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["stack"])
    assert exc.value.code == 2
    capsys.readouterr()
    monkeypatch.setenv("FMN_REGISTRY", str(tmp_path / "env-reg"))
    code, out, _ = run(capsys, "patches", "list")
    assert code == 0 and "no patches registered" in out and (tmp_path / "env-reg").is_dir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "registry.db").write_bytes(b"garbage" * 200)
    code, out, err = run(capsys, "patches", "list", "--registry", tmp_path / "broken")
    assert code == 1 and "damaged" in err and len(err.strip().splitlines()) == 1
