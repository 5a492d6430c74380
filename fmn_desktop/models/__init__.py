"""Loading, fingerprinting and exporting Stable Diffusion checkpoints, offline.

Public API:
- `load_pipeline(path, *, family=None, prediction_type=None, dtype=torch.float32,
  device="cpu", config=None, compute_fingerprint=True) -> LoadedModel`
- `export_single_file(pipe, path, *, family=None, dtype=None, metadata=None) -> Path`
- `save_config_folder(pipe, folder) -> Path`
- `fingerprint_unet(unet) -> str`, `check_fingerprint(expected, actual, *, force=False)`
- `config_dir(family, prediction_type=None) -> Path`, `family_tokenizers(family) -> dict`
- errors: `FmnError` (user errors), `ModelLoadError`, `FingerprintMismatch`
"""

from fmn_desktop.models.errors import FingerprintMismatch, FmnError, ModelLoadError
from fmn_desktop.models.export import export_single_file, save_config_folder, save_model
from fmn_desktop.models.families import (
    FAMILIES,
    config_dir,
    detect_family_from_keys,
    family_tokenizers,
    load_tokenizer,
)
from fmn_desktop.models.fingerprint import check_fingerprint, fingerprint_unet, short_fingerprint
from fmn_desktop.models.ldm import pipeline_family, pipeline_to_ldm
from fmn_desktop.models.loading import LoadedModel, load_pipeline

__all__ = [
    "FAMILIES",
    "FingerprintMismatch",
    "FmnError",
    "LoadedModel",
    "ModelLoadError",
    "check_fingerprint",
    "config_dir",
    "detect_family_from_keys",
    "export_single_file",
    "save_model",
    "family_tokenizers",
    "fingerprint_unet",
    "load_pipeline",
    "load_tokenizer",
    "pipeline_family",
    "pipeline_to_ldm",
    "save_config_folder",
    "short_fingerprint",
]
