"""An FP8 block checkpoint (DeepSeek V3's form) loaded with `quantization: "w8a16"` goes straight to int8: each
linear's float weight exists only while that linear loads (quant/load_time.py), never the whole float model, and
the int8 weights are exactly those of quantizing the float load afterwards."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from mindie_like.backend_atb.quant import QuantizedWeight
from mindie_like.backend_atb.quant.model import quantize_model
from tests.support.backend_helpers import load_runner, prompt
from tests.support.driver import Driver
from tests.support.fp8_writer import write_fp8_pair

# initializer_range 0.02 as in the dense W8A16 tests (at 0.2, int8 noise on a 64-wide model flips expert choices)
DS = dict(initializer_range=0.02, vocab_size=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
          num_hidden_layers=3)


def _layer_float_bytes(model) -> dict[int, int]:
    """Float bytes of each decoder layer's linears, as a float load holds them."""
    out: dict[int, int] = {}
    for lin in model.linears() + [lin for L in model.layers for lin in _unquantizable(L)]:
        i = int(re.match(r"model\.layers\.(\d+)\.", lin.prefix).group(1))
        out[i] = out.get(i, 0) + lin.weight.numel() * lin.weight.element_size()
    return out


def _unquantizable(layer) -> list:
    kv_b = getattr(layer.self_attn, "kv_b_proj", None)
    return [kv_b] if kv_b is not None else []


def test_fp8_checkpoint_quantized_as_it_loads(tiny_model, tmp_path):
    src = tiny_model("deepseek_v3", **DS)
    fp8, ref = tmp_path / "fp8", tmp_path / "ref"
    assert write_fp8_pair(src, fp8, ref, block=(16, 16)) > 10

    q8 = load_runner(fp8, block_size=4, quantization="w8a16", quant_dense="never")
    lq = q8.load_quant
    assert lq is not None and lq.quantized == len(q8.model.linears())

    # the same int8 rows and scales as the float load (the FP8 tiles dequantized) quantized afterwards
    post = load_runner(ref, block_size=4)
    per_layer = _layer_float_bytes(post.model)
    quantize_model(post.model, "w8a16", dense="never")
    for a, b in zip(q8.model.linears(), post.model.linears()):
        assert isinstance(a.weight, QuantizedWeight), a.prefix
        assert torch.equal(a.weight.q, b.weight.q) and torch.equal(a.weight.scale, b.weight.scale), a.prefix
    assert torch.equal(q8.model.lm_head.q, post.model.lm_head.q)

    # instrumented, not timed: every linear's float bytes passed through, at most one layer's worth at once
    assert lq.float_bytes == sum(per_layer.values())
    assert lq.held_bytes == 0
    assert 0 < lq.peak_bytes <= max(per_layer.values()) < lq.float_bytes

    # against the float load: the dense W8A16 tests' agreement and KL, and greedy tokens up to the first step
    # whose top-two gap the int8 error (measured teacher-forced) could close
    fl = load_runner(ref, block_size=4)
    for k in range(2):
        p = prompt(60 + k, 12 + k, vocab=1000)
        gen, _ = Driver(fl).greedy("a", p, 12)
        x = Driver(fl).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        y = Driver(q8).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        agree = int((x.argmax(-1) == y.argmax(-1)).sum())
        kl = float(F.kl_div(F.log_softmax(y, -1), F.log_softmax(x, -1), log_target=True, reduction="batchmean"))
        assert agree >= 0.9 * len(gen) and kl < 0.01, (agree, len(gen), kl)
        err = float((x - y).abs().max())
        qgen, _ = Driver(q8).greedy("a", p, 12)
        for i, (t, u) in enumerate(zip(gen, qgen)):
            top2 = x[i].topk(2).values
            if float(top2[0] - top2[1]) <= 2 * err:
                break
            assert t == u, f"prompt {k}: greedy token differs at step {i}"
