"""Batched sampler: one call turns the step's logits rows [S, vocab] into one token per row.

Order of operations per row (vLLM's order):
1. repetition penalty (prompt + output tokens), presence and frequency penalties (output tokens);
2. token masks: EOS and stop ids before `min_tokens`, the request's LogitsMask (constrained decoding);
3. greedy rows (temperature 0): argmax;
4. other rows: temperature, top-k, top-p, min-p, then a draw from the request's own torch.Generator
   (the exponential race `argmax(p / q)`, q ~ Exp(1): one draw of `vocab` numbers per token, so a request's
   random stream depends only on its seed, never on its batch neighbours).
Logprobs are the model's (raw logits' log-softmax), with the top-k alternatives.

Every step is vectorized over the rows that need it; rows that use a feature are gathered so that the common case
(no penalties, no top-p) costs nothing.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .types import SamplingParams, TokenLogprob


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (first index of the maximum). On CPU through numpy: its SIMD argmax is ~10x faster than
    torch's over a 151,936-wide float32 row (measured 16 vs 190 us per row on this project's AVX2 hosts)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
        return torch.from_numpy(logits.numpy().argmax(axis=-1))
    return torch.argmax(logits, dim=-1)


def new_generator(seed: Optional[int]) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed if seed is not None else random.randrange(1 << 63))
    return g


@dataclass
class SamplingRow:
    """What the sampler needs to know about one request for one row."""
    params: SamplingParams
    token_ids: Sequence[int]          # prompt + output so far
    num_prompt_tokens: int
    output_counts: dict               # token id -> count in the output
    generator: Optional[torch.Generator]
    masked_ids: Sequence[int] = ()    # ids forbidden this step (EOS / stop ids before min_tokens)


def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place. Repetition penalty divides positive / multiplies negative logits of every token seen in prompt or
    output; presence subtracts `presence` from each token seen in the output, frequency `frequency * count`."""
    vocab = logits.shape[1]
    rep_idx = [i for i, r in enumerate(rows) if r.params.repetition_penalty != 1.0]
    if rep_idx:
        mask = torch.zeros((len(rep_idx), vocab), dtype=torch.bool)
        for j, i in enumerate(rep_idx):
            ids = torch.tensor(list(set(rows[i].token_ids)), dtype=torch.int64)
            ids = ids[(ids >= 0) & (ids < vocab)]
            mask[j, ids] = True
        pen = torch.tensor([rows[i].params.repetition_penalty for i in rep_idx], dtype=logits.dtype).unsqueeze(1)
        sub = logits[rep_idx]
        sub = torch.where(mask, torch.where(sub > 0, sub / pen, sub * pen), sub)
        logits[rep_idx] = sub
    pf_idx = [i for i, r in enumerate(rows) if r.params.presence_penalty != 0.0 or r.params.frequency_penalty != 0.0]
    if pf_idx:
        counts = torch.zeros((len(pf_idx), vocab), dtype=logits.dtype)
        for j, i in enumerate(pf_idx):
            oc = rows[i].output_counts
            if oc:
                ids = torch.tensor(list(oc.keys()), dtype=torch.int64)
                vals = torch.tensor(list(oc.values()), dtype=logits.dtype)
                keep = (ids >= 0) & (ids < vocab)
                counts[j, ids[keep]] = vals[keep]
        pres = torch.tensor([rows[i].params.presence_penalty for i in pf_idx], dtype=logits.dtype).unsqueeze(1)
        freq = torch.tensor([rows[i].params.frequency_penalty for i in pf_idx], dtype=logits.dtype).unsqueeze(1)
        logits[pf_idx] = logits[pf_idx] - freq * counts - pres * (counts > 0).to(logits.dtype)


