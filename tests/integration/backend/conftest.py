"""Fixtures for the backend integration tests (helpers live in helpers.py, the driver in driver.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import load_hf, load_runner  # noqa: E402


@pytest.fixture
def runner_and_hf(tiny_model):
    def make(family, block_size=16, **overrides):
        path = tiny_model(family, **overrides)
        return load_runner(path, block_size), load_hf(path)
    return make
