"""GGUF-native weights on a tiny llama: a GGUF written in the test (llama.cpp's q/k row interleave, Q4_0 / Q8_0
blocks) loaded into the model's linears; compared with the float model run on the GGUF's dequantized values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.driver import Driver
from tests.support.backend_helpers import load_runner, prompt

from mindie_like.backend_atb import cpu_kernels
from mindie_like.backend_atb.quant import Int4Weight, Int8Weight
from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight
from mindie_like.backend_atb.quant.model import quantize_model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:        # llama.cpp convert_hf_to_gguf's q/k permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, model, fmt_of):
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize
    from safetensors.torch import load_file
    sd = load_file(str(model / "model.safetensors"))
    cfg_heads, cfg_kv = 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    expect = {}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for hf, t in sd.items():
        if not hf.endswith(".weight") or t.dim() != 2:
            continue
        if hf == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif hf == "lm_head.weight":
            g = "output.weight"
        else:
            i, kind = hf.split(".")[2], hf.split(".", 3)[3].rsplit(".", 1)[0]
            g = f"blk.{i}.{names[kind]}.weight"
        a = t.float().numpy()
        heads = cfg_heads if "attn_q" in g else cfg_kv if "attn_k" in g else None
        if heads:
            a = _permute(a, heads)
        fmt = fmt_of(g)
        data = quantize(a, getattr(T, fmt))
        w.add_tensor(g, data, raw_dtype=getattr(T, fmt))
        deq = dequantize(data, getattr(T, fmt)).reshape(a.shape)
        if heads:                                              # back to HF row order
            n = deq.shape[0]
            deq = deq.reshape(heads, n // heads // 2, 2, -1).swapaxes(1, 2).reshape(deq.shape)
        if g != "token_embd.weight":        # an untied table stays as the float import loaded it
            expect[hf] = torch.from_numpy(np.ascontiguousarray(deq))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expect


@pytest.mark.parametrize("mixed", [False, True])
def test_gguf_native_tiny_llama(tiny_model, tmp_path, mixed, monkeypatch):
    # the exact mapping is the point here: block weights with float activations (int8 ones: test_gguf_default)
    monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", "float")
    path = tiny_model("llama")                                  # untied: token_embd + output
    fmt_of = (lambda g: "Q8_0" if ("attn_v" in g or "output" in g) else "Q4_0") if mixed else (lambda g: "Q4_0")
    expect = _write_gguf(tmp_path / "tiny.gguf", path, fmt_of)
    ref = load_runner(path, block_size=16)
    # float reference: the GGUF's dequantized values
    from safetensors.torch import load_file
    with torch.inference_mode():
        ref.model.load_weights((k, expect.get(k, v)) for k, v in load_file(str(path / "model.safetensors")).items())
    rq = load_runner(path, block_size=16)
    quantize_model(rq.model, "gguf", dense="never", gguf_path=tmp_path / "tiny.gguf", act_bits=16)   # ~exact
    L = rq.model.layers[0]
    # with the own block kernel every tensor is kept exactly in its blocks (Q4_0 and Q8_0 alike); without it,
    # Q4_0 maps exactly to int4 and Q8_0 is re-rounded to int8 per output channel
    kernel = cpu_kernels.load() is not None
    exact8 = BlockInt8Weight if kernel else Int8Weight
    q4 = BlockInt8Weight if kernel else Int4Weight
    assert isinstance(L.gate_up, q4) and isinstance(L.down, q4)
    assert isinstance(L.qkv, exact8 if mixed else q4)
    assert isinstance(rq.model.lm_head, exact8 if mixed else q4)
    seqs = [prompt(500 + i, 7 + 4 * i) for i in range(3)]
    for s_id, s in enumerate(seqs):
        a = Driver(ref, 16).step([("a", s)], all_logits=True)
        b = Driver(rq, 16).step([("b", s)], all_logits=True)
        if mixed and exact8 is Int8Weight:       # Q8_0 re-quantized per channel: close, not exact
            assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9
            assert (a - b).abs().max() < 0.05 * a.abs().max()
        else:           # Q4_0 maps exactly to int4 (fp16 scales kept: fp32 activations here); the own AVX2
            # kernel rounds activations to 16-bit fixed point per block of 32: relative to the logits' scale
            torch.testing.assert_close(b, a, atol=2e-3 * float(a.abs().max()), rtol=2e-4)
