"""The registry's cache of reference latents: the one a job uses, what it holds, clearing it.

Jobs that draw reference images with the model (forget, broad removal, disentangling, the
bench, the demo) keep them in `<registry>/cache/references/` and reuse them when the model and
the sampler settings are the same (`resteer.refcache`); the patch is the same either way.
"""

from __future__ import annotations

import os

from fmn_desktop.resteer.refcache import CacheInfo, ReferenceCache

REFERENCES = "references"


def reference_cache(
    registry_root: str | os.PathLike | None = None, enabled: bool = True
) -> ReferenceCache | None:
    """The reference cache of the registry at `registry_root` (None: `$FMN_REGISTRY`, else the
    user data folder); None when not `enabled` (references drawn afresh, none kept)."""
    if not enabled:
        return None
    from fmn_desktop.registry.location import cache_dir

    return ReferenceCache(cache_dir(registry_root, REFERENCES))


def cache_info(registry_root: str | os.PathLike | None = None) -> CacheInfo:
    """Where the reference cache is, how many latents it holds and their size."""
    return reference_cache(registry_root).info()


def clear_cache(registry_root: str | os.PathLike | None = None) -> CacheInfo:
    """Remove every cached reference latent; returns what was removed."""
    return reference_cache(registry_root).clear()
