"""The packaged weights (skipped when absent): offline load, generation, judge on world images."""

import numpy as np
import pytest
import torch

from fmn_desktop.toyworld import (
    JUDGE_PATH,
    WEIGHTS_DIR,
    WeightsMissingError,
    load_default_pipeline,
    load_judge,
    weights_available,
)
from fmn_desktop.toyworld.world import HEADS, World

needs_weights = pytest.mark.skipif(not weights_available(), reason="no packaged weights")
needs_judge = pytest.mark.skipif(not JUDGE_PATH.exists(), reason="no packaged judge")


@pytest.fixture(scope="module")
def shipped():
    return load_default_pipeline(), load_judge()


def test_missing_weights_raise_clear_error(tmp_path):
    with pytest.raises(WeightsMissingError, match="no embedded model weights"):
        load_default_pipeline(path=tmp_path)
    with pytest.raises(WeightsMissingError):
        load_judge(tmp_path / "judge.safetensors")


@needs_weights
def test_shipped_pipeline_loads_offline_and_generates():
    pipe = load_default_pipeline()
    assert pipe.safety_checker is None
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer("a photo of Zorbu", padding="max_length", max_length=77).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407  # SD1 style: padded with end-of-text
    assert pipe.text_encoder.config.num_hidden_layers >= 2
    img = pipe(
        "a photo of a red circle",
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert img.size == (32, 32)
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size < 40 * 2**20


@needs_judge
def test_shipped_judge_reads_world_images():
    w = World()
    images, _, idx = w.batch(123, 0, 64, judge=True)
    probs = load_judge().predict(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    for head in HEADS:
        acc = (probs[head].argmax(-1).numpy() == idx[head]).mean()
        assert acc >= 0.9, (head, acc)
    pil = [__import__("PIL.Image").Image.fromarray(im) for im in images[:4]]
    p2 = load_judge().predict(pil)
    assert np.allclose(p2["object"].numpy(), probs["object"][:4].numpy(), atol=1e-5)


JUDGED = [
    ("a photo of a blue square", "object", "square"),
    ("a photo of a blue square", "colour", "blue"),
    ("a photo of Zorbu", "identity", "Zorbu"),
    ("a photo of a toxic cross", "unsafe", "yes"),
]


@pytest.fixture(scope="module")
def generated(shipped):
    """{prompt: the judge's labels of its 4 images}, all drawn in one batch."""
    pipe, judge = shipped
    prompts = list(dict.fromkeys(p for p, _, _ in JUDGED))
    gens = [torch.Generator().manual_seed(s) for _ in prompts for s in range(4)]
    imgs = pipe(
        [p for p in prompts for _ in range(4)],
        num_inference_steps=20,
        guidance_scale=5.0,
        generator=gens,
        output_type="pt",
    ).images
    labels = judge.labels(imgs)
    return {p: {h: v[4 * i : 4 * i + 4] for h, v in labels.items()} for i, p in enumerate(prompts)}


@needs_weights
@needs_judge
@pytest.mark.parametrize("prompt, head, want", JUDGED)
def test_judge_agrees_with_generated_images(generated, prompt, head, want):
    got = generated[prompt][head]
    assert sum(g == want for g in got) >= 3, got
