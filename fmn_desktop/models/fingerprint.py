"""Base-model fingerprints: which UNet a patch was made for.

`fingerprint_unet` is a sha256 over, for every UNet tensor in name order:
- its diffusers name and shape (another architecture, or a renamed layer, differs);
- for cross-attention (`attn2`) tensors, every value: these are what patches change;
- for every other tensor, its first and last 64 values: a fine-tune changes nearly every
  tensor, so this tells fine-tunes of one architecture apart at almost no cost.
PEFT wrappers are looked through: an unfused LoRA adapter leaves the base fingerprint as it
was (its base weights are unchanged); a fused one changes it.

Values are hashed in a canonical form, float16 little-endian, so an fp32 load and an fp16 load
of the same file give the same fingerprint (fp16 -> fp16 is exact; fp32 -> fp16 rounds the same
way whichever side does it). A bf16 load of a non-bf16 file rounds differently and gets another
fingerprint. Names are diffusers names, so a folder and a single-file load of the same weights
agree.

Cost (measured on this project's 2-core CPU machine: sha256 ~0.9 GB/s, fp32->fp16 cast
~0.7 GB/s of input): the attn2 tensors hashed in full are 44 M values for SD1.5 (88 MB as
fp16, ~0.2 s), 50 M for SD2.1 (~0.2 s) and 546 M for SDXL base (1.09 GB, ~2-3 s; on a GPU
the cast runs on the device and each tensor is copied to the host once). The sampled values
of the other tensors add nothing measurable. `load_pipeline` computes it once per load.
"""

from __future__ import annotations

import hashlib

import torch

from fmn_desktop.models.errors import FingerprintMismatch

FINGERPRINT_VERSION = 1
_SAMPLE = 64


def _canonical_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    if t.is_floating_point():
        t = t.to(torch.float16)
    return t.contiguous().cpu().numpy().tobytes()


def is_patchable(name: str) -> bool:
    """Whether a UNet tensor is one patches touch (all cross-attention weights and biases)."""
    return ".attn2." in name


@torch.no_grad()
def fingerprint_unet(unet: torch.nn.Module) -> str:
    """sha256 hex digest identifying a UNet's architecture and weights (see module doc).

    >>> fp = fingerprint_unet(pipe.unet)  # doctest: +SKIP
    """
    h = hashlib.sha256()
    h.update(f"fmn-unet-fingerprint-v{FINGERPRINT_VERSION}\n".encode())
    from fmn_desktop.models.ldm import plain_state_dict

    for name, tensor in sorted(plain_state_dict(unet, strict=False).items()):
        h.update(f"{name}:{tuple(tensor.shape)}:".encode())
        if is_patchable(name):
            h.update(_canonical_bytes(tensor))
        else:
            flat = tensor.reshape(-1)
            if flat.numel() <= 2 * _SAMPLE:
                h.update(_canonical_bytes(flat))
            else:
                h.update(_canonical_bytes(flat[:_SAMPLE]))
                h.update(_canonical_bytes(flat[-_SAMPLE:]))
        h.update(b"\n")
    return h.hexdigest()


@torch.no_grad()
def fingerprint_text_encoders(pipe) -> str:
    """sha256 over a pipeline's tokenizer sizes and text encoders: the token embeddings in full
    (learned tokens or an edited row change it), every other tensor's name, shape and first
    and last values, as `fingerprint_unet` samples them. CLIP-L's embeddings are 38 M values."""
    h = hashlib.sha256()
    h.update(f"fmn-text-fingerprint-v{FINGERPRINT_VERSION}\n".encode())
    for attr in ("tokenizer", "tokenizer_2"):
        tok = getattr(pipe, attr, None)
        if tok is not None:
            h.update(f"{attr}:{len(tok)}\n".encode())
    for attr in ("text_encoder", "text_encoder_2"):
        enc = getattr(pipe, attr, None)
        if enc is None:
            continue
        for name, tensor in sorted(enc.state_dict().items()):
            h.update(f"{attr}.{name}:{tuple(tensor.shape)}:".encode())
            flat = tensor.reshape(-1)
            if "token_embedding" in name or flat.numel() <= 2 * _SAMPLE:
                h.update(_canonical_bytes(flat))
            else:
                h.update(_canonical_bytes(flat[:_SAMPLE]))
                h.update(_canonical_bytes(flat[-_SAMPLE:]))
            h.update(b"\n")
    return h.hexdigest()


def short_fingerprint(fingerprint: str) -> str:
    """The first 12 hex digits, for display."""
    return fingerprint[:12]


def check_fingerprint(
    expected: str, actual: str, *, force: bool = False, what: str = "patch"
) -> bool:
    """Raise FingerprintMismatch unless the fingerprints agree or `force`; True if they agree."""
    if expected == actual:
        return True
    if force:
        return False
    raise FingerprintMismatch(expected, actual, what)
