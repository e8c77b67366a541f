"""Session-wide fixtures shared by unit, integration and e2e tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ helpers (tiny_models) importable everywhere

from tiny_models import build_tiny_model  # noqa: E402


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
