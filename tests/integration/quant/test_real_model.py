"""Opt-in (-m real_model): the demo model (Qwen2.5-Coder-0.5B GGUF) in W8A16, W4A16 and GGUF-native formats
against its bf16 self: greedy agreement over 50 chat prompts (teacher-forced on bf16's own 32-token
continuations), reported per format.

    PYTHONPATH=. python -m pytest tests/integration/quant/test_real_model.py -m real_model -s
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from driver import Driver

from mindie_like.backend_atb import ModelRunner
from mindie_like.engine.types import EngineConfig

MODEL = Path(os.environ.get("MINDIE_LIKE_DEMO_GGUF", "/work/models/qwen2.5-coder-0.5b-instruct.gguf"))
LANGS = ["Python", "C", "Go", "Rust", "JavaScript"]
TASKS = ["reverses a string", "checks whether a number is prime", "returns the largest element of a list",
         "counts the vowels in a string", "computes the factorial of n", "merges two sorted lists",
         "removes duplicates from a list", "parses an integer from a string safely",
         "returns the nth Fibonacci number", "checks whether a string is a palindrome"]
PROMPTS = [f"Write a {lang} function that {task}." for lang in LANGS for task in TASKS]
STEPS = 32

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} not present (shared/models/fetch_models.sh)")]


def _runner(**extra):
    cfg = EngineConfig(model_path=str(MODEL), dtype="bfloat16", device="cpu", block_size=16,
                       num_threads=torch.get_num_threads(), extra=extra)
    return ModelRunner.load(cfg)


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer
    r = _runner()
    tok = AutoTokenizer.from_pretrained(r.tokenizer_path)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True))["input_ids"] for p in PROMPTS]
    d = Driver(r, num_blocks=len(prompts) * 8 + 8)
    lg = d.step([(f"s{i}", p) for i, p in enumerate(prompts)])
    conts = [[] for _ in prompts]
    for _ in range(STEPS):
        toks = lg.argmax(-1).tolist()
        for c, t in zip(conts, toks):
            c.append(t)
        lg = d.step([(f"s{i}", [t]) for i, t in enumerate(toks)])
    seqs = [p + c for p, c in zip(prompts, conts)]
    return prompts, seqs, _tf(r, seqs)


def _tf(runner, seqs):
    d = Driver(runner, num_blocks=len(seqs) * 8 + 8)
    return [d.step([(f"t{i}", s)], all_logits=True) for i, s in enumerate(seqs)]


@pytest.mark.parametrize("fmt,extra", [
    ("w8a16", {"quantization": "w8a16", "quant_from_gguf": False}),
    ("w4a16", {"quantization": "w4a16", "quant_from_gguf": False}),
    ("gguf-native", {"quantization": "gguf"}),
])
def test_demo_model_agreement(reference, fmt, extra):
    prompts, seqs, ref = reference
    r = _runner(quant_dense="never", **extra)
    q = _tf(r, seqs)
    agree = total = 0
    for p, a, b in zip(prompts, ref, q):
        n = len(p)
        a, b = a[n - 1:n - 1 + STEPS], b[n - 1:n - 1 + STEPS]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    print(f"\n[quant real model] {fmt}: greedy agreement with bf16 {agree / total:.1%} ({agree}/{total}) over "
          f"{len(prompts)} chat prompts x {STEPS} steps")
    assert agree / total >= 0.80
