"""A quantized GGUF with no `quantization` key is served in its own block formats: Q5_0 / Q8_0 tensors as exact
grouped int8 blocks through the own block kernel (the float model holding the file's dequantized values gives the
same logits); `"quantization": "none"` keeps the widened float import; a float GGUF stays float."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


from tests.support.driver import Driver  # noqa: E402
from tests.support.gguf_writer import build_small_vocab_qwen2, write_tiny_qwen2_gguf  # noqa: E402
from tests.support.backend_helpers import copy_float_tensors, load_runner, prompt  # noqa: E402

from mindie_like.backend_atb import cpu_kernels  # noqa: E402
from mindie_like.backend_atb.quant import QuantizedWeight  # noqa: E402
from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight  # noqa: E402
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

LINEARS = ("qkv", "o", "gate_up", "down")


@pytest.fixture(scope="module")
def q_gguf(tmp_path_factory):
    cpu_kernels.load()          # built (or found) in the usual cache before the tests point the cache elsewhere
    base = tmp_path_factory.mktemp("gguf-q")
    hf = build_small_vocab_qwen2(base / "hf")
    fmt = lambda name: "Q8_0" if ("attn_v" in name or "ffn_down" in name) else "Q5_0"       # noqa: E731
    return write_tiny_qwen2_gguf(hf, base / "src" / "tiny.gguf", fmt_of=fmt)


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gguf-cache"))


@pytest.mark.parametrize("act", ["float", "int8"])
def test_quantized_gguf_served_in_its_blocks_by_default(q_gguf, caplog, monkeypatch, act):
    """float activations: the same logits as the float model holding the file's values; int8 activations (the
    default, rounded per block of 32): the same greedy tokens, logits within the rounding's reach."""
    if cpu_kernels.load() is None:
        pytest.skip("no own CPU kernels here: Q5_0 / Q8_0 are re-rounded to int8 per channel instead")
    import logging
    if act == "float":
        monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", "float")
    with caplog.at_level(logging.INFO, logger="mindie_like.backend_atb.quant"):
        rq = load_runner(q_gguf, quant_dense="never")
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "served in its own block formats" in log and "block_linear" in log and f"{act} activations" in log
    ws = [getattr(L, a) for L in rq.model.layers for a in LINEARS] + [rq.model.lm_head]
    assert all(isinstance(w, BlockInt8Weight) for w in ws)
    rf = load_runner(q_gguf, quantization="none")
    assert not any(isinstance(getattr(L, a), QuantizedWeight) for L in rf.model.layers for a in LINEARS)
    # exact weights: the float runner given the blocks' dequantized values and the file's float tensors (the
    # import rounded those to bfloat16) gives the same logits
    with torch.inference_mode():
        copy_float_tensors(rf.model, rq.model)
    for L, Lq in zip(rf.model.layers, rq.model.layers):
        for a in LINEARS:
            setattr(L, a, getattr(Lq, a).dequantize(torch.float32))
    rf.model.lm_head = rq.model.lm_head.dequantize(torch.float32)
    if rf.model.tied:
        rf.model.embed = rf.model.lm_head
    for i in range(2):
        p = prompt(60 + i, 9 + 4 * i, vocab=299)
        a = Driver(rf, 16).step([("a", p)], all_logits=True)
        b = Driver(rq, 16).step([("b", p)], all_logits=True)
        if act == "float":
            torch.testing.assert_close(b, a, atol=1e-4 * float(a.abs().max()), rtol=1e-4)
        else:
            # measured on this tiny random model: max 4%, mean 0.5% of the largest logit, every argmax equal
            err, top = (b - a).abs(), float(a.abs().max())
            assert float(err.max()) < 0.08 * top and float(err.mean()) < 0.01 * top
            # the greedy token agrees wherever the reference's top-two margin is beyond the rounding's reach in
            # that row (the norms are the file's float32 values, so near-ties differ from the import's)
            top2 = a.topk(2, -1).values
            clear = (top2[:, 0] - top2[:, 1]) > 2 * err.max(-1).values
            assert bool(clear.any()) and bool((a.argmax(-1) == b.argmax(-1))[clear].all())


def test_float_gguf_stays_float(tmp_path_factory):
    base = tmp_path_factory.mktemp("gguf-f")
    f = write_tiny_qwen2_gguf(build_small_vocab_qwen2(base / "hf"), base / "src" / "tiny.gguf")
    r = load_runner(f)
    assert r.quant_policy is None
    assert not any(isinstance(getattr(L, a), QuantizedWeight) for L in r.model.layers for a in LINEARS)
