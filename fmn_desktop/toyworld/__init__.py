"""The embedded default model: a small Stable Diffusion trained on a procedurally drawn world.

The world's concepts (objects, colours, styles, identities, a dominant/overshadowed pair, a
biased concept and an "unsafe" stand-in) are known exactly, so forgetting and retention can be
measured honestly by the shipped judge. See `MODEL_CARD.md` beside this file.

Example::

    from fmn_desktop.toyworld import load_default_pipeline, load_judge, CONCEPTS
    pipe = load_default_pipeline()
    image = pipe("a photo of a red circle", num_inference_steps=20, guidance_scale=5).images[0]
    load_judge().labels([image])["object"]   # ['circle']
"""

from __future__ import annotations

from pathlib import Path

import fmn_desktop  # noqa: F401  (offline mode before diffusers/transformers load)
from fmn_desktop.toyworld.concepts import CONCEPTS, KINDS, Concept, concepts_of_kind
from fmn_desktop.toyworld.world import HEADS, World

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
JUDGE_PATH = WEIGHTS_DIR / "judge.safetensors"

__all__ = [
    "CONCEPTS",
    "KINDS",
    "HEADS",
    "Concept",
    "World",
    "WEIGHTS_DIR",
    "JUDGE_PATH",
    "concepts_of_kind",
    "load_default_pipeline",
    "load_judge",
    "weights_available",
    "WeightsMissingError",
]


class WeightsMissingError(FileNotFoundError):
    """The embedded model's weights are not in the package (not trained or not installed)."""


def weights_available(path: str | Path | None = None) -> bool:
    p = Path(path) if path else WEIGHTS_DIR
    return (p / "model_index.json").exists() and (p / "unet").is_dir()


def load_default_pipeline(device: str = "cpu", dtype=None, path: str | Path | None = None):
    """The embedded StableDiffusionPipeline (safety checker off), loaded offline.

    `path` overrides the packaged folder (e.g. a training run's `pipeline/` export).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    p = Path(path) if path else WEIGHTS_DIR
    if not weights_available(p):
        raise WeightsMissingError(
            f"no embedded model weights at {p}: train them with "
            "`python scripts/train_toyworld.py --stage all --out runs/toyworld` and copy "
            "runs/toyworld/pipeline to fmn_desktop/toyworld/weights"
        )
    pipe = StableDiffusionPipeline.from_pretrained(
        p,
        local_files_only=True,
        dtype=dtype or torch.float32,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_judge(path: str | Path | None = None):
    """The shipped judge (`Judge`): `predict(images)` -> per-attribute probabilities."""
    from fmn_desktop.toyworld.judge import Judge

    p = Path(path) if path else JUDGE_PATH
    if not p.exists():
        raise WeightsMissingError(f"no judge weights at {p}")
    return Judge.load(p)
