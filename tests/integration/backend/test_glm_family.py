"""GLM-4 family on the own path, in-process: 8 prompts served concurrently by the engine with chunked prefill,
then 3 more that reuse prefixes from the prefix cache, each equal to transformers (tokens and logprobs)."""
from __future__ import annotations

import pytest
import torch

from tests.support.arch_parity import REUSED, SHARED, STEPS, check_request, waves
from tests.support.backend_helpers import load_hf, load_runner
from mindie_like.engine.core import EngineCore
from mindie_like.engine.types import EngineConfig, SamplingParams

VOCAB = 2048        # the lm_head over the tokenizer's 151k ids would be most of the test's time
PARAMS = SamplingParams(temperature=0, max_tokens=STEPS, ignore_eos=True, logprobs=2)


def serve(runner, path, prompts, core=None):
    if core is None:
        cfg = EngineConfig(model_path=str(path), block_size=runner.block_size, max_prefill_tokens=24,
                           chunked_prefill=True, num_kv_blocks=160)
        core = EngineCore(cfg, runner)
    toks, tops, cached = {}, {}, {}
    for i, p in enumerate(prompts):
        core.add_request(core.make_request(f"r{i}", p, PARAMS))
    while core.has_work():
        for req, o in core.step():
            toks.setdefault(req.request_id, []).extend(o.new_token_ids)
            tops.setdefault(req.request_id, []).extend([list(lp.top) for lp in (o.logprobs or [])])
            cached[req.request_id] = o.num_cached_tokens
    return core, toks, tops, cached


def serve_and_compare(path):
    runner, hf = load_runner(path, block_size=8), load_hf(path)
    assert runner.path == "own"
    first, second = waves()
    core, toks, tops, _ = serve(runner, path, first)
    checked = sum(check_request(hf, p, toks[f"r{i}"], tops[f"r{i}"]) for i, p in enumerate(first))
    _, toks2, tops2, cached = serve(runner, path, second, core)
    assert sum(cached.values()) >= REUSED * SHARED      # the shared 40 tokens are 5 whole blocks of 8
    checked += sum(check_request(hf, p, toks2[f"r{i}"], tops2[f"r{i}"]) for i, p in enumerate(second))
    assert checked >= 0.75 * (len(first) + len(second)) * STEPS
    return runner


@pytest.mark.parametrize("family", ["glm", "glm4", "glm4_moe"])
def test_glm_family_serves_like_transformers(family, tiny_model):
    runner = serve_and_compare(tiny_model(family, vocab_size=VOCAB))
    m = runner.model
    rotary = m.layers[0].self_attn.rotary
    assert rotary.rotary_dim == m.head_dim // 2 and rotary.is_neox_style == (family == "glm4_moe")
    assert hasattr(m.layers[0], "post_mlp_layernorm") == (family == "glm4")
    assert (m.layers[0].self_attn.q_norm is not None) == (family == "glm4_moe")     # GLM-4.5's use_qk_norm
