"""Opt-in (`-m real_model`): benchmarks/tool_accuracy.py run as a user runs it, on three of its cases with the
float format of the demo model (the daemon over mutual TLS, one thread): its JSON is well-formed and the simplest
case is answered right. A few minutes on one core (the daemon's start-up included).

    PYTHONPATH=. python -m pytest tests/e2e/test_tool_accuracy_real.py -m real_model
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.tool_accuracy import DEFAULT_GGUF

from .conftest import REPO

pytestmark = pytest.mark.real_model

GGUF = Path(os.environ.get("MINDIE_LIKE_DEMO_GGUF", DEFAULT_GGUF))
IDS = ["simple_weather", "multiple_stock", "irrelevance_capital"]


def test_tool_accuracy_script_on_three_cases(tmp_path):
    if not GGUF.is_file():
        pytest.fail(f"the demo model is not at {GGUF}: run bin/fetch_models (or set MINDIE_LIKE_DEMO_GGUF)")
    out = tmp_path / "tool_accuracy.json"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.tool_accuracy", "--gguf", str(GGUF), "--formats",
                           "float", "--ids", ",".join(IDS), "--threads", "1", "--out", str(out)],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| float |" in proc.stdout and f"written: {out}" in proc.stdout

    result = json.loads(out.read_text())
    assert result["meta"]["cases"] == 3 and result["meta"]["threads"] == 1
    assert list(result["formats"]) == ["float"] and result["agreement_with_float"] == {}
    run = result["formats"]["float"]
    assert run["start_s"] > 0 and run["requests_s"] > 0 and run["wall_s"] >= run["start_s"] + run["requests_s"] - 1
    assert [r["id"] for r in run["cases"]] == IDS
    for r in run["cases"]:
        assert isinstance(r["correct"], bool) and r["why"] and r["finish_reason"] in ("stop", "length", "tool_calls")
        assert r["completion_tokens"] > 0
        for c in r["calls"]:
            assert set(c) == {"name", "arguments", "raw"}
    summary = run["summary"]
    assert summary["overall"]["total"] == 3
    assert summary["overall"]["correct"] == sum(r["correct"] for r in run["cases"])
    assert {c: v["total"] for c, v in summary["by_category"].items()} == {"simple": 1, "multiple": 1,
                                                                            "irrelevance": 1}
    weather = run["cases"][0]
    assert weather["correct"], weather
    assert [c["name"] for c in weather["calls"]] == ["get_weather"]
    assert weather["calls"][0]["arguments"]["city"].casefold() == "paris"
