"""schemathesis against the running daemon over mutual TLS, for every operation of docs/openapi.yaml (the MindIE
compat routes included).

Each operation is fuzzed with data that fits its schema (positive) and data that does not (negative), and every
answer must pass: not a 5xx, a status the document lists, the content type it lists, a body that matches the
response schema. After each operation the daemon process must still be alive.

The CI-sized run is in the default suite (a few examples per operation); the full run is behind the `fuzz` marker:

    python -m pytest tests/e2e/test_openapi_fuzz.py -m fuzz   # MINDIE_FUZZ_EXAMPLES=300

Generation stays cheap whatever `max_tokens` or `n` the fuzzer picks: the daemon runs a tiny random model with
maxIterTimes 4 (the cap on generated tokens per choice).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

REPO = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CI_EXAMPLES = {"GET": 5, "POST": 12}          # per operation and mode; the volume is the `fuzz` run's (300)
FULL_EXAMPLES = int(os.environ.get("MINDIE_FUZZ_EXAMPLES", "300"))


def _operations():
    params = []
    for result in schemathesis.openapi.from_dict(SPEC).get_all_operations():
        op = result.ok()
        plane = SPEC["paths"][op.path]["x-mindie-plane"]
        # only a body can be made invalid: a path parameter (any string) or no input at all cannot
        takes_input = op.method.upper() in ("POST", "PUT", "PATCH")
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,)
        for mode in modes:
            label = f"{op.method.upper()} {op.path}:{mode.value}"
            params.append(pytest.param(op, plane, mode, "ci", id=label))
            params.append(pytest.param(op, plane, mode, "full", id=label + ":full", marks=pytest.mark.fuzz))
    return params


@pytest.fixture(scope="module")
def daemon(capped_daemon):
    return capped_daemon          # maxIterTimes 4


@pytest.fixture(scope="module")
def session():
    s = requests.Session()
    yield s
    s.close()


def _tls(daemon, plane: str) -> dict:
    """requests' TLS arguments: schemathesis passes its own `verify` per call, so they go with each call. Each
    plane has its own CA and client certificate."""
    return {"verify": str(daemon.certs[f"{plane}_ca"]), "cert": (str(daemon.certs[f"{plane}_cert"]),
                                                                  str(daemon.certs[f"{plane}_key"]))}


@pytest.mark.parametrize("operation,plane,mode,size", _operations())
def test_operation_holds_under_fuzzing(daemon, session, operation, plane, mode, size):
    base_url = f"https://{daemon.host}:{daemon.port_of(plane)}"
    examples = FULL_EXAMPLES if size == "full" else CI_EXAMPLES.get(operation.method.upper(), 5)
    sent = []
    refusals: Counter = Counter()
    tls = _tls(daemon, plane)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=size == "ci",
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if mode == GenerationMode.POSITIVE:   # else nearly every valid case stops at "Model not found"
            if isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = daemon.model_name
            # a model in the path: every other case names the served one (the route's work), the rest keep the
            # generated name (the route's 404)
            if case.path_parameters and "model" in case.path_parameters and len(sent) % 2 == 0:
                case.path_parameters["model"] = daemon.model_name
        response = case.call_and_validate(base_url=base_url, session=session, checks=CHECKS, timeout=120, **tls)
        sent.append(response.status_code)
        if response.status_code >= 400:   # the error body (the checks above validated it) names the parameter
            error = json.loads(response.content)["error"]      # MindIE's string, or OpenAI's / Anthropic's object
            message = error if isinstance(error, str) else error["message"]
            refusals[message.split(":")[0][:40]] += 1

    run()
    assert sent, "no case was generated"
    print(f"MEASURE {operation.method.upper()} {operation.path} {mode.value}: {len(sent)} requests, statuses "
          f"{dict(sorted(Counter(sent).items()))}; refused for {dict(refusals.most_common(8))}")
    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.output[-3000:]}"
    status, _ = daemon.request("GET", "/v1/models")
    assert status == 200
