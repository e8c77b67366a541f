"""deepseek_v3 (MLA + MoE) served by the daemon over mutual TLS: 8 concurrent completions with chunked prefill,
then 3 more whose prompts reuse the first wave's prefixes from the prefix cache; each greedy continuation equals
transformers' (tokens and logprobs) up to the first reference near-tie. The daemon logs the own path."""
from __future__ import annotations

import asyncio

import pytest
import torch

from tests.support.arch_parity import NEAR_TIE, REUSED, SHARED, STEPS, waves

VOCAB = 3001
DS = dict(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def ds(daemon_factory, tiny_model):
    path = tiny_model("deepseek_v3", **DS)
    d = daemon_factory(path, model={"device": "cpu", "npuMemSize": 0.02},
                       schedule={"templateType": "Mix", "maxPrefillTokens": 32, "cacheBlockSize": 8})
    return path, d


def _reference(hf, tok, prompt):
    """Transformers' greedy continuation: per step (token text, its logprob, top-two gap)."""
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                      output_logits=True, return_dict_in_generate=True)
    steps = []
    for logits in out.logits:
        lp = torch.log_softmax(logits[0].float(), -1)
        top = lp.topk(2)
        steps.append((tok.decode([int(top.indices[0])]), float(top.values[0]), float(top.values[0] - top.values[1])))
    return steps


def _complete_all(d, prompts):
    client = d.openai_client(async_client=True)

    async def one(p):
        return await client.completions.create(model=d.model_name, prompt=p, max_tokens=STEPS, temperature=0,
                                               logprobs=2, extra_body={"ignore_eos": True})

    async def gather():
        return await asyncio.gather(*(one(p) for p in prompts))
    return asyncio.run(gather())


def test_concurrent_completions_match_transformers(ds):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, d = ds
    assert "own" in d.output and "deepseek_v3" in d.output
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    first, second = waves()
    checked = 0
    cached = 0
    for prompts in (first, second):
        results = _complete_all(d, prompts)
        for p, r in zip(prompts, results):
            ch = r.choices[0]
            assert r.usage.completion_tokens == STEPS and len(ch.logprobs.tokens) == STEPS
            cached += r.usage.prompt_tokens_details.cached_tokens
            with torch.inference_mode():
                ref = _reference(hf, tok, p)
            for i, (text, lp, gap) in enumerate(ref):
                if gap < NEAR_TIE:
                    break
                assert ch.logprobs.tokens[i] == text, f"step {i}: {ch.logprobs.tokens[i]!r} vs {text!r}"
                assert abs(ch.logprobs.token_logprobs[i] - lp) < 2e-4 * max(1.0, abs(lp))
                checked += 1
    assert checked >= 0.75 * (len(first) + len(second)) * STEPS
    assert cached >= REUSED * SHARED        # the second wave's shared prefixes came from the cache
