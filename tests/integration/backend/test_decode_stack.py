"""The decode step's layers in one C++ call (csrc/decode_step.cpp) against the same runner's Python layer loop:
equal logits, step by step, for several sequences decoding together, for every dense own architecture, on both
attention routes (the own fused float32 kernel and the torch ops), and with quantized weights (called back
through their Python kernels). Other layers (MoE, GLM-4's extra norms, MLA) run the Python loop."""
from __future__ import annotations

import pytest
import torch

from tests.support.driver import Driver
from tests.support.backend_helpers import load_runner, prompt
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

FAMILIES = [("llama", {}), ("qwen2", {}), ("qwen3", {}), ("mistral", {"sliding_window": 8})]


def has_stack(runner) -> bool:
    Driver(runner)          # allocates the KV cache the stack is built over
    return runner.model.decode_stack(runner.kv_caches) is not None


def decode_logits(runner, steps: int = 10) -> torch.Tensor:
    prompts = {"a": prompt(11, 5), "b": prompt(12, 19), "c": prompt(13, 2)}
    d = Driver(runner)
    out = d.step(list(prompts.items()))
    rows = []
    for _ in range(steps):          # past the sliding window and across several 4-token blocks
        out = d.step([(sid, [int(r.argmax())]) for sid, r in zip(prompts, out)])
        rows.append(out)
    for sid in prompts:
        d.release(sid)
    return torch.stack(rows)


def stack_on_off(runner) -> dict:
    model = runner.model
    logits = {}
    for on in (True, False):
        model.allow_decode_stack = on
        logits[on] = decode_logits(runner)
        if on:
            assert model.decode_stack(runner.kv_caches) is not None
    return logits


# the own-attention route is what a CPU serves with; the other two routes are the same equality on other ops
@pytest.mark.parametrize("route", ["own-attention", pytest.param("torch-attention", marks=pytest.mark.exhaustive),
                                   pytest.param("torch-ops", marks=pytest.mark.exhaustive)])
@pytest.mark.parametrize("family,overrides", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_decode_stack_matches_layer_loop(tiny_model, monkeypatch, family, overrides, route):
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")      # forced on: CPUs with native bf16 test them too
    runner = load_runner(tiny_model(family, **overrides), block_size=4)
    model = runner.model
    fused_attention = route == "own-attention"
    model.allow_fused_decode = fused_attention
    if route == "torch-ops":        # the table without its own float32 kernels (CPUs with native bf16)
        runner.ops._f32 = runner.ops._gemv = None
    if not has_stack(runner):
        pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
    if fused_attention and not model.fused_decode_attention:
        pytest.skip("the own fused attention kernel cannot run here")
    logits = stack_on_off(runner)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5 * float(logits[False].abs().max()), rtol=1e-5)


def test_decode_stack_with_quantized_weights(tiny_model, monkeypatch):
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
    runner = load_runner(tiny_model("qwen2"), block_size=4, quantization="w8a16")
    assert getattr(runner.model.layers[0].qkv, "is_quantized_weight", False)
    if not has_stack(runner):
        pytest.skip("own CPU kernels cannot run here")
    logits = stack_on_off(runner)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5 * float(logits[False].abs().max()), rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4", "deepseek_v3"])
def test_other_layers_run_the_python_loop(tiny_model, caplog, family):
    runner = load_runner(tiny_model(family), block_size=4)
    if runner.path != "own":
        pytest.skip(f"{family} not on the own path")
    with caplog.at_level("INFO"):
        assert not has_stack(runner)
    assert "layers run from Python" in caplog.text
    assert decode_logits(runner, steps=2).isfinite().all()
