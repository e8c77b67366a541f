"""The batch the engine's scheduler hands the model runner for one forward step.

Built on the CPU by the engine (rank 0 broadcasts it unchanged to tensor-parallel workers); the runner moves
the tensors to its device. Sequences are laid out one after another in `input_ids`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardBatch:
    seq_ids: list[str]            # [B] request ids, for runners that keep per-sequence state (generic HF path)
    input_ids: torch.Tensor       # [T] int64, the new tokens of all sequences, flattened in order
    positions: torch.Tensor       # [T] int64, absolute position of each new token
    query_lens: list[int]         # [B] new tokens per sequence (1 for a decode, >1 for a (chunk of) prefill)
    context_lens: list[int]       # [B] tokens in the KV cache for the sequence after this step (cached + new)
    block_tables: torch.Tensor    # [B, max_blocks] int32, physical block ids, padded with 0
    slot_mapping: torch.Tensor    # [T] int64, KV slot (block_id * block_size + offset) of each new token
    logits_indices: torch.Tensor  # [S] int64, rows of the flattened tokens whose logits are returned

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)
