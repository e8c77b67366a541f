"""Tensor parallelism on the CPU (gloo, 2 ranks = this process + one worker process) on tiny random float32 models.

- worldSize 2 gives worldSize 1's greedy tokens for every family of the own path, through the engine under
  continuous batching (8 concurrent requests, chunked prefill, shared prefixes); tokens may differ only after a
  near-tie of the worldSize 1 logits (the two sum in a different order).
- each rank reads about half of the checkpoint's tensor bytes (counted by the loader).
- the KV cache size is agreed on (the minimum over ranks) and allocated on every rank.
(A hung worker: test_tensor_parallel_failure.py.)
"""
from __future__ import annotations

import asyncio

import pytest
import torch


from tests.support.driver import Driver  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from mindie_like.engine import AsyncEngine  # noqa: E402
from mindie_like.engine.types import EngineConfig, SamplingParams  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
NEAR_TIE = 1e-4
BLOCK = 16
MAX_TOKENS = 12


def engine_config(path, world_size: int, **fields) -> EngineConfig:
    return EngineConfig(model_path=str(path), dtype="float32", device="cpu", block_size=BLOCK, num_threads=1,
                        world_size=world_size, device_ids=list(range(world_size)), max_prefill_tokens=48,
                        chunked_prefill=True, num_kv_blocks=96, **fields)


@pytest.fixture(scope="module", params=FAMILIES)
def runners(request, tiny_model):
    """(family, model path, worldSize 1 runner, worldSize 2 runner). One family at a time: a process holds one
    tensor-parallel group (torch.distributed's default group), so the workers stop before the next family."""
    family = request.param
    path = tiny_model(family)
    ref, tp = ModelRunner.load(engine_config(path, 1)), ModelRunner.load(engine_config(path, 2))
    yield family, path, ref, tp
    tp.close()


def prompts() -> list[list[int]]:
    """8 prompts of 3..40 tokens; two pairs share a 20-token prefix (one block and 4 tokens of the next), so prefix
    caching is in play."""
    g = torch.Generator().manual_seed(7)
    out = [torch.randint(5, 3000, (n,), generator=g).tolist() for n in (3, 17, 40, 9, 25, 33, 6, 21)]
    out[4][:20] = out[2][:20]
    out[5][:20] = out[2][:20]
    return out


def run_engine(runner, config: EngineConfig) -> list[list[int]]:
    """8 concurrent greedy requests through the AsyncEngine (its thread drives the runner)."""
    engine = AsyncEngine(config, runner)

    async def one(i, ids):
        toks = []
        async for out in engine.generate(ids, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True),
                                         f"r{i}"):
            assert out.finish_reason != "error", out.error
            toks += out.new_token_ids
        return toks

    async def all_requests():
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts())))
    try:
        return asyncio.run(all_requests())
    finally:
        engine.shutdown()


def first_divergence_is_near_tie(ref_runner, prompt: list[int], tokens: list[int], step: int) -> bool:
    d = Driver(ref_runner, num_blocks=16)
    logits = d.step([("x", prompt + tokens[:step])])[0]
    top2 = logits.topk(2).values
    return float(top2[0] - top2[1]) < NEAR_TIE


def test_ws2_greedy_tokens_match_ws1_under_continuous_batching(runners):
    family, path, ref, tp = runners
    assert tp.layout.size == 2 and len(tp.worker_pids) == 1
    # the two runners hold separate KV caches: the engines run one after the other
    want = run_engine(ref, engine_config(path, 1))
    got = run_engine(tp, engine_config(path, 2))
    assert [len(t) for t in got] == [MAX_TOKENS] * 8
    for prompt, a, b in zip(prompts(), want, got):
        if a != b:
            step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            assert first_divergence_is_near_tie(ref, prompt, a, step), \
                f"{family}: tokens differ at step {step} without a near-tie: {a} vs {b}"


def test_ws2_partial_block_copy_matches_ws1(runners):
    """A prompt sharing 20 tokens with an earlier one: one whole cached block plus 4 tokens of the next, whose KV
    every rank copies from the earlier request's block (ForwardBatch.kv_copies in the step broadcast)."""
    from mindie_like.engine.core import EngineCore
    _, path, ref, tp = runners
    a, b = prompts()[2], prompts()[4]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    out = []
    for runner, ws in ((ref, 1), (tp, 2)):
        core = EngineCore(engine_config(path, ws), runner)
        toks, cached = {}, {}
        for rid, p in (("a", a), ("b", b)):            # one after the other: b finds a's blocks cached
            core.add_request(core.make_request(rid, p, params))
            while core.has_work():
                for req, o in core.step():
                    toks.setdefault(rid, []).extend(o.new_token_ids)
                    cached[rid] = o.num_cached_tokens
        assert cached == {"a": 0, "b": 20}, (ws, cached)
        out.append(toks["b"])
    if out[0] != out[1]:
        step = next(i for i, (x, y) in enumerate(zip(*out)) if x != y)
        assert first_divergence_is_near_tie(ref, b, out[0], step), f"tokens differ at step {step}: {out}"


def test_ws2_logits_match_ws1(runners):
    """Prefill + decodes of two sequences: the gathered vocabulary-parallel logits equal worldSize 1's (the
    qwen2.5 tokenizer's vocabulary, 151,665 rows, does not divide by 2: the padding row is cut)."""
    _, _, ref, tp = runners
    outs = []
    for r in (ref, tp):
        d = Driver(r, num_blocks=32)
        res = [d.step([("a", list(range(5, 30))), ("b", list(range(40, 47)))], all_logits=True)]
        for t in range(3):
            res.append(d.step([("a", [11 + t]), ("b", [12 + t])]))
        outs.append(torch.cat(res))
    assert outs[1].shape == outs[0].shape == (25 + 7 + 6, ref.vocab_size)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


def test_each_rank_reads_half_the_checkpoint(runners):
    _, _, ref, tp = runners
    total = tp.checkpoint_bytes
    assert ref.load_stats.loaded_bytes == ref.load_stats.checkpoint_bytes == total
    assert len(tp.loaded_bytes) == 2
    for b in tp.loaded_bytes:
        # norms are replicated (a few KB); everything else is split in two
        assert abs(b - total / 2) < 0.02 * total, (b, total)
    assert tp.load_stats.loaded_bytes == tp.loaded_bytes[0]


def test_kv_blocks_agreed_over_ranks(runners):
    """Each rank caches its own kv heads (2 heads over 2 ranks: half the bytes per block); every rank sizes its
    cache from the same budget and the group takes the minimum."""
    _, _, ref, tp = runners
    per_block = tp.kv_cache_bytes_per_block()
    assert 2 * per_block == ref.kv_cache_bytes_per_block()
    assert tp.determine_num_blocks(64 * per_block / (1 << 30)) == 64
