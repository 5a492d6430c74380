"""Fingerprints: same weights -> same hash whatever the dtype or file; any change -> new hash."""

import time

import pytest
import torch
from model_helpers import tiny_unet

from fmn_desktop.models import FingerprintMismatch, FmnError, check_fingerprint, fingerprint_unet


def make_unet(family="sd1", seed=0):
    torch.manual_seed(seed)
    return tiny_unet(family)


@pytest.fixture(scope="module")
def unet():
    return make_unet()


def test_stable_and_dtype_independent(unet):
    fp = fingerprint_unet(unet)
    assert fp == fingerprint_unet(unet) and len(fp) == 64
    half = make_unet().to(torch.float16)
    assert fingerprint_unet(half) == fp
    assert fingerprint_unet(half.to(torch.float32)) == fp


def test_changed_weights_differ(unet):
    fp = fingerprint_unet(unet)
    name = next(n for n, _ in unet.named_parameters() if ".attn2.to_k." in n)
    param = dict(unet.named_parameters())[name]
    with torch.no_grad():
        param[-1, -1] += 0.01  # last element of a patchable tensor: hashed in full
        assert fingerprint_unet(unet) != fp
        param[-1, -1] -= 0.01
    assert fingerprint_unet(unet) == fp
    conv = unet.conv_in.weight
    with torch.no_grad():
        conv.view(-1)[0] += 0.01  # a non-attn2 tensor: first/last values are sampled
        assert fingerprint_unet(unet) != fp
        conv.view(-1)[0] -= 0.01


def test_unfused_lora_keeps_base_fingerprint():
    from peft import LoraConfig

    unet = make_unet()
    fp = fingerprint_unet(unet)
    unet.add_adapter(LoraConfig(r=2, target_modules=["attn2.to_k"], init_lora_weights=False))
    assert fingerprint_unet(unet) == fp
    for module in unet.modules():
        if hasattr(module, "base_layer") and hasattr(module, "merge"):
            module.merge()
    assert fingerprint_unet(unet) != fp


def test_other_architecture_differs(unet):
    assert fingerprint_unet(make_unet("sd2")) != fingerprint_unet(unet)
    assert fingerprint_unet(make_unet(seed=1)) != fingerprint_unet(unet)


def test_check_fingerprint():
    assert check_fingerprint("a" * 64, "a" * 64)
    with pytest.raises(FingerprintMismatch) as err:
        check_fingerprint("a" * 64, "b" * 64)
    assert isinstance(err.value, FmnError) and "aaaaaaaaaaaa" in str(err.value)
    assert check_fingerprint("a" * 64, "b" * 64, force=True) is False


def test_cost_is_linear_in_attn2_bytes(unet):
    """Hash speed sets the cost on real models (SDXL: ~2.6 GB of fp16 attn2 values)."""
    t = torch.randn(64 * 1024 * 1024 // 4)  # 64 MB fp32 -> 32 MB canonical fp16

    class Fake:
        def state_dict(self):
            return {"x.attn2.to_k.weight": t}

    layer = Fake()
    start = time.perf_counter()
    fingerprint_unet(layer)
    seconds = time.perf_counter() - start
    # ~0.1 s here for 32 MB of fp16: SDXL's 1.09 GB of attn2 values take ~2-3 s on this CPU
    assert seconds < 5.0
