"""The 2025-2026 families under their grammars, on a tokenizer that has their special tokens
(tests/data/tokenizers/toolcall2026): random logits sampled through the mask as the engine does, and whatever
gets sampled, the family's own parser (the one the server runs on the output) finds a schema-valid call of a
declared tool. `required` and a named tool_choice over 25 seeds each per family by default, 100 under the `fuzz`
marker; one grammar per plan."""
from __future__ import annotations

import pytest

from guided_helpers import SCHEMAS, TOOLS, named, sample
from mindie_like.tool_call import ToolsCallProcessorManager

jsonschema = pytest.importorskip("jsonschema")

NEW_FAMILIES = ("kimi_k2", "glm45", "glm47", "minimax_m2", "gpt_oss", "seed_oss", "pythonic", "llama4_pythonic")
NAMES = [t["function"]["name"] for t in TOOLS]
# seeds per family: 25 by default, 100 under `fuzz` (the same checks, more samples)
SEED_COUNTS = [pytest.param(25, id="25-seeds"), pytest.param(100, id="100-seeds", marks=pytest.mark.fuzz)]


def _calls(family: str, text: str) -> list[tuple[str, dict]]:
    import json
    res = ToolsCallProcessorManager.get_tool_call_processor(family)().decode(text, TOOLS)
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in res["tool_calls"]]


@pytest.mark.parametrize("seeds", SEED_COUNTS)
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_required_and_named_always_yield_a_valid_call(g2026, family, seeds):
    g, tok = g2026
    plans = {"required": g.plan(family, TOOLS, "required"),
             "single": g.plan(family, TOOLS, "required", parallel_tool_calls=False)}
    plans.update({n: g.plan(family, TOOLS, named(n)) for n in NAMES})
    for seed in range(2 * seeds):
        # even seeds: required (parallel allowed, every fourth one parallel_tool_calls=false); odd: named
        key = ("required" if seed % 4 else "single") if seed % 2 == 0 else NAMES[(seed // 2) % len(NAMES)]
        ids, finished = sample(g, plans[key], seed)
        assert finished, (family, seed, len(ids))
        text = tok.decode(ids, skip_special_tokens=False)
        calls = _calls(family, text)
        assert calls, (family, seed, text)
        for name, args in calls:
            assert name in SCHEMAS, text
            jsonschema.validate(args, SCHEMAS[name])
        if key in NAMES:
            assert [n for n, _ in calls] == [key], text
        if key == "single" or not plans[key].parallel_tool_calls:
            assert len(calls) == 1, text


# ---------------------------------------------------------------- strict tools in tool_choice "auto"
STRICT_FAMILIES = ("qwen2_5", "kimi_k2", "glm45", "glm47", "minimax_m2", "seed_oss", "pythonic", "llama4_pythonic")


def _sample_auto(g, plan, seed: int, trigger_id, cap: int = 400):
    """Random picks among the allowed tokens, with the call marker and the end of turn made likely, so that some
    outputs start a call and some end as text."""
    import numpy as np
    import torch
    mask = g.build_mask_sync(plan)
    rng = np.random.default_rng(seed)
    eos = set(g.eos_token_ids)
    ids: list[int] = []
    for step in range(cap):
        row = rng.random(g.vocab_size, dtype=np.float32)
        if trigger_id is not None and seed % 3 and step == 3 + seed % 7:
            row[trigger_id] = 2.0            # two outputs in three start a call after a few tokens
        for e in eos:
            row[e] = 1.5 if step > 12 else row[e]
        mask.apply(torch.from_numpy(row))
        tok = int(np.argmax(row))
        assert mask.accept(tok), mask.error
        if tok in eos:
            return ids, True
        ids.append(tok)
        if mask.is_finished():
            return ids, True
    return ids, False


@pytest.mark.parametrize("seeds", SEED_COUNTS)
@pytest.mark.parametrize("family", STRICT_FAMILIES)
def test_strict_tools_in_auto(g2026, family, seeds):
    """Every call the model starts is a schema-valid call of a declared tool; an output without the marker is
    text, reported as content unchanged."""
    import copy
    g, tok = g2026
    tools = copy.deepcopy(TOOLS)
    for t in tools:
        t["function"]["strict"] = True
    plan = g.plan(family, tools, "auto")
    assert plan is not None and plan.mode == "auto_strict"
    assert g.plan(family, TOOLS, "auto") is None                     # not strict: nothing enforced in auto
    assert g.plan(family, TOOLS, "auto", strict=True).mode == "auto_strict"   # the serving-side default
    from mindie_like.guided.formats import FAMILY_FORMATS
    trigger = FAMILY_FORMATS[family].trigger_text()
    trigger_id = g.special_token_id(trigger)
    if trigger_id is None:                 # a text marker (pythonic "["): its one token
        (trigger_id,) = tok.encode(trigger, add_special_tokens=False)
    proc = ToolsCallProcessorManager.get_tool_call_processor(family)()
    called = texts = 0
    for seed in range(seeds):
        ids, finished = _sample_auto(g, plan, seed, trigger_id)
        text = tok.decode(ids, skip_special_tokens=False)
        res = proc.decode(text, tools)
        if trigger in text:
            called += 1
            assert finished, (seed, text)
            assert res["tool_calls"], (seed, text)
            for c in res["tool_calls"]:
                import json
                assert c["function"]["name"] in SCHEMAS
                jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[c["function"]["name"]])
        else:
            texts += 1
            assert res == {"content": text, "tool_calls": []}, (seed, text)
    assert called >= 0.3 * seeds and texts >= 0.2 * seeds, (called, texts)    # both outcomes, often


@pytest.mark.parametrize("family, text", [
    ("gpt_oss", "<|channel|>analysis<|message|>I should look it up.<|end|><|start|>assistant<|channel|>commentary "
                'to=functions.search <|constrain|>json<|message|>{"query": "llm"}'),
    ("seed_oss", "<seed:think>Look it up.</seed:think>\n<seed:tool_call>\n<function=search>\n<parameter=query>llm"
                 "</parameter>\n</function>\n</seed:tool_call>"),
    ("kimi_k2", "<think>Look it up.</think><|tool_calls_section_begin|><|tool_call_begin|>functions.search:0"
                '<|tool_call_argument_begin|>{"query": "llm"}<|tool_call_end|><|tool_calls_section_end|>'),
])
def test_reasoning_before_the_call_in_the_familys_own_spelling(g2026, family, text):
    """With reasoning on, the grammar's reasoning block is the family's (harmony's analysis channel, Seed's
    <seed:think>): what the model writes is accepted token by token and parses to reasoning + the call."""
    from guided_helpers import feed
    g, tok = g2026
    ok, mask, _ = feed(g, text, tok, g.plan(family, TOOLS, "required", reasoning=True))
    assert ok and mask.is_accepting(), mask.error
    ok, _, _ = feed(g, text, tok, g.plan(family, TOOLS, "required"))
    assert not ok                      # without reasoning the call must come first
