"""The generic path: any model transformers can load, one HF cache per sequence."""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.types import EngineConfig, ForwardBatch
from .runner_base import BaseRunner

class HFModelRunner(BaseRunner):
    """Generic path: the transformers model class, one HF cache per sequence (no paged KV, no prefix cache)."""
    path = "generic"
    supports_prefix_cache = False

    def __init__(self, cfg, model_dir: Path, device, dtype, config: EngineConfig):
        from transformers import AutoModelForCausalLM
        self._init_common(cfg, model_dir, device, dtype, config)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype,
                                                          trust_remote_code=config.trust_remote_code)
        self.model.to(device).eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0]) or self.vocab_size
        self._states: dict[str, tuple[object, int]] = {}     # seq_id -> (cache, tokens in it)
        self._logits_to_keep = True
        tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        heads = getattr(tc, "num_attention_heads", 1) or 1
        self._kv_heads = getattr(tc, "num_key_value_heads", None) or getattr(tc, "multi_query_group_num", None) or heads
        self._head_dim = getattr(tc, "head_dim", None) or getattr(tc, "kv_channels", None) or \
            (tc.hidden_size // heads)
        self._layers = getattr(tc, "num_hidden_layers", None) or getattr(tc, "num_layers", 1)

    def kv_cache_bytes_per_block(self) -> int:
        """An estimate for the engine's accounting; the HF caches hold the real memory."""
        el = torch.tensor([], dtype=self.dtype).element_size()
        return max(1, 2 * self._layers * self.block_size * self._kv_heads * self._head_dim * el)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks          # nothing to allocate: caches grow per sequence

    def release(self, seq_id: str) -> None:
        self._states.pop(seq_id, None)

    def _cache_for(self, seq_id: str, start: int):
        from transformers import DynamicCache
        st = self._states.get(seq_id)
        if start == 0 or st is None:
            if start != 0:
                raise RuntimeError(f"generic path: sequence {seq_id} continues at {start} without its cache "
                                   "(no prefix cache on this path)")
            cache = DynamicCache(config=self.model.config)
            self._states[seq_id] = (cache, 0)
            return cache
        cache, n = st
        if n > start:
            cache.crop(start)
        elif n < start:
            raise RuntimeError(f"generic path: sequence {seq_id} has {n} cached tokens, step starts at {start}")
        return cache

    @torch.inference_mode()
    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        wanted = batch.logits_indices.tolist()
        out = torch.empty(len(wanted), self.vocab_size, dtype=torch.float32)
        pos_of = {t: r for r, t in enumerate(wanted)}
        s = 0
        for seq_id, ql in zip(batch.seq_ids, batch.query_lens):
            e = s + ql
            rows = [t for t in range(s, e) if t in pos_of]
            start = int(batch.positions[s])
            cache = self._cache_for(seq_id, start)
            ids = batch.input_ids[s:e].to(self.device)[None]
            pos = batch.positions[s:e].to(self.device)[None]
            keep = torch.tensor([t - s for t in rows], dtype=torch.long) if rows else 1
            kwargs = dict(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True)
            if self._logits_to_keep:
                try:
                    res = self.model(**kwargs, logits_to_keep=keep)
                except TypeError:           # remote-code models without logits_to_keep
                    self._logits_to_keep = False
                    if hasattr(cache, "crop") and cache.get_seq_length() > start:
                        cache.crop(start)
                    kwargs["past_key_values"] = cache
            if not self._logits_to_keep:
                res = self.model(**kwargs)
            self._states[seq_id] = (res.past_key_values if res.past_key_values is not None else cache, e - s + start)
            if rows:
                lg = res.logits[0].float().cpu()
                if not self._logits_to_keep:
                    lg = lg[[t - s for t in rows]]
                for j, t in enumerate(rows):
                    out[pos_of[t]] = lg[j, : self.vocab_size]
            s = e
        return out
