"""A cache of generated reference latents, so a later job on the same model draws none again.

Drawing the reference images is most of a forget job (docs/research/BENCHMARKS.md), and the
same concept is often forgotten more than once (other steps, modes, weights). Each latent is
one file, `<root>/<sha256 of its key>.safetensors`, the key (JSON) also in the metadata:

- the model: the UNet's fingerprint (computed from the weights as they are now, so a patched
  UNet is another model) and the text encoders' (their token embeddings in full: learned
  tokens or edited rows change it);
- the draw: prompt, seed, sampler steps, guidance, the scheduler's class and config, size,
  dtype, device type, and the torch version.

A file is read only if its metadata holds exactly the key asked for and its tensor has the
expected shape, dtype and finite values; anything else (a damaged file, another key, a hash
collision) is ignored with a `ReferenceCacheWarning` and the latent drawn again and rewritten.
Files are written atomically (`fileio.atomic_path`); a failed write costs the cache entry only.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_VERSION = 1
SUFFIX = ".safetensors"
KEY_FIELD = "fmn_reference_key"
TENSOR = "latent"


class ReferenceCacheWarning(UserWarning):
    """A cache file was ignored (damaged, or not the entry asked for) or could not be written."""


@dataclass(frozen=True)
class CacheInfo:
    folder: Path
    files: int
    bytes: int


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _sampler_settings(pipe, steps: int, guidance: float) -> dict:
    """Everything but the prompt and seed that decides a drawn latent (see module doc)."""
    from fmn_desktop.models.fingerprint import fingerprint_text_encoders, fingerprint_unet
    from fmn_desktop.resteer.encode import resolution

    size = resolution(pipe)
    factor = int(pipe.vae_scale_factor)
    unet = pipe.unet
    return {
        "version": CACHE_VERSION,
        "pipeline": type(pipe).__name__,
        "unet": fingerprint_unet(unet),
        "text": fingerprint_text_encoders(pipe),
        "steps": int(steps),
        "guidance": float(guidance),
        "scheduler": {
            "class": type(pipe.scheduler).__name__,
            "config": dict(pipe.scheduler.config),
        },
        "height": size,
        "width": size,
        "shape": [1, int(unet.config.in_channels), size // factor, size // factor],
        "dtype": str(unet.dtype).removeprefix("torch."),
        "device": unet.device.type,
        "torch": torch.__version__,
    }


class ReferenceCache:
    """Reference latents under `root` (see module doc)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.writable = True  # until a write fails: one warning, then no more tries

    @staticmethod
    def settings(pipe, steps: int, guidance: float) -> dict:
        """The part of the key that `pipe` and the sampler settings decide (computed once a
        job: it hashes the UNet's cross-attention weights and the token embeddings)."""
        return _sampler_settings(pipe, steps, guidance)

    @staticmethod
    def key(settings: dict, prompt: str, seed: int) -> str:
        """The canonical JSON key of one latent."""
        return _json({**settings, "prompt": prompt, "seed": int(seed)})

    def path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()}{SUFFIX}"

    def get(self, settings: dict, prompt: str, seed: int) -> torch.Tensor | None:
        """The cached latent (1, C, h, w), float32 on the CPU, or None (a miss; an unusable
        file is reported and treated as one)."""
        from safetensors import safe_open

        key = self.key(settings, prompt, seed)
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                stored = (fh.metadata() or {}).get(KEY_FIELD)
                names = set(fh.keys())
                latent = fh.get_tensor(TENSOR) if names == {TENSOR} else None
        except Exception as exc:  # safetensors raises its own error types for damaged files
            return self._unusable(path, f"cannot be read ({type(exc).__name__}: {exc})")
        if stored != key:
            return self._unusable(path, "holds another entry")
        if latent is None:
            return self._unusable(path, f"holds {sorted(names)}, not one latent")
        if latent.dtype != torch.float32 or list(latent.shape) != settings["shape"]:
            return self._unusable(path, f"holds a {latent.dtype} {tuple(latent.shape)} tensor")
        if not torch.isfinite(latent).all():
            return self._unusable(path, "holds NaN or inf")
        return latent

    def put(self, settings: dict, prompt: str, seed: int, latent: torch.Tensor) -> None:
        """Store a latent atomically; a failed write is reported (once), never raised."""
        from safetensors.torch import save_file

        from fmn_desktop.fileio import atomic_path

        if not self.writable:
            return
        key = self.key(settings, prompt, seed)
        try:
            with atomic_path(self.path(key)) as tmp:
                save_file(
                    {TENSOR: latent.detach().float().cpu().contiguous()},
                    str(tmp),
                    metadata={KEY_FIELD: key, "format": "fmn-reference-latent"},
                )
        except OSError as exc:
            self.writable = False
            warnings.warn(
                f"reference cache: cannot write {self.path(key)} ({exc}); the job goes on "
                "without keeping its references",
                ReferenceCacheWarning,
                stacklevel=2,
            )

    def _unusable(self, path: Path, why: str) -> None:
        warnings.warn(
            f"reference cache: ignoring {path}: it {why}; drawing the image again",
            ReferenceCacheWarning,
            stacklevel=3,
        )
        return None

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob(f"*{SUFFIX}"))

    def info(self) -> CacheInfo:
        files = self.files()
        size = 0
        for f in files:
            try:
                size += f.stat().st_size
            except OSError:
                continue  # removed meanwhile
        return CacheInfo(self.root, len(files), size)

    def clear(self) -> CacheInfo:
        """Remove every cached latent (and the temporaries writers left); returns what was
        removed."""
        from fmn_desktop.fileio import sweep

        removed = self.info()
        for f in self.files():
            f.unlink(missing_ok=True)
        sweep(self.root)
        return removed
