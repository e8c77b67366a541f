"""Building blocks of the own model code (nano-vllm / vLLM's shape): linears that know their tensor-parallel
split and their quantized form, vocabulary-parallel embedding and lm_head, rotary embeddings, paged attention,
norms and the MoE block. Architectures in `backend_atb/models/` are written from these."""
from .attention import PagedAttention
from .component import Component, Module, Placement, walk
from .distributed import ParallelSpec
from .embedding import ParallelLMHead, VocabParallelEmbedding
from .linear import (ColumnParallelLinear, LinearBase, MergedColumnParallelLinear, QKVParallelLinear,
                     ReplicatedLinear, RowParallelLinear)
from .norm import RMSNorm
from .rotary import RotaryEmbedding

__all__ = ["PagedAttention", "Component", "Module", "Placement", "walk", "ParallelSpec", "ParallelLMHead",
           "VocabParallelEmbedding", "ColumnParallelLinear", "LinearBase", "MergedColumnParallelLinear",
           "QKVParallelLinear", "ReplicatedLinear", "RowParallelLinear", "RMSNorm", "RotaryEmbedding"]
