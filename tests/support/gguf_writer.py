"""Writes a tiny qwen2 GGUF (float32 tensors, a small byte-level BPE vocabulary as GGUF metadata) from a tiny HF model,
so the GGUF import path (transformers + gguf -> bf16 safetensors cache) runs in the default tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _small_byte_level_vocab(vocab: int):
    """A GPT-2 style byte-level vocabulary of `vocab` tokens: the 256 byte symbols, a few merges, and one control
    token (<|endoftext|>) last. Small, so GGUF metadata parsing stays fast."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    assert vocab >= 260
    syms = list(bytes_to_unicode().values())
    tokens, merges = list(syms), []
    pairs = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s"), ("r", "e")]
    for a, b in pairs:
        if len(tokens) >= vocab - 1:
            break
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    while len(tokens) < vocab - 1:
        tokens.append(f"<|extra_{len(tokens)}|>")
    tokens.append("<|endoftext|>")
    types = [gguf.TokenType.NORMAL] * (vocab - 1) + [gguf.TokenType.CONTROL]
    return tokens, types, merges


def write_tiny_qwen2_gguf(hf_dir: Path, out: Path, fmt_of=None) -> Path:
    """`fmt_of(gguf_name)`: the block format ("Q5_0", "Q8_0", ...) to store a 2-D weight in (gguf's own
    quantizer), or None for float32 (the default for every tensor)."""
    import gguf
    from safetensors.torch import load_file
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2"
    sd = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    vocab = cfg["vocab_size"]
    tokens, types, merges = _small_byte_level_vocab(vocab)
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch="qwen2")
    w.add_name("tiny-qwen2")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)

    def put(name, t: torch.Tensor):
        a = t.float().contiguous().numpy().astype(np.float32)
        fmt = fmt_of(name) if (fmt_of is not None and a.ndim == 2) else None
        if fmt is None:
            w.add_tensor(name, a)
        else:
            from gguf import GGMLQuantizationType as T
            from gguf.quants import quantize
            w.add_tensor(name, quantize(a, getattr(T, fmt)), raw_dtype=getattr(T, fmt))
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd and not cfg.get("tie_word_embeddings", False):
        put("output.weight", sd["lm_head.weight"])
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in _LAYER_MAP.items():
            key = f"model.layers.{i}.{hf}"
            if key in sd:
                put(f"blk.{i}.{gg}", sd[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def build_small_vocab_qwen2(dest: Path, vocab: int = 300, seed: int = 0) -> Path:
    """A tiny random qwen2 HF model with a `vocab`-token vocabulary (to pair with `write_tiny_qwen2_gguf`)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tests.support.tiny_models import BASE
    cfg = Qwen2Config(**{**BASE, "vocab_size": vocab, "tie_word_embeddings": False, "bos_token_id": vocab - 1,
                         "eos_token_id": vocab - 1, "pad_token_id": None})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    return dest
