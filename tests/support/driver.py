"""A tiny test driver for the model runner: builds ForwardBatches, allocating KV blocks linearly.

Not the engine's scheduler: just enough bookkeeping to drive prefills, decodes, mixed batches and shared
(prefix-cached) blocks in tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mindie_like.backend_atb import ForwardBatch


@dataclass
class Seq:
    seq_id: str
    tokens: list[int] = field(default_factory=list)   # every token whose KV is (or will be) cached
    blocks: list[int] = field(default_factory=list)


class Driver:
    def __init__(self, runner, num_blocks: int = 256):
        self.runner = runner
        self.bs = runner.block_size
        runner.allocate_kv_cache(num_blocks)
        self.num_blocks = num_blocks
        self.next_block = 1          # block 0 is kept unused so padding (0) never aliases live data
        self.seqs: dict[str, Seq] = {}

    def _grow(self, seq: Seq, n_tokens: int) -> None:
        while len(seq.blocks) * self.bs < n_tokens:
            if self.next_block >= self.num_blocks:
                raise RuntimeError("test driver ran out of blocks")
            seq.blocks.append(self.next_block)
            self.next_block += 1

    def share_prefix(self, src_id: str, dst_id: str, n_tokens: int) -> Seq:
        """dst starts with src's first n_tokens (whole blocks) already cached."""
        assert n_tokens % self.bs == 0
        src = self.seqs[src_id]
        dst = Seq(dst_id, list(src.tokens[:n_tokens]), list(src.blocks[: n_tokens // self.bs]))
        self.seqs[dst_id] = dst
        return dst

    def build(self, work: list[tuple[str, list[int]]], all_logits: bool = False) -> ForwardBatch:
        """work: (seq_id, new tokens) per sequence; new sequences are created. Logits for each sequence's last
        token (or every token with all_logits)."""
        ids, pos, slots, qlens, clens, tables, lidx = [], [], [], [], [], [], []
        t = 0
        for sid, new in work:
            seq = self.seqs.setdefault(sid, Seq(sid))
            start = len(seq.tokens)
            self._grow(seq, start + len(new))
            seq.tokens += new
            for j, tok in enumerate(new):
                p = start + j
                ids.append(tok)
                pos.append(p)
                slots.append(seq.blocks[p // self.bs] * self.bs + p % self.bs)
            qlens.append(len(new))
            clens.append(len(seq.tokens))
            tables.append(list(seq.blocks))
            if all_logits:
                lidx += list(range(t, t + len(new)))
            else:
                lidx.append(t + len(new) - 1)
            t += len(new)
        width = max(len(b) for b in tables)
        bt = torch.zeros(len(tables), width, dtype=torch.int32)
        for i, b in enumerate(tables):
            bt[i, : len(b)] = torch.tensor(b, dtype=torch.int32)
        return ForwardBatch(seq_ids=[w[0] for w in work], input_ids=torch.tensor(ids, dtype=torch.long),
                            positions=torch.tensor(pos, dtype=torch.long), query_lens=qlens, context_lens=clens,
                            block_tables=bt, slot_mapping=torch.tensor(slots, dtype=torch.long),
                            logits_indices=torch.tensor(lidx, dtype=torch.long))

    def step(self, work, all_logits: bool = False) -> torch.Tensor:
        return self.runner.execute(self.build(work, all_logits))

    def greedy(self, seq_id: str, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
        """Prefill then `steps` greedy decodes; returns (generated tokens, logits row per step incl. prefill)."""
        logits = [self.step([(seq_id, prompt)])[0]]
        out = []
        for _ in range(steps):
            tok = int(logits[-1].argmax())
            out.append(tok)
            logits.append(self.step([(seq_id, [tok])])[0])
        return out, logits

    def release(self, seq_id: str) -> None:
        self.runner.release(seq_id)
        self.seqs.pop(seq_id, None)
