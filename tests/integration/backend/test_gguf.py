"""GGUF weights: imported once through transformers + gguf into a bf16 safetensors cache keyed by the source."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.support.driver import Driver
from tests.support.gguf_writer import build_small_vocab_qwen2, write_tiny_qwen2_gguf
from tests.support.backend_helpers import load_runner, prompt
from mindie_like.backend_atb import weights

REAL_GGUF = Path(os.environ.get("MINDIE_LIKE_DEMO_GGUF", "/work/models/qwen2.5-coder-0.5b-instruct.gguf"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    base = tmp_path_factory.mktemp("gguf")
    hf = build_small_vocab_qwen2(base / "hf")
    return hf, write_tiny_qwen2_gguf(hf, base / "src" / "tiny.gguf")


def _bf16_rounded_reference(hf_dir):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return m


def test_gguf_import_runs_like_the_source_model(tiny_gguf, cache):
    hf_dir, gguf_file = tiny_gguf
    runner = load_runner(gguf_file)
    imported = Path(runner.tokenizer_path)
    assert imported.parent == cache and (imported / "model.safetensors").is_file()
    assert runner.path == "own" and runner.model_type == "qwen2" and runner.eos_token_ids == [299]
    from safetensors import safe_open
    with safe_open(str(imported / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    from transformers import AutoTokenizer
    assert AutoTokenizer.from_pretrained(runner.tokenizer_path).convert_tokens_to_ids("<|endoftext|>") == 299
    ref = _bf16_rounded_reference(hf_dir)
    p = prompt(50, 12, vocab=299)
    gen, ours = Driver(runner).greedy("a", p, 8)
    with torch.inference_mode():
        expect = ref(input_ids=torch.tensor([p + gen])).logits[0, len(p) - 1:]
    torch.testing.assert_close(torch.stack(ours), expect, atol=1e-4, rtol=1e-4)


def test_gguf_cache_hit_and_key(tiny_gguf, cache, monkeypatch, tmp_path):
    hf_dir, gguf_file = tiny_gguf
    first = weights.resolve_model_dir(gguf_file)
    calls = []
    monkeypatch.setattr(weights, "import_gguf", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("imported again")))
    assert weights.resolve_model_dir(gguf_file) == first                    # cache hit: no import
    assert weights.resolve_model_dir(gguf_file.parent) == first             # a folder holding one .gguf
    assert not calls
    # another source (a copy elsewhere) gets its own key
    other = tmp_path / "other" / "tiny.gguf"
    other.parent.mkdir()
    other.write_bytes(gguf_file.read_bytes())
    assert weights.source_key(other) != weights.source_key(gguf_file)
    # a folder with safetensors is used as is; two .gguf files are refused
    assert weights.resolve_model_dir(hf_dir) == hf_dir
    (other.parent / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several"):
        weights.find_gguf(other.parent)


@pytest.mark.real_model
def test_real_demo_gguf(monkeypatch):
    """The real Qwen2.5-Coder-0.5B GGUF (imported once into the default cache), bf16, answers a coding prompt."""
    if not REAL_GGUF.is_file():
        pytest.skip(f"{REAL_GGUF} not present (./bin/fetch_models)")
    from transformers import AutoTokenizer
    from mindie_like.backend_atb import ModelRunner
    from mindie_like.engine.types import EngineConfig
    from mindie_like.engine.types import QuantOptions
    # "none": the widened float model, the one path that still imports (a quantized GGUF is otherwise read
    # straight from the file: tests/integration/quant/test_gguf_direct_load.py)
    runner = ModelRunner.load(EngineConfig(model_path=str(REAL_GGUF), dtype="bfloat16", block_size=128,
                                           quant=QuantOptions(scheme="none")))
    assert runner.model_type == "qwen2" and runner.path == "own" and 151645 in runner.eos_token_ids
    tok = AutoTokenizer.from_pretrained(runner.tokenizer_path)
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a python function that adds two numbers."}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    gen, _ = Driver(runner, num_blocks=8).greedy("a", ids, 40)
    assert "def " in tok.decode(gen)
    # second load: served from the cache, no import
    monkeypatch.setattr(weights, "import_gguf", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-import")))
    again = weights.resolve_model_dir(REAL_GGUF)
    assert str(again) == runner.tokenizer_path
