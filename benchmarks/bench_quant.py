"""Weight-only quantization benchmark on the demo model: decode tok/s for bf16, W8A16, W4A16 (+ accuracy cost).

    PYTHONPATH=. python benchmarks/bench_quant.py [--model PATH.gguf|DIR] [--tokens 64] [--streams 16]

For each format: the model is loaded through `ModelRunner` (bf16, CPU, the thread count given), then
  * single stream: a short prompt is prefilled and `--tokens` greedy tokens decoded, one step at a time;
    tok/s = 1 / median step time;
  * `--streams` concurrent streams: the same, all decoding together each step; tok/s = streams / median step time
    (for W8A16/W4A16 with the per-step choice on: quant_dense=auto, and with quantized kernels only);
  * accuracy: greedy agreement with bf16, teacher-forced on bf16's own continuations of `--agree` chat prompts
    (`--agree-tokens` steps each), and the mean KL(bf16 || quantized) of the next-token distributions.
llama-cpp-python is timed on the same GGUF when it is installed (it is not, here).
Prints a markdown table and writes JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindie_like.backend_atb import ForwardBatch, ModelRunner  # noqa: E402
from mindie_like.engine.types import EngineConfig  # noqa: E402

DEFAULT_MODEL = "/work/models/qwen2.5-coder-0.5b-instruct.gguf"
BLOCK = 128

CHAT_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a list and a tuple in Python.",
    "How do I reverse a linked list in C?",
    "What does the `yield` keyword do?",
    "Write a SQL query that returns the ten most recent orders.",
    "Give me a bash one-liner that counts lines in all .py files.",
    "What is a race condition? Give a short example.",
    "Convert this JavaScript arrow function to a regular function: const f = x => x * 2;",
    "Write a Rust function that sums a vector of i32.",
    "What is the time complexity of binary search and why?",
    "How do I read a JSON file in Go?",
    "Explain what a closure is in one paragraph.",
    "Write a regular expression that matches an IPv4 address.",
    "What is the difference between TCP and UDP?",
    "Write a Python class for a stack with push, pop and peek.",
    "How do I merge two dictionaries in Python 3?",
    "Write a function that returns the nth Fibonacci number iteratively.",
    "What does `git rebase` do?",
    "Write a C++ function that swaps two integers by reference.",
    "How can I make an HTTP GET request in Python without external libraries?",
]


class MiniDriver:
    """Linear block allocation; enough to drive prefills and decodes of a few sequences."""

    def __init__(self, runner, num_blocks: int):
        self.r = runner
        runner.allocate_kv_cache(num_blocks)
        self.next, self.n = 1, num_blocks
        self.seqs: dict[str, tuple[list[int], list[int]]] = {}

    def step(self, work, all_logits=False):
        ids, pos, slots, ql, cl, tables, li = [], [], [], [], [], [], []
        t = 0
        for sid, new in work:
            toks, blocks = self.seqs.setdefault(sid, ([], []))
            start = len(toks)
            while len(blocks) * BLOCK < start + len(new):
                blocks.append(self.next)
                self.next += 1
                assert self.next <= self.n, "out of KV blocks"
            toks += new
            for j, tok in enumerate(new):
                p = start + j
                ids.append(tok)
                pos.append(p)
                slots.append(blocks[p // BLOCK] * BLOCK + p % BLOCK)
            ql.append(len(new))
            cl.append(len(toks))
            tables.append(list(blocks))
            li += list(range(t, t + len(new))) if all_logits else [t + len(new) - 1]
            t += len(new)
        bt = torch.zeros(len(tables), max(len(b) for b in tables), dtype=torch.int32)
        for i, b in enumerate(tables):
            bt[i, :len(b)] = torch.tensor(b, dtype=torch.int32)
        batch = ForwardBatch(seq_ids=[w[0] for w in work], input_ids=torch.tensor(ids), positions=torch.tensor(pos),
                             query_lens=ql, context_lens=cl, block_tables=bt, slot_mapping=torch.tensor(slots),
                             logits_indices=torch.tensor(li))
        return self.r.execute(batch)


def load(model, threads, scheme=None, dense="auto"):
    extra = {}
    if scheme:
        extra = {"quantization": scheme, "quant_dense": dense}
    cfg = EngineConfig(model_path=model, dtype="bfloat16", device="cpu", block_size=BLOCK, num_threads=threads,
                       extra=extra)
    t0 = time.time()
    r = ModelRunner.load(cfg)
    return r, time.time() - t0


def decode_speed(runner, prompts: list[list[int]], tokens: int) -> tuple[float, list[float]]:
    """Median decode step time (s) with len(prompts) streams decoding together."""
    d = MiniDriver(runner, num_blocks=len(prompts) * ((max(map(len, prompts)) + tokens) // BLOCK + 2) + 2)
    lg = d.step([(f"s{i}", p) for i, p in enumerate(prompts)])
    times = []
    for _ in range(tokens):
        toks = lg.argmax(-1).tolist()
        t0 = time.perf_counter()
        lg = d.step([(f"s{i}", [t]) for i, t in enumerate(toks)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def greedy(runner, prompts, tokens):
    d = MiniDriver(runner, num_blocks=len(prompts) * ((max(map(len, prompts)) + tokens) // BLOCK + 2) + 2)
    lg = d.step([(f"s{i}", p) for i, p in enumerate(prompts)])
    outs = [[] for _ in prompts]
    for _ in range(tokens):
        toks = lg.argmax(-1).tolist()
        for o, t in zip(outs, toks):
            o.append(t)
        lg = d.step([(f"s{i}", [t]) for i, t in enumerate(toks)])
    return outs


def teacher_forced(runner, seqs):
    d = MiniDriver(runner, num_blocks=sum(len(s) // BLOCK + 2 for s in seqs) + 2)
    out = []
    for i, s in enumerate(seqs):                   # one at a time: keeps the prefill's activations small
        out.append(d.step([(f"t{i}", s)], all_logits=True))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--agree", type=int, default=20, help="chat prompts for the agreement check (0: skip)")
    ap.add_argument("--agree-tokens", type=int, default=32)
    ap.add_argument("--formats", default="bf16,w8a16,w4a16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dense", default="auto", help="quant_dense for the quantized formats (auto/never/always)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")

    from transformers import AutoTokenizer
    results = {"machine": f"{os.cpu_count()} cores, threads {args.threads}, load {os.getloadavg()[0]:.1f}",
               "model": args.model, "tokens": args.tokens, "streams": args.streams, "formats": {}}
    ref_tf = None
    ref_seqs = None
    for fmt in args.formats.split(","):
        scheme = None if fmt == "bf16" else fmt
        runner, load_s = load(args.model, args.threads, scheme, args.dense)
        if ref_seqs is None:
            tok = AutoTokenizer.from_pretrained(runner.tokenizer_path)
            chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                            add_generation_prompt=True) for p in CHAT_PROMPTS]
            chat_ids = [tok(c)["input_ids"] for c in chat]
        res = {"load_s": round(load_s, 1), "weight_MiB_per_step": round(runner.weight_bytes() / 2**20, 1)}
        pol = getattr(runner, "quant_policy", None)
        if pol is not None:
            res["crossover"] = pol.describe()
            res["crossover_timings_ms"] = {str(k): [round(a, 3), round(b, 3)] for k, (a, b) in pol.timings.items()}
        one = [chat_ids[0]]
        t0 = time.time()
        med, ts = decode_speed(runner, one, args.tokens)
        res["single_tok_s"] = round(1.0 / med, 1)
        res["single_best_step_tok_s"] = round(1.0 / min(ts), 1)
        print(f"  {fmt}: single stream {res['single_tok_s']} tok/s ({time.time() - t0:.0f} s)", flush=True)
        many = [chat_ids[i % len(chat_ids)] for i in range(args.streams)]
        t0 = time.time()
        med, ts = decode_speed(runner, many, max(8, args.tokens // 2))
        res[f"streams{args.streams}_tok_s"] = round(args.streams / med, 1)
        res[f"streams{args.streams}_best_step_tok_s"] = round(args.streams / min(ts), 1)
        print(f"  {fmt}: {args.streams} streams {res[f'streams{args.streams}_tok_s']} tok/s "
              f"({time.time() - t0:.0f} s)", flush=True)
        if scheme and pol is not None and pol.crossover != float("inf"):
            # the same streams with quantized kernels only, for comparison with the per-step choice
            saved = pol.crossover
            pol.crossover = float("inf")
            med, ts = decode_speed(runner, many, max(8, args.tokens // 2))
            res[f"streams{args.streams}_quant_only_tok_s"] = round(args.streams / med, 1)
            res[f"streams{args.streams}_quant_only_best_step_tok_s"] = round(args.streams / min(ts), 1)
            pol.crossover = saved
        if args.agree:
            t0 = time.time()
            prompts = chat_ids[:args.agree]
            if scheme is None:
                conts = greedy(runner, prompts, args.agree_tokens)
                ref_seqs = [p + c for p, c in zip(prompts, conts)]
                ref_tf = teacher_forced(runner, ref_seqs)
            elif ref_tf is not None:
                q_tf = teacher_forced(runner, ref_seqs)
                agree = total = 0
                kls = []
                for p, a, b in zip(prompts, ref_tf, q_tf):
                    n = len(p)
                    a, b = a[n - 1:n - 1 + args.agree_tokens], b[n - 1:n - 1 + args.agree_tokens]
                    agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                    total += a.shape[0]
                    kls.append(float(F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True,
                                              reduction="batchmean")))
                res["agreement"] = round(agree / total, 4)
                res["agreement_steps"] = total
                res["mean_kl"] = round(statistics.mean(kls), 4)
            print(f"  {fmt}: agreement pass {time.time() - t0:.0f} s", flush=True)
        results["formats"][fmt] = res
        print(fmt, json.dumps(res), flush=True)
        del runner
    try:
        import llama_cpp  # noqa: F401
        results["llama_cpp"] = "installed but not timed by this script version"
    except ImportError:
        results["llama_cpp"] = "llama-cpp-python not installed"
    s = args.streams
    print("\n| format | weight MiB/step | single stream tok/s (median / best step) | %d streams tok/s "
          "(per-step choice) | %d streams, quantized only | agreement vs bf16 | mean KL | crossover |" % (s, s))
    print("|---|---|---|---|---|---|---|---|")
    for fmt, r in results["formats"].items():
        qo = r.get(f"streams{s}_quant_only_tok_s")
        print(f"| {fmt} | {r['weight_MiB_per_step']} | {r['single_tok_s']} / {r['single_best_step_tok_s']} | "
              f"{r[f'streams{s}_tok_s']} / {r[f'streams{s}_best_step_tok_s']} | "
              f"{'' if qo is None else str(qo) + ' / ' + str(r[f'streams{s}_quant_only_best_step_tok_s'])} | "
              f"{r.get('agreement', '')} | {r.get('mean_kl', '')} | {r.get('crossover', '')} |")
    print(results["llama_cpp"], "|", results["machine"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
