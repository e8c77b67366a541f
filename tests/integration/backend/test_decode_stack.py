"""The decode step's layers in one C++ call (csrc/decode_step.cpp) against the same runner's Python layer loop:
equal logits, step by step, for sequences of different lengths decoding together, for every own architecture
(dense llama-shaped; GLM's rotary layouts and norms; the MoE blocks; DeepSeek V3's MLA with and without the q LoRA,
in both rotary layouts), on both attention routes (the own fused float32 kernel and the torch ops), with the
experts split over threads and not, and with quantized weights (called back through their Python kernels). A
tensor-parallel rank runs the Python loop and logs why."""
from __future__ import annotations

import pytest
import torch

from tests.support.driver import Driver
from tests.support.backend_helpers import load_runner, prompt
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

FAMILIES = [("llama", {}), ("qwen2", {}), ("qwen3", {}), ("mistral", {"sliding_window": 8}),
            ("glm", {}), ("glm4", {}), ("glm4_moe", {}), ("qwen2_moe", {}), ("qwen3_moe", {}), ("deepseek_v3", {}),
            ("deepseek_v3", {"q_lora_rank": None, "rope_interleave": False})]
MOE = ("glm4_moe", "qwen2_moe", "qwen3_moe", "deepseek_v3")


def has_stack(runner) -> bool:
    Driver(runner)          # allocates the KV cache the stack is built over
    return runner.model.decode_stack(runner.kv_caches) is not None


def decode_logits(runner, steps: int = 10, sequences: int = 3) -> torch.Tensor:
    lengths = [5, 19, 2, 7, 11, 3, 14, 1, 9][:sequences]
    prompts = {f"s{i}": prompt(11 + i, n) for i, n in enumerate(lengths)}
    d = Driver(runner)
    out = d.step(list(prompts.items()))
    rows = []
    for _ in range(steps):          # past the sliding window and across several 4-token blocks
        out = d.step([(sid, [int(r.argmax())]) for sid, r in zip(prompts, out)])
        rows.append(out)
    for sid in prompts:
        d.release(sid)
    return torch.stack(rows)


def stack_on_off(runner, **kw) -> dict:
    model = runner.model
    logits = {}
    for on in (True, False):
        model.allow_decode_stack = on
        logits[on] = decode_logits(runner, **kw)
        if on:
            assert model.decode_stack(runner.kv_caches) is not None
    return logits


def assert_equal_logits(logits: dict) -> None:
    torch.testing.assert_close(logits[True], logits[False], atol=1e-5 * float(logits[False].abs().max()), rtol=1e-5)


# the own-attention route is what a CPU serves with; the other two routes are the same equality on other ops
# (GLM's partial / interleaved rotary takes the torch attention route on every one)
@pytest.mark.parametrize("route", ["own-attention", pytest.param("torch-attention", marks=pytest.mark.exhaustive),
                                   pytest.param("torch-ops", marks=pytest.mark.exhaustive)])
@pytest.mark.parametrize("family,overrides", FAMILIES, ids=[f + ("-direct-q" if o.get("q_lora_rank", 1) is None else "")
                                                            for f, o in FAMILIES])
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
    # MoE: 9 sequences x top-2 = 18 (token, expert) pairs, enough for the experts' split over 2 threads
    assert_equal_logits(stack_on_off(runner, sequences=9 if family in MOE else 3))


@pytest.mark.parametrize("family", ["qwen2_moe", pytest.param("glm4_moe", marks=pytest.mark.exhaustive)])
def test_decode_stack_moe_experts_split_or_not(tiny_model, monkeypatch, family):
    """The experts' split over threads (at::parallel_for in the stack, a thread pool in Python) on and off."""
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
    runner = load_runner(tiny_model(family), block_size=4)
    if not has_stack(runner):
        pytest.skip("own CPU kernels cannot run here")
    with_threads = stack_on_off(runner, steps=4, sequences=9)
    runner.ops.moe_expert_threads = False
    one_thread = stack_on_off(runner, steps=4, sequences=9)
    assert_equal_logits(one_thread)
    torch.testing.assert_close(with_threads[True], one_thread[True], atol=1e-5 * float(one_thread[True].abs().max()),
                               rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "qwen3_moe", pytest.param("glm4", marks=pytest.mark.exhaustive)])
def test_decode_stack_with_quantized_weights(tiny_model, monkeypatch, family):
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")
    runner = load_runner(tiny_model(family), block_size=4, quantization="w8a16")
    assert getattr(runner.model.layers[0].qkv, "is_quantized_weight", False)
    if family == "qwen3_moe":
        assert getattr(runner.model.layers[0].mlp.experts.w13[0].weight, "is_quantized_weight", False)
    if not has_stack(runner):
        pytest.skip("own CPU kernels cannot run here")
    assert_equal_logits(stack_on_off(runner, sequences=9 if family == "qwen3_moe" else 3))


def test_tensor_parallel_model_logs_why(tiny_model, caplog):
    """A tensor-parallel rank (built here without a process group: the stack is refused before any collective)."""
    from transformers import AutoConfig
    from mindie_like.backend_atb.layers import ParallelSpec
    from mindie_like.backend_atb.models import model_class
    from mindie_like.backend_atb.ops.torch_ops import TorchOps
    cfg = AutoConfig.from_pretrained(tiny_model("qwen2"))
    cpu = torch.device("cpu")
    model = model_class(cfg)(cfg, torch.float32, cpu, TorchOps(cpu, torch.float32), ParallelSpec(rank=0, size=2))
    with caplog.at_level("INFO"):
        assert model.decode_stack(model.allocate_kv(4, 4)) is None
    assert "layers run from Python (tensor parallel (all-reduce between layers))" in caplog.text
