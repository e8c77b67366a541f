"""AsyncEngine on a tiny real model (the transformers-backed reference runner): streamed text, timing, and
concurrent requests answering as they do alone."""
from __future__ import annotations

import asyncio

from transformers import AutoTokenizer

from mindie_like.engine.async_engine import AsyncEngine
from mindie_like.engine.types import EngineConfig, SamplingParams
from tests.support.async_engine_helpers import collect
from tests.support.reference_runner import ReferenceRunner


def test_stream_text_timing_and_concurrency(tiny_model):
    path = tiny_model("qwen2")
    tok = AutoTokenizer.from_pretrained(path)
    engine = AsyncEngine.from_config(EngineConfig(model_path=str(path), block_size=16, num_kv_blocks=128),
                                     runner=ReferenceRunner(path, block_size=16))
    assert engine.tokenizer is not None
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, skip_special_tokens=False)
    prompts = [tok.encode(t) for t in ("hello there", "the quick brown fox jumps", "1 2 3 4 5 6 7 8 9", "你好")]

    async def main():
        alone = [await collect(engine, p, params, f"a{i}") for i, p in enumerate(prompts)]
        together = await asyncio.gather(*(collect(engine, p, params, f"t{i}") for i, p in enumerate(prompts)))
        return alone, together

    try:
        alone, together = asyncio.run(main())
        for a, t in zip(alone, together):
            ids = [x for o in a for x in o.new_token_ids]
            assert ids == [x for o in t for x in o.new_token_ids] and len(ids) == 10
            assert "".join(o.text_delta for o in a) == tok.decode(ids, skip_special_tokens=False)
            assert a[0].prefill_time_ms is not None and a[0].decode_time_ms is None
            assert all(o.decode_time_ms is not None and o.prefill_time_ms is None for o in a[1:])
            assert a[-1].finished and a[-1].finish_reason == "length" and a[-1].num_output_tokens == 10
            assert not any(o.finished for o in a[:-1])
            assert a[0].num_prompt_tokens == len(prompts[alone.index(a)])
        st = engine.stats()
        assert st.free_blocks == st.total_blocks and st.requests_finished_total == 8
        assert st.generation_tokens_total == 80
    finally:
        engine.shutdown()
    assert not engine.is_running
