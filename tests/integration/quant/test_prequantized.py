"""Pre-quantized checkpoints (GPTQ v1/v2, AWQ, msmodelslim W8A16/W4A16) loaded into the quantized weights.

Each checkpoint is written from a tiny random model by the packers in tests/support/ckpt_writers.py (from the published layouts)
and checked three ways: the loaded weights dequantize to exactly what the tool's own reference formula gives
(quoted in ckpt_writers.py); the loaded model's logits equal the float model run on those dequantized weights;
and what cannot be served is refused with one line naming it.
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

import tests.support.ckpt_writers as cw
from tests.support.driver import Driver
from tests.support.backend_helpers import load_runner, prompt

from mindie_like.backend_atb.quant import InputPermutedWeight, Int4Weight, Int8Weight, QuantizedWeight
from mindie_like.backend_atb.quant.checkpoint import CheckpointRefused, detect

FORMATS = {
    "gptq-v1-sym": lambda src, d: cw.write_gptq(src, d, sym=True, v1=True),
    "gptq-v1-asym-actorder": lambda src, d: cw.write_gptq(src, d, sym=False, v1=True, act_order=True),
    "gptq-v2-asym": lambda src, d: cw.write_gptq(src, d, sym=False, v1=False, group_size=64),
    "gptq-v2-sym-actorder": lambda src, d: cw.write_gptq(src, d, sym=True, v1=False, act_order=True),
    "awq": lambda src, d: cw.write_awq(src, d),
    "msmodelslim-w8a16-asym": lambda src, d: cw.write_msmodelslim(src, d, "W8A16", sym=False),
    "msmodelslim-w8a16-sym": lambda src, d: cw.write_msmodelslim(src, d, "W8A16", sym=True),
    "msmodelslim-w4a16": lambda src, d: cw.write_msmodelslim(src, d, "W4A16", sym=False,
                                                             float_modules=("layers.1.mlp.down_proj",
                                                                            "layers.1.self_attn.k_proj")),
}
SLOTS = (("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")), ("o", ("self_attn.o_proj",)),
         ("gate_up", ("mlp.gate_proj", "mlp.up_proj")), ("down", ("mlp.down_proj",)))


@pytest.fixture(scope="module")
def checkpoints(tiny_model, tmp_path_factory):
    """checkpoints(family, fmt) -> (quantized dir, float dir of the dequantized weights, reference weights)."""
    cache = {}

    def get(family, fmt):
        if (family, fmt) not in cache:
            src = tiny_model(family)
            root = tmp_path_factory.mktemp(f"{family}-{fmt}")
            ref = FORMATS[fmt](src, root / "quantized")
            cache[family, fmt] = (root / "quantized", cw.write_dequantized(src, root / "float", ref), ref)
        return cache[family, fmt]
    return get


def _teacher_forced(runner, seqs):
    lg = Driver(runner, num_blocks=64).step([(f"t{i}", s) for i, s in enumerate(seqs)], all_logits=True)
    return torch.split(lg, [len(s) for s in seqs])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_loaded_weights_equal_the_reference_dequantization(checkpoints, fmt):
    qdir, _, ref = checkpoints("llama", fmt)
    r = load_runner(qdir, quant_dense="never")
    expected_kind = Int8Weight if "w8a16" in fmt else Int4Weight
    for i, L in enumerate(r.model.layers):
        for attr, modules in SLOTS:
            w = getattr(L, attr)
            names = [f"model.layers.{i}.{m}" for m in modules]
            want = torch.cat([ref[n] if n in ref else r_float_part(qdir, n) for n in names])
            if all(n in ref for n in names):
                assert isinstance(w, QuantizedWeight), (fmt, i, attr)
                inner = w.inner if isinstance(w, InputPermutedWeight) else w
                assert isinstance(inner, expected_kind)
                assert isinstance(w, InputPermutedWeight) == ("actorder" in fmt)
                got = w.dequantize(torch.float32)
            else:                   # a FLOAT part in the fused weight: the whole weight is float, dequantized
                assert isinstance(w, torch.Tensor)
                got = w.float()
            # exact for fp16 scales (GPTQ, AWQ); float32 scales (msmodelslim): (q - 8) * s + (-o * s) against
            # (q - o) * s differ by float32 rounding
            torch.testing.assert_close(got, want, atol=2**-22 * float(want.abs().max()), rtol=0)
    assert isinstance(r.model.lm_head, torch.Tensor)          # not quantized in these checkpoints: stays float


def r_float_part(qdir, name):
    """A FLOAT tensor of an msmodelslim checkpoint, as stored."""
    from safetensors import safe_open
    for f in qdir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            if name + ".weight" in h.keys():
                return h.get_tensor(name + ".weight").float()
    raise KeyError(name)


@pytest.mark.parametrize("family,fmt", [("llama", "gptq-v1-asym-actorder"), ("qwen2", "gptq-v2-sym-actorder"),
                                        ("qwen2", "awq"), ("llama", "msmodelslim-w8a16-asym"),
                                        ("qwen2", "msmodelslim-w4a16")])
def test_logits_equal_the_float_model_on_the_dequantized_weights(checkpoints, family, fmt):
    """llama (separate lm_head) and qwen2 (qkv bias, tied 151k-row table) layouts, through the quantized kernels
    (quant_dense never) and through the dense copies (quant_dense always, crossover 1)."""
    qdir, fdir, _ = checkpoints(family, fmt)
    seqs = [prompt(300 + i, 9 + 5 * i) for i in range(2)]
    ref = _teacher_forced(load_runner(fdir), seqs)
    for dense in ({"quant_dense": "never"}, {"quant_dense": "always", "quant_crossover": 1}):
        got = _teacher_forced(load_runner(qdir, quant_act_bits=16, **dense), seqs)
        for x, y in zip(ref, got):
            # the own AVX2 int4 kernel rounds activations to fixed point per block of 32, pinned here to 16 bits
            # (<= 2^-16 of the block's largest value; serving's default 8 is docs/quantization.md's accuracy
            # study); int8 and the dense copies are float32 math
            torch.testing.assert_close(y, x, atol=2e-3 * float(x.abs().max()), rtol=1e-4)


def test_gptq_quantized_lm_head_loads_like_the_other_linears(tiny_model, tmp_path):
    ref = cw.write_gptq(tiny_model("llama"), tmp_path / "q", sym=False, lm_head=True)
    r = load_runner(tmp_path / "q", quant_dense="never")
    assert isinstance(r.model.lm_head, Int4Weight) and isinstance(r.model.embed, torch.Tensor)
    torch.testing.assert_close(r.model.lm_head.dequantize(torch.float32), ref["lm_head"], atol=0, rtol=0)


def test_act_order_permutations_that_differ_keep_that_weight_float(tiny_model, tmp_path, caplog):
    src = tiny_model("llama")
    ref = cw.write_gptq(src, tmp_path / "q", sym=False, act_order=True, split_perms=True)
    fdir = cw.write_dequantized(src, tmp_path / "f", ref)
    with caplog.at_level(logging.WARNING, logger="mindie_like.backend_atb.quant.checkpoint"):
        r = load_runner(tmp_path / "q", quant_dense="never", quant_act_bits=16)
    assert any("act-order permutations differ" in rec.getMessage() for rec in caplog.records)
    L = r.model.layers[0]
    assert isinstance(L.qkv, torch.Tensor) and isinstance(L.gate_up, InputPermutedWeight)
    seqs = [prompt(7, 12)]
    x, y = _teacher_forced(load_runner(fdir), seqs)[0], _teacher_forced(r, seqs)[0]
    torch.testing.assert_close(y, x, atol=2e-3 * float(x.abs().max()), rtol=1e-4)


def test_quant_act_bits_reaches_act_order_weights(checkpoints):
    qdir, _, _ = checkpoints("llama", "gptq-v1-asym-actorder")
    for bits in (8, 16):
        L = load_runner(qdir, quant_dense="never", quant_act_bits=bits).model.layers[0]
        assert isinstance(L.qkv, InputPermutedWeight) and L.qkv.inner.act_bits == bits


def test_quantization_key_naming_the_same_scheme_also_quantizes_the_float_linears(checkpoints):
    qdir, _, ref = checkpoints("qwen2", "gptq-v2-sym-actorder")
    plain = load_runner(qdir, quant_dense="never")
    assert isinstance(plain.model.embed, torch.Tensor) and plain.model.lm_head is plain.model.embed
    r = load_runner(qdir, quant_dense="never", quantization="w4a16")
    assert isinstance(r.model.lm_head, Int4Weight) and r.model.embed is r.model.lm_head   # tied table: int4 too
    w = r.model.layers[0].qkv          # the checkpoint's own weights are kept as loaded (not re-quantized)
    torch.testing.assert_close(w.dequantize(torch.float32),
                               torch.cat([ref[f"model.layers.0.self_attn.{x}_proj"] for x in "qkv"]), atol=0, rtol=0)
    assert r.weight_bytes() < plain.weight_bytes()


# ---- refusals --------------------------------------------------------------------------------------------------
def _config_dir(tmp_path, **keys):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **keys}))
    return tmp_path


@pytest.mark.parametrize("keys,files,message", [
    ({"quantization_config": {"quant_method": "compressed-tensors"}}, {},
     "quantization_config.quant_method 'compressed-tensors' is not supported"),
    ({"quantization_config": {"quant_method": "fp8"}}, {}, "quant_method 'fp8' is not supported"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 8, "group_size": 128}}, {}, "bits 8 is not supported"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}}, {},
     "checkpoint_format 'marlin' is not supported"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4, "version": "gemv"}}, {},
     "version 'gemv' is not supported"),
    ({"quantize": "w8a8"}, {"quant_model_description_w8a8.json": {"model_quant_type": "W8A8"}},
     "model_quant_type W8A8 is not supported"),
    ({"quantize": "w8a16"}, {"quant_model_description_w8a16.json": {
        "model_quant_type": "W8A16", "model.layers.0.mlp.down_proj.weight": "W8A8"}},
     "tensor model.layers.0.mlp.down_proj.weight is W8A8, which is not supported"),
    ({"quantize": "w8a16"}, {}, "has no quant_model_description*.json"),
    ({}, {"quant_model_description_w4a16.json": {"model_quant_type": "W4A16"},
          "quant_model_description_w8a16.json": {"model_quant_type": "W8A16"}},
     "several quant_model_description*.json"),
    ({"quantize": "w8a16"}, {"quant_model_description.json": {"model_quant_type": "W4A16"}},
     "config.json quantize 'w8a16' disagrees with model_quant_type W4A16"),
])
def test_unsupported_formats_are_refused_naming_them(tmp_path, keys, files, message):
    d = _config_dir(tmp_path, **keys)
    for name, body in files.items():
        (d / name).write_text(json.dumps(body))
    with pytest.raises(CheckpointRefused) as e:
        detect(d)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_float_checkpoint_is_not_prequantized(tiny_model):
    assert detect(tiny_model("llama")) is None


def test_serving_refusals(checkpoints, tmp_path):
    qdir, _, _ = checkpoints("llama", "gptq-v1-sym")
    with pytest.raises(CheckpointRefused) as e:
        load_runner(qdir, quantization="w8a16")
    assert e.value.key == "quantization"
    assert str(e.value).startswith("ModelConfig.quantization 'w8a16' conflicts with the checkpoint: GPTQ (bits 4")
    with pytest.raises(CheckpointRefused) as e:
        load_runner(qdir, force_generic=True)
    assert "pre-quantized checkpoints need the own model code" in str(e.value)
    from mindie_like.backend_atb import ModelRunner
    from mindie_like.engine.types import EngineConfig
    with pytest.raises(CheckpointRefused) as e:
        ModelRunner.load(EngineConfig(model_path=str(qdir), device="cpu", world_size=2))
    assert e.value.key == "worldSize" and "tensor parallelism is not supported with a pre-quantized" in str(e.value)


def test_checkpoint_shapes_without_an_exact_mapping_are_refused(tiny_model, tmp_path):
    src = tiny_model("llama")
    # GPTQ group size 16: no int4 kernel group divides it
    cw.write_gptq(src, tmp_path / "g16", group_size=16)
    with pytest.raises(CheckpointRefused, match="group size 16 does not map onto the int4 kernels' groups"):
        load_runner(tmp_path / "g16")
    # msmodelslim W4A16 stored two values per byte (an undocumented layout)
    d = tmp_path / "packed"
    cw.write_msmodelslim(src, d, "W4A16")
    from safetensors.torch import load_file, save_file
    f = next(d.glob("*.safetensors"))
    state = load_file(str(f))
    for n in [n for n in state if n.endswith("proj.weight") and state[n].dtype == torch.int8]:
        q = state[n]
        state[n] = ((q[:, 0::2] & 0xF) | (q[:, 1::2] << 4)).contiguous()
    save_file(state, str(f))
    with pytest.raises(CheckpointRefused, match="msmodelslim W4A16 weight stored packed"):
        load_runner(d)