def apply_masks(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> dict[int, str]:
    """In place: forbidden ids (min_tokens) and the per-request LogitsMask hook. A hook that raises fails only
    its own row: returns {row: error message}."""
    vocab = logits.shape[1]
    errors: dict[int, str] = {}
    for i, r in enumerate(rows):
        if r.masked_ids:
            ids = [t for t in r.masked_ids if 0 <= t < vocab]
            if ids:
                logits[i, ids] = float("-inf")
        if r.params.logits_mask is not None:
            try:
                r.params.logits_mask.apply(logits[i])
            except Exception as e:  # noqa: BLE001 - constrained decoding bug: this request only
                errors[i] = f"logits mask failed: {type(e).__name__}: {e}"
    return errors


def apply_filters(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on [R, vocab] float logits; returns filtered logits (-inf outside).

    top_k <= 0 or >= vocab: off; top_p >= 1: off; min_p <= 0: off. Ties at the top-k/top-p boundary are resolved
    by sort order (stable), i.e. the kept set has exactly k tokens / the smallest prefix reaching top_p.
    """
    logits = logits / temperature.unsqueeze(1)
    vocab = logits.shape[1]
    need_k = bool(((top_k > 0) & (top_k < vocab)).any())
    need_p = bool((top_p < 1.0).any())
    if need_k or need_p:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True, stable=True)
        remove = torch.zeros_like(sorted_logits, dtype=torch.bool)
        if need_k:
            k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
            ranks = torch.arange(vocab).unsqueeze(0)
            remove |= ranks >= k.unsqueeze(1)
        if need_p:
            probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
            cum = torch.cumsum(probs, dim=-1)
            # drop a token when the tokens before it already reach top_p (the first token always stays)
            remove |= (cum - probs) >= top_p.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter_(1, sorted_idx, sorted_logits)
    if bool((min_p > 0).any()):
        probs = torch.softmax(logits, dim=-1)
        thresh = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < thresh, float("-inf"))
    return logits


def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution a non-greedy row is sampled from (for tests and debugging)."""
    t = torch.tensor([max(p.temperature, 1e-5) for p in params], dtype=torch.float32)
    k = torch.tensor([p.top_k for p in params], dtype=torch.int64)
    tp = torch.tensor([p.top_p for p in params], dtype=torch.float32)
    mp = torch.tensor([p.min_p for p in params], dtype=torch.float32)
    return torch.softmax(apply_filters(logits.float(), t, k, tp, mp), dim=-1)


class Sampler:
    def __init__(self):
        self.row_errors: dict[int, str] = {}   # rows of the last call whose LogitsMask raised

    # inference mode: the penalties and masks update `logits` in place, and float32 logits from the model's forward
    # (an inference tensor; `.float()` does not copy them) may only be updated in place inside it
    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]
                 ) -> tuple[list[int], list[Optional[TokenLogprob]]]:
        assert logits.shape[0] == len(rows)
        logits = logits.float()
        n = len(rows)
        want_lp = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw_lp = torch.log_softmax(logits[want_lp], dim=-1) if want_lp else None

        apply_penalties(logits, rows)
        self.row_errors = apply_masks(logits, rows)

        tokens = torch.empty(n, dtype=torch.int64)
        greedy = [i for i, r in enumerate(rows) if r.params.temperature <= 0.0]
        rand = [i for i, r in enumerate(rows) if r.params.temperature > 0.0]
        if len(greedy) == n:                 # the common all-greedy batch: no row gather (a [S, vocab] copy)
            tokens = argmax_rows(logits)
        elif greedy:
            tokens[greedy] = argmax_rows(logits[greedy])
        if rand:
            sub = logits[rand] if len(rand) < n else logits
            t = torch.tensor([rows[i].params.temperature for i in rand], dtype=torch.float32)
            k = torch.tensor([rows[i].params.top_k for i in rand], dtype=torch.int64)
            tp = torch.tensor([rows[i].params.top_p for i in rand], dtype=torch.float32)
            mp = torch.tensor([rows[i].params.min_p for i in rand], dtype=torch.float32)
            probs = torch.softmax(apply_filters(sub, t, k, tp, mp), dim=-1)
            q = torch.empty_like(probs)
            for j, i in enumerate(rand):
                q[j].exponential_(generator=rows[i].generator)
            tokens[rand] = torch.argmax(probs / q, dim=-1)
            # a row whose every logit was masked (-inf) has NaN probs: fall back to argmax of what is left
            bad = torch.isnan(probs).any(dim=-1)
            if bool(bad.any()):
                for j in torch.nonzero(bad).flatten().tolist():
                    tokens[rand[j]] = int(torch.argmax(sub[j]))
        token_list = tokens.tolist()

        logprobs: list[Optional[TokenLogprob]] = [None] * n
        if want_lp:
            for j, i in enumerate(want_lp):
                row = raw_lp[j]
                tok = token_list[i]
                k = rows[i].params.logprobs or 0
                top: list[tuple[int, float]] = []
                if k > 0:
                    vals, idx = torch.topk(row, min(k, row.shape[0]))
                    top = list(zip(idx.tolist(), vals.tolist()))
                logprobs[i] = TokenLogprob(token_id=tok, logprob=float(row[tok]), top=top)
        return token_list, logprobs
