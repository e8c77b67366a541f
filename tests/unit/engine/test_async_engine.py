"""AsyncEngine over fake runners: abort / cancel freeing blocks, errors, overload, stop strings and UTF-8 through
the whole engine, seeds, the LogitsMask hook (the same engine on a tiny real model:
tests/integration/engine/test_async_engine_model.py)."""
from __future__ import annotations

import asyncio
import threading

import pytest
from transformers import AutoTokenizer

from tests.support.async_engine_helpers import collect, wait_idle
from tests.support.engine_fakes import FakeRunner, ScriptedRunner
from mindie_like.engine.async_engine import AsyncEngine
from mindie_like.engine.types import EngineConfig, EngineError, EngineOverloaded, SamplingParams
from tests.support.tiny_models import tokenizer_dir


@pytest.fixture(scope="module")
def qwen_tok():
    return AutoTokenizer.from_pretrained(tokenizer_dir("qwen2.5"))


def engine_for(runner, tokenizer=None, num_blocks=64, **kw):
    cfg = EngineConfig(model_path="x", block_size=runner.block_size, num_kv_blocks=num_blocks, **kw)
    return AsyncEngine(cfg, runner, tokenizer)


def test_abort_mid_decode_frees_all_blocks():
    runner = FakeRunner(block_size=4)
    engine = engine_for(runner, num_blocks=64)

    async def main():
        gen = engine.generate([1, 2, 3, 4, 5], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), "x")
        n = 0
        async for o in gen:
            n += 1
            if n == 3:
                mid = engine.stats()
                assert mid.free_blocks < mid.total_blocks and mid.running == 1
                await engine.abort("x")
                st = engine.stats()
                assert st.free_blocks == st.total_blocks and st.running == 0
            if o.finished:
                assert o.finish_reason == "abort"
                break
        assert n < 200
        await engine.abort("unknown-id")          # no-op

    try:
        asyncio.run(main())
        assert "x" in runner.released
    finally:
        engine.shutdown()


def test_closing_the_iterator_aborts():
    runner = FakeRunner(block_size=4)
    engine = engine_for(runner)

    async def main():
        gen = engine.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=500, ignore_eos=True), "c")
        async for o in gen:
            break                                   # client went away
        await gen.aclose()
        st = await wait_idle(engine)
        assert st.free_blocks == st.total_blocks

        async def consume():
            async for _ in engine.generate([4, 5], SamplingParams(temperature=0, max_tokens=500, ignore_eos=True),
                                           "d"):
                await asyncio.sleep(0)
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        st = await wait_idle(engine)
        assert st.free_blocks == st.total_blocks

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_step_error_reports_and_engine_keeps_serving():
    runner = FakeRunner(block_size=4)
    engine = engine_for(runner)
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)

    async def main():
        runner.fail_next = 1
        outs = await collect(engine, [1, 2, 3], params, "e")
        assert outs[-1].finished and outs[-1].finish_reason == "error" and "injected" in outs[-1].error
        outs = await collect(engine, [1, 2, 3], params, "e")   # the id is free again
        assert outs[-1].finish_reason == "length" and len(outs) == 5

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_refusals_raise_on_first_iteration():
    runner = FakeRunner(block_size=4)
    runner.gate = threading.Event()               # hold the first step so requests queue up
    engine = engine_for(runner, max_input_len=8, max_queue_size=1, max_batch_size=1)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)

    async def main():
        with pytest.raises(EngineError, match="9 tokens"):
            await collect(engine, list(range(1, 10)), params, "long")
        t1 = asyncio.create_task(collect(engine, [1, 2], params, "a"))
        await asyncio.sleep(0.1)                  # "a" is running (stuck in the gated step)
        t2 = asyncio.create_task(collect(engine, [1, 2], params, "b"))
        await asyncio.sleep(0.1)                  # "b" waits: the queue (size 1) is full
        with pytest.raises(EngineOverloaded):
            await collect(engine, [3, 4], params, "c")
        with pytest.raises(EngineError, match="duplicate"):
            await collect(engine, [3, 4], params, "b")
        runner.gate.set()
        a, b = await asyncio.gather(t1, t2)
        assert a[-1].finish_reason == b[-1].finish_reason == "length"

    try:
        asyncio.run(main())
    finally:
        runner.gate.set()
        engine.shutdown()


def test_a_burst_that_fits_batch_and_queue_is_admitted():
    """maxBatchSize 2 + maxQueueSize 2: four requests arriving together (none yet running) all fit; a fifth does
    not."""
    runner = FakeRunner(block_size=4)
    runner.gate = threading.Event()
    engine = engine_for(runner, max_queue_size=2, max_batch_size=2)
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)

    async def main():
        burst = [asyncio.create_task(collect(engine, [1, 2], params, f"r{i}")) for i in range(4)]
        await asyncio.sleep(0.2)
        with pytest.raises(EngineOverloaded):
            await collect(engine, [3, 4], params, "fifth")
        runner.gate.set()
        return await asyncio.gather(*burst)

    try:
        outs = asyncio.run(main())
        assert [o[-1].finish_reason for o in outs] == ["length"] * 4
    finally:
        runner.gate.set()
        engine.shutdown()


