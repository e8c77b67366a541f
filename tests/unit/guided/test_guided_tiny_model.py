"""A tiny random transformers model sampling under the grammar of each 2025-2026 family, as the engine would:
logits → the request's mask → a seeded multinomial pick → accept. Whatever it samples, the family's own parser
finds a schema-valid call of the declared tool(s). Rows of one batch are independent requests (one mask and one
generator each), so one forward per step serves them all. Default: 8 rows per family and mode; `-m fuzz`: 100."""
from __future__ import annotations

import json

import pytest

from guided_helpers import SCHEMAS, TOOLS, named
from mindie_like.tool_call import ToolsCallProcessorManager

torch = pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")

FAMILIES = ("kimi_k2", "glm45", "glm47", "minimax_m2", "gpt_oss", "seed_oss", "pythonic", "llama4_pythonic")


@pytest.fixture(scope="module")
def setup(g2026):
    import transformers
    g, tok = g2026
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                                   initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    return g, tok, model


def _sample_rows(g, model, plans, seeds, cap: int = 300) -> list[list[int]]:
    """One request per (plan, seed): the model's logits, masked, sampled with the request's own generator."""
    import numpy as np
    masks = [g.build_mask_sync(p) for p in plans]
    rngs = [np.random.default_rng(s) for s in seeds]
    eos = set(g.eos_token_ids)
    n = len(plans)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    ids = torch.full((n, 1), g.eos_token_ids[0], dtype=torch.long)   # a one-token "prompt"
    past = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # a tiny model: the intra-op pool only costs time on a busy machine
    try:
        with torch.no_grad():
            for _ in range(cap):
                res = model(input_ids=ids, cache=past, use_cache=True)
                past = res["cache"]
                logits = np.ascontiguousarray(res.logits[:, -1, : g.vocab_size].float().numpy())
                nxt = []
                for i in range(n):
                    if done[i]:
                        nxt.append(g.eos_token_ids[0])
                        continue
                    row = logits[i]
                    masks[i].apply(torch.from_numpy(row))           # -inf where the grammar forbids
                    p = np.exp(row - row.max())
                    tok = int(rngs[i].choice(len(p), p=p / p.sum()))
                    assert masks[i].accept(tok), masks[i].error
                    if tok in eos or masks[i].is_finished():
                        done[i] = True
                    if tok not in eos:
                        out[i].append(tok)
                    nxt.append(tok)
                if all(done):
                    return out
                ids = torch.tensor(nxt).unsqueeze(1)
    finally:
        torch.set_num_threads(threads)
    raise AssertionError(f"{sum(not d for d in done)} of {n} requests unfinished after {cap} tokens")


def _run(setup, family: str, per_mode: int):
    g, tok, model = setup
    names = [t["function"]["name"] for t in TOOLS]
    plans, keys = [], []
    for k in range(per_mode):
        # parallel_tool_calls=false: a peaked random model may otherwise prefer another call to ending its turn
        plans.append(g.plan(family, TOOLS, "required", parallel_tool_calls=False))
        keys.append(None)
        name = names[k % len(names)]
        plans.append(g.plan(family, TOOLS, named(name)))
        keys.append(name)
    rows = _sample_rows(g, model, plans, range(len(plans)))
    proc = ToolsCallProcessorManager.get_tool_call_processor(family)()
    for ids, want in zip(rows, keys):
        text = tok.decode(ids, skip_special_tokens=False)
        calls = proc.decode(text, TOOLS)["tool_calls"]
        assert calls, text
        for c in calls:
            name = c["function"]["name"]
            assert name in SCHEMAS and (want is None or name == want), text
            jsonschema.validate(json.loads(c["function"]["arguments"]), SCHEMAS[name])
        assert len(calls) == 1, text


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_under_required_and_named(setup, family):
    _run(setup, family, per_mode=8)


@pytest.mark.fuzz
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_under_required_and_named_100_seeds(setup, family):
    _run(setup, family, per_mode=100)
