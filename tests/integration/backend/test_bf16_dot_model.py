"""A bf16 model on a CPU with native bf16 (forced here, so any x86 machine runs it): the decode step's linears and
the lm_head on the own bf16 dot-product kernel (csrc/bf16_dot.cpp) and the bf16 decode attention kernel through the
C++ decode stack, at the ISA this CPU has and the forced portable one, against transformers running the same bf16 weights (same greedy tokens up to a
near-tie, close logits) and against the same runner on torch's bf16 matmuls."""
from __future__ import annotations

import pytest
import torch

from mindie_like.backend_atb import ModelRunner, cpu_kernels
from tests.support.backend_helpers import prompt
from tests.support.driver import Driver
from tests.support.engine_fakes import make_engine_config
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS

STEPS = 12
# bf16 activations on both sides, rounded after every op in different places: logits of the tiny random models
# (large activations) agree to ~3% of their largest
TOL = 0.05


def _isas():
    mod = cpu_kernels.load()
    return [] if mod is None else list(cpu_kernels.BF16_ISAS[:int(mod.cpu_bf16_isa()) + 1])


@pytest.fixture(params=list(cpu_kernels.BF16_ISAS))
def bf16_cpu(request, monkeypatch):
    if request.param not in _isas():
        pytest.skip(f"this CPU (or build) has no {request.param} path")
    monkeypatch.setenv("MINDIE_LIKE_CPU_BF16", "1")
    monkeypatch.delenv("MINDIE_LIKE_CPU_KERNELS", raising=False)
    monkeypatch.setenv("MINDIE_LIKE_CPU_ISA", request.param)
    return request.param


def _load(path) -> ModelRunner:
    return ModelRunner.load(make_engine_config(path, dtype="bfloat16", device="cpu", block_size=4,
                                               num_threads=torch.get_num_threads()))


@torch.inference_mode()
def _hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    return hf(input_ids=torch.tensor([tokens])).logits[0].float()


def _decode_together(runner, feed=None, steps=STEPS):
    """Three sequences decoding in one batch (3 rows per linear): (logits per step, tokens fed). `feed`: the
    tokens to feed (another run's), else each step's greedy ones."""
    prompts = {"a": prompt(11, 5), "b": prompt(12, 19), "c": prompt(13, 2)}
    d = Driver(runner)
    out = d.step(list(prompts.items()))
    rows, fed = [], []
    for i in range(steps):
        toks = feed[i] if feed is not None else [int(r.argmax()) for r in out]
        out = d.step([(sid, [t]) for sid, t in zip(prompts, toks)])
        rows.append(out)
        fed.append(toks)
    for sid in prompts:
        d.release(sid)
    return torch.stack(rows), fed


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bf16_model_on_the_dot_kernel_matches_transformers(tiny_model, bf16_cpu, family):
    path = tiny_model(family)
    runner = _load(path)
    model = runner.model
    assert runner.dtype == torch.bfloat16 and model.ops.name == f"torch+cpu_kernels(bf16dot:{bf16_cpu})"
    d = Driver(runner)
    assert model.decode_stack(runner.kv_caches) is not None          # the C++ step calls the kernels too
    assert model.fused_decode_attention and runner.kv_dtype == torch.bfloat16
    p = prompt(1, 23)
    gen, ours = d.greedy("a", p, STEPS)
    d.release("a")
    ref = _hf_logits(path, p + gen)[len(p) - 1:]
    ours = torch.stack(ours)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    scale = float(ref.abs().max())
    diff = float((ours - ref).abs().max())
    assert diff <= TOL * scale
    # a greedy token may differ from the reference's only where the reference's top two are closer than the
    # logits' own disagreement could flip (2x the largest difference); our tokens feed both sides
    checked = 0
    for i, tok in enumerate(gen):
        top2 = ref[i].topk(2).values
        if float(top2[0] - top2[1]) < 2 * diff:
            continue
        assert tok == int(ref[i].argmax()), f"greedy token differs at step {i}"
        checked += 1
    assert checked >= 3

    # the same runner on torch's bf16 matmuls (what ran before): the same model within bf16 rounding
    kernel_rows, fed = _decode_together(runner)
    kernel = model.ops._bf16_dot
    model.ops._bf16_dot = None
    model.invalidate_decode_stack()
    try:
        torch_rows, _ = _decode_together(runner, feed=fed)
    finally:
        model.ops._bf16_dot = kernel
        model.invalidate_decode_stack()
    # same tokens fed; the torch path rounds after each rope op and the logits to bf16 (both ~2% from transformers)
    assert float((kernel_rows - torch_rows).abs().max()) <= TOL * float(torch_rows.abs().max())