def test_stop_string_and_utf8_split_through_engine(qwen_tok):
    text = "ok 🎉 done STOP tail"
    script = qwen_tok.encode(text)
    eos = qwen_tok.convert_tokens_to_ids("<|im_end|>")
    runner = ScriptedRunner(script + [eos], len(qwen_tok), eos_token_ids=[eos], block_size=4)
    engine = engine_for(runner, qwen_tok)
    prompt = qwen_tok.encode("Q?")

    async def main():
        outs = await collect(engine, prompt, SamplingParams(temperature=0, stop=["STOP"]), "s")
        assert "".join(o.text_delta for o in outs) == "ok 🎉 done "
        assert not any("\ufffd" in o.text_delta for o in outs)
        assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == "STOP"
        outs = await collect(engine, prompt, SamplingParams(temperature=0, stop=["STOP"],
                                                            include_stop_str_in_output=True), "s2")
        assert "".join(o.text_delta for o in outs) == "ok 🎉 done STOP"
        # no stop string: runs to EOS, which ends the request and never shows in the text
        outs = await collect(engine, prompt, SamplingParams(temperature=0, skip_special_tokens=False), "s3")
        assert "".join(o.text_delta for o in outs) == text
        assert outs[-1].finish_reason == "stop" and outs[-1].new_token_ids == [eos]
        # ignore_eos + max_tokens
        outs = await collect(engine, prompt, SamplingParams(temperature=0, ignore_eos=True,
                                                            max_tokens=len(script) + 2), "s4")
        assert outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == len(script) + 2

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_seeded_sampling_reproduces_across_batches():
    engine = engine_for(FakeRunner(block_size=4))
    p = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20, ignore_eos=True)

    async def main():
        a = await collect(engine, [1, 2, 3], p, "a")
        others = [collect(engine, [7, 8, i], SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True),
                          f"o{i}") for i in range(3)]
        res = await asyncio.gather(collect(engine, [1, 2, 3], p, "b"), *others)
        c = await collect(engine, [1, 2, 3], SamplingParams(temperature=1.0, top_p=0.9, seed=99, max_tokens=20,
                                                            ignore_eos=True), "c")
        ids = lambda outs: [t for o in outs for t in o.new_token_ids]  # noqa: E731
        assert ids(a) == ids(res[0])
        assert ids(a) != ids(c)

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


class AllowOnly:
    """A LogitsMask that allows a fixed set of ids and finishes after `n` accepted tokens."""

    def __init__(self, allowed, n):
        self.allowed, self.n, self.accepted = list(allowed), n, []

    def apply(self, logits):
        keep = logits[self.allowed].clone()
        logits.fill_(float("-inf"))
        logits[self.allowed] = keep

    def accept(self, token_id):
        self.accepted.append(token_id)
        return token_id in self.allowed

    def is_finished(self):
        return len(self.accepted) >= self.n


def test_logits_mask_hook():
    engine = engine_for(FakeRunner(block_size=4))
    mask = AllowOnly([10, 11, 12], 6)

    async def main():
        outs = await collect(engine, [1, 2, 3], SamplingParams(temperature=0.8, seed=1, logits_mask=mask,
                                                               max_tokens=50), "m")
        ids = [t for o in outs for t in o.new_token_ids]
        assert set(ids) <= {10, 11, 12} and len(ids) == 6 and mask.accepted == ids
        assert outs[-1].finish_reason == "stop"

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_shutdown_ends_outstanding_requests():
    runner = FakeRunner(block_size=4)
    engine = engine_for(runner)

    async def main():
        gen = engine.generate([1, 2], SamplingParams(temperature=0, max_tokens=100000, ignore_eos=True), "z")
        first = await gen.__anext__()
        assert not first.finished
        threading.Thread(target=engine.shutdown).start()
        last = first
        async for o in gen:
            last = o
        assert last.finished and last.finish_reason == "abort"

    asyncio.run(main())


class Broken(AllowOnly):
    def apply(self, logits):
        raise ValueError("grammar bug")


def test_failing_logits_mask_fails_only_its_request():
    engine = engine_for(FakeRunner(block_size=4))
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)

    async def main():
        bad, good = await asyncio.gather(
            collect(engine, [1, 2, 3], SamplingParams(temperature=0, max_tokens=6, logits_mask=Broken([1], 9)), "b"),
            collect(engine, [1, 2, 4], params, "g"))
        assert bad[-1].finish_reason == "error" and "grammar bug" in bad[-1].error
        assert good[-1].finish_reason == "length" and len(good) == 6

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
