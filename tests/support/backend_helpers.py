"""Helpers for the backend tests: load our runner and the transformers oracle on a tiny model."""
from __future__ import annotations

import torch

from mindie_like.backend_atb import ModelRunner
from tests.support.engine_fakes import make_engine_config

torch.set_num_threads(1 if torch.get_num_threads() < 2 else 2)

NEAR_TIE = 1e-3      # reference top-two gap under which greedy tokens may legitimately differ
ATOL = 2e-5
RTOL = 1e-4


def load_runner(path, block_size: int = 16, **options) -> ModelRunner:
    """options: EngineConfig fields, or quantization keys as ModelConfig spells them (engine_fakes)."""
    cfg = make_engine_config(path, dtype="float32", device="cpu", block_size=block_size,
                             num_threads=torch.get_num_threads(), **options)
    return ModelRunner.load(cfg)


def load_hf(path):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return m.eval()


@torch.inference_mode()
def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """Teacher-forced logits for every position of `tokens` (no cache)."""
    ids = torch.tensor([tokens])
    return model(input_ids=ids).logits[0].float()


def prompt(seed: int, n: int, vocab: int = 1000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def check_continuation(ref_logits: torch.Tensor, ours: list[torch.Tensor], generated: list[int]) -> int:
    """ref_logits: reference logits at the positions ours were produced for (teacher-forced on our tokens).
    Logits must match at every step; greedy tokens up to the first reference near-tie. Returns steps checked
    for tokens."""
    ours_t = torch.stack(ours)
    torch.testing.assert_close(ours_t, ref_logits, atol=ATOL * max(1.0, float(ref_logits.abs().max())), rtol=RTOL)
    checked = 0
    for i, tok in enumerate(generated):
        top2 = ref_logits[i].topk(2).values
        if float(top2[0] - top2[1]) < NEAR_TIE:
            break
        assert tok == int(ref_logits[i].argmax()), f"greedy token differs at step {i}"
        checked += 1
    return checked


def copy_float_tensors(dst, src) -> None:
    """Copies `src`'s float tensors (norms, biases, a dense embedding) into `dst`'s, component by component (two
    own models of one config; quantized weights are left alone). Call under torch.inference_mode()."""
    for cd, cs in zip(dst.components(), src.components()):
        assert cd.prefix == cs.prefix
        for leaf in cd.leaves():
            d, s = getattr(cd, leaf), getattr(cs, leaf)
            if isinstance(d, torch.Tensor) and isinstance(s, torch.Tensor):
                d.copy_(s)
