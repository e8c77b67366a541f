"""deepseek_v3 on the own path, in-process: the MLA cache's bytes, MLA without q_lora, FP8 block checkpoints,
the multi-token-prediction layers left unread, kimi_k2 configs. (Served parity through the daemon:
tests/e2e/test_deepseek_daemon.py; worldSize 2: tests/integration/test_tensor_parallel_mla.py.)"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from arch_parity import STEPS, check_request, waves
from driver import Driver
from fp8_writer import write_fp8_pair
from helpers import check_continuation, hf_logits, load_hf, load_runner, prompt

VOCAB = 3001
DS = dict(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def ds_path(tiny_model):
    return tiny_model("deepseek_v3", **DS)


def greedy_parity(runner, hf, p, steps=STEPS):
    d = Driver(runner)
    gen, ours = d.greedy("a", p, steps)
    ref = hf_logits(hf, p + gen)[len(p) - 1:]
    return check_continuation(ref, ours, gen + [int(ours[-1].argmax())])


def test_cache_holds_latent_plus_rope_key_per_token(ds_path):
    """kv_lora_rank + qk_rope_head_dim values per token per layer, not expanded K/V."""
    runner = load_runner(ds_path, block_size=16)
    cfg = runner.hf_config
    per_token = cfg.kv_lora_rank + cfg.qk_rope_head_dim                       # 32 + 8
    expect = cfg.num_hidden_layers * 16 * per_token * 4                      # float32
    assert runner.kv_cache_bytes_per_block() == expect
    runner.allocate_kv_cache(10)
    held = sum(t.numel() * t.element_size() for layer in runner.kv_caches for t in layer)
    assert held == 10 * expect
    full = cfg.num_hidden_layers * 16 * cfg.num_attention_heads * (
        cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * 4
    assert full / expect == pytest.approx(4 * (16 + 8 + 16) / 40)           # 4.0x for this tiny config


def test_decode_uses_absorbed_weights_and_matches(ds_path):
    """Decode steps go through W_UK / W_UV (views of kv_b_proj, no copy) and still equal transformers."""
    runner, hf = load_runner(ds_path, block_size=4), load_hf(ds_path)
    seen = []
    orig = runner.ops.mla_attention_decode

    def spy(q_lat, *a, **k):
        seen.append(q_lat.shape)
        return orig(q_lat, *a, **k)
    runner.ops.mla_attention_decode = spy
    assert greedy_parity(runner, hf, prompt(1, 23)) >= 16
    assert seen and seen[0][-1] == runner.hf_config.kv_lora_rank


def test_mla_without_q_lora(tiny_model):
    path = tiny_model("deepseek_v3", q_lora_rank=None, **DS)
    runner, hf = load_runner(path, block_size=4), load_hf(path)
    assert runner.model.layers[0].self_attn.q_proj is not None
    assert greedy_parity(runner, hf, prompt(2, 30)) >= 16


def test_fp8_block_checkpoint_and_mtp_layers(ds_path, tmp_path):
    """A tiny FP8 checkpoint (float8_e4m3fn + 128x128 weight_scale_inv tiles; 16x16 tiles for many partial ones)
    loads to the float model it stands for; a multi-token-prediction layer after the last layer is never read."""
    n_layers = json.loads((ds_path / "config.json").read_text())["num_hidden_layers"]
    mtp = {f"model.layers.{n_layers}.self_attn.kv_b_proj.weight": torch.randn(64, 32).to(torch.float8_e4m3fn),
           f"model.layers.{n_layers}.self_attn.kv_b_proj.weight_scale_inv": torch.ones(1, 1),
           f"model.layers.{n_layers}.eh_proj.weight": torch.randn(64, 128)}
    p = prompt(3, 20)
    for block in ((128, 128), (16, 16)):
        fp8, ref = tmp_path / f"fp8_{block[0]}", tmp_path / f"ref_{block[0]}"
        assert write_fp8_pair(ds_path, fp8, ref, block=block, extra_tensors=mtp) > 10
        r8, rf = load_runner(fp8), load_runner(ref)
        a = Driver(r8).step([("a", p)], all_logits=True)
        b = Driver(rf).step([("a", p)], all_logits=True)
        torch.testing.assert_close(a, b, atol=0, rtol=0)         # the same float weights
        torch.testing.assert_close(a, hf_logits(load_hf(ref), p), atol=2e-5 * float(a.abs().max()), rtol=1e-4)
        mtp_bytes = sum(t.numel() * t.element_size() for t in mtp.values())
        assert r8.load_stats.checkpoint_bytes - r8.load_stats.loaded_bytes == mtp_bytes


def test_fp8_dequantization_against_tiles():
    from mindie_like.backend_atb.quant.fp8_block import dequantize, quantize, to_int8_rows
    torch.manual_seed(0)
    w = torch.randn(300, 200)
    q, s = quantize(w, (128, 128))
    assert q.dtype == torch.float8_e4m3fn and s.shape == (3, 2)
    d = dequantize(q, s, (128, 128), torch.float32)
    assert float((d - w).abs().max()) < 0.07 * float(w.abs().max())
    # a tensor-parallel slice starting inside a tile reads the covering tiles and starts at the offset
    part = dequantize(q[150:260], s[1:3], (128, 128), torch.float32, offset=(150 - 128, 0))
    torch.testing.assert_close(part, d[150:260], atol=0, rtol=0)
    i8, sc = to_int8_rows(d)
    assert i8.dtype == torch.int8 and float((i8.float() * sc[:, None] - d).abs().max()) <= float(sc.max()) / 2 + 1e-6


def test_kimi_k2_config_runs_as_deepseek_v3(ds_path, tmp_path):
    kimi = tmp_path / "kimi"
    shutil.copytree(ds_path, kimi)
    cfg = json.loads((kimi / "config.json").read_text())
    cfg.update(model_type="kimi_k2", architectures=["DeepseekV3ForCausalLM"],
               auto_map={"AutoConfig": "configuration_deepseek.DeepseekV3Config"})
    (kimi / "config.json").write_text(json.dumps(cfg))
    runner = load_runner(kimi, block_size=4)
    assert runner.path == "own" and runner.model_type == "kimi_k2"
    assert greedy_parity(runner, load_hf(ds_path), prompt(4, 21), steps=12) >= 8


def test_w8a16_follows_the_float_model(tiny_model):
    """W8A16 through MLA and the routed experts: every linear but kv_b_proj (decode's absorbed W_UK / W_UV) is
    int8; the quantized model equals the float model run on the dequantized weights, and teacher-forced on the
    float model's greedy continuations agrees with it as the dense W8A16 tests require (initializer_range 0.02,
    as there: at 0.2, int8 noise on a 64-wide model flips expert choices and tokens by itself)."""
    import torch.nn.functional as F

    from mindie_like.backend_atb.quant import QuantizedWeight
    path = tiny_model("deepseek_v3", initializer_range=0.02, vocab_size=1024, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
    f32 = load_runner(path, block_size=4)
    q = load_runner(path, block_size=4, quantization="w8a16", quant_dense="never")
    attn = q.model.layers[1].self_attn
    assert isinstance(attn.q_b_proj.weight, QuantizedWeight) and isinstance(attn.o_proj.weight, QuantizedWeight)
    assert type(attn.kv_b_proj.weight) is torch.Tensor
    assert isinstance(q.model.layers[1].mlp.experts.w13[0].weight, QuantizedWeight)
    deq = load_runner(path, block_size=4)
    for a, b in zip(deq.model.linears(), q.model.linears()):
        a.weight = b.weight.dequantize(torch.float32)
    deq.model.lm_head = q.model.lm_head.dequantize(torch.float32)
    p = prompt(42, 17)
    x = Driver(deq).step([("a", p)], all_logits=True)
    y = Driver(q).step([("a", p)], all_logits=True)
    torch.testing.assert_close(y, x, atol=2e-3 * float(x.abs().max()), rtol=1e-4)
    agree = total = 0
    kls = []
    for k in range(2):
        p = prompt(50 + k, 11 + k, vocab=1000)
        gen, _ = Driver(f32).greedy("a", p, 12)
        x = Driver(f32).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        y = Driver(q).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        agree += int((x.argmax(-1) == y.argmax(-1)).sum())
        total += len(gen)
        kls.append(float(F.kl_div(F.log_softmax(y, -1), F.log_softmax(x, -1), log_target=True,
                                  reduction="batchmean")))
    assert agree >= 0.9 * total and sum(kls) / len(kls) < 0.01, (agree, total, kls)
