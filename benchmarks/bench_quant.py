"""Weight-only quantization benchmark on the demo model: decode tok/s for bf16, W8A16, W4A16 (+ accuracy cost).

    PYTHONPATH=. python benchmarks/bench_quant.py [--model PATH.gguf|DIR] [--tokens 64] [--streams 16]
        [--ceilings] [--llama-cpp] [--clock wall|cpu] [--repeats 3]

For each format: the model is loaded through `ModelRunner` (bf16, CPU, the thread count given), then
  * single stream: a short prompt is prefilled and `--tokens` greedy tokens decoded, one step at a time;
    tok/s = 1 / median step time;
  * `--streams` concurrent streams: the same, all decoding together each step; tok/s = streams / median step time
    (for W8A16/W4A16 with the per-step choice on: quant_dense=auto, and with quantized kernels only);
  * accuracy: greedy agreement with bf16, teacher-forced on bf16's own continuations of `--agree` chat prompts
    (`--agree-tokens` steps each), and the mean KL(bf16 || quantized) of the next-token distributions.
  * the step's breakdown: time inside the linears (lm_head apart) vs everything else (norms, rope, attention, KV
    writes, Python), by timing the op table's `linear` during the single-stream run;
  * `--ceilings`: the decode step's matmuls alone (the model's shapes, random weights: 24 layers' qkv/o/gate_up/down
    + lm_head) at 1 and `--streams` rows, for float32, bf16, torch's int8pack / int4pack (group 32) and the own
    AVX2 int8/int4 kernels (cpu_kernels.py; int4 with 16- and 8-bit activations): the tok/s a step could reach if
    nothing but the matmuls ran;
  * `--llama-cpp`: llama-cpp-python on the same GGUF, single stream, same thread count (greedy, `--tokens`), one
    run after each of ours (interleaved, so both see the same machine load); per format the ratio of the medians.
`--clock cpu` measures process CPU time (with --threads 1 on a shared machine: discounts waiting for a core, not
memory-bandwidth contention). `--repeats`: single-stream decode runs per format (median reported).
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
from mindie_like.engine.types import EngineConfig, QuantOptions  # noqa: E402

DEFAULT_MODEL = str(Path(__file__).resolve().parents[1] / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf")  # bin/fetch_models
BLOCK = 128
CLOCK = time.perf_counter      # --clock cpu: time.process_time

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


def load(model, threads, scheme=None, dense="auto", from_gguf=True, dtype="bfloat16", act_bits=None):
    quant = QuantOptions(scheme=scheme or None, dense=dense, from_gguf=from_gguf)
    if act_bits is not None:
        quant.act_bits = act_bits
    cfg = EngineConfig(model_path=model, dtype=dtype, device="cpu", block_size=BLOCK, num_threads=threads,
                       quant=quant)
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
        t0 = CLOCK()
        lg = d.step([(f"s{i}", [t]) for i, t in enumerate(toks)])
        times.append(CLOCK() - t0)
    return statistics.median(times), times


def step_breakdown(runner, prompt: list[int], tokens: int) -> dict:
    """ms per single-stream decode step: inside the layers' linears, inside the lm_head, and the rest (norms, rope,
    attention, KV writes, embedding, Python), timed by wrapping the op table's `linear`."""
    ops, model = runner.ops, runner.model
    spent = {"linear": 0.0, "lm_head": 0.0}
    orig = ops.linear

    def timed(x, w, b=None):
        t = CLOCK()
        y = orig(x, w, b)
        spent["lm_head" if w is model.lm_head else "linear"] += CLOCK() - t
        return y
    d = MiniDriver(runner, num_blocks=(len(prompt) + tokens) // BLOCK + 4)
    lg = d.step([("b", prompt)])
    times = []
    ops.linear = timed
    try:
        for _ in range(tokens):
            tok = int(lg[0].argmax())
            if not times:                  # the prefill's linears are not part of a decode step
                spent.update(linear=0.0, lm_head=0.0)
            t0 = CLOCK()
            lg = d.step([("b", [tok])])
            times.append(CLOCK() - t0)
    finally:
        del ops.linear                     # back to the class attribute
    n = len(times)
    total, lin, head = sum(times) / n * 1e3, spent["linear"] / n * 1e3, spent["lm_head"] / n * 1e3
    return {"step_ms": round(total, 2), "linears_ms": round(lin, 2), "lm_head_ms": round(head, 2),
            "rest_ms": round(total - lin - head, 2)}


def matmul_ceilings(hf_cfg, rows_list, reps: int = 5) -> dict:
    """tok/s of a decode step's matmuls alone, per kernel and row count (random weights of the model's shapes)."""
    from mindie_like.backend_atb import cpu_kernels
    H, I, V = hf_cfg.hidden_size, hf_cfg.intermediate_size, hf_cfg.vocab_size
    D = getattr(hf_cfg, "head_dim", None) or H // hf_cfg.num_attention_heads
    Q = (hf_cfg.num_attention_heads + 2 * hf_cfg.num_key_value_heads) * D
    shapes = [(Q, H), (H, hf_cfg.num_attention_heads * D), (2 * I, H), (H, I)]
    layers = hf_cfg.num_hidden_layers
    own = cpu_kernels.load() if cpu_kernels.wanted("quant") else None
    g = torch.Generator().manual_seed(0)

    def kernels(n, k):
        """name -> fn(x float32) -> y, for one random [n, k] weight in each kernel's format."""
        w = torch.randn(n, k, generator=g)
        out = {"float32": lambda x, w=w: F.linear(x, w)}
        wb = w.bfloat16()
        out["bf16"] = lambda x, wb=wb: F.linear(x.bfloat16(), wb)
        q8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        s8 = torch.rand(n, generator=g).bfloat16()
        out["torch int8pack"] = lambda x, q8=q8, s8=s8: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q8, s8)
        q4 = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        p4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 1)
        sz = torch.rand(k // 32, n, 2, generator=g).bfloat16()
        out["torch int4pack g32"] = lambda x, p4=p4, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.bfloat16(), p4, 32, sz)
        if own is not None:
            out["own bf16 GEMV (AVX2)"] = lambda x, wb=wb: own.bf16_linear(x, wb, None)
            s32 = s8.float()
            out["own int8 (AVX2)"] = lambda x, q8=q8, s32=s32: own.int8_linear(x, q8, s32, None)
            b4 = cpu_kernels.pack_int4_blocks(q4)
            sb = sz.permute(2, 1, 0).contiguous()                   # [2, N, G] bf16: scales, zeros
            for bits in (16, 8):
                out[f"own int4 g32 a{bits} (AVX2)"] = lambda x, b4=b4, sb=sb, bits=bits: own.int4_linear(
                    x, b4, sb, 32, None, bits)
        return out
    layer_k = [kernels(n, k) for n, k in shapes]
    head_k = kernels(V, H)
    res: dict = {}
    with torch.inference_mode():
        for rows in rows_list:
            xs = {k: torch.randn(rows, k, generator=g) for _, k in shapes}
            for name in head_k:
                if "GEMV" in name and rows > cpu_kernels.MAX_ROWS:
                    continue

                def one_layer():
                    for (n, k), ks in zip(shapes, layer_k):
                        ks[name](xs[k])

                def head():
                    head_k[name](xs[H])
                tl = _best_median(one_layer, reps)
                th = _best_median(head, max(3, reps // 2))
                step = layers * tl + th
                res.setdefault(name, {})[rows] = {"layer_ms": round(tl * 1e3, 2), "lm_head_ms": round(th * 1e3, 2),
                                                  "tok_s": round(rows / step, 1)}
                print(f"  ceiling {name:22s} rows {rows:3d}: layer {tl * 1e3:7.2f} ms, lm_head {th * 1e3:7.2f} ms "
                      f"-> {rows / step:6.1f} tok/s", flush=True)
    return res


def _best_median(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = CLOCK()
        fn()
        ts.append(CLOCK() - t)
    return statistics.median(ts)


class LlamaCpp:
    """llama-cpp-python on the GGUF, single stream greedy: `run()` decodes `tokens` tokens after `prompt` (one
    `eval` per token after `sample(temp=0)`, the same thread count) and returns tok/s; the first run warms up."""

    def __init__(self, gguf: str, prompt: str, tokens: int, threads: int):
        from llama_cpp import Llama
        self.llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False,
                         seed=0)
        self.ids = self.llm.tokenize(prompt.encode(), special=True)
        self.tokens = tokens
        self.run()

    def run(self) -> float:
        llm = self.llm
        llm.reset()
        llm.eval(self.ids)
        t = CLOCK()
        for _ in range(self.tokens):
            llm.eval([llm.sample(temp=0.0)])
        return round(self.tokens / (CLOCK() - t), 1)


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


def continuation_agreement(prompts, ref_logits, logits, tokens: int) -> tuple[int, int, list[float]]:
    """Over each sequence's `tokens` continuation steps (teacher-forced logits of prompt + continuation):
    (greedy agreements, steps, per-step KL(ref || other))."""
    agree = total = 0
    kls: list[float] = []
    for p, a, b in zip(prompts, ref_logits, logits):
        n = len(p)
        a, b = a[n - 1:n - 1 + tokens], b[n - 1:n - 1 + tokens]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
        kls += F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="none").sum(-1).tolist()
    return agree, total, kls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--agree", type=int, default=20, help="chat prompts for the agreement check (0: skip)")
    ap.add_argument("--agree-tokens", type=int, default=32)
    ap.add_argument("--formats", default="bf16,w8a16,w4a16",
                    help="comma list of bf16 (bf16 weights; float32 activations on CPUs without native bf16), fp32, "
                         "w8a16, w4a16, w4a16-a16 / w4a16-a8 (quant_act_bits 16 / 8: the own int4 kernel's "
                         "activations), gguf")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dense", default="auto", help="quant_dense for the quantized formats (auto/never/always)")
    ap.add_argument("--from-gguf", default="true", help="quant_from_gguf (true: int weights from the GGUF's blocks "
                    "where exact; false: quantize the bf16 import, faster to load)")
    ap.add_argument("--ceilings", action="store_true", help="also time the matmuls alone per kernel")
    ap.add_argument("--llama-cpp", action="store_true", help="also time llama-cpp-python on the GGUF")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--repeats", type=int, default=3, help="single-stream runs per format (median)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MINDIE_LIKE_NO_PROGRESS", "1")

    from transformers import AutoTokenizer
    results = {"machine": f"{os.cpu_count()} cores, threads {args.threads}, load {os.getloadavg()[0]:.1f}",
               "model": args.model, "tokens": args.tokens, "streams": args.streams, "formats": {}}
    ref_tf = None
    ref_seqs = None
    llama = None
    for fmt in args.formats.split(","):
        scheme, _, act = fmt.partition("-a")          # "w4a16-a16": W4A16 with quant_act_bits 16
        scheme = None if scheme in ("bf16", "fp32") else scheme
        runner, load_s = load(args.model, args.threads, scheme, args.dense,
                              args.from_gguf.lower() in ("1", "true", "yes"),
                              "float32" if fmt == "fp32" else "bfloat16", int(act) if act else None)
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
        if args.ceilings and "ceilings" not in results:
            results["ceilings"] = matmul_ceilings(runner.hf_config, (1, args.streams))
        one = [chat_ids[0]]
        if args.llama_cpp and llama is None and args.model.endswith(".gguf"):
            try:
                llama = LlamaCpp(args.model, chat[0], args.tokens, args.threads)
            except ImportError:
                results["llama_cpp"] = "llama-cpp-python not installed"
        t0 = time.time()
        res["load_avg_before"] = round(os.getloadavg()[0], 2)
        runs, lc_runs = [], []
        for _ in range(args.repeats):                 # interleaved with llama.cpp: ours, llama.cpp, ours, ...
            runs.append(decode_speed(runner, one, args.tokens))
            if llama is not None:
                lc_runs.append(llama.run())
        res["load_avg_after"] = round(os.getloadavg()[0], 2)
        res["single_runs_tok_s"] = [round(1.0 / med, 1) for med, _ in runs]
        res["single_tok_s"] = round(statistics.median(res["single_runs_tok_s"]), 1)
        if lc_runs:
            res["llama_cpp_interleaved_runs_tok_s"] = lc_runs
            res["llama_cpp_interleaved_tok_s"] = statistics.median(lc_runs)
            res["single_vs_llama_cpp"] = round(res["single_tok_s"] / statistics.median(lc_runs), 3)
        res["single_best_step_tok_s"] = round(1.0 / min(min(ts) for _, ts in runs), 1)
        res["breakdown_ms"] = step_breakdown(runner, chat_ids[0], args.tokens)
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
                agree, total, kls = continuation_agreement(prompts, ref_tf, teacher_forced(runner, ref_seqs),
                                                           args.agree_tokens)
                res["agreement"] = round(agree / total, 4)
                res["agreement_steps"] = total
                res["mean_kl"] = round(statistics.mean(kls), 4)
            print(f"  {fmt}: agreement pass {time.time() - t0:.0f} s", flush=True)
        results["formats"][fmt] = res
        print(fmt, json.dumps(res), flush=True)
        del runner
    if llama is not None:
        every = [r for f in results["formats"].values() for r in f.get("llama_cpp_interleaved_runs_tok_s", [])]
        results["llama_cpp"] = {"tok_s": round(statistics.median(every), 1), "runs": every}
    else:
        results.setdefault("llama_cpp", "not run (--llama-cpp, with a .gguf model)")
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
    print("\nsingle stream against llama-cpp-python run between ours (same thread count): " + "; ".join(
        f"{fmt}: {r['single_tok_s']} vs {r['llama_cpp_interleaved_tok_s']} = {r['single_vs_llama_cpp']}x "
        f"(load {r['load_avg_before']}-{r['load_avg_after']})"
        for fmt, r in results["formats"].items() if "single_vs_llama_cpp" in r))
    print("\nsingle-stream step breakdown (ms): " + "; ".join(
        f"{fmt}: {r['breakdown_ms']}" for fmt, r in results["formats"].items()))
    print("llama-cpp-python single stream:", results["llama_cpp"], "|", results["machine"],
          f"| load at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
