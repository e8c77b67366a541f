"""Scheduler and engine core against FakeRunner (paged token store + deterministic logits): fast, no model."""
import random

import pytest

from tests.support.engine_fakes import FakeRunner
from mindie_like.engine.core import EngineCore
from mindie_like.engine.types import EngineConfig, EngineError, SamplingParams
from mindie_like.protocol.errors import ValidationFailure
from mindie_like.serving.common import ServingOptions, fit_prompt

GREEDY = dict(temperature=0, ignore_eos=True)


def make_core(runner=None, **kw):
    kw.setdefault("block_size", 4)
    runner = runner or FakeRunner(block_size=kw["block_size"], supports_prefix_cache=kw.pop("prefix", True))
    cfg = EngineConfig(model_path="fake", num_kv_blocks=kw.pop("num_blocks", 256), **kw)
    return EngineCore(cfg, runner), runner


def prompts(n=8, lo=3, hi=40, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(1, 64) for _ in range(rng.randrange(lo, hi))] for _ in range(n)]


def run(core, ps, params=None, max_steps=10000):
    params = params or SamplingParams(max_tokens=12, **GREEDY)
    outs, reasons = {}, {}
    for i, p in enumerate(ps):
        core.add_request(core.make_request(f"r{i}", p, params))
    steps = 0
    while core.has_work():
        steps += 1
        assert steps < max_steps
        for req, o in core.step():
            outs.setdefault(req.request_id, []).extend(o.new_token_ids)
            if o.finished:
                reasons[req.request_id] = o.finish_reason
    return outs, reasons


def alone(ps, params=None, **kw):
    res = {}
    for i, p in enumerate(ps):
        core, _ = make_core(**kw)
        out, _ = run(core, [p], params)
        res[f"r{i}"] = out["r0"]
    return res


def test_batch_equals_alone_and_all_blocks_freed():
    ps = prompts()
    core, runner = make_core()
    outs, reasons = run(core, ps)
    assert outs == alone(ps)
    assert set(reasons.values()) == {"length"} and all(len(v) == 12 for v in outs.values())
    st = core.stats()
    assert st.free_blocks == st.total_blocks and st.running == st.waiting == 0
    assert st.requests_finished_total == 8 and st.generation_tokens_total == 96
    assert max(n for n, _ in runner.batches) == 8          # really batched


def test_token_budget_and_decodes_first():
    ps = prompts(8, 10, 20)
    core, runner = make_core(max_prefill_tokens=32, chunked_prefill=False)
    orig = core.scheduler.schedule
    seen = []

    def spy():
        out = orig()
        lens = [s.num_new_tokens for s in out.scheduled]
        seen.append(lens)
        return out

    core.scheduler.schedule = spy
    outs, _ = run(core, ps)
    assert outs == alone(ps)
    for lens in seen:
        assert sum(lens) <= 32
        # decodes (1 token) come before prefills in the batch
        assert lens == sorted(lens, key=lambda n: n > 1)
    # whole prompts only (no chunking when Mix is off and prompts fit the budget)
    assert all(n in [len(p) for p in ps] or n == 1 for lens in seen for n in lens)


def test_chunked_prefill_matches():
    ps = prompts(6, 20, 70)
    core, runner = make_core(max_prefill_tokens=16, chunked_prefill=True)
    outs, _ = run(core, ps)
    assert outs == alone(ps)
    assert max(t for _, t in runner.batches) <= 16


def test_prompt_longer_than_budget_is_chunked_without_mix():
    p = prompts(1, 50, 51)
    core, runner = make_core(max_prefill_tokens=16, chunked_prefill=False)
    outs, _ = run(core, p)
    assert outs == alone(p)
    assert runner.batches[0][1] == 16


