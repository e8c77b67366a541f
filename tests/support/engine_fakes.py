"""Test-only model runners that implement the runner interface (mindie_like.engine.types.Runner).

`PagedRunnerBase` plays the KV cache with token ids instead of K/V tensors: `execute` writes each new token id
into its slot (slot_mapping) and reads every sequence's context back through its block table. So a wrong block
table, slot mapping, position or prefix-cache hit gives a wrong context and wrong logits: these runners check the
engine's paging, not just its outputs. With `supports_prefix_cache=False` they instead keep each seq_id's history
(positions say where the new tokens go; a preempted sequence restarts at position 0), like the generic HF path.

`FakeRunner`: logits are a cheap deterministic function of the whole context (fast scheduler/engine tests).
The transformers-backed oracle is tests/support/reference_runner.py.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Optional

import torch


class PagedRunnerBase:
    device = "cpu"
    dtype = torch.float32
    model_type = "fake"
    max_model_len = 4096

    def __init__(self, vocab_size: int, eos_token_ids: list[int], block_size: int = 16,
                 supports_prefix_cache: bool = True, tokenizer_path: str = "", default_blocks: int = 256,
                 supports_kv_copy: Optional[bool] = None):
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.block_size = block_size
        self.supports_prefix_cache = supports_prefix_cache
        self.supports_kv_copy = supports_prefix_cache if supports_kv_copy is None else supports_kv_copy
        self.tokenizer_path = tokenizer_path
        self.default_blocks = default_blocks
        self.hf_config = SimpleNamespace(vocab_size=vocab_size)
        self.slots: Optional[torch.Tensor] = None
        self.history: dict[str, list[int]] = {}
        self.num_blocks = 0
        # counters the tests assert on
        self.executed_tokens = 0          # tokens run through the model (input_ids rows)
        self.copied_tokens = 0            # KV slots copied for partial-block reuse (ForwardBatch.kv_copies)
        self.batches: list[tuple[int, int]] = []   # (num_seqs, num_tokens) per execute
        self.released: list[str] = []
        self.fail_next = 0                # execute raises this many times (error-path tests)
        self.gate: Optional[threading.Event] = None   # execute waits on it when set (abort tests)

    # -- interface
    def kv_cache_bytes_per_block(self) -> int:
        return self.block_size * 64

    def determine_num_blocks(self, kv_cache_gb: float) -> int:
        if kv_cache_gb is None or kv_cache_gb <= 0:
            return self.default_blocks
        return int(kv_cache_gb * 1024 ** 3 // self.kv_cache_bytes_per_block())

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.slots = torch.full((num_blocks * self.block_size,), -1, dtype=torch.int64)

    def release(self, seq_id: str) -> None:
        self.released.append(seq_id)
        self.history.pop(seq_id, None)

    def contexts(self, batch) -> list[list[int]]:
        """Writes the batch's tokens and returns each sequence's full context (cached + new) as token ids."""
        bs = self.block_size
        ids = batch.input_ids.tolist()
        pos = batch.positions.tolist()
        assert len(ids) == len(pos) == batch.slot_mapping.numel() == sum(batch.query_lens)
        assert batch.block_tables.dtype == torch.int32 and batch.block_tables.shape[0] == batch.num_seqs
        out = []
        off = 0
        for i, (q, ctx) in enumerate(zip(batch.query_lens, batch.context_lens)):
            assert pos[off:off + q] == list(range(ctx - q, ctx)), "positions must continue the context"
            if self.supports_prefix_cache:
                table = batch.block_tables[i].tolist()
                for j in range(q):
                    p = pos[off + j]
                    slot = table[p // bs] * bs + p % bs
                    assert batch.slot_mapping[off + j].item() == slot, "slot mapping disagrees with block table"
                self.slots[batch.slot_mapping[off:off + q]] = batch.input_ids[off:off + q]
                idx = torch.tensor([table[p // bs] * bs + p % bs for p in range(ctx)], dtype=torch.int64)
                context = self.slots[idx].tolist()
                assert -1 not in context, "context reads a KV slot that was never written"
            else:
                hist = self.history.get(batch.seq_ids[i], [])
                start = ctx - q
                assert start <= len(hist), "positions skip ahead of the sequence's history"
                hist = hist[:start] + ids[off:off + q]
                self.history[batch.seq_ids[i]] = hist
                context = hist
            out.append(context)
            off += q
        return out

    def logits_rows(self, batch) -> list[tuple[int, int]]:
        """(sequence index, position in its context) for each logits index."""
        starts = []
        off = 0
        for q in batch.query_lens:
            starts.append(off)
            off += q
        rows = []
        for r in batch.logits_indices.tolist():
            i = max(k for k, s in enumerate(starts) if s <= r)
            rows.append((i, batch.positions[r].item()))
        return rows

    def execute(self, batch) -> torch.Tensor:
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("injected runner failure")
        self.executed_tokens += batch.input_ids.numel()
        self.batches.append((batch.num_seqs, batch.input_ids.numel()))
        bs = self.block_size
        for src, dst, n in batch.kv_copies:
            assert self.supports_kv_copy and 0 < n <= bs and src != dst
            self.slots[dst * bs:dst * bs + n] = self.slots[src * bs:src * bs + n]
            self.copied_tokens += n
        contexts = self.contexts(batch)
        rows = self.logits_rows(batch)
        return self.compute_logits(contexts, rows)

    def compute_logits(self, contexts, rows) -> torch.Tensor:
        raise NotImplementedError


class FakeRunner(PagedRunnerBase):
    """Logits: a pseudo-random vector seeded by a hash of the context prefix up to the position."""

    def __init__(self, vocab_size: int = 64, eos_token_ids=(0,), **kw):
        super().__init__(vocab_size, list(eos_token_ids), **kw)

    @classmethod
    def load(cls, config):
        return cls(block_size=config.block_size)

    def compute_logits(self, contexts, rows) -> torch.Tensor:
        out = torch.empty((len(rows), self.vocab_size), dtype=torch.float32)
        for r, (i, p) in enumerate(rows):
            h = hash(tuple(contexts[i][:p + 1])) & ((1 << 62) - 1)
            g = torch.Generator().manual_seed(h)
            out[r] = torch.randn(self.vocab_size, generator=g) * 3.0
        return out


class ScriptedRunner(PagedRunnerBase):
    """Always predicts the next token of `script` (by output position): drives exact token sequences through
    the engine (stop strings, UTF-8 split across tokens, EOS). Paging is still checked."""

    def __init__(self, script: list[int], vocab_size: int, eos_token_ids=(), **kw):
        super().__init__(vocab_size, list(eos_token_ids), **kw)
        self.script = list(script)

    def compute_logits(self, contexts, rows) -> torch.Tensor:
        out = torch.zeros((len(rows), self.vocab_size), dtype=torch.float32)
        for r, (i, p) in enumerate(rows):
            ctx = contexts[i][:p + 1]
            # tokens already produced = the longest suffix of the context that is a prefix of the script
            # (prompts must not end with a script prefix)
            n_out = 0
            for k in range(len(self.script), 0, -1):
                if len(ctx) >= k and ctx[len(ctx) - k:] == self.script[:k]:
                    n_out = k
                    break
            nxt = self.script[n_out] if n_out < len(self.script) else self.script[-1]
            out[r, nxt] = 10.0
        return out


QUANT_KEYS = {"quantization": "scheme", "quant_group_size": "group_size", "quant_dense": "dense",
              "quant_crossover": "crossover", "quant_from_gguf": "from_gguf", "quant_dense_dtype": "dense_dtype",
              "quant_act_bits": "act_bits"}


def make_engine_config(model_path, **kw):
    """An EngineConfig from keywords, the ModelConfig spellings of the quantization keys (`quantization`,
    `quant_dense`, ...) gathered into its QuantOptions."""
    from mindie_like.engine.types import EngineConfig, QuantOptions
    quant = {QUANT_KEYS[k]: kw.pop(k) for k in list(kw) if k in QUANT_KEYS}
    return EngineConfig(model_path=str(model_path), quant=QuantOptions(**quant), **kw)
