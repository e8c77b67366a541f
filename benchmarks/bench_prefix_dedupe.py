"""Prefill tokens computed for serve_bench's concurrency-16 burst (loadgen's 16 chat prompts with its tools,
Qwen2.5's template), with and without the scheduler's same-step prefix dedupe, block sizes 128 and 16.

The runner is the test suite's FakeRunner (paged bookkeeping, no model): this counts work, it does not time it.

    PYTHONPATH=. python benchmarks/bench_prefix_dedupe.py
"""
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from transformers import AutoTokenizer
from benchmarks.loadgen import chat_messages, WEATHER_TOOLS
from tests.support.engine_fakes import FakeRunner
from mindie_like.engine.core import EngineCore
from mindie_like.engine.types import EngineConfig, SamplingParams
from mindie_like.engine import scheduler as S

tok = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizers", "qwen2.5"))
ps = [tok(tok.apply_chat_template(chat_messages(i), tools=WEATHER_TOOLS, add_generation_prompt=True,
                                  tokenize=False))["input_ids"] for i in range(16)]
print("prompt lengths", sorted(len(p) for p in ps))
orig = S.Scheduler._next_block_in
for bs in (128, 16):
    for dedupe in (False, True):
        S.Scheduler._next_block_in = orig if dedupe else (lambda *a: False)    # off: admit as before
        runner = FakeRunner(vocab_size=len(tok), block_size=bs)
        core = EngineCore(EngineConfig(model_path="fake", block_size=bs, num_kv_blocks=4096), runner)
        for i, p in enumerate(ps):
            params = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
            core.add_request(core.make_request(f"r{i}", p, params))
        steps = 0
        while core.has_work():
            core.step()
            steps += 1
        print(f"block {bs:3d} dedupe {dedupe!s:5}: prefill tokens computed {runner.executed_tokens} of "
              f"{sum(map(len, ps))}, steps {steps}, per-step tokens {[t for _, t in runner.batches]}")
