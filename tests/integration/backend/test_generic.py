"""The generic transformers path: model types without own code, behind the same runner interface."""
from __future__ import annotations

import pytest
import torch

from helpers import load_hf, load_runner, prompt
from driver import Driver


def _hf_greedy(hf, p, n):
    out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                      max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(p):].tolist()


# glm4 has own code now: forced onto the generic path (what a model_type without own code, ChatGLM3 with its
# remote code for one, gets)
@pytest.mark.parametrize("family,extra", [("olmo2", {}), ("glm4", {"force_generic": True})])
def test_generic_greedy_matches_transformers(family, extra, tiny_model):
    path = tiny_model(family)
    runner, hf = load_runner(path, **extra), load_hf(path)
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


def test_the_path_is_one_log_line(tiny_model, caplog):
    """Which path serves a model is logged once at start: a model_type without a file in backend_atb/models/
    starts on the generic transformers path, saying why; an own architecture names its class."""
    import logging
    with caplog.at_level(logging.INFO, logger="mindie_like.backend_atb"):
        load_runner(tiny_model("olmo2"))
        load_runner(tiny_model("qwen3_moe"))
    lines = [r.getMessage() for r in caplog.records if "model_type" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "model_type olmo2" in lines[0] and \
        "generic transformers path (model_type 'olmo2' has no own implementation)" in lines[0]
    assert "model_type qwen3_moe" in lines[1] and "own model code Qwen3MoeForCausalLM" in lines[1]
