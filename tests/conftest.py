"""Session-wide fixtures shared by unit, integration and e2e tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **overrides) -> path of a tiny random model, built once per session per key."""
    cache: dict = {}

    def get(family: str, **overrides) -> Path:
        key = (family, repr(sorted(overrides.items())))      # repr: list values (mlp_only_layers) too
        if key not in cache:
            dest = tmp_path_factory.mktemp(f"tiny_{family}")
            cache[key] = build_tiny_model(dest, family, **overrides)
        return cache[key]

    return get
