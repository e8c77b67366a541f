"""worldSize 2 on gloo for the MLA + MoE model (deepseek_v3): MLA heads split over the ranks (every rank caching
the same latents) with the experts either split by their intermediate dimension (expert-TP, the default) or
placed two per rank (expert parallelism, moe_ep 2); greedy tokens under continuous batching and the logits equal
worldSize 1's. (Every architecture: `-m multinode`, tests/integration/test_tensor_parallel_archs.py.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


from tests.support.driver import Driver  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from test_tensor_parallel import engine_config, first_divergence_is_near_tie, prompts, run_engine  # noqa: E402

VOCAB = 3001


def check_pair(path, ref, tp, family):
    want = run_engine(ref, engine_config(path, 1))
    got = run_engine(tp, engine_config(path, 2))
    for prompt, a, b in zip(prompts(), want, got):
        if a != b:
            step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            assert first_divergence_is_near_tie(ref, prompt, a, step), \
                f"{family}: tokens differ at step {step} without a near-tie: {a} vs {b}"
    outs = []
    for r in (ref, tp):
        d = Driver(r, num_blocks=32)
        res = [d.step([("a", list(range(5, 30))), ("b", list(range(40, 47)))], all_logits=True)]
        for t in range(3):
            res.append(d.step([("a", [11 + t]), ("b", [12 + t])]))
        outs.append(torch.cat(res))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module", params=["expert_tp", "expert_parallel"])
def mla_pair(request, tiny_model):
    """One split at a time: a process holds one tensor-parallel group, so the workers stop before the next."""
    path = tiny_model("deepseek_v3", vocab_size=VOCAB)
    extra = {"moe_ep": 2} if request.param == "expert_parallel" else {}
    ref = ModelRunner.load(engine_config(path, 1))
    tp = ModelRunner.load(engine_config(path, 2, **extra))
    yield path, ref, tp, request.param
    tp.close()


def test_mla_ws2_matches_ws1(mla_pair):
    path, ref, tp, _ = mla_pair
    check_pair(path, ref, tp, "deepseek_v3")


def test_mla_cache_is_replicated_and_experts_are_split(mla_pair):
    """Each rank caches the whole latent (it is shared by all heads): the per-block bytes do not halve. The
    experts' bytes do: each rank reads half of every expert (expert-TP) or half of the experts (moe_ep 2)."""
    _, ref, tp, kind = mla_pair
    assert tp.kv_cache_bytes_per_block() == ref.kv_cache_bytes_per_block()
    total = tp.checkpoint_bytes
    for b in tp.loaded_bytes:
        assert b < 0.75 * total, (kind, b, total)
