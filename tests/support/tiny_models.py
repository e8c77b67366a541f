"""Tiny random Hugging Face models, built and saved by the tests themselves (no hub, no downloads).

`initializer_range=0.2` keeps logits far from flat so two correct implementations rarely meet a near-tie
as well. Tokenizers are the repository's own copies under tests/data/tokenizers.
"""
from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
TOKENIZERS = DATA / "tokenizers"
FIXTURES = DATA / "fixtures"

# family -> (transformers config class name, tokenizer folder, per-family config switches)
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "llama": ("LlamaConfig", "smollm2", {"tie_word_embeddings": False}),
    "mistral": ("MistralConfig", "smollm2", {"tie_word_embeddings": False, "sliding_window": None}),
    "qwen2": ("Qwen2Config", "qwen2.5", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "qwen2.5", {"tie_word_embeddings": True, "head_dim": 16}),
    "qwen3_moe": ("Qwen3MoeConfig", "qwen2.5", {"tie_word_embeddings": False, "head_dim": 16, "num_experts": 4,
                                                "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                                "decoder_sparse_step": 1, "mlp_only_layers": []}),
    "qwen2_moe": ("Qwen2MoeConfig", "qwen2.5", {"tie_word_embeddings": False, "num_experts": 4,
                                                "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                                "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1,
                                                "mlp_only_layers": []}),
    "olmo2": ("Olmo2Config", "qwen2.5", {"tie_word_embeddings": False}),       # no own implementation
    "glm4": ("Glm4Config", "qwen2.5", {"tie_word_embeddings": False, "head_dim": 16, "partial_rotary_factor": 0.5}),
    "glm": ("GlmConfig", "qwen2.5", {"tie_word_embeddings": False, "head_dim": 16, "partial_rotary_factor": 0.5}),
    "glm4_moe": ("Glm4MoeConfig", "qwen2.5", {"tie_word_embeddings": False, "head_dim": 16,
                                              "partial_rotary_factor": 0.5, "n_routed_experts": 4,
                                              "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                              "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 2,
                                              "topk_group": 1, "routed_scaling_factor": 1.5, "attention_bias": True,
                                              "use_qk_norm": True}),
    # MLA + MoE: yarn rope with mscale (past original_max_position_embeddings within the tests' prompts),
    # 4 routed experts in 2 groups (top-1 group), top-2, one shared expert, a dense first layer
    "deepseek_v3": ("DeepseekV3Config", "qwen2.5", {
        "tie_word_embeddings": False, "num_hidden_layers": 3, "num_key_value_heads": 4, "q_lora_rank": 48,
        "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_shared_experts": 1,
        "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 2.5,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1,
                            "rope_theta": 10000.0}}),
}

BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2, rope_theta=10000.0)


def tokenizer_dir(name: str) -> Path:
    return TOKENIZERS / name


def build_tiny_model(dest: Path, family: str, *, seed: int = 0, dtype: str = "float32", **overrides) -> Path:
    """Builds a random `family` model into `dest` (config, safetensors, tokenizer files) and returns `dest`."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cls_name, tok_name, switches = FAMILIES[family]
    tok_src = tokenizer_dir(tok_name)
    tok = AutoTokenizer.from_pretrained(tok_src)
    kwargs = {**BASE, **switches, **overrides}
    kwargs.setdefault("vocab_size", len(tok))
    eos = tok.convert_tokens_to_ids("<|im_end|>") if tok_name == "qwen2.5" else tok.eos_token_id
    # a vocabulary cut below the tokenizer's (tests that need a cheap lm_head) drops the special ids past its end;
    # ids given as overrides win
    ids = {k: (v if v is None or v < kwargs["vocab_size"] else None)
           for k, v in (("bos_token_id", tok.bos_token_id), ("eos_token_id", eos), ("pad_token_id", tok.pad_token_id))}
    cfg = getattr(transformers, cls_name)(**{**ids, **kwargs})
    cfg.dtype = dtype
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.eval()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    for f in tok_src.iterdir():
        shutil.copy(f, dest / f.name)
    return dest
