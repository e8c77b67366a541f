"""Interleaved (GPT-J) and partial rotary, YaRN's cos/sin scaling and MLA's softmax-scale mscale, each against
transformers' own functions for the same config."""
from __future__ import annotations

import pytest
import torch

from mindie_like.backend_atb.layers.interleaved_rope import (apply_interleaved, interleaved_tables,
                                                             mla_softmax_scale, rotary_dim_of)
from mindie_like.backend_atb.layers.rotary import RotaryEmbedding, build_cos_sin_cache
from mindie_like.backend_atb.ops import TorchOps

YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 64, "mscale": 1.0,
        "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1, "rope_theta": 10000.0}


def _hf_tables(rotary_module_cls, cfg, positions):
    emb = rotary_module_cls(cfg)
    x = torch.zeros(1, dtype=torch.float32)
    return emb(x, positions[None])           # cos, sin [1, T, dim] = cat(freqs, freqs) * scaling


@pytest.mark.parametrize("rope", [None, YARN])
def test_deepseek_cos_sin_and_interleave(rope):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m
    kw = {"rope_parameters": dict(rope)} if rope else {}
    cfg = DeepseekV3Config(hidden_size=64, num_attention_heads=4, qk_rope_head_dim=16, qk_nope_head_dim=16,
                           v_head_dim=16, kv_lora_rank=32, max_position_embeddings=4096, **kw)
    pos = torch.tensor([0, 1, 5, 63, 64, 500, 3000])
    cos, sin = _hf_tables(m.DeepseekV3RotaryEmbedding, cfg, pos)
    cache = build_cos_sin_cache(cfg, 16, 4096)
    c, s = interleaved_tables(cache, pos, torch.float32)
    torch.testing.assert_close(c[:, 0], cos[0, :, :8])
    torch.testing.assert_close(s[:, 0], sin[0, :, :8])
    # ours keeps the interleaved layout; transformers de-interleaves (evens then odds): the same values moved
    q, k = torch.randn(7, 4, 16), torch.randn(7, 1, 16)
    hq, hk = m.apply_rotary_pos_emb_interleave(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    perm = torch.cat((torch.arange(0, 16, 2), torch.arange(1, 16, 2)))
    torch.testing.assert_close(apply_interleaved(q, c, s)[..., perm], hq[0].transpose(0, 1))
    torch.testing.assert_close(apply_interleaved(k, c, s)[..., perm], hk[0].transpose(0, 1))
    # softmax scale: yarn's mscale(factor, mscale_all_dim)^2 on 1/sqrt(qk_head_dim)
    assert mla_softmax_scale(cfg, 32) == pytest.approx(m.yarn_apply_mscale(cfg.rope_parameters, 32 ** -0.5))
    assert (mla_softmax_scale(cfg, 32) > 32 ** -0.5) == bool(rope)


@pytest.mark.parametrize("family", ["glm", "glm4_moe"])
def test_glm_partial_rotary(family):
    """glm: interleaved over the first half of the head; glm4_moe: half-split over the first half."""
    import transformers
    if family == "glm":
        from transformers.models.glm import modeling_glm as m
        cfg = transformers.GlmConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
        emb_cls, neox = m.GlmRotaryEmbedding, False
    else:
        from transformers.models.glm4_moe import modeling_glm4_moe as m
        cfg = transformers.Glm4MoeConfig(hidden_size=64, num_attention_heads=4, head_dim=16)
        emb_cls, neox = m.Glm4MoeRotaryEmbedding, True
    rd = rotary_dim_of(cfg, 16)
    assert rd == 8
    pos = torch.tensor([0, 3, 17, 200])
    cos, sin = _hf_tables(emb_cls, cfg, pos)
    ops = TorchOps()
    rot = RotaryEmbedding(cfg, 16, 256, torch.device("cpu"), rotary_dim=rd, is_neox_style=neox)
    tables = rot.tables(ops, pos, torch.float32)
    q, k = torch.randn(4, 4, 16), torch.randn(4, 2, 16)
    hq, hk = m.apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(rot.apply_heads(ops, q, tables), hq[0].transpose(0, 1))
    torch.testing.assert_close(rot.apply_heads(ops, k, tables), hk[0].transpose(0, 1))
    assert torch.equal(rot.apply_heads(ops, q, tables)[..., rd:], q[..., rd:])
