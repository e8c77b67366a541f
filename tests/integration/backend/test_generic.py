"""The generic transformers path: model types without own code, behind the same runner interface."""
from __future__ import annotations

import pytest
import torch

from tests.support.backend_helpers import load_hf, load_runner, prompt
from tests.support.driver import Driver


def _hf_greedy(hf, p, n):
    out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(p):].tolist()


@pytest.mark.parametrize("family", ["olmo2", "glm4"])
def test_generic_greedy_matches_transformers(family, tiny_model):
    path = tiny_model(family)
    runner, hf = load_runner(path), load_hf(path)
    assert runner.path == "generic" and not runner.supports_prefix_cache
    d = Driver(runner)
    p = prompt(20, 11)
    gen, _ = d.greedy("s", p, 12)
    assert gen == _hf_greedy(hf, p, 12)
    d.release("s")
    assert "s" not in runner._states


def test_generic_batched_and_chunked(tiny_model):
    path = tiny_model("olmo2")
    runner, hf = load_runner(path), load_hf(path)
    d = Driver(runner)
    pa, pb = prompt(30, 9), prompt(31, 12)
    la, lb = d.step([("a", pa[:4]), ("b", pb)])
    la = d.step([("a", pa[4:])])[0]                       # chunked prefill continues a's cache
    ta, tb = int(la.argmax()), int(lb.argmax())
    out = d.step([("a", [ta]), ("b", [tb])])              # a decode batch of two
    with torch.inference_mode():
        ra = hf(input_ids=torch.tensor([pa + [ta]])).logits[0, -1]
        rb = hf(input_ids=torch.tensor([pb + [tb]])).logits[0, -1]
    torch.testing.assert_close(out[0], ra, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], rb, atol=1e-4, rtol=1e-4)


def test_own_family_can_be_forced_generic(tiny_model):
    path = tiny_model("qwen2")
    gen_runner = load_runner(path, force_generic=True)
    own = load_runner(path)
    assert gen_runner.path == "generic" and own.path == "own"
    p = prompt(40, 11)
    a, _ = Driver(gen_runner).greedy("x", p, 6)
    b, _ = Driver(own).greedy("x", p, 6)
    assert a == b