def test_max_batch_size_and_prefill_batch_size():
    ps = prompts(8, 3, 6)
    core, runner = make_core(max_batch_size=3, max_prefill_batch_size=2)
    orig = core.scheduler.schedule
    seen = []

    def spy():
        out = orig()
        seen.append((len(core.scheduler.running), sum(1 for s in out.scheduled if s.num_new_tokens > 1)))
        return out

    core.scheduler.schedule = spy
    outs, _ = run(core, ps)
    assert outs == alone(ps)
    assert max(r for r, _ in seen) <= 3 and max(p for _, p in seen) <= 2


@pytest.mark.parametrize("prefix", [True, False])
def test_preemption_by_recomputation(prefix):
    ps = prompts(6, 8, 20)
    params = SamplingParams(max_tokens=20, **GREEDY)
    core, runner = make_core(num_blocks=14, prefix=prefix)
    outs, reasons = run(core, ps, params)
    assert core.scheduler.num_preemptions > 0
    assert outs == alone(ps, params, prefix=prefix)
    assert set(reasons.values()) == {"length"}
    assert core.stats().free_blocks == 14
    assert set(runner.released) >= {f"r{i}" for i in range(6)}


def test_preempts_newest_first():
    core, runner = make_core(num_blocks=6)
    ps = [[1] * 7, [2] * 7, [3] * 7]
    for i, p in enumerate(ps):
        core.add_request(core.make_request(f"r{i}", p, SamplingParams(max_tokens=8, **GREEDY)))
    preempted = []
    while core.has_work():
        orig = core.scheduler.schedule()
        preempted.extend(r.request_id for r in orig.preempted)
        # drive the rest of the step by hand: build, execute, update, process
        if orig.is_empty:
            continue
        batch = core.scheduler.build_batch(orig)
        logits = core.execute_step(batch)
        core.scheduler.update(orig)
        core._process(orig, logits, 0.0)
    assert preempted and preempted[0] == "r2"


def test_lengths_and_truncation():
    core, _ = make_core(max_input_len=10, max_seq_len=20)
    with pytest.raises(EngineError, match="12 tokens.*10"):
        core.make_request("a", list(range(1, 13)), SamplingParams())
    core, _ = make_core(max_input_len=10, max_seq_len=20, truncation=-1)
    assert core.make_request("a", list(range(1, 13)), SamplingParams()).prompt_token_ids == list(range(3, 13))
    core, _ = make_core(max_input_len=10, max_seq_len=20, truncation=1)
    r = core.make_request("a", list(range(1, 13)), SamplingParams())
    assert r.prompt_token_ids == list(range(1, 11))
    assert r.max_new_tokens == 10                     # what is left of maxSeqLen
    core, _ = make_core(max_iter_times=5)
    assert core.make_request("a", [1, 2], SamplingParams(max_tokens=100)).max_new_tokens == 5
    assert core.make_request("b", [1, 2], SamplingParams(max_tokens=3)).max_new_tokens == 3
    with pytest.raises(EngineError):
        core.make_request("c", [], SamplingParams())
    with pytest.raises(EngineError):
        core.make_request("d", [1, 999], SamplingParams())


def test_engine_and_serving_refuse_a_long_prompt_with_the_same_words():
    core, _ = make_core(max_input_len=10, max_seq_len=20)
    with pytest.raises(EngineError) as engine_refusal:
        core.make_request("a", list(range(1, 13)), SamplingParams())
    with pytest.raises(ValidationFailure) as serving_refusal:
        fit_prompt(list(range(1, 13)), ServingOptions(limits=core.limits), None)
    assert serving_refusal.value.status == 422
    assert str(engine_refusal.value) == serving_refusal.value.message == \
        "prompt: 12 tokens is more than the limit of 10 (maxInputTokenLen)"


def test_max_iter_times_caps_generation():
    core, _ = make_core(max_iter_times=4)
    outs, reasons = run(core, [[1, 2, 3]], SamplingParams(**GREEDY))
    assert len(outs["r0"]) == 4 and reasons["r0"] == "length"


