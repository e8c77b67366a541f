"""Served greedy output against transformers, for the architecture parity tests (in-process engine and daemon).

Prompts: 8 served at once, then 3 that repeat the first 40 tokens of three of them with new tails, so their
prefills hit the prefix cache.
Check: teacher-forced transformers logprobs on prompt + generated tokens; every step's returned top logprobs must
be close to the reference's, and the greedy token must be the reference's argmax until the first reference
near-tie (top-two gap under NEAR_TIE), after which the sequences may legitimately part.
"""
from __future__ import annotations

import random

import torch

NEAR_TIE = 1e-3
LOGPROB_ATOL = 2e-4
STEPS = 24
SHARED = 40


REUSED = 3          # second-wave prompts, each reusing SHARED tokens of a first-wave prompt


def waves(vocab: int = 2000, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    lens = [45, 17, 60, 52, 9, 73, 41, 30]
    first = [[rng.randrange(3, vocab) for _ in range(n)] for n in lens]
    second = [p[:SHARED] + [rng.randrange(3, vocab) for _ in range(5 + i)]
              for i, p in enumerate([q for q in first if len(q) >= SHARED][:REUSED])]
    return first, second


@torch.inference_mode()
def reference_logprobs(hf, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """[len(generated), vocab] log-softmax of transformers' logits at the positions that produced `generated`."""
    ids = torch.tensor([prompt + generated])
    logits = hf(input_ids=ids).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1: len(prompt) - 1 + len(generated)], dim=-1)


def check_request(hf, prompt: list[int], generated: list[int], tops: list[list[tuple[int, float]]]) -> int:
    """tops[i]: the served top logprobs (token id, logprob) at step i. Returns the steps whose tokens were
    checked (all of them unless a reference near-tie came first)."""
    assert len(generated) == len(tops) == STEPS, (len(generated), len(tops))
    ref = reference_logprobs(hf, prompt, generated)
    checked, tied = 0, False
    for i, tok in enumerate(generated):
        for t, lp in tops[i]:
            assert abs(lp - float(ref[i, t])) < LOGPROB_ATOL * max(1.0, abs(float(ref[i, t]))), \
                f"step {i}: logprob of {t} {lp} vs transformers {float(ref[i, t])}"
        top2 = ref[i].topk(2).values
        if float(top2[0] - top2[1]) < NEAR_TIE:
            tied = True
        if not tied:
            assert tok == int(ref[i].argmax()), f"greedy token differs at step {i}"
            checked += 1
    return checked
