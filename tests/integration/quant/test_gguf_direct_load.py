"""A quantized GGUF is loaded straight from the file: only its config and tokenizer are written to the cache (the
same files the float import writes), no float weights; the model gives the float-import path's logits."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.support.backend_helpers import copy_float_tensors, load_runner, prompt
from tests.support.driver import Driver
from tests.support.gguf_writer import build_small_vocab_qwen2, write_tiny_qwen2_gguf

from mindie_like.backend_atb import cpu_kernels, gguf_native
from mindie_like.backend_atb.quant import QuantizedWeight

pytestmark = pytest.mark.isolated        # the own kernels run here: a crash fails this module only

LINEARS = ("qkv", "o", "gate_up", "down")


@pytest.fixture(scope="module")
def q_gguf(tmp_path_factory):
    cpu_kernels.load()          # built (or found) in the usual cache before the tests point the cache elsewhere
    base = tmp_path_factory.mktemp("gguf-direct")
    hf = build_small_vocab_qwen2(base / "hf")
    fmt = lambda name: "Q8_0" if ("attn_v" in name or "ffn_down" in name) else "Q5_0"       # noqa: E731
    return write_tiny_qwen2_gguf(hf, base / "src" / "tiny.gguf", fmt_of=fmt)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
                  and "torch_extensions" not in p.parts)


def test_quantized_gguf_loads_without_a_float_import(q_gguf, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(cache))
    monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", "float")     # the loaders compared, not the activations' rounding
    with caplog.at_level(logging.INFO, logger="mindie_like.backend_atb"):
        native = load_runner(q_gguf, quant_dense="never")
    assert "weights from the GGUF's blocks" in caplog.text
    files = _files(cache)
    assert files and not any(f.endswith((".safetensors", ".bin", ".pt")) for f in files), files
    assert not any(f.endswith(gguf_native.IMPORT_MARKER) for f in files)
    assert native.path == "own" and native.model_type == "qwen2" and native.eos_token_ids == [299]
    assert native.gguf == q_gguf
    assert all(isinstance(getattr(L, a), QuantizedWeight) for L in native.model.layers for a in LINEARS)
    assert isinstance(native.model.lm_head, QuantizedWeight)
    # the float tensors came from the file: exact float32 norms, and nothing left on the meta device
    ln = native.model.layers[0].input_layernorm.weight
    assert not ln.is_meta and ln.dtype == torch.float32
    assert str(gguf_native.tokenizer_dir(q_gguf)) == native.tokenizer_path     # what tokenizer-only tools read
    # a second start reads the cached config + tokenizer and writes nothing
    assert _files(cache) == files and isinstance(load_runner(q_gguf, quant_dense="never").model.lm_head,
                                                 QuantizedWeight)

    # the float import path (as every GGUF loaded before): the same config, generation config and tokenizer ...
    monkeypatch.setattr(gguf_native, "native_source", lambda *a, **k: None)
    imported = load_runner(q_gguf, quant_dense="never")
    meta_dir, import_dir = cache / native.tokenizer_path.rsplit("/", 1)[-1], cache / \
        imported.tokenizer_path.rsplit("/", 1)[-1]
    assert (import_dir / "model.safetensors").is_file()
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        assert json.loads((meta_dir / name).read_text()) == json.loads((import_dir / name).read_text()), name
    # ... and the same logits: the linears are the same blocks; the import rounded the float tensors (norms,
    # biases, the untied embedding table) to bfloat16, the direct load keeps the file's values (close; greedy
    # tokens of a random model may differ at near-ties)
    for i in range(2):
        p = prompt(70 + i, 9 + 4 * i, vocab=299)
        a = Driver(imported, 16).step([("a", p)], all_logits=True)
        b = Driver(native, 16).step([("b", p)], all_logits=True)
        torch.testing.assert_close(b, a, atol=2e-2 * float(a.abs().max()), rtol=2e-2)
    # exactly equal once the import's float tensors are the file's own
    with torch.inference_mode():
        copy_float_tensors(imported.model, native.model)
    for i in range(2):
        p = prompt(80 + i, 9 + 4 * i, vocab=299)
        a = Driver(imported, 16).step([("a", p)], all_logits=True)
        b = Driver(native, 16).step([("b", p)], all_logits=True)
        torch.testing.assert_close(b, a, atol=1e-5 * float(a.abs().max()), rtol=1e-5)


def test_none_and_from_gguf_false_keep_the_float_import(q_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(cache))
    r = load_runner(q_gguf, quantization="none")
    assert r.quant_policy is None and (cache / r.tokenizer_path.rsplit("/", 1)[-1] / "model.safetensors").is_file()
    from mindie_like.engine.types import EngineConfig, QuantOptions
    assert gguf_native.native_source(EngineConfig(model_path=str(q_gguf), quant=QuantOptions(from_gguf=False))) \
        is None
    assert gguf_native.native_source(EngineConfig(model_path=str(q_gguf))) == q_gguf



def test_tensor_parallel_ranks_build_their_part_of_the_blocks(q_gguf, tmp_path, monkeypatch):
    """worldSize 2: every rank cuts its rows (q/k/v, gate/up, its vocabulary shard) or block-aligned input columns
    (o, down) out of the file's blocks; the logits equal one process's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MINDIE_LIKE_CACHE_DIR", str(cache))
    monkeypatch.setenv("MINDIE_LIKE_BLOCK_ACT", "float")     # exact sums: the split compared, not the rounding
    one = load_runner(q_gguf, quant_dense="never")
    two = load_runner(q_gguf, world_size=2, device_ids=[0, 1], quant_dense="never")
    try:
        assert not any(f.endswith(".safetensors") for f in _files(cache))
        for i in range(2):
            p = prompt(90 + i, 9 + 4 * i, vocab=299)
            a = Driver(one, 16).step([("a", p)], all_logits=True)
            b = Driver(two, 16).step([("b", p)], all_logits=True)
            torch.testing.assert_close(b, a, atol=1e-4 * float(a.abs().max()), rtol=1e-4)
    finally:
        two.close()
