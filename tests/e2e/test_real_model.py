"""Opt-in (`bin/run_tests -m real_model`): the default config's demo model, as bin/install leaves it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.real_model

DEMO = Path(os.environ.get("MINDIE_LIKE_DEMO_MODEL", REPO / "models" / "qwen2.5-coder-0.5b-instruct"))


@pytest.fixture(scope="module")
def demo(daemon_factory):
    if not any(DEMO.glob("*.gguf")) and not (DEMO / "config.json").is_file():
        pytest.skip(f"the demo model is not at {DEMO}: run bin/fetch_models")
    # share the GGUF tokenizer cache with the checkout's own runs (the first load of a GGUF takes a minute or more)
    return daemon_factory(DEMO, env={"MINDIE_LIKE_CACHE_DIR": os.environ.get("MINDIE_LIKE_CACHE_DIR",
                                                                             str(REPO / "cache"))})


def test_demo_model_is_served(demo):
    status, raw = demo.request("GET", "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["id"] == "qwen2.5-coder-0.5b-instruct"
    status, raw = demo.request("GET", "/info", plane="management")
    assert json.loads(raw)["model_type"] == "qwen2"
