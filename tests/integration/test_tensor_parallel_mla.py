"""worldSize 2 on gloo for the MLA model (deepseek_v3): the heads split over the ranks, every rank caching the
same latents; greedy tokens and logits equal worldSize 1's. (The other architectures: `-m multinode`.)"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "backend"))

from driver import Driver  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402
from test_tensor_parallel import engine_config, first_divergence_is_near_tie, prompts, run_engine  # noqa: E402

VOCAB = 3001


def _pair(path, **extra):
    ref = ModelRunner.load(engine_config(path, 1, **extra))
    tp = ModelRunner.load(engine_config(path, 2, **extra))
    return ref, tp


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


@pytest.fixture(scope="module")
def mla_pair(tiny_model):
    path = tiny_model("deepseek_v3", vocab_size=VOCAB, first_k_dense_replace=3)
    ref, tp = _pair(path)
    yield path, ref, tp
    tp.close()


def test_mla_ws2_matches_ws1(mla_pair):
    path, ref, tp = mla_pair
    check_pair(path, ref, tp, "deepseek_v3")


def test_mla_cache_is_replicated_not_split(mla_pair):
    """Each rank caches the whole latent (it is shared by all heads): the per-block bytes do not halve."""
    _, ref, tp = mla_pair
    assert tp.kv_cache_bytes_per_block() == ref.kv_cache_bytes_per_block()
