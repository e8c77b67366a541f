"""Opt-in (-m real_model): the AsyncEngine on the real Qwen2.5-Coder-0.5B GGUF answers sensibly and streams."""
import asyncio
from pathlib import Path

import pytest

from mindie_like.engine.async_engine import AsyncEngine
from mindie_like.engine.types import EngineConfig, SamplingParams

MODEL = Path("/work/models/qwen2.5-coder-0.5b-instruct.gguf")

pytestmark = pytest.mark.real_model


@pytest.mark.skipif(not MODEL.exists(), reason="real model not downloaded")
def test_real_model_chat_answer():
    engine = AsyncEngine.from_config(EngineConfig(model_path=str(MODEL), kv_cache_gb=0.5, block_size=128))
    tok = engine.tokenizer
    msgs = [{"role": "user", "content": "What is 2+3? Answer with just the number."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids

    async def main():
        outs = [o async for o in engine.generate(list(ids), SamplingParams(temperature=0, max_tokens=16), "q")]
        return outs

    try:
        outs = asyncio.run(main())
        text = "".join(o.text_delta for o in outs)
        assert "5" in text
        assert outs[-1].finish_reason == "stop"           # <|im_end|> ends it, and is not in the text
        assert "<|im_end|>" not in text
    finally:
        engine.shutdown()
