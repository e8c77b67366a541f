"""worldSize 2 (gloo) equals worldSize 1 for every architecture of the DeepSeek / GLM families, with expert-TP
and with expert parallelism where the model has experts (`-m multinode`: ~20 s per case; the default suite runs
the MLA model's cases in test_tensor_parallel_mla.py)."""
from __future__ import annotations

import pytest

from mindie_like.backend_atb import ModelRunner
from test_tensor_parallel import engine_config
from test_tensor_parallel_mla import VOCAB, check_pair

pytestmark = pytest.mark.multinode

CASES = [("glm", {}), ("glm4", {}), ("glm4_moe", {}), ("glm4_moe", {"moe_ep": 2}), ("deepseek_v3", {}),
         ("deepseek_v3", {"moe_ep": 2}), ("deepseek_v3", {"q_lora_rank": None})]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + "".join(f"-{k}={v}" for k, v in c[1].items()))
def arch_pair(request, tiny_model):
    family, opts = request.param
    extra = {k: v for k, v in opts.items() if k == "moe_ep"}
    overrides = {k: v for k, v in opts.items() if k != "moe_ep"}
    path = tiny_model(family, vocab_size=VOCAB, **overrides)
    ref, tp = ModelRunner.load(engine_config(path, 1)), ModelRunner.load(engine_config(path, 2, **extra))
    yield family, path, ref, tp
    tp.close()


def test_ws2_matches_ws1(arch_pair):
    family, path, ref, tp = arch_pair
    assert ref.path == tp.path == "own"
    check_pair(path, ref, tp, family)
