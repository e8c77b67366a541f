"""Opt-in (-m real_model): the demo model (Qwen2.5-Coder-0.5B GGUF) in W8A16, W4A16 and GGUF-native formats
against its bf16 self over 50 chat prompts, reported per format:

* greedy agreement, teacher-forced on bf16's own 32-token continuations (the quantized model predicts each next
  token of bf16's text: how often its argmax is bf16's);
* mean KL(bf16 || quantized) of those next-token distributions;
* free-running: how many of the 50 greedy 32-token continuations are identical to bf16's, and the mean number of
  leading tokens they share.

One thread by default (MINDIE_LIKE_REAL_MODEL_THREADS), so it can share a small machine; ~15-25 min on one core.

    PYTHONPATH=. python -m pytest tests/integration/quant/test_real_model.py -m real_model -s
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.support.driver import Driver

from mindie_like.backend_atb import ModelRunner
from tests.support.engine_fakes import make_engine_config

MODEL = Path(os.environ.get("MINDIE_LIKE_DEMO_GGUF", "/work/models/qwen2.5-coder-0.5b-instruct.gguf"))
THREADS = int(os.environ.get("MINDIE_LIKE_REAL_MODEL_THREADS", "1"))
LANGS = ["Python", "C", "Go", "Rust", "JavaScript"]
TASKS = ["reverses a string", "checks whether a number is prime", "returns the largest element of a list",
         "counts the vowels in a string", "computes the factorial of n", "merges two sorted lists",
         "removes duplicates from a list", "parses an integer from a string safely",
         "returns the nth Fibonacci number", "checks whether a string is a palindrome"]
PROMPTS = [f"Write a {lang} function that {task}." for lang in LANGS for task in TASKS]
STEPS = 32

pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} not present (shared/models/fetch_models.sh)")]


def _runner(**options):
    cfg = make_engine_config(MODEL, dtype="bfloat16", device="cpu", block_size=16, num_threads=THREADS, **options)
    return ModelRunner.load(cfg)


def _free_running(runner, prompts):
    """Greedy continuations of all prompts decoded together (one batch per step)."""
    d = Driver(runner, num_blocks=len(prompts) * ((max(map(len, prompts)) + STEPS) // 16 + 2) + 2)
    lg = d.step([(f"s{i}", p) for i, p in enumerate(prompts)])
    conts = [[] for _ in prompts]
    for _ in range(STEPS):
        toks = lg.argmax(-1).tolist()
        for c, t in zip(conts, toks):
            c.append(t)
        lg = d.step([(f"s{i}", [t]) for i, t in enumerate(toks)])
    return conts


def _teacher_forced(runner, prompts, seqs):
    """Per sequence, the float32 logits that predict its last STEPS tokens (one sequence per forward pass keeps
    the prefill's activations small; only the continuation's rows are kept)."""
    d = Driver(runner, num_blocks=sum(len(s) // 16 + 2 for s in seqs) + 2)
    out = []
    for i, (p, s) in enumerate(zip(prompts, seqs)):
        lg = d.step([(f"t{i}", s)], all_logits=True)
        out.append(lg[len(p) - 1:len(p) - 1 + STEPS].float())
    return out


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoTokenizer
    r = _runner(quantization="none")          # the widened bf16 model (no key would serve the GGUF's blocks)
    tok = AutoTokenizer.from_pretrained(r.tokenizer_path)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True))["input_ids"] for p in PROMPTS]
    conts = _free_running(r, prompts)
    seqs = [p + c for p, c in zip(prompts, conts)]
    return prompts, conts, _teacher_forced(r, prompts, seqs)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("fmt,extra", [
    ("w8a16", {"quantization": "w8a16", "quant_from_gguf": False}),
    ("w4a16", {"quantization": "w4a16", "quant_from_gguf": False}),
    ("gguf-native (the default)", {}),
])
def test_demo_model_agreement(reference, fmt, extra):
    prompts, ref_conts, ref = reference
    r = _runner(quant_dense="never", **extra)
    q = _teacher_forced(r, prompts, [p + c for p, c in zip(prompts, ref_conts)])
    agree = total = 0
    kls = []
    for a, b in zip(ref, q):
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
        kls.append(float(F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True,
                                  reduction="batchmean")))
    conts = _free_running(r, prompts)
    identical = sum(c == rc for c, rc in zip(conts, ref_conts))
    shared = sum(_common_prefix(c, rc) for c, rc in zip(conts, ref_conts)) / len(prompts)
    print(f"\n[quant real model] {fmt}: greedy agreement with bf16 {agree / total:.1%} ({agree}/{total}) over "
          f"{len(prompts)} chat prompts x {STEPS} steps; mean KL(bf16 || {fmt}) {sum(kls) / len(kls):.4f}; "
          f"identical free-running continuations {identical}/{len(prompts)}, mean shared prefix "
          f"{shared:.1f}/{STEPS} tokens", flush=True)
    assert agree / total >= 0.80


def test_demo_default_serves_the_files_own_blocks():
    """No `quantization` key: every Q8_0 / Q5_0 / Q6_K tensor of the file is a grouped-int8 block weight whose values
    equal gguf's own dequantization bit for bit (fused q/k/v and gate/up compared part by part)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from mindie_like.backend_atb.quant.block_weight import BlockInt8Weight
    r = _runner(quant_dense="never")
    assert r.gguf is not None           # built from the file, not from a float import
    tensors = {t.name: t for t in GGUFReader(str(MODEL)).tensors}

    def file_rows(name):
        t = tensors[name]
        return t.tensor_type.name, torch.from_numpy(
            dequantize(t.data, t.tensor_type).astype(np.float32).reshape(int(t.shape[1]), -1))

    checked = 0
    for i, L in enumerate(r.model.layers):
        for attr, names in (("qkv", ("attn_q", "attn_k", "attn_v")), ("gate_up", ("ffn_gate", "ffn_up")),
                            ("o", ("attn_output",)), ("down", ("ffn_down",))):
            w = getattr(L, attr)
            parts = [file_rows(f"blk.{i}.{n}.weight") for n in names]
            if not isinstance(w, BlockInt8Weight):
                assert all(f in ("Q4_0", "Q4_1", "Q4_K") for f, _ in parts), (i, attr, [f for f, _ in parts])
                continue
            deq, row = w.dequantize(torch.float32), 0
            for f, ref in parts:
                if f in ("Q8_0", "Q5_0", "Q6_K"):
                    assert torch.equal(deq[row:row + ref.shape[0]], ref), (i, attr, f)
                    checked += 1
                row += ref.shape[0]
    print(f"\n[quant real model] default GGUF path: {checked} Q8_0/Q5_0/Q6_K tensors equal to gguf's "
          f"dequantization; kernels {sorted({lin.weight.kernel for lin in r.model.linears()})}", flush=True)
    assert checked > 100
