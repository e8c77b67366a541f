"""Accuracy cost of the own int4 kernel's 8-bit activations (quant_act_bits 8) against 16-bit ones, on one model.

    PYTHONPATH=. python benchmarks/bench_act_bits.py [--model PATH.gguf|DIR] [--prompts 20] [--tokens 32]

Loads the W4A16 model once (quant_act_bits 16), generates greedy continuations of `--prompts` chat prompts with it,
then scores the same teacher-forced sequences with the activations of the layers' linears and of the lm_head at
8 or 16 bits (`Int4Weight.act_bits`, switched in place): mean and max KL(16-bit || setting) of the next-token
distributions and greedy (argmax) agreement with the 16-bit run. The 16-bit kernel is within ~2^-16 of exact
float32 activations, so this isolates the activation rounding from the int4 weights' own error (bench_quant.py
--agree measures that one against bf16).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_quant import (CHAT_PROMPTS, DEFAULT_MODEL, continuation_agreement, greedy, load,  # noqa: E402
                         teacher_forced)
from mindie_like.backend_atb.quant import Int4Weight  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--from-gguf", default="false")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoTokenizer
    runner, _ = load(args.model, args.threads, "w4a16", "never", args.from_gguf.lower() in ("1", "true", "yes"))
    model = runner.model
    layer_ws = [getattr(L, a) for L in model.layers for a in ("qkv", "o", "gate_up", "down")]
    layer_ws = [w for w in layer_ws if isinstance(w, Int4Weight)]
    head = model.lm_head if isinstance(model.lm_head, Int4Weight) else None
    tok = AutoTokenizer.from_pretrained(runner.tokenizer_path)
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True))["input_ids"]
               for p in CHAT_PROMPTS[:args.prompts]]

    def set_bits(layers: int, lm_head: int):
        for w in layer_ws:
            w.act_bits = layers
        if head is not None:
            head.act_bits = lm_head

    set_bits(16, 16)
    with torch.inference_mode():
        seqs = [p + c for p, c in zip(prompts, greedy(runner, prompts, args.tokens))]
        ref = teacher_forced(runner, seqs)
        results = {}
        for layers, lm_head in ((8, 16), (16, 8), (8, 8)):
            set_bits(layers, lm_head)
            agree, total, kls = continuation_agreement(prompts, ref, teacher_forced(runner, seqs), args.tokens)
            name = f"layers {layers}-bit, lm_head {lm_head}-bit"
            results[name] = {"mean_kl_vs_16bit": round(statistics.mean(kls), 6), "max_kl": round(max(kls), 5),
                             "greedy_agreement_vs_16bit": round(agree / total, 4), "steps": total}
            print(name, results[name], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "prompts": args.prompts, "tokens": args.tokens,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
