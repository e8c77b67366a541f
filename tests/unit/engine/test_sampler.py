"""Sampler: filters and penalties against straightforward per-row references, seeds, logprobs, mask hook."""
import math

import torch

from mindie_like.engine.sampler import (Sampler, SamplingRow, apply_penalties, argmax_rows, filtered_probs,
                                        new_generator)
from mindie_like.engine.types import SamplingParams

V = 50


def ref_probs(logits_row, p: SamplingParams):
    """Reference: plain python over one row."""
    x = [v / p.temperature for v in logits_row.tolist()]
    order = sorted(range(V), key=lambda i: (-x[i], i))
    keep = set(order)
    if 0 < p.top_k < V:
        keep = set(order[:p.top_k])
    if p.top_p < 1.0:
        m = max(x[i] for i in keep)
        z = sum(math.exp(x[i] - m) for i in keep)
        cum, kept = 0.0, set()
        for i in order:
            if i not in keep:
                continue
            if cum >= p.top_p:
                break
            kept.add(i)
            cum += math.exp(x[i] - m) / z
        keep = kept
    if p.min_p > 0:
        m = max(x[i] for i in keep)
        z = sum(math.exp(x[i] - m) for i in keep)
        pr = {i: math.exp(x[i] - m) / z for i in keep}
        top = max(pr.values())
        keep = {i for i in keep if pr[i] >= p.min_p * top}
    m = max(x[i] for i in keep)
    z = sum(math.exp(x[i] - m) for i in keep)
    return torch.tensor([math.exp(x[i] - m) / z if i in keep else 0.0 for i in range(V)])


def test_filters_match_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, V, generator=g) * 2
    params = [SamplingParams(temperature=0.7, top_k=5), SamplingParams(temperature=1.0, top_p=0.8),
              SamplingParams(temperature=1.3, min_p=0.1), SamplingParams(temperature=0.5, top_k=10, top_p=0.9,
                                                                         min_p=0.05),
              SamplingParams(temperature=1.0), SamplingParams(temperature=2.0, top_k=1)]
    got = filtered_probs(logits, params)
    for i, p in enumerate(params):
        assert torch.allclose(got[i], ref_probs(logits[i], p), atol=1e-5), i


def test_penalties_match_reference():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, V, generator=g) * 2
    prompt = [1, 2, 3, 3]
    output = [3, 4, 4, 4, 7]
    counts = {}
    for t in output:
        counts[t] = counts.get(t, 0) + 1
    params = [SamplingParams(repetition_penalty=1.3), SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
              SamplingParams(repetition_penalty=0.8, presence_penalty=-0.4, frequency_penalty=0.1)]
    rows = [SamplingRow(p, prompt + output, len(prompt), counts, None) for p in params]
    got = logits.clone()
    apply_penalties(got, rows)
    for i, p in enumerate(params):
        ref = logits[i].clone()
        for t in set(prompt + output):
            if p.repetition_penalty != 1.0:
                ref[t] = ref[t] / p.repetition_penalty if ref[t] > 0 else ref[t] * p.repetition_penalty
        for t, c in counts.items():
            ref[t] -= p.frequency_penalty * c + p.presence_penalty
        assert torch.allclose(got[i], ref, atol=1e-6), i


def sample_stream(seed, n, batch_neighbours=0):
    s = Sampler()
    p = SamplingParams(temperature=1.0, seed=seed, top_p=0.95)
    gen = new_generator(seed)
    others = [new_generator(None) for _ in range(batch_neighbours)]
    g = torch.Generator().manual_seed(42)
    out = []
    for _ in range(n):
        logits = torch.randn(1, V, generator=g).repeat(1 + batch_neighbours, 1)   # same row everywhere
        rows = [SamplingRow(p, [1], 1, {}, gen)] + [
            SamplingRow(SamplingParams(temperature=1.0), [1], 1, {}, o) for o in others]
        toks, _ = s(logits, rows)
        out.append(toks[0])
    return out


def test_seeded_stream_reproduces_and_ignores_neighbours():
    a = sample_stream(7, 40)
    assert a == sample_stream(7, 40)
    assert a == sample_stream(7, 40, batch_neighbours=3)
    assert a != sample_stream(8, 40)


def test_sampling_follows_distribution():
    s = Sampler()
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (V - 4)])
    p = SamplingParams(temperature=1.0, seed=3)
    gen = new_generator(3)
    counts = [0] * V
    for _ in range(3000):
        t, _ = s(logits.clone(), [SamplingRow(p, [1], 1, {}, gen)])
        counts[t[0]] += 1
    probs = torch.softmax(logits[0], -1)
    for i in range(4):
        assert abs(counts[i] / 3000 - probs[i].item()) < 0.03


def test_greedy_logprobs_and_mask():
    s = Sampler()
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0] + [-5.0] * (V - 4)] * 2)

    class OnlyEven:
        def apply(self, row):
            row[1::2] = float("-inf")

        def accept(self, t):
            return True

        def is_finished(self):
            return False

    rows = [SamplingRow(SamplingParams(temperature=0, logprobs=2), [1], 1, {}, None),
            SamplingRow(SamplingParams(temperature=0, logits_mask=OnlyEven()), [1], 1, {}, None)]
    toks, lps = s(logits.clone(), rows)
    assert toks == [1, 2]
    lp = torch.log_softmax(logits[0], -1)
    assert abs(lps[0].logprob - lp[1].item()) < 1e-6
    assert [t for t, _ in lps[0].top] == [1, 3]
    assert lps[1] is None


def test_min_tokens_masked_ids():
    s = Sampler()
    logits = torch.tensor([[5.0, 1.0] + [0.0] * (V - 2)])
    toks, _ = s(logits, [SamplingRow(SamplingParams(temperature=0), [1], 1, {}, None, masked_ids=[0])])
    assert toks == [1]


def test_argmax_rows_matches_torch_first_index_on_ties_and_slices():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1000, generator=g)
    logits[2, 10] = logits[2, 700] = 50.0                 # a tie: the first index wins, as with torch.argmax
    logits[3] = float("-inf")
    logits[3, 999] = 0.0
    for x in (logits, logits[:, :900], logits[1:4]):      # contiguous, strided slice, row slice
        assert torch.equal(argmax_rows(x), torch.argmax(x, dim=-1))
    assert int(argmax_rows(logits)[2]) == 10
