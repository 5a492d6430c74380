"""The reference-latent cache: a second job draws no reference image, any change of the key
misses, an unusable file is drawn again, and the patch is the same with or without it."""

from __future__ import annotations

import warnings

import pytest
import torch

from fmn_desktop.resteer import ForgetConfig, forget
from fmn_desktop.resteer.refcache import ReferenceCache, ReferenceCacheWarning

JOB = dict(concepts=["castle"], steps=2, num_references=3, reference_steps=2, batch_size=2)


class Counting:
    """Counts the pipeline's calls (reference images drawn); everything else passes through."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, 0
        self.prompts: list[str] = []

    def __call__(self, prompt, *args, **kwargs):
        self.calls += 1
        self.prompts.append(prompt)
        return self.pipe(prompt, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def _same(p, q) -> bool:
    """Whether two patches hold bit-identical deltas."""
    if p.deltas.keys() != q.deltas.keys():
        return False
    for name, a in p.deltas.items():
        b = q.deltas[name]
        for field in ("dense", "up", "down"):
            x, y = getattr(a, field), getattr(b, field)
            if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
                return False
    return bool(p.deltas)


def _job(pipe, cache, **changes):
    return forget(pipe, ForgetConfig(**{**JOB, **changes}), cache=cache)


def test_second_job_draws_no_reference_image(tiny_pipe, tmp_path):
    pipe, cache = Counting(tiny_pipe), ReferenceCache(tmp_path)
    _job(pipe, cache)
    assert pipe.calls == 3 and cache.info().files == 3
    _job(pipe, cache, steps=3, lr=2e-2)  # other training settings: the same references
    assert pipe.calls == 3
    _job(pipe, cache, num_references=4)  # one more image: only that one is drawn
    assert pipe.calls == 4 and cache.info().files == 4


@pytest.mark.parametrize(
    "change",
    [dict(seed=1), dict(reference_steps=3), dict(guidance_scale=4.0), dict(concepts=["tower"])],
    ids=["seed", "steps", "guidance", "prompt"],
)
def test_a_changed_seed_prompt_or_sampler_setting_misses(tiny_pipe, tmp_path, change):
    pipe, cache = Counting(tiny_pipe), ReferenceCache(tmp_path)
    _job(pipe, cache)
    _job(pipe, cache, **change)
    assert pipe.calls == 6 and cache.info().files == 6


def test_changed_weights_scheduler_or_text_encoder_miss(tiny_pipe, tmp_path):
    from diffusers import DDIMScheduler

    pipe, cache = Counting(tiny_pipe), ReferenceCache(tmp_path)
    _job(pipe, cache)
    with torch.no_grad():  # a patched UNet is another model
        attn2 = next(m for n, m in tiny_pipe.unet.named_modules() if n.endswith("attn2"))
        attn2.to_k.weight.add_(0.01)
    _job(pipe, cache)
    assert pipe.calls == 6
    tiny_pipe.scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    _job(pipe, cache)
    assert pipe.calls == 9
    with torch.no_grad():  # an edited token embedding (e.g. a learned token)
        tiny_pipe.text_encoder.get_input_embeddings().weight[1000].add_(0.5)
    _job(pipe, cache)
    assert pipe.calls == 12


def test_patch_is_bit_exact_with_the_cache(tiny_pipe, tmp_path):
    plain = _job(tiny_pipe, None).patch
    first = _job(tiny_pipe, ReferenceCache(tmp_path)).patch
    cached = _job(tiny_pipe, ReferenceCache(tmp_path)).patch
    assert _same(plain, first) and _same(plain, cached)
    assert not _same(plain, _job(tiny_pipe, None, seed=1).patch)  # the check can fail


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    elif how == "other key":
        from safetensors.torch import load_file, save_file

        save_file(load_file(path), path, metadata={"fmn_reference_key": '{"prompt":"x"}'})
    elif how == "nan":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
            t = fh.get_tensor("latent")
        save_file({"latent": torch.full_like(t, float("nan"))}, path, metadata=meta)


@pytest.mark.parametrize("how", ["truncated", "garbage", "other key", "nan"])
def test_an_unusable_file_is_drawn_again_with_a_warning(tiny_pipe, tmp_path, how):
    pipe, cache = Counting(tiny_pipe), ReferenceCache(tmp_path)
    plain = _job(pipe, cache).patch
    victim = cache.files()[1]
    _damage(victim, how)
    with pytest.warns(ReferenceCacheWarning, match="drawing the image again"):
        again = _job(pipe, cache).patch
    assert pipe.calls == 4  # that image only
    assert _same(plain, again)
    with warnings.catch_warnings():  # rewritten: read without complaint now
        warnings.simplefilter("error", ReferenceCacheWarning)
        _job(pipe, cache)
    assert pipe.calls == 4


def test_an_unwritable_cache_warns_and_the_job_goes_on(tiny_pipe, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    with pytest.warns(ReferenceCacheWarning, match="cannot write") as caught:
        patch = _job(tiny_pipe, ReferenceCache(blocker / "references")).patch
    assert patch.deltas
    assert len([w for w in caught if w.category is ReferenceCacheWarning]) == 1  # once a job


def test_info_and_clear(tiny_pipe, tmp_path):
    cache = ReferenceCache(tmp_path / "refs")
    assert cache.info().files == 0 and cache.clear().files == 0  # no folder yet
    _job(tiny_pipe, cache)
    info = cache.info()
    assert info.files == 3 and info.bytes > 0
    assert cache.clear().files == 3 and cache.info().files == 0


def test_broad_removal_uses_the_cache(tiny_pipe, tmp_path):
    from fmn_desktop.correct.broad import BroadConfig, erase_broad

    pipe, cache = Counting(tiny_pipe), ReferenceCache(tmp_path)
    config = dict(words=["castle"], steps=1, num_references=2, reference_steps=1, batch_size=1)
    config["preserve_prompts"] = ["a dog"]
    config["ordinary_references"] = 1
    first = erase_broad(pipe, BroadConfig(**config), cache=cache).patch
    assert pipe.calls == 3
    second = erase_broad(pipe, BroadConfig(**config), cache=cache).patch
    assert pipe.calls == 3 and _same(first, second)