def test_eos_stop_ids_min_tokens():
    runner = FakeRunner(block_size=4)
    core, _ = make_core(runner)
    base, _ = run(core, [[5, 6, 7]], SamplingParams(max_tokens=30, **GREEDY))
    toks = base["r0"]
    stop_id = toks[5]
    first = toks.index(stop_id)
    core, _ = make_core()
    outs, reasons = run(core, [[5, 6, 7]], SamplingParams(max_tokens=30, temperature=0, stop_token_ids=[stop_id],
                                                          ignore_eos=True))
    assert outs["r0"] == toks[:first + 1] and reasons["r0"] == "stop"
    # EOS ends a request unless ignore_eos; before min_tokens EOS and stop ids are masked
    runner = FakeRunner(block_size=4, eos_token_ids=[stop_id])
    core, _ = make_core(runner)
    outs, reasons = run(core, [[5, 6, 7]], SamplingParams(max_tokens=30, temperature=0))
    assert outs["r0"] == toks[:first + 1] and reasons["r0"] == "stop"
    runner = FakeRunner(block_size=4, eos_token_ids=[stop_id])
    core, _ = make_core(runner)
    outs, reasons = run(core, [[5, 6, 7]], SamplingParams(max_tokens=30, temperature=0, min_tokens=first + 3))
    assert len(outs["r0"]) >= first + 3
    assert stop_id not in outs["r0"][:first + 3]


def test_step_error_fails_its_requests_and_engine_goes_on():
    core, runner = make_core()
    runner.fail_next = 1
    outs, reasons = run(core, prompts(3))
    assert set(reasons.values()) == {"error"}
    assert core.stats().free_blocks == core.stats().total_blocks
    outs, reasons = run(core, prompts(3))
    assert set(reasons.values()) == {"length"}


@pytest.mark.parametrize("partial", [True, False])
def test_prefix_cache_counts_and_skips_cached_tokens(partial):
    core, runner = make_core(block_size=4, partial_block_reuse=partial)
    shared = list(range(1, 31))                    # 30 tokens: 7 full blocks and 2 tokens of the 8th
    run(core, [shared + [40, 41]])
    before = runner.executed_tokens
    core2_outs, _ = run(core, [shared + [50, 51, 52]])
    # whole blocks: 28 cached tokens (7 blocks); to the token: 30 (the 8th block's first 2 tokens copied)
    cached = 30 if partial else 28
    assert runner.executed_tokens - before == (33 - cached) + 11
    assert core.stats().cached_tokens_total == cached
    assert runner.copied_tokens == cached - 28
    assert core2_outs["r0"] == alone([shared + [50, 51, 52]])["r0"]
    assert core.stats().free_blocks == core.stats().total_blocks


@pytest.mark.parametrize("partial", [True, False])
def test_burst_with_shared_prefix_computes_the_prefix_once(partial):
    """Requests arriving together with the same prefix: the first computes it, the others wait one step and
    take it from the prefix cache (same-step dedupe) instead of computing identical blocks side by side."""
    shared = list(range(1, 31))                    # 30 tokens: 7 full blocks of 4
    ps = [shared + [40 + i, 46 + i, 52 + i] for i in range(6)]
    core, runner = make_core(block_size=4, partial_block_reuse=partial)
    outs, _ = run(core, ps)
    assert outs == alone(ps)
    st = core.stats()
    cached = 30 if partial else 28                 # to the token, or the 7 whole blocks
    assert st.cached_tokens_total == 5 * cached
    # prefill: 33 tokens once, then the rest for each follower; then 11 decode steps of one token each
    assert runner.executed_tokens == 33 + 5 * (33 - cached) + 6 * 11
    assert core.scheduler.num_prefix_deferrals == 1    # one step of waiting, for the whole burst behind the first
    assert st.free_blocks == st.total_blocks


