"""`fmn invert` and `fmn forget-photos` end to end on a tiny pipeline: files, exit codes."""

import numpy as np
import pytest
import torch
from PIL import Image

from fmn_desktop.cli import main
from fmn_desktop.inversion import LearnedTokens, load_embedding, save_embedding
from fmn_desktop.patch import load_patch

TOKEN = "<cat-toy>"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _run(argv, capsys):
    code = main(["--threads", "1", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_invert_writes_an_embedding(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "cat.safetensors"
    code, stdout, err = _run(
        [
            "invert",
            str(model_dir),
            "--images",
            str(photos),
            "--token",
            TOKEN,
            "--vectors",
            "2",
            "--steps",
            "3",
            "--inversion-batch",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    learned = load_embedding(out)
    assert learned.placeholder == TOKEN and learned.num_vectors == 2
    assert learned.meta["hyperparameters"]["steps"] == 3 and learned.meta["base_fingerprint"]
    assert "wrote" in stdout


def test_forget_photos_writes_patch_and_tokens(
    model_dir, photos, tmp_path, capsys, quick_discovery
):
    out = tmp_path / "forget-cat.safetensors"
    code, stdout, err = _run(
        [
            "forget-photos",
            str(model_dir),
            "--images",
            str(photos),
            "--token",
            TOKEN,
            "--vectors",
            "2",
            "--inversion-steps",
            "2",
            "--steps",
            "2",
            "--name",
            "castle",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    patch = load_patch(out)
    assert patch.meta.concepts[:2] == [TOKEN, "castle"] and patch.is_lora
    assert patch.meta.extra["learned_tokens"] == TOKEN
    assert patch.meta.hyperparameters["reference_dir"] == str(photos)
    tokens = tmp_path / "forget-cat.tokens.safetensors"
    assert load_embedding(tokens).num_vectors == 2
    assert "name 'castle'" in stdout and "wrote" in stdout
    # Re-using the learned tokens skips the inversion.
    code, stdout, err = _run(
        [
            "forget-photos",
            str(model_dir),
            "--images",
            str(photos),
            "--tokens",
            str(tokens),
            "--no-discover",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "again.safetensors"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "learned" not in stdout and load_patch(tmp_path / "again.safetensors").meta.concepts == [
        TOKEN
    ]


def test_photo_errors_are_one_line(model_dir, photos, tmp_path, capsys):
    code, _, err = _run(
        [
            "forget-photos",
            str(model_dir),
            "--images",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        capsys,
    )
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    wide = save_embedding(LearnedTokens(TOKEN, torch.zeros(2, 64)), tmp_path / "wide.safetensors")
    code, _, err = _run(
        [
            "forget-photos",
            str(model_dir),
            "--images",
            str(photos),
            "--tokens",
            str(wide),
            "--out",
            str(tmp_path / "p.safetensors"),
        ],
        capsys,
    )
    assert code == 1 and "width" in err and not (tmp_path / "p.safetensors").exists()
    code, _, err = _run(
        ["invert", str(model_dir), "--images", str(photos), "--out", str(tmp_path)], capsys
    )
    assert code == 2 and "folder" in err
