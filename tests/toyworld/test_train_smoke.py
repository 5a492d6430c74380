"""Tiny-config smoke test of every training stage, resume, export and evaluation."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fmn_desktop.toyworld import load_default_pipeline, load_judge

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_toyworld.py"
_spec = importlib.util.spec_from_file_location("train_toyworld", SCRIPT)
train_toyworld = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_toyworld)
main = train_toyworld.main

# Trains every stage of the embedded model's recipe: a developer's tool, not a user's path.
pytestmark = pytest.mark.slow

TINY = {
    "n_train": 96,
    "n_heldout": 32,
    "n_judge": 64,
    "n_judge_recon": 16,
    "n_judge_off": 48,
    "n_judge_off_recon": 8,
    "n_judge_calib": 32,
    "text_steps": 2,
    "text_batch": 16,
    "vae_steps": 2,
    "vae_batch": 4,
    "judge_steps": 2,
    "judge_batch": 8,
    "vaedec_steps": 2,
    "unet_batch": 4,
    "eval_seeds": 1,
    "eval_steps": 2,
    "unet_cfg": {"block_out_channels": [16, 16, 16], "norm_num_groups": 8, "attention_head_dim": 2},
    "vae_cfg": {"block_out_channels": [8, 16], "norm_num_groups": 4},
    "text_cfg": {
        "num_hidden_layers": 2,
        "hidden_size": 16,
        "intermediate_size": 32,
        "projection_dim": 16,
        "num_attention_heads": 2,
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyworld")
    main(
        [
            "--stage",
            "data,text,vae,vaedec,judge,unet",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--config",
            json.dumps(TINY),
        ]
    )
    return out


def test_stages_write_everything(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "text_to_image_top1",
        "vae_psnr_heldout",
        "vae_scaling_factor",
        "judge_acc_clean",
        "judge_acc_recon",
        "unet_steps",
    ):
        assert key in metrics
    assert metrics["unet_steps"] == 2
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (run_dir / "pipeline" / sub).is_dir()
    assert (run_dir / "pipeline" / "judge.safetensors").exists()


def test_unet_resumes_from_checkpoint(run_dir):
    main(
        ["--stage", "unet", "--out", str(run_dir), "--max-steps", "1", "--config", json.dumps(TINY)]
    )
    ck = torch.load(run_dir / "unet_ckpt.pt", weights_only=False)
    assert ck["step"] == 3
    assert "resumed at step 2" in (run_dir / "train.log").read_text()


def test_exported_pipeline_generates_and_is_judged(run_dir):
    pipe = load_default_pipeline(path=run_dir / "pipeline")
    assert pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.max_position_embeddings == 77
    assert pipe.text_encoder.config.vocab_size == 49408
    img = pipe(
        "a photo of a red circle",
        num_inference_steps=2,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert img.shape == (1, 3, 32, 32)
    probs = load_judge(run_dir / "pipeline" / "judge.safetensors").predict(img)
    assert probs["object"].shape == (1, 8)
    assert torch.allclose(probs["colour"].sum(-1), torch.ones(1), atol=1e-5)


def test_eval_stage_reports_per_attribute(run_dir):
    main(["--stage", "eval", "--out", str(run_dir), "--config", json.dumps(TINY)])
    res = json.loads(next(run_dir.glob("eval_step*.json")).read_text())
    assert set(res["per_attribute"]) == {"object", "colour", "style", "identity", "unsafe"}
