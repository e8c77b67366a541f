"""REFERENCE RUNNER: the ModelRunner interface on top of a transformers AutoModelForCausalLM (test-only oracle).

Each step it reads every sequence's full token context back through the (token-id) paged cache of
PagedRunnerBase and recomputes the logits from scratch with the HF model: slow, but exact, so any batching,
chunking, preemption or prefix-cache bug in the engine shows up as a different token.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.support.engine_fakes import PagedRunnerBase


class ReferenceRunner(PagedRunnerBase):
    def __init__(self, model_path, block_size: int = 16, supports_prefix_cache: bool = True):
        cfg = AutoConfig.from_pretrained(model_path)
        eos = cfg.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        super().__init__(cfg.vocab_size, eos, block_size=block_size, supports_prefix_cache=supports_prefix_cache,
                         tokenizer_path=str(model_path))
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        self.model.eval()
        self.hf_config = cfg
        self.model_type = cfg.model_type
        self.max_model_len = cfg.max_position_embeddings
        heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self._bytes_per_block = 2 * cfg.num_hidden_layers * heads * self.head_dim * block_size * 4

    @classmethod
    def load(cls, config):
        return cls(config.model_path, block_size=config.block_size)

    def kv_cache_bytes_per_block(self) -> int:
        return self._bytes_per_block

    @torch.no_grad()
    def compute_logits(self, contexts, rows) -> torch.Tensor:
        out = torch.empty((len(rows), self.vocab_size), dtype=torch.float32)
        by_seq: dict[int, list[tuple[int, int]]] = {}
        for r, (i, p) in enumerate(rows):
            by_seq.setdefault(i, []).append((r, p))
        for i, items in by_seq.items():
            n = max(p for _, p in items) + 1
            ids = torch.tensor([contexts[i][:n]], dtype=torch.int64)
            keep = torch.tensor([p for _, p in items], dtype=torch.int64)
            logits = self.model(input_ids=ids, logits_to_keep=keep).logits[0]
            for (r, _), row in zip(items, logits):
                out[r] = row.float()
        return out
