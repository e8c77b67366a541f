"""The NPU op table against a fake torch_npu (documented signatures, shapes and semantics), on the CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "backend"))

import fake_torch_npu  # noqa: E402


@pytest.fixture
def npu_ops():
    return make_npu_ops()


def make_npu_ops(device_name: str = "Ascend910B2"):
    """NpuOps bound to the fake module. The fake sits in sys.modules only while NpuOps imports it (other
    libraries, accelerate among them, probe for torch_npu and must not find a fake one later)."""
    from mindie_like.backend_atb import device
    from mindie_like.backend_atb.ops.npu_ops import NpuOps
    saved = sys.modules.get("torch_npu", None)
    sys.modules["torch_npu"] = fake_torch_npu.module(device_name)
    device.torch_npu_module.cache_clear()
    try:
        ops = NpuOps()
    finally:
        if saved is None:
            sys.modules.pop("torch_npu", None)
        else:
            sys.modules["torch_npu"] = saved
        device.torch_npu_module.cache_clear()
    fake_torch_npu.calls.clear()
    return ops


def test_guarded_import_without_torch_npu(monkeypatch):
    from mindie_like.backend_atb import device
    monkeypatch.setitem(sys.modules, "torch_npu", None)      # import raises ImportError
    device.torch_npu_module.cache_clear()
    try:
        assert device.torch_npu_module() is None
        assert not device.npu_available()
        assert device.select_device("auto").type in ("cpu", "cuda")
        from mindie_like.backend_atb.ops.npu_ops import NpuOps
        with pytest.raises(RuntimeError, match="torch_npu"):
            NpuOps()
    finally:
        device.torch_npu_module.cache_clear()


def test_elementwise_ops_match_reference(npu_ops):
    from mindie_like.backend_atb.ops import TorchOps
    ref = TorchOps()
    torch.manual_seed(0)
    x, r, w = torch.randn(5, 32), torch.randn(5, 32), torch.randn(32)
    torch.testing.assert_close(npu_ops.rms_norm(x, w, 1e-6), ref.rms_norm(x, w, 1e-6))
    y, s = npu_ops.add_rms_norm(x, r, w, 1e-6)
    y2, s2 = ref.add_rms_norm(x, r, w, 1e-6)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(s, s2)
    gu = torch.randn(5, 64)
    torch.testing.assert_close(npu_ops.silu_and_mul(gu), ref.silu_and_mul(gu))
    cache = torch.randn(100, 16)
    pos = torch.tensor([0, 3, 7, 8, 50])
    q, k = torch.randn(5, 4, 16), torch.randn(5, 2, 16)
    qa, ka = npu_ops.rope(q, k, *npu_ops.rope_tables(cache, pos, torch.float32))
    qb, kb = ref.rope(q, k, *ref.rope_tables(cache, pos, torch.float32))
    torch.testing.assert_close(qa, qb)
    torch.testing.assert_close(ka, kb)
    assert {"npu_rms_norm", "npu_add_rms_norm", "npu_swiglu", "npu_rotary_mul"} <= set(fake_torch_npu.calls)


def test_attention_entries_shapes(npu_ops):
    nb, bs, Hk, Hq, D = 8, 4, 2, 4, 16
    kc, vc = torch.zeros(nb, bs, Hk, D), torch.zeros(nb, bs, Hk, D)
    # two sequences: 6 new tokens (no prefix) and 3 new tokens after 5 cached
    bt = torch.tensor([[1, 2, 0], [3, 4, 5]], dtype=torch.int32)
    slots = torch.tensor([4, 5, 6, 7, 8, 9] + [17, 18, 19])
    meta = npu_ops.prepare(query_lens=[6, 3], context_lens=[6, 8], block_tables=bt, slot_mapping=slots,
                           block_size=bs, scale=D ** -0.5, windows={None})
    assert meta.slot_mapping.dtype == torch.int32 and meta.extra["cu_q"] == [6, 9]
    k, v, q = torch.randn(9, Hk, D), torch.randn(9, Hk, D), torch.randn(9, Hq, D)
    npu_ops.write_kv(k, v, kc, vc, meta.slot_mapping)
    assert npu_ops.attention_prefill(q, k, v, kc, vc, meta).shape == (9, Hq * D)
    dmeta = npu_ops.prepare(query_lens=[1, 1], context_lens=[7, 9], block_tables=bt,
                            slot_mapping=torch.tensor([10, 20]), block_size=bs, scale=D ** -0.5, windows={None, 4})
    assert npu_ops.attention_decode(torch.randn(2, Hq, D), kc, vc, dmeta).shape == (2, Hq * D)
    assert npu_ops.attention_decode(torch.randn(2, Hq, D), kc, vc, dmeta, window=4).shape == (2, Hq * D)
    assert {"_npu_reshape_and_cache", "npu_fused_infer_attention_score", "_npu_paged_attention"} <= \
        set(fake_torch_npu.calls)


def test_wrong_argument_names_are_caught():
    with pytest.raises(TypeError):
        fake_torch_npu._npu_reshape_and_cache(key=None, value=None, key_cache=None, value_cache=None,
                                              slot_mapping=None)          # renamed to slot_indices in CANN 9.1
    with pytest.raises(TypeError):
        fake_torch_npu.npu_fused_infer_attention_score(torch.zeros(1), torch.zeros(1), torch.zeros(1),
                                                       scale_valu=1.0)


@pytest.mark.parametrize("family,overrides", [("qwen3", {}), ("mistral", {"sliding_window": 6}),
                                              ("glm4", {"vocab_size": 3001})])
def test_whole_model_on_the_npu_table_matches_reference(npu_ops, tiny_model, family, overrides):
    """The tiny model run through the NPU op table (fake kernels) gives the reference logits: prefill, a cached
    prefix, mixed batches and decodes."""
    from helpers import load_runner
    from driver import Driver
    path = tiny_model(family, **overrides)
    ref_runner, npu_runner = load_runner(path, block_size=4), load_runner(path, block_size=4)
    npu_runner.ops = npu_ops
    npu_runner.model.ops = npu_ops
    outs = []
    for r in (ref_runner, npu_runner):
        d = Driver(r)
        res = [d.step([("a", list(range(5, 18))), ("b", list(range(40, 47)))], all_logits=True)]
        res.append(d.step([("a", [3]), ("c", list(range(60, 65))), ("b", [9])]))
        for _ in range(3):
            res.append(d.step([("a", [11]), ("b", [12]), ("c", [13])]))
        d.share_prefix("a", "d", 12)
        res.append(d.step([("d", [70, 71, 72])], all_logits=True))
        outs.append(res)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert "_npu_paged_attention" in fake_torch_npu.calls or family == "mistral"
    if family == "glm4":        # partial interleaved rotary through npu_rotary_mul's interleave mode
        assert "npu_rotary_mul" in fake_torch_npu.calls


@pytest.mark.parametrize("device_name,casts", [("Ascend310P3", True), ("Ascend910B2", False)])
def test_fractal_nz_weights_on_310p_only(tiny_model, device_name, casts):
    """Atlas 300I Duo (310P): the dense linear weights go to FRACTAL_NZ (format 29) once at load, an untied
    lm_head too; A2/A3 (910B) keep ND. The model still computes the same logits through the op table."""
    from helpers import load_runner
    from driver import Driver
    path = tiny_model("llama")
    ref, npu_runner = load_runner(path, block_size=4), load_runner(path, block_size=4)
    ops = make_npu_ops(device_name)
    npu_runner.ops = npu_runner.model.ops = ops
    ops.prepare_weights(npu_runner.model)
    n_layers = len(npu_runner.model.layers)
    assert fake_torch_npu.calls.count("npu_format_cast") == (4 * n_layers + 1 if casts else 0)
    outs = [Driver(r).step([("a", list(range(5, 18)))], all_logits=True) for r in (ref, npu_runner)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


# ---- MoE ------------------------------------------------------------------------------------------------------
def _routing_specs():
    from mindie_like.backend_atb.ops.torch_moe import RoutingSpec
    return {"qwen": RoutingSpec(num_experts=8, top_k=2, norm_topk_prob=True),
            "deepseek": RoutingSpec(num_experts=8, top_k=2, scoring="sigmoid", norm_topk_prob=True, n_group=4,
                                    topk_group=2, routed_scaling_factor=2.5, renorm_eps=1e-20)}


@pytest.mark.parametrize("kind", ["qwen", "deepseek"])
def test_moe_gating_matches_reference(npu_ops, kind):
    """Softmax top-k (Qwen-MoE) and sigmoid, correction bias, group-limited top-k (DeepSeek V3) through the NPU
    gating ops give the reference's experts and weights."""
    from mindie_like.backend_atb.ops.torch_moe import select_experts
    spec = _routing_specs()[kind]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 8, generator=g)
    bias = torch.randn(8, generator=g) * 0.1 if kind == "deepseek" else None
    w, ids = npu_ops.moe_select(logits, spec, bias)
    rw, rids = select_experts(logits, spec, bias)
    order, rorder = ids.sort(-1), rids.sort(-1)
    assert torch.equal(order.values, rorder.values)
    torch.testing.assert_close(w.gather(1, order.indices), rw.gather(1, rorder.indices))
    assert fake_torch_npu.calls == ["npu_moe_gating_top_k_softmax" if kind == "qwen" else "npu_moe_gating_top_k"]


