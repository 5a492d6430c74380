"""Fixtures of the model tests; the tiny pipelines themselves live in model_helpers.py."""

from __future__ import annotations

import pytest
from model_helpers import Saved


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Every test here fails if anything tries to open a network connection."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    original = socket.socket.connect, socket.socket.connect_ex, socket.create_connection
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    yield
    socket.socket.connect, socket.socket.connect_ex, socket.create_connection = original


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """saved(family) -> Saved, built once per session."""
    cache: dict[str, Saved] = {}

    def get(family: str) -> Saved:
        if family not in cache:
            cache[family] = Saved(family, tmp_path_factory.mktemp(family))
        return cache[family]

    return get