def test_same_step_dedupe_off_without_prefix_cache():
    shared = list(range(1, 31))
    ps = [shared + [40 + i] for i in range(3)]
    core, runner = make_core(block_size=4, enable_prefix_cache=False)
    outs, _ = run(core, ps)
    assert outs == alone(ps)
    assert core.scheduler.num_prefix_deferrals == 0
    assert runner.executed_tokens == 3 * 31 + 3 * 11


def test_prefix_cache_disabled_by_config_or_runner():
    core, runner = make_core(enable_prefix_cache=False)
    assert not core.enable_prefix_cache
    core, runner = make_core(prefix=False)
    assert not core.enable_prefix_cache


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("ENGINE_FUZZ_SEEDS", "12"))))
def test_random_workloads_match_alone(seed):
    """Random configs (tiny caches, budgets, chunking, prefix cache on/off) and prompts sharing prefixes, with
    aborts: every surviving request equals its solo run, and everything is freed at the end."""
    rng = random.Random(seed)
    bs = rng.choice([2, 4, 8])
    prefix = rng.random() < 0.7
    kw = dict(block_size=bs, prefix=prefix, max_prefill_tokens=rng.choice([8, 16, 64]),
              chunked_prefill=rng.random() < 0.5, max_batch_size=rng.choice([2, 4, 16]),
              max_prefill_batch_size=rng.choice([1, 3, 8]))
    base = [rng.randrange(1, 64) for _ in range(rng.randrange(5, 30))]
    ps = []
    for _ in range(rng.randrange(3, 9)):
        p = (base[:rng.randrange(0, len(base))] if rng.random() < 0.6 else []) + \
            [rng.randrange(1, 64) for _ in range(rng.randrange(1, 20))]
        ps.append(p)
    longest = max(len(p) for p in ps) + 16
    kw["num_blocks"] = -(-longest // bs) + rng.randrange(0, 6)      # at least one request always fits
    params = SamplingParams(max_tokens=16, **GREEDY)
    core, runner = make_core(**dict(kw))
    for i, p in enumerate(ps):
        core.add_request(core.make_request(f"r{i}", p, params))
    abort_at = {f"r{i}": rng.randrange(1, 40) for i in range(len(ps)) if rng.random() < 0.25}
    outs, reasons, step = {}, {}, 0
    while core.has_work():
        step += 1
        assert step < 5000
        for rid, at in list(abort_at.items()):
            if at == step:
                r = core.abort_request(rid)
                if r is not None:
                    reasons[rid] = r[1].finish_reason
        for req, o in core.step():
            outs.setdefault(req.request_id, []).extend(o.new_token_ids)
            if o.finished:
                reasons[req.request_id] = o.finish_reason
    assert not any(core.bm.ref_counts)
    assert core.bm.num_free_blocks == core.bm.num_blocks
    kw.pop("num_blocks")
    solo = alone(ps, params, num_blocks=core.bm.num_blocks, **kw)
    for rid, toks in solo.items():
        if reasons.get(rid) == "abort":
            assert outs.get(rid, []) == toks[:len(outs.get(rid, []))]
        else:
            assert reasons[rid] == "length" and outs[rid] == toks, rid


def test_failed_step_keeps_no_partial_copy_source():
    """A step that fails may not have run its KV copies: the failed request's last block must not become a copy
    source for the next request with the same prefix (it would copy slots that were never written)."""
    core, runner = make_core(block_size=4)
    shared = list(range(1, 31))                    # 7 full blocks + 2 tokens of the 8th
    run(core, [shared + [40, 41]])
    runner.fail_next = 1
    _, reasons = run(core, [shared + [50, 51, 52]])
    assert reasons == {"r0": "error"}
    copied = runner.copied_tokens
    outs, _ = run(core, [shared + [50, 51, 52]])
    assert outs["r0"] == alone([shared + [50, 51, 52]])["r0"]
    assert runner.copied_tokens == copied + 2 and core.stats().cached_tokens_total == 2 * 30
