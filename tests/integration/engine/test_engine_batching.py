"""The engine on tiny random models: batch invariance (together = alone), chunked prefill, preemption, prefix
cache. Runs against the test-only ReferenceRunner (transformers recomputing every step: the oracle) and the real
backend ModelRunner (own paged path and the generic HF path)."""
from __future__ import annotations

import random

import pytest
import torch

from mindie_like.engine.core import EngineCore
from mindie_like.engine.types import EngineConfig, SamplingParams
from tests.support.reference_runner import ReferenceRunner

NEAR_TIE = 1e-3
N_OUT = 12
RUNNERS = ["reference", "own", "generic"]


def load_runner(kind: str, path, block_size: int):
    if kind == "reference":
        return ReferenceRunner(path, block_size=block_size)
    from mindie_like.backend_atb.runner import ModelRunner
    cfg = EngineConfig(model_path=str(path), dtype="float32", device="cpu", block_size=block_size,
                       num_threads=torch.get_num_threads(), force_generic=kind == "generic")
    return ModelRunner.load(cfg)


@pytest.fixture(scope="module")
def model_path(tiny_model):
    return tiny_model("llama")


@pytest.fixture(scope="module", params=RUNNERS)
def kind(request):
    return request.param


def make_core(kind, path, block_size=16, num_blocks=256, **kw):
    runner = load_runner(kind, path, block_size)
    cfg = EngineConfig(model_path=str(path), block_size=block_size, num_kv_blocks=num_blocks, **kw)
    return EngineCore(cfg, runner), runner


def prompts(n=8, seed=0):
    rng = random.Random(seed)
    lens = [5, 17, 33, 64, 100, 7, 50, 23][:n]
    return [[rng.randrange(3, 2000) for _ in range(k)] for k in lens]


PARAMS = SamplingParams(temperature=0, max_tokens=N_OUT, ignore_eos=True, logprobs=2)


def run(core, ps, params=PARAMS, ids=None):
    toks, lps, cached = {}, {}, {}
    ids = ids or [f"r{i}" for i in range(len(ps))]
    for rid, p in zip(ids, ps):
        core.add_request(core.make_request(rid, p, params))
    while core.has_work():
        for req, o in core.step():
            toks.setdefault(req.request_id, []).extend(o.new_token_ids)
            lps.setdefault(req.request_id, []).extend(o.logprobs or [])
            cached[req.request_id] = o.num_cached_tokens
    return toks, lps, cached


def assert_same_greedy(got, ref, ref_lps):
    """Identical tokens up to the first step where the reference's top-two logprobs are a near-tie."""
    for i, (a, b) in enumerate(zip(got, ref)):
        top = ref_lps[i].top
        if len(top) > 1 and top[0][1] - top[1][1] < NEAR_TIE:
            return i
        assert a == b, f"token {i} differs: {a} != {b}"
    assert len(got) == len(ref)
    return len(ref)


_alone_cache: dict = {}


def alone(kind, path):
    if kind not in _alone_cache:
        core, _ = make_core(kind, path)
        res = {}
        for i, p in enumerate(prompts()):
            t, l, _ = run(core, [p], ids=[f"r{i}"])
            res[f"r{i}"] = (t[f"r{i}"], l[f"r{i}"])
        _alone_cache[kind] = res
    return _alone_cache[kind]


def check_all(kind, path, toks):
    ref = alone(kind, path)
    checked = sum(assert_same_greedy(toks[rid], rt, rl) for rid, (rt, rl) in ref.items())
    assert checked >= 0.75 * N_OUT * len(ref)       # near-ties are rare with initializer_range 0.2


def test_alone_matches_transformers_generate(model_path):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    ref = alone("reference", model_path)
    for i, p in enumerate(prompts()[:3]):
        g = m.generate(torch.tensor([p]), max_new_tokens=N_OUT, min_new_tokens=N_OUT, do_sample=False)
        assert_same_greedy(g[0, len(p):].tolist(), ref[f"r{i}"][0], ref[f"r{i}"][1])


def test_batch_invariance(kind, model_path):
    core, runner = make_core(kind, model_path)
    toks, _, _ = run(core, prompts())
    check_all(kind, model_path, toks)
    st = core.stats()
    assert st.free_blocks == st.total_blocks and st.requests_finished_total == 8


def test_batch_invariance_chunked_prefill(kind, model_path):
    core, runner = make_core(kind, model_path, max_prefill_tokens=24, chunked_prefill=True)
    orig = core.scheduler.schedule
    sizes = []

    def spy():
        out = orig()
        sizes.append(out.num_tokens)
        return out
    core.scheduler.schedule = spy
    toks, _, _ = run(core, prompts())
    assert max(sizes) <= 24
    check_all(kind, model_path, toks)


def test_batch_invariance_preemption(kind, model_path):
    # 12 blocks of 16 tokens = 192 token slots for 8 requests needing 5..112 tokens each
    core, runner = make_core(kind, model_path, num_blocks=12)
    toks, _, _ = run(core, prompts())
    assert core.scheduler.num_preemptions > 0
    check_all(kind, model_path, toks)
    assert core.stats().free_blocks == 12


@pytest.mark.parametrize("partial", [True, False], ids=["to-the-token", "whole-blocks"])
@pytest.mark.parametrize("kind_", ["reference", "own"])
def test_prefix_cache_shared_300_token_prefix(kind_, partial, model_path):
    rng = random.Random(5)
    shared = [rng.randrange(3, 2000) for _ in range(300)]
    a = shared + [rng.randrange(3, 2000) for _ in range(10)]
    b = shared + [rng.randrange(3, 2000) for _ in range(7)]
    core, runner = make_core(kind_, model_path, partial_block_reuse=partial)
    assert core.enable_prefix_cache and core.bm.partial_reuse == partial
    run(core, [a], ids=["a"])
    before = core.scheduler.computed_tokens_total
    toks, lps, cached = run(core, [b], ids=["b"])
    # 300 shared tokens = 18 full blocks of 16 (288 tokens) + 12 tokens of the 19th. By whole blocks b computes
    # its last 307 - 288 = 19 prompt tokens; to the token, the 12 are copied from a's 19th block and b computes 7.
    # Then one token per decode step.
    n_cached = 300 if partial else 288
    assert cached["b"] == n_cached
    assert core.scheduler.computed_tokens_total - before == (307 - n_cached) + (N_OUT - 1)
    assert core.stats().cached_tokens_total == n_cached
    if kind_ == "reference":
        assert runner.batches[-N_OUT][1] == 307 - n_cached
        assert runner.copied_tokens == n_cached - 288
    # same tokens and log-probabilities as without the cache
    fresh, _ = make_core(kind_, model_path, enable_prefix_cache=False)
    ft, fl, fc = run(fresh, [b], ids=["b"])
    assert fc["b"] == 0
    checked = assert_same_greedy(toks["b"], ft["b"], fl["b"])
    for got, ref in zip(lps["b"][:checked], fl["b"][:checked]):
        assert [t for t, _ in got.top] == [t for t, _ in ref.top]
        assert [lp for _, lp in got.top] == pytest.approx([lp for _, lp in ref.top], abs=1e-4)
    assert core.stats().free_blocks == core.stats().total_blocks


def test_generic_path_turns_prefix_cache_off(model_path):
    core, runner = make_core("generic", model_path)
    assert not core.enable_prefix_cache
