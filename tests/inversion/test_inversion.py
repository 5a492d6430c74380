"""Textual inversion: tokens installed and removed cleanly, only the new rows learned, embedding
files (ours, read by diffusers), clear errors, and the loss falling on the embedded model."""

import pytest
import torch
from safetensors.torch import save_file

from fmn_desktop.errors import CancelledError, EmbeddingFormatError, FmnError
from fmn_desktop.inversion import (
    LearnedTokens,
    installed_tokens,
    learn_tokens,
    load_embedding,
    save_embedding,
    token_names,
)
from fmn_desktop.prompts.tokens import concept_mask

TOKEN = "<cat-toy>"


def _snapshot(pipe):
    return {
        "tokenizer": pipe.tokenizer,
        "embedding": pipe.text_encoder.get_input_embeddings(),
        "vocab_size": pipe.text_encoder.config.vocab_size,
        "len": len(pipe.tokenizer),
        "weights": {
            f"{part}.{k}": v.clone()
            for part in ("unet", "vae", "text_encoder")
            for k, v in getattr(pipe, part).state_dict().items()
        },
        "grad": {
            f"{part}.{k}": p.requires_grad
            for part in ("unet", "vae", "text_encoder")
            for k, p in getattr(pipe, part).named_parameters()
        },
        "training": {part: getattr(pipe, part).training for part in ("unet", "text_encoder")},
    }


def _assert_unchanged(pipe, snap):
    assert pipe.tokenizer is snap["tokenizer"]
    assert len(pipe.tokenizer) == snap["len"] and TOKEN not in pipe.tokenizer.get_vocab()
    assert pipe.text_encoder.get_input_embeddings() is snap["embedding"]
    assert pipe.text_encoder.config.vocab_size == snap["vocab_size"]
    for part in ("unet", "vae", "text_encoder"):
        for k, v in getattr(pipe, part).state_dict().items():
            assert torch.equal(v, snap["weights"][f"{part}.{k}"]), f"{part}.{k} changed"
        for k, p in getattr(pipe, part).named_parameters():
            assert p.requires_grad == snap["grad"][f"{part}.{k}"]
    for part, mode in snap["training"].items():
        assert getattr(pipe, part).training == mode


def _images(n=4, size=16):
    torch.manual_seed(1)
    return torch.rand(n, 3, size, size) * 2 - 1


def test_token_names_follow_diffusers():
    assert token_names("<z>", 3) == ["<z>", "<z>_1", "<z>_2"]
    with pytest.raises(FmnError, match="one word"):
        token_names("two words", 2)


def test_tokens_installed_and_removed_cleanly(tiny_pipe):
    pipe = tiny_pipe
    snap = _snapshot(pipe)
    width = pipe.text_encoder.config.hidden_size
    learned = LearnedTokens(TOKEN, torch.randn(4, width))
    with installed_tokens(pipe, learned) as ids:
        assert len(ids) == 4 and pipe.tokenizer is not snap["tokenizer"]
        assert pipe.maybe_convert_prompt(f"a photo of {TOKEN}", pipe.tokenizer) == (
            f"a photo of {TOKEN} {TOKEN}_1 {TOKEN}_2 {TOKEN}_3"
        )
        weight = pipe.text_encoder.get_input_embeddings().weight
        old = snap["embedding"].weight
        assert torch.equal(weight[: old.shape[0]], old)
        assert torch.equal(weight[ids], learned.vectors)
        # The concept mask marks every vector of the placeholder, where the pipeline puts them.
        mask = concept_mask(pipe.tokenizer, [f"a photo of {TOKEN}"], [TOKEN], "concept")
        assert mask[0].nonzero().flatten().tolist() == [4, 5, 6, 7]
        out = pipe(f"a photo of {TOKEN}", num_inference_steps=2, output_type="latent").images
        assert torch.isfinite(out).all()
    _assert_unchanged(pipe, snap)
    with pytest.raises(RuntimeError, match="boom"), installed_tokens(pipe, learned):
        raise RuntimeError("boom")
    _assert_unchanged(pipe, snap)


def test_plain_prompts_mask_as_before(tiny_pipe):
    tok = tiny_pipe.tokenizer
    before = concept_mask(tok, ["a photo of a dog"], ["dog"], "concept+following+eot")
    learned = LearnedTokens(TOKEN, torch.zeros(2, tiny_pipe.text_encoder.config.hidden_size))
    with installed_tokens(tiny_pipe, learned):
        after = concept_mask(
            tiny_pipe.tokenizer, ["a photo of a dog"], ["dog"], "concept+following+eot"
        )
    assert torch.equal(before, after)


def test_learning_changes_only_the_new_rows(tiny_pipe):
    pipe = tiny_pipe
    snap = _snapshot(pipe)
    steps = []
    result = learn_tokens(
        pipe,
        _images(),
        placeholder=TOKEN,
        num_vectors=2,
        steps=4,
        lr=1e-2,
        batch_size=2,
        progress=steps.append,
    )
    _assert_unchanged(pipe, snap)
    learned = result.learned
    assert learned.tokens == [TOKEN, f"{TOKEN}_1"]
    assert learned.vectors.shape == (2, pipe.text_encoder.config.hidden_size)
    assert [p.step for p in steps if p.phase == "train"] == [1, 2, 3, 4]
    assert len(result.history) == 4 and all(
        torch.isfinite(torch.tensor(h.loss)) for h in result.history
    )
    # Same seed, no steps' worth of change would give the initial vectors; these moved.
    from fmn_desktop.inversion import InversionConfig
    from fmn_desktop.inversion.train import _initial_vectors

    config = InversionConfig(placeholder=TOKEN, num_vectors=2)
    init = _initial_vectors(pipe, config, torch.Generator().manual_seed(0))
    assert not torch.allclose(init, learned.vectors)
    assert learned.meta["hyperparameters"]["steps"] == 4


