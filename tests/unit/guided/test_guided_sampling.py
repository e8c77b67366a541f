"""Random logits through apply/accept, as the engine drives a request: whatever gets sampled, the output is a
schema-valid call of a declared tool in the family's format; "required" yields at least one call, a named
function only that function, parallel_tool_calls=false exactly one call."""
from __future__ import annotations

import json

import pytest

from guided_helpers import ALL_FAMILIES, ARGS_ONLY, SCHEMAS, TOOLS, named, parse, sample

jsonschema = pytest.importorskip("jsonschema")

SEEDS = range(20)
NAMES = [t["function"]["name"] for t in TOOLS]


def _case(seed: int):
    """Seed -> (tool_choice, parallel_tool_calls, expected name or None, vocab padding)."""
    mode = seed % 3
    pad = 64 if seed % 4 == 0 else 0          # logits row longer than the tokenizer (model vocab padding)
    if mode == 0:
        return "required", True, None, pad
    if mode == 1:
        name = NAMES[seed % len(NAMES)]
        return named(name), True, name, pad
    return "required", False, None, pad


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_random_logits_always_yield_valid_calls(gd, family, seed):
    g, tok = gd(family)
    tool_choice, parallel, want_name, pad = _case(seed)
    plan = g.plan(family, TOOLS, tool_choice, parallel_tool_calls=parallel)
    ids, finished = sample(g, plan, seed, pad=pad)
    assert finished, f"not finished after {len(ids)} tokens"
    text = tok.decode(ids, skip_special_tokens=False)
    calls = parse(family, text, function_name=plan.function_name)
    assert len(calls) >= 1, text
    for name, args in calls:
        assert name in SCHEMAS, text
        jsonschema.validate(args, SCHEMAS[name])
        if want_name:
            assert name == want_name, text
    if not parallel or family in ARGS_ONLY or family == "glm4":
        assert len(calls) == 1, text
    if family in ARGS_ONLY:
        assert [(n, json.loads(a)) for n, a in plan.extract_calls(text)] == calls
