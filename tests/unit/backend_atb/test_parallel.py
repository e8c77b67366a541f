"""Tensor-parallel plumbing without processes: layout and multi-node environment, device per rank, refusals of
models that do not split, the step packing, and what each rank reads of a checkpoint tensor."""
from __future__ import annotations

import types

import pytest
import torch

from mindie_like.backend_atb.models import check_tensor_parallel
from mindie_like.backend_atb.parallel import (TPConfigError, claim_npu_devices, device_index, hccl_timeouts,
                                              pack_batch, unpack_batch, world_layout)
from mindie_like.engine.types import EngineConfig


def cfg(ws=2, ids=None, **fields) -> EngineConfig:
    return EngineConfig(model_path="x", world_size=ws, device_ids=ids if ids is not None else list(range(ws)),
                        **fields)


def test_single_node_layout():
    lay = world_layout(cfg(4), env={})
    assert (lay.size, lay.local_size, lay.nnodes, lay.node_rank, lay.master_port) == (4, 4, 1, 0, 0)


def test_device_count_must_match():
    with pytest.raises(TPConfigError, match=r"npuDeviceIds: \[0\] has 1 devices but worldSize is 2"):
        world_layout(cfg(2, [0]), env={})


def test_multi_node_layout_from_the_environment():
    env = {"MASTER_ADDR": "10.0.0.1", "NNODES": "2", "NODE_RANK": "1"}
    lay = world_layout(cfg(8, multi_nodes=True, multi_nodes_port=1120), env=env)
    assert (lay.size, lay.master_addr, lay.master_port, lay.global_rank(3)) == (16, "10.0.0.1", 1120, 11)
    lay = world_layout(cfg(8, multi_nodes=True, multi_nodes_port=1120), env={**env, "MASTER_PORT": "29500"})
    assert lay.master_port == 29500


@pytest.mark.parametrize("env,msg", [
    ({"NNODES": "2", "NODE_RANK": "0"}, "set MASTER_ADDR in the environment"),
    ({"MASTER_ADDR": "h", "NNODES": "2", "NODE_RANK": "2"}, r"NODE_RANK 2 is not in \[0, NNODES-1\]"),
    ({"MASTER_ADDR": "h", "NNODES": "two", "NODE_RANK": "0"}, "must be integers"),
])
def test_multi_node_environment_refusals(env, msg):
    with pytest.raises(TPConfigError, match=msg):
        world_layout(cfg(2, multi_nodes=True), env=env)


def test_npu_device_per_rank():
    env: dict = {}
    claim_npu_devices([4, 5], env)
    assert env == {"ASCEND_RT_VISIBLE_DEVICES": "4,5"}
    assert [device_index("npu", [4, 5], r, env) for r in (0, 1)] == [0, 1]
    env = {"ASCEND_RT_VISIBLE_DEVICES": "2,3,4,5"}
    claim_npu_devices([4, 5], env)                      # the operator's setting is kept
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "2,3,4,5"
    assert [device_index("npu", [4, 5], r, env) for r in (0, 1)] == [2, 3]
    with pytest.raises(TPConfigError, match="device 7 is not in ASCEND_RT_VISIBLE_DEVICES"):
        device_index("npu", [7], 0, env)
    assert device_index("cuda", [2, 3], 1, {}) == 3 and device_index("cpu", [0, 1], 1, {}) == 0


def test_hccl_timeouts_follow_the_collective_timeout():
    env: dict = {}
    hccl_timeouts(60, env)
    assert env == {"HCCL_EXEC_TIMEOUT": "60", "HCCL_CONNECT_TIMEOUT": "120"}
    env = {"HCCL_EXEC_TIMEOUT": "900"}
    hccl_timeouts(300, env)
    assert env == {"HCCL_EXEC_TIMEOUT": "900", "HCCL_CONNECT_TIMEOUT": "300"}


def hf(heads=32, kv=8, inter=11008):
    return types.SimpleNamespace(model_type="llama", num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter)


def test_head_divisibility():
    assert check_tensor_parallel(hf(), 8) is None
    assert check_tensor_parallel(hf(kv=2), 8) is None          # kv heads replicated: 4 ranks per kv head
    why = check_tensor_parallel(hf(heads=28, kv=4), 8)
    assert "num_attention_heads 28" in why and "num_key_value_heads 4" in why
    assert "num_key_value_heads 3" in check_tensor_parallel(hf(heads=12, kv=3), 4)
    assert "intermediate_size 11" in check_tensor_parallel(hf(inter=11), 2)


def test_step_packing_round_trip():
    from mindie_like.engine.types import ForwardBatch
    b = ForwardBatch(seq_ids=["a", "b"], input_ids=torch.tensor([5, 6, 7, 8]), positions=torch.tensor([0, 1, 2, 9]),
                     query_lens=[3, 1], context_lens=[3, 10], block_tables=torch.tensor([[1, 0], [2, 3]],
                                                                                         dtype=torch.int32),
                     slot_mapping=torch.tensor([16, 17, 18, 57]), logits_indices=torch.tensor([2, 3]),
                     kv_copies=[(7, 1, 5), (9, 4, 15)])
    dims, payload = pack_batch(b)
    assert payload.dtype == torch.long
    u = unpack_batch(dims, payload)
    for f in ("input_ids", "positions", "block_tables", "slot_mapping", "logits_indices"):
        assert torch.equal(getattr(u, f), getattr(b, f)), f
    assert u.block_tables.dtype == torch.int32
    assert (u.query_lens, u.context_lens) == (b.query_lens, b.context_lens)
    assert u.kv_copies == b.kv_copies
    b.kv_copies = []
    assert unpack_batch(*pack_batch(b)).kv_copies == []


