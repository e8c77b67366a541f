"""MoE models over 2 ranks on the CPU (gloo): expert-TP (each expert's intermediate dimension split, the default)
and expert parallelism (`moe_ep` 2: each rank holds half of the experts) give worldSize 1's logits and greedy
tokens, and each rank reads only its share of the checkpoint. qwen3_moe runs in the default suite; qwen2_moe
(shared expert, dense first layer) under the `multinode` marker."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


from tests.support.driver import Driver  # noqa: E402
from test_tensor_parallel import engine_config, first_divergence_is_near_tie, prompts, run_engine  # noqa: E402

from mindie_like.backend_atb import ModelRunner  # noqa: E402

MODES = {"expert_tp": {}, "expert_parallel": {"moe_ep": 2}}
MODELS = {"qwen3_moe": {"norm_topk_prob": True},
          "qwen2_moe": {"mlp_only_layers": [0], "num_hidden_layers": 3}}
CASES = [pytest.param(("qwen3_moe", m), id=f"qwen3_moe-{m}") for m in MODES] + \
    [pytest.param(("qwen2_moe", m), id=f"qwen2_moe-{m}", marks=pytest.mark.multinode) for m in MODES]


@pytest.fixture(scope="module", params=CASES)
def runners(request, tiny_model):
    family, mode = request.param
    path = tiny_model(family, **MODELS[family])
    ref = ModelRunner.load(engine_config(path, 1))
    tp = ModelRunner.load(engine_config(path, 2, **MODES[mode]))
    yield family, mode, path, ref, tp
    tp.close()


def test_moe_ws2_logits_match_ws1(runners):
    family, mode, _, ref, tp = runners
    experts = [m for m in tp.model.linears() if getattr(m, "kind", "") == "w13"]
    cfg = ref.hf_config
    if mode == "expert_parallel":       # half of the experts, whole
        assert experts[0].out_features == 2 * cfg.moe_intermediate_size
        assert len(tp.model.layers[-1].mlp.experts.w13) == cfg.num_experts // 2
    else:                               # every expert, half of its intermediate dimension
        assert experts[0].out_features == 2 * cfg.moe_intermediate_size // 2
        assert len(tp.model.layers[-1].mlp.experts.w13) == cfg.num_experts
    outs = []
    for r in (ref, tp):
        d = Driver(r, num_blocks=32)
        res = [d.step([("a", list(range(5, 30))), ("b", list(range(40, 47)))], all_logits=True)]
        for t in range(3):
            res.append(d.step([("a", [11 + t]), ("b", [12 + t])]))
        outs.append(torch.cat(res))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


def test_moe_ws2_greedy_tokens_match_ws1_under_continuous_batching(runners):
    family, mode, path, ref, tp = runners
    want = run_engine(ref, engine_config(path, 1))
    got = run_engine(tp, engine_config(path, 2, **MODES[mode]))
    for prompt, a, b in zip(prompts(), want, got):
        if a != b:
            step = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            assert first_divergence_is_near_tie(ref, prompt, a, step), \
                f"{family} {mode}: tokens differ at step {step} without a near-tie: {a} vs {b}"


def test_moe_each_rank_reads_its_share(runners):
    """Expert-TP: each rank reads half of every expert; expert parallelism: half of the experts. Either way about
    half of the checkpoint (norms and routers are replicated)."""
    _, _, _, ref, tp = runners
    total = tp.checkpoint_bytes
    assert ref.load_stats.loaded_bytes == total
    for b in tp.loaded_bytes:
        assert abs(b - total / 2) < 0.03 * total, (b, total)