@pytest.mark.parametrize("first,n_local", [(0, 8), (4, 4)])
def test_grouped_moe_experts_match_reference(npu_ops, first, n_local):
    """init_routing -> grouped matmul -> swiglu -> grouped matmul -> finalize_routing equals the reference's
    per-expert loop, for all experts on this rank and for half of them (expert parallelism)."""
    from mindie_like.backend_atb.layers import ParallelSpec, Placement
    from mindie_like.backend_atb.layers.moe import FusedMoE
    from mindie_like.backend_atb.ops import TorchOps
    g = torch.Generator().manual_seed(1)
    par = ParallelSpec(rank=first // 4, size=8 // n_local, moe_ep=8 // n_local)
    layer = FusedMoE("m.experts", 8, 16, 12, Placement(torch.float32, torch.float32, torch.device("cpu"), par))
    assert (layer.first, layer.n_local) == (first, n_local)
    for a, b in zip(layer.w13, layer.w2):
        a.weight.copy_(torch.randn(a.weight.shape, generator=g) * 0.3)
        b.weight.copy_(torch.randn(b.weight.shape, generator=g) * 0.3)
    x = torch.randn(7, 16, generator=g)
    weights = torch.rand(7, 2, generator=g)
    ids = torch.stack([torch.randperm(8, generator=g)[:2] for _ in range(7)])
    ref = TorchOps().moe_experts(x, weights, ids, layer)
    npu_ops.stack_experts(layer)
    fake_torch_npu.calls.clear()
    out = npu_ops.moe_experts(x, weights, ids, layer)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert fake_torch_npu.calls == ["npu_moe_init_routing", "npu_moe_compute_expert_tokens", "npu_grouped_matmul",
                                    "npu_swiglu", "npu_grouped_matmul", "npu_moe_finalize_routing"]


def test_whole_moe_model_on_the_npu_table_matches_reference(npu_ops, tiny_model):
    from helpers import load_runner
    from driver import Driver
    path = tiny_model("qwen2_moe", mlp_only_layers=[0], num_hidden_layers=3)
    ref_runner, npu_runner = load_runner(path, block_size=4), load_runner(path, block_size=4)
    npu_runner.ops = npu_runner.model.ops = npu_ops
    npu_ops.prepare_weights(npu_runner.model)
    outs = []
    for r in (ref_runner, npu_runner):
        d = Driver(r)
        res = [d.step([("a", list(range(5, 18))), ("b", list(range(40, 47)))], all_logits=True)]
        res.append(d.step([("a", [3]), ("b", [9])]))
        outs.append(res)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert "npu_grouped_matmul" in fake_torch_npu.calls and "npu_moe_gating_top_k_softmax" in fake_torch_npu.calls


def test_mla_model_on_the_npu_table_matches_reference(npu_ops, tiny_model):
    """The MLA model (deepseek_v3) through the NPU table's MLA entries (latent + rope-key caches written by
    _npu_reshape_and_cache, FIA's query_rope / key_rope form for prefill and decode) gives the reference logits."""
    from helpers import load_runner
    from driver import Driver
    path = tiny_model("deepseek_v3", vocab_size=3001, first_k_dense_replace=3)     # MLA only: dense MLPs
    ref_runner, npu_runner = load_runner(path, block_size=4), load_runner(path, block_size=4)
    npu_runner.ops = npu_runner.model.ops = npu_ops
    outs = []
    for r in (ref_runner, npu_runner):
        d = Driver(r)
        res = [d.step([("a", list(range(5, 18))), ("b", list(range(40, 47)))], all_logits=True)]
        res.append(d.step([("a", [3]), ("c", list(range(60, 65))), ("b", [9])]))
        for _ in range(3):
            res.append(d.step([("a", [11]), ("b", [12]), ("c", [13])]))
        d.share_prefix("a", "d", 12)
        res.append(d.step([("d", [70, 71, 72])], all_logits=True))
        outs.append(res)
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert fake_torch_npu.calls.count("_npu_reshape_and_cache") >= 3 * 6
    assert "npu_fused_infer_attention_score" in fake_torch_npu.calls
