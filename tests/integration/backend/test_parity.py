"""Our own model code against transformers on tiny random models (float32)."""
from __future__ import annotations

import pytest
import torch

from tests.support.backend_helpers import check_continuation, hf_logits, load_hf, load_runner, prompt
from tests.support.driver import Driver

FAMILIES = ["llama", "mistral", "qwen2", "qwen3"]
STEPS = 32


def _parity(runner, hf, p, steps=STEPS, seq="a", driver=None):
    d = driver or Driver(runner)
    gen, ours = d.greedy(seq, p, steps)
    ref = hf_logits(hf, p + gen)[len(p) - 1:]
    assert len(ours) == ref.shape[0] == steps + 1
    return check_continuation(ref, ours, gen + [int(ours[-1].argmax())])


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_greedy_decode_match_transformers(family, runner_and_hf):
    runner, hf = runner_and_hf(family)
    assert runner.path == "own"
    checked = _parity(runner, hf, prompt(1, 23))
    assert checked >= 8


def test_switches_detected(runner_and_hf):
    q2, _ = runner_and_hf("qwen2")
    assert q2.model.qkv_bias and q2.model.tied and not q2.model.qk_norm
    q3, _ = runner_and_hf("qwen3")
    assert q3.model.qk_norm and q3.model.head_dim == 16
    ll, _ = runner_and_hf("llama")
    assert not ll.model.tied and not ll.model.qkv_bias
    assert q2.eos_token_ids and q2.max_model_len == 4096 and q2.tokenizer_path


@pytest.mark.parametrize("block_size", [4, 16, 128])
def test_block_sizes(block_size, tiny_model):
    path = tiny_model("qwen2")
    runner, hf = load_runner(path, block_size), load_hf(path)
    _parity(runner, hf, prompt(2, 37), steps=12)


def test_batched_mixed_prefill_and_decode(runner_and_hf):
    runner, hf = runner_and_hf("qwen3", block_size=4)
    d = Driver(runner)
    pa, pb, pc = prompt(3, 9), prompt(4, 21), prompt(5, 14)
    # a and b prefill together
    la, lb = d.step([("a", pa), ("b", pb)])
    ta, tb = int(la.argmax()), int(lb.argmax())
    # a decodes, c prefills, b decodes: one mixed batch, logits of every token of c
    batch = d.build([("a", [ta]), ("c", pc), ("b", [tb])], all_logits=True)
    out = runner.execute(batch)
    assert out.shape == (1 + len(pc) + 1, runner.vocab_size)
    ref_a, ref_b, ref_c = hf_logits(hf, pa + [ta]), hf_logits(hf, pb + [tb]), hf_logits(hf, pc)
    tol = dict(atol=2e-5 * float(ref_c.abs().max()), rtol=1e-4)
    torch.testing.assert_close(la, ref_a[len(pa) - 1], **tol)
    torch.testing.assert_close(lb, ref_b[len(pb) - 1], **tol)
    torch.testing.assert_close(out[0], ref_a[-1], **tol)
    torch.testing.assert_close(out[1:-1], ref_c, **tol)
    torch.testing.assert_close(out[-1], ref_b[-1], **tol)
    # then a pure decode batch of three sequences with different context lengths
    nxt = [("a", [int(out[0].argmax())]), ("b", [int(out[-1].argmax())]), ("c", [int(out[-2].argmax())])]
    dec = d.step(nxt)
    for row, (sid, tok) in zip(dec, nxt):
        full = d.seqs[sid].tokens
        torch.testing.assert_close(row, hf_logits(hf, full)[-1], **tol)


def test_prefill_with_cached_prefix(runner_and_hf):
    runner, hf = runner_and_hf("llama", block_size=4)
    d = Driver(runner)
    shared = prompt(6, 16)
    d.step([("a", shared + prompt(7, 5))])
    # b reuses a's first 16 tokens (4 full blocks) and computes only its own tail: query_len < context_len
    d.share_prefix("a", "b", 16)
    tail = prompt(8, 7)
    batch = d.build([("b", tail)], all_logits=True)
    assert batch.query_lens == [7] and batch.context_lens == [23]
    out = runner.execute(batch)
    ref = hf_logits(hf, shared + tail)[16:]
    torch.testing.assert_close(out, ref, atol=2e-5 * float(ref.abs().max()), rtol=1e-4)
    # chunked prefill: c's prompt in three chunks gives the same last logits as one prefill
    pc = prompt(9, 30)
    d.step([("c", pc[:10])])
    d.step([("c", pc[10:21])])
    last = d.step([("c", pc[21:])])[0]
    torch.testing.assert_close(last, hf_logits(hf, pc)[-1], atol=2e-5 * float(ref.abs().max()), rtol=1e-4)


ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "linear": {"rope_type": "linear", "factor": 2.0},
}


@pytest.mark.parametrize("kind", sorted(ROPE_SCALINGS))
def test_rope_scaling(kind, tmp_path):
    from tests.support.tiny_models import build_tiny_model
    rs = dict(ROPE_SCALINGS[kind], rope_theta=10000.0)
    path = build_tiny_model(tmp_path, "llama", rope_parameters=rs)
    runner, hf = load_runner(path), load_hf(path)
    assert hf.config.rope_parameters["rope_type"] == kind
    _parity(runner, hf, prompt(10, 40), steps=16)       # past original_max_position_embeddings


def test_sliding_window(tiny_model):
    path = tiny_model("mistral", sliding_window=8)
    runner, hf = load_runner(path, block_size=4), load_hf(path)
    assert runner.model.windows == [8, 8]
    _parity(runner, hf, prompt(11, 19), steps=12)


def test_bfloat16_close_to_float32(tiny_model):
    """Half precision on CPU (KV cache in float32 where the CPU lacks native bf16) stays close to float32."""
    from mindie_like.backend_atb import ModelRunner
    from mindie_like.engine.types import EngineConfig
    path = tiny_model("qwen2")
    f32 = load_runner(path, 16)
    bf = ModelRunner.load(EngineConfig(model_path=str(path), dtype="bfloat16", device="cpu", block_size=16))
    assert bf.dtype == torch.bfloat16 and bf.kv_dtype in (torch.bfloat16, torch.float32)
    p = prompt(12, 19)
    a = Driver(f32).step([("a", p)], all_logits=True)
    b = Driver(bf).step([("a", p)], all_logits=True)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert float((a - b).abs().max()) < 0.1 * float(a.abs().max())
    assert float((a.argmax(-1) == b.argmax(-1)).float().mean()) >= 0.8


def test_dtype_rules():
    from mindie_like.backend_atb.device import choose_dtype
    cpu = torch.device("cpu")
    assert choose_dtype("auto", "float32", cpu) == torch.float32
    assert choose_dtype("auto", "bfloat16", cpu) in (torch.bfloat16, torch.float32)
    assert choose_dtype("float32", "bfloat16", cpu) == torch.float32
    assert choose_dtype("float16", "bfloat16", cpu) == torch.bfloat16        # never fp16 on CPU
    assert choose_dtype("auto", "float16", torch.device("cuda")) == torch.float16