def test_cancel_leaves_the_pipeline_as_it_was(tiny_pipe):
    snap = _snapshot(tiny_pipe)
    with pytest.raises(CancelledError):
        learn_tokens(
            tiny_pipe,
            _images(),
            placeholder=TOKEN,
            steps=50,
            batch_size=2,
            should_cancel=lambda: True,
        )
    _assert_unchanged(tiny_pipe, snap)


def test_save_load_roundtrip_and_diffusers_reads_it(tiny_pipe, tmp_path):
    from tiny import tiny_sd_pipeline

    width = tiny_pipe.text_encoder.config.hidden_size
    learned = LearnedTokens(TOKEN, torch.randn(3, width), {"steps": 7})
    path = save_embedding(learned, tmp_path / "cat.safetensors")
    back = load_embedding(path)
    assert back.placeholder == TOKEN and back.meta == {"steps": 7}
    assert torch.equal(back.vectors, learned.vectors)
    assert load_embedding(path, placeholder="<other>").placeholder == "<other>"
    # The independent reader: diffusers' load_textual_inversion takes the key as the token.
    pipe = tiny_sd_pipeline()
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.convert_tokens_to_ids(token_names(TOKEN, 3))
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], learned.vectors)
    # A1111's layout: one tensor called emb_params; the name comes from the file.
    save_file({"emb_params": learned.vectors}, str(tmp_path / "mydog.safetensors"))
    a1111 = load_embedding(tmp_path / "mydog.safetensors")
    assert a1111.placeholder == "<mydog>" and a1111.num_vectors == 3


def test_bad_files_are_clear_errors(tiny_pipe, tmp_path):
    good = save_embedding(LearnedTokens(TOKEN, torch.randn(2, 32)), tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 20])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    save_file({"a": torch.zeros(2, 32), "b": torch.zeros(2, 32)}, str(tmp_path / "two.safetensors"))
    save_file({"<x>": torch.zeros(2, 32, dtype=torch.int32)}, str(tmp_path / "int.safetensors"))
    save_file(
        {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)},
        str(tmp_path / "xl.safetensors"),
    )
    (tmp_path / "old.pt").write_bytes(b"pickle")
    cases = {
        "trunc.safetensors": "not a readable",
        "junk.safetensors": "not a readable",
        "two.safetensors": "exactly one",
        "int.safetensors": "not an embedding",
        "xl.safetensors": "SDXL",
        "old.pt": "pickled",
        "missing.safetensors": "no such",
    }
    for name, message in cases.items():
        with pytest.raises(EmbeddingFormatError, match=message):
            load_embedding(tmp_path / name)
    # A file learned on another family (text width 64 vs 32) does not fit.
    with (
        pytest.raises(EmbeddingFormatError, match="width"),
        installed_tokens(tiny_pipe, LearnedTokens(TOKEN, torch.zeros(2, 64))),
    ):
        pass
    # A placeholder that is already a word would hijack it.
    with (
        pytest.raises(FmnError, match="already a word"),
        installed_tokens(tiny_pipe, LearnedTokens("cat", torch.zeros(1, 32))),
    ):
        pass


def test_forget_with_learned_tokens_runs(tiny_pipe):
    from fmn_desktop.resteer import ForgetConfig, forget

    snap = _snapshot(tiny_pipe)
    learned = LearnedTokens(TOKEN, torch.randn(2, 32) * 0.02)
    config = ForgetConfig(
        concepts=[TOKEN], concept_kind="identity", steps=2, num_references=2, batch_size=2
    )
    with installed_tokens(tiny_pipe, learned):
        result = forget(tiny_pipe, config)
    assert result.patch.deltas and result.patch.meta.concepts == [TOKEN]
    assert result.patch.meta.stats["concept_embeddings"].shape[0] > 0
    _assert_unchanged(tiny_pipe, snap)


@pytest.mark.slow
def test_inversion_loss_falls_on_the_embedded_model(tmp_path):
    """A short inversion on the embedded model (about 20 s on one thread): the denoising loss
    on fixed draws falls, and the photos' identity is drawn from the learned tokens."""
    from fmn_desktop.toyworld import weights_available

    if not weights_available():
        pytest.skip("embedded model weights not installed")
    import numpy as np
    from PIL import Image

    from fmn_desktop.services.model import open_model
    from fmn_desktop.toyworld.world import STYLES, Labels, render

    for i in range(12):
        rng = np.random.default_rng([42, i])
        image = render(Labels(style=str(rng.choice(STYLES)), identity="Zorbu"), rng)
        Image.fromarray(image).save(tmp_path / f"z{i}.png")
    pipe = open_model("default").pipe
    result = learn_tokens(pipe, tmp_path, placeholder="<zorbu>", steps=120, batch_size=4)
    assert result.loss_after < result.loss_before
    first = sum(h.loss for h in result.history[:30]) / 30
    last = sum(h.loss for h in result.history[-30:]) / 30
    assert last < first
