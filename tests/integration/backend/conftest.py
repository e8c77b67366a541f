"""Fixtures for the backend integration tests (helpers live in helpers.py, the driver in driver.py)."""
from __future__ import annotations

import pytest

from tests.support.backend_helpers import load_hf, load_runner


@pytest.fixture
def runner_and_hf(tiny_model):
    def make(family, block_size=16, **overrides):
        path = tiny_model(family, **overrides)
        return load_runner(path, block_size), load_hf(path)
    return make
