"""A W8A16 model in bfloat16 whose every matmul has the in_features torch's CPU int8 kernel reads out of bounds on
AVX512 CPUs (K = 104 and 120: multiples of 8, not of 16), run through the engine with the own kernels forced on
and forced off. Either way the logits equal the float model run on the dequantized weights (bf16 rounding apart)
and greedy decoding gives its tokens; a crash fails only this module (one subprocess for it)."""
from __future__ import annotations

import pytest
import torch

from tests.support.driver import Driver
from tests.support.backend_helpers import prompt

from mindie_like.backend_atb import ModelRunner, cpu_kernels
from mindie_like.backend_atb.quant import Int8Weight
from mindie_like.backend_atb.quant.weight import NATIVE_INT8
from tests.support.engine_fakes import make_engine_config
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

# hidden 104 (q/k/v/gate/up/lm_head in_features; 4 heads of 26), intermediate 120 (down's)
SHAPES = dict(hidden_size=104, intermediate_size=120, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=512, initializer_range=0.02)
LINEARS = ("qkv", "o", "gate_up", "down")


def _runner(path, dtype, **options):
    return ModelRunner.load(make_engine_config(path, dtype=dtype, device="cpu", block_size=16,
                                               num_threads=torch.get_num_threads(), **options))


def _logits(runner, seqs):
    d = Driver(runner, num_blocks=32)
    lg = d.step([(f"t{i}", s) for i, s in enumerate(seqs)], all_logits=True)
    return lg.float()


def _greedy(runner, p, steps):
    d = Driver(runner, num_blocks=32)
    out, lg = [], d.step([("g", p)])
    for _ in range(steps):
        t = int(lg[-1].argmax())
        out.append(t)
        lg = d.step([("g", [t])])
    return out


@pytest.mark.parametrize("route", ["own", "torch"])
def test_w8a16_bf16_with_shapes_torch_mishandles(tiny_model, monkeypatch, route):
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1" if route == "own" else "0")
    if route == "own" and cpu_kernels.load() is None:
        pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
    path = tiny_model("llama", **SHAPES)
    rq = _runner(path, "bfloat16", quantization="w8a16", quant_dense="never")
    weights = [getattr(L, a) for L in rq.model.layers for a in LINEARS] + [rq.model.lm_head]
    assert all(isinstance(w, Int8Weight) and w.in_features in (104, 120) for w in weights)
    from mindie_like.backend_atb.quant.torch_cpu_limits import int8pack_refusal
    for w in weights:
        if route == "own":
            assert w.kernel == NATIVE_INT8
        elif int8pack_refusal(torch.bfloat16, w.in_features):
            assert w.kernel.startswith("dequant-matmul")
        else:
            assert w.kernel == "aten._weight_int8pack_mm"
    # the reference: the float32 model holding the dequantized weights
    ref = _runner(path, "float32")
    for L, Lq in zip(ref.model.layers, rq.model.layers):
        for a in LINEARS:
            setattr(L, a, getattr(Lq, a).dequantize(torch.float32))
    ref.model.lm_head = rq.model.lm_head.dequantize(torch.float32)
    seqs = [prompt(40 + i, 7 + 6 * i, vocab=500) for i in range(3)]
    a, b = _logits(ref, seqs), _logits(rq, seqs)
    assert torch.isfinite(b).all()
    scale = float(a.abs().max())
    assert float((a - b).abs().max()) < 0.03 * scale         # bf16 activations through 2 layers
    # greedy: the same tokens as the reference up to its first near-tie (a top-two gap bf16 rounding can flip)
    p = seqs[0]
    got, want = _greedy(rq, p, 12), _greedy(ref, p, 12)
    lg = _logits(ref, [p + want])[len(p) - 1:]
    for i, (x, y) in enumerate(zip(got, want)):
        top2 = lg[i].topk(2).values
        if float(top2[0] - top2[1]) < 0.06 * scale:
            break
        assert x == y, (i, got, want)