def test_weight_slices_per_rank(tiny_model):
    """Rank r of 2 reads: q/k/v rows of its heads, gate/up rows, o/down input columns, its vocabulary rows
    (ceil split), whole norms. With more ranks than kv heads, pairs of ranks read the same kv head."""
    from transformers import AutoConfig

    from mindie_like.backend_atb.layers import ParallelSpec
    from mindie_like.backend_atb.models import build_model
    from mindie_like.backend_atb.ops import TorchOps
    c = AutoConfig.from_pretrained(str(tiny_model("llama")))      # 4 heads, 2 kv heads, head_dim 16, inter 128
    ops = TorchOps(torch.device("cpu"), torch.float32)

    def model(rank, size):
        return build_model(c, torch.float32, torch.device("cpu"), ops, ParallelSpec(rank, size))
    m = model(1, 2)
    v = c.vocab_size
    assert m.weight_slice("model.layers.0.self_attn.q_proj.weight") == (0, 32, 32)
    assert m.weight_slice("model.layers.0.self_attn.k_proj.weight") == (0, 16, 16)
    assert m.weight_slice("model.layers.1.mlp.up_proj.weight") == (0, 64, 64)
    assert m.weight_slice("model.layers.0.self_attn.o_proj.weight") == (1, 32, 32)
    assert m.weight_slice("model.layers.0.mlp.down_proj.weight") == (1, 64, 64)
    assert m.weight_slice("lm_head.weight") == (0, (v + 1) // 2, v - (v + 1) // 2)
    assert m.weight_slice("model.layers.0.input_layernorm.weight") is None
    assert m.weight_slice("model.norm.weight") is None
    assert [model(r, 4).weight_slice("model.layers.0.self_attn.v_proj.weight") for r in range(4)] == \
        [(0, 0, 16), (0, 0, 16), (0, 16, 16), (0, 16, 16)]
    assert model(0, 1).weight_slice("model.layers.0.self_attn.q_proj.weight") is None


def test_generic_path_models_are_refused(tiny_model):
    """worldSize > 1 needs the own model code: a model_type on the generic transformers path is named."""
    from mindie_like.backend_atb.tp_runner import check_model
    with pytest.raises(TPConfigError, match=r"worldSize: 2 needs the own model code .* model_type 'olmo2'"):
        check_model(EngineConfig(model_path=str(tiny_model("olmo2")), world_size=2, device_ids=[0, 1]), 2)
    check_model(EngineConfig(model_path=str(tiny_model("qwen3")), world_size=2, device_ids=[0, 1]), 2)


def test_moe_parallel_keys():
    """MindIE's moe_ep / moe_tp: either one implies the other; their product must be the world."""
    from mindie_like.backend_atb.parallel import moe_expert_parallel

    def cfg(**fields):
        return EngineConfig(model_path="x", world_size=4, device_ids=[0, 1, 2, 3], **fields)
    assert moe_expert_parallel(cfg(), 4) == 1
    assert moe_expert_parallel(cfg(moe_ep=4), 4) == 4
    assert moe_expert_parallel(cfg(moe_tp=2), 4) == 2
    assert moe_expert_parallel(cfg(moe_ep=2, moe_tp=2), 4) == 2
    with pytest.raises(TPConfigError, match=r"moe_ep x moe_tp: 2 x 1 must equal the world size 4"):
        moe_expert_parallel(cfg(moe_ep=2, moe_tp=1), 4)
    with pytest.raises(TPConfigError, match="moe_tp"):
        moe_expert_parallel(cfg(moe_tp=3), 4)
    with pytest.raises(TPConfigError, match="positive integer"):
        moe_expert_parallel(cfg(moe_ep=0), 4)


def test_moe_split_refusals(tiny_model):
    from transformers import AutoConfig

    from mindie_like.backend_atb.models import check_tensor_parallel
    c = AutoConfig.from_pretrained(str(tiny_model("qwen3_moe")))       # 4 experts, moe_intermediate_size 32
    assert check_tensor_parallel(c, 2, 2) is None and check_tensor_parallel(c, 4, 4) is None
    c.num_experts = 6
    assert "moe_ep 4 does not divide the model's num_experts 6" in check_tensor_parallel(c, 4, 4)
    assert "moe_tp 4 (worldSize 4 / moe_ep 1) does not divide" not in (check_tensor_parallel(c, 4, 1) or "")
    c.moe_intermediate_size = 30
    assert "moe_tp 4 (worldSize 4 / moe_ep 1) does not divide the model's moe_intermediate_size 30" in \
        check_tensor_parallel(c, 4, 1)
    dense = AutoConfig.from_pretrained(str(tiny_model("llama")))
    assert "has no experts" in check_tensor_parallel(dense, 2, 2)
