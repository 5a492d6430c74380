"""Where the registry lives: `--registry DIR`, else `$FMN_REGISTRY`, else the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FMN_REGISTRY"
APP_NAME = "forget-me-not-studio"
DB_NAME = "registry.db"
STORE_NAME = "patches"
CACHE_NAME = "cache"  # things that can be made again (reference latents), beside the database


def registry_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The registry folder: `explicit`, else `$FMN_REGISTRY`, else the platform's data dir.

    >>> registry_dir("/tmp/reg")
    PosixPath('/tmp/reg')
    """
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False)) / "registry"


def cache_dir(root: str | os.PathLike | None, kind: str) -> Path:
    """The folder of one kind of cached data of the registry at `root` (see `registry_dir`)."""
    return registry_dir(root) / CACHE_NAME / kind
