"""Quantize a loaded own model (models/) in place: every linear layer's weight (layers/linear.py: qkv, o, gate_up,
down, the experts') and the lm_head become a `QuantizedWeight`; a tied embedding table is the same object
(lm_head matmul quantized, lookup dequantizes rows).

The model code is unchanged: its op table's ``linear`` is ``F.linear(x, w, b)`` and its embedding is
``F.embedding(ids, table)``, both of which a `QuantizedWeight` answers through torch's ``__torch_function__``
protocol. The only hook is the call to `quantize_model` after the weights are loaded (runner.py).

Options (ModelConfig keys, ``EngineConfig.quant`` fields; see docs/quantization.md):
    quantization          "w8a16" | "w4a16" (aliases int8 / int4); none = float weights
    quant_group_size      int4 group size along K (32, 64, 128, 256); default 32
    quant_dense           "auto" (default): keep a dense copy and use it for steps at or above the crossover
                          measured at start-up, if memory allows; "never": always the quantized kernels;
                          "always": keep the dense copy whatever the memory (crossover still measured)
    quant_crossover       a fixed crossover (rows) instead of measuring
    quant_dense_dtype     "auto" (default): on CPU, float32 dense copies when a float32 matmul beats the model's
                          half-precision one (CPUs without AVX512-BF16); "model": the model's dtype
    quant_act_bits        own AVX2 int4 kernel: activations rounded per block of 32 to 8 (default) or 16 bits,
                          see docs/quantization.md ("Own CPU kernels") for the speed / accuracy trade
    quant_from_gguf       true (default): with a .gguf model, build the quantized weights from the GGUF's own
                          blocks (exact for Q4_0/Q4_1/Q4_K -> int4), see gguf.py; false: quantize the float import
    quantization "gguf"   with a .gguf model: each tensor at its own precision class (4-bit -> int4, else int8)
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import time
from typing import Optional

import torch

from ...engine.types import NO_QUANTIZATION, QuantOptions
from .policy import QuantPolicy, dense_allowed, faster_dense_dtype, measure_crossover
from .quantize import INT4_GROUP_SIZES
from .weight import (ACT_BITS, InputPermutedWeight, Int4Weight, QuantizedWeight, native_cpu_kernels,
                     normalize_scheme, quantize_linear_weight)

log = logging.getLogger(__name__)

DEFAULT_GROUP_SIZE = QuantOptions.group_size
# the own AVX2 int4 kernel's activations: 8 bits is ~1.3x faster than 16 there, and on the demo model its cost
# (mean KL 0.00025 against 16 bits) is ~1% of the int4 weights' own (0.027 against bf16): docs/benchmarks.md
DEFAULT_ACT_BITS = QuantOptions.act_bits


def _group_for(k: int, wanted: int) -> Optional[int]:
    if k % wanted == 0:
        return wanted
    for g in sorted(INT4_GROUP_SIZES, reverse=True):
        if g < wanted and k % g == 0:
            return g
    return None


def quantize_one(w: torch.Tensor, scheme: str, group_size: int, dtype, device, keep_rows=False, name="",
                 keep_dense=False):
    """One float weight -> its QuantizedWeight (a W4A16 weight with no group size dividing K stays float)."""
    if isinstance(w, QuantizedWeight):
        return w
    if scheme == "w4a16":
        g = _group_for(w.shape[1], group_size)
        if g is None:
            log.warning("%s: in_features %d has no int4 group size dividing it; kept in %s", name, w.shape[1], dtype)
            return w
        if g != group_size:
            log.info("%s: in_features %d not a multiple of %d, int4 group size %d used", name, w.shape[1],
                     group_size, g)
        group_size = g
    return quantize_linear_weight(w, scheme, group_size, dtype=dtype, device=device, keep_rows=keep_rows,
                                  keep_dense=keep_dense)


def quantize_model(model, scheme: str, group_size: int = DEFAULT_GROUP_SIZE, dense: str = "auto",
                   crossover: Optional[float] = None, gguf_path=None, dense_dtype: str = "auto",
                   float_too: bool = True, act_bits: int = DEFAULT_ACT_BITS) -> QuantPolicy:
    """Replaces the model's float linears by quantized ones (in place); returns the per-step policy.

    `gguf_path`: build the weights from that GGUF's own blocks (quant/gguf.py) instead of quantizing the float
    weights; `scheme` may then also be "gguf" (each tensor at its own precision class). `float_too` False: only
    the weights already quantized (a pre-quantized checkpoint's) are taken in; float ones stay float."""
    scheme = "gguf" if str(scheme).lower() == "gguf" else normalize_scheme(scheme)
    if scheme == "gguf" and gguf_path is None:
        raise ValueError('quantization "gguf" needs a .gguf model file')
    if dense not in ("auto", "never", "always"):
        raise ValueError(f"quant_dense {dense!r}: auto, never or always")
    if act_bits not in ACT_BITS:
        raise ValueError(f"quant_act_bits {act_bits!r}: one of {ACT_BITS}")
    t0 = time.time()
    dtype, device = model.dtype, model.device
    before = model.weight_bytes()
    keep_dense, why = _dense_wanted(model, dense)
    if device.type == "cpu" and dtype == torch.float32 and native_cpu_kernels() is None:
        log.warning("quantized weights with float32 activations on CPU: torch's int8/int4 kernels have no "
                     "vectorized float32 path (measured 20-40x slower than bfloat16 activations); use dtype "
                     "bfloat16")
    qweights: list[QuantizedWeight] = []
    if gguf_path is not None:
        from .gguf import load_gguf_weights
        counts = load_gguf_weights(model, gguf_path, scheme, keep_dense=keep_dense)
        kernels: dict[str, int] = {}
        for w in [lin.weight for lin in model.linears()] + [model.lm_head]:
            if isinstance(w, QuantizedWeight):
                kernels[w.kernel] = kernels.get(w.kernel, 0) + 1
        log.info("GGUF %s: weights kept from their blocks (%s), as %s; kernels: %s", gguf_path.name,
                 ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())), scheme,
                 ", ".join(f"{k} x{v}" for k, v in sorted(kernels.items())))
    loaded = 0

    def take(w, **kw):
        nonlocal loaded
        if isinstance(w, QuantizedWeight):          # built by the loader (pre-quantized checkpoint, GGUF blocks)
            loaded += 1
            if keep_dense:
                w.materialize_dense()
            return w
        return quantize_one(w, scheme, group_size, dtype, device, keep_dense=keep_dense, **kw) if float_too else w

    for lin in model.linears():
        w = take(lin.weight, name=lin.prefix)
        lin.weight = w
        if isinstance(w, QuantizedWeight):
            qweights.append(w)
    if model.tied:
        qe = take(model.embed, keep_rows=True, name="embed/lm_head")
        model.embed = model.lm_head = qe
    else:
        qe = take(model.lm_head, name="lm_head")
        model.lm_head = qe
    if isinstance(qe, QuantizedWeight):
        qweights.append(qe)
    for w in qweights:
        w = w.inner if isinstance(w, InputPermutedWeight) else w
        if isinstance(w, Int4Weight):
            w.act_bits = act_bits
    gc.collect()
    after = model.weight_bytes()
    log.info("quantized %d weights to %s%s in %.1f s (%d of them as loaded): weight bytes per step %.1f MiB -> "
             "%.1f MiB", len(qweights), scheme, f" (group {group_size})" if scheme == "w4a16" else "",
             time.time() - t0, loaded, before / 2**20, after / 2**20)
    policy = _build_policy(model, qweights, keep_dense, why, crossover, dense_dtype)
    for w in qweights:
        w.policy = policy
    return policy


def _dense_wanted(model, dense: str) -> tuple[bool, str]:
    if dense == "never":
        return False, "quant_dense never"
    numel = sum(_parameters(lin.weight) for lin in model.linears()) + _parameters(model.lm_head)
    dense_bytes = numel * torch.tensor([], dtype=model.dtype).element_size()
    ok, why = dense_allowed(dense_bytes, model.device)
    if dense == "always":
        return True, why + " (quant_dense always)"
    if not ok:
        log.info("quantization: no dense copy (%s): quantized kernels at every batch size", why)
    return ok, why


def _parameters(w) -> int:
    """Values in a weight (a QuantizedWeight built at load counts its [N, K], not its bytes)."""
    return w.out_features * w.in_features if isinstance(w, QuantizedWeight) else w.numel()


def _build_policy(model, qweights, keep_dense: bool, why: str, crossover, dense_dtype: str = "auto") -> QuantPolicy:
    if not keep_dense or not qweights:
        return QuantPolicy(reason=why)
    t0 = time.time()
    first = model.linears()[:4]         # the first layer's attention and MLP weights
    layer0 = [lin.weight for lin in first if isinstance(lin.weight, QuantizedWeight)]
    if dense_dtype == "auto":
        f32 = faster_dense_dtype(layer0)
        if f32 is not None:
            n = sum(w.dense.numel() for w in qweights if w.dense is not None)
            ok, why32 = dense_allowed(n * 4, model.device)
            if ok:
                for w in qweights:
                    if w.dense is not None:
                        w.dense = w.dense.float()
                gc.collect()
                why = why + "; float32 dense copies (faster than " + str(model.dtype).replace("torch.", "") + \
                    " matmuls on this CPU)"
    if crossover is not None:
        pol = QuantPolicy(crossover=float(crossover), reason="configured")
    else:
        pol = measure_crossover(layer0)
    if math.isinf(pol.crossover):
        for w in qweights:
            w.drop_dense()
        pol.reason = (pol.reason + "; " if pol.reason else "") + "dense never faster: copies dropped"
        gc.collect()
    log.info("quantization per-step choice: %s (%s; %.1f s)", pol.describe(), why, time.time() - t0)
    return pol




def default_gguf_scheme(model_path) -> Optional[str]:
    """"gguf" for a GGUF source whose linear weights are quantized (served in their own block formats, no key
    needed), None otherwise (a float GGUF, or not a GGUF). `"quantization": "none"` keeps the widened float model."""
    from ..weights import find_gguf
    try:
        path = find_gguf(model_path)
    except ValueError:
        return None
    if path is None:
        return None
    from gguf import GGUFReader
    kinds = {t.tensor_type.name for t in GGUFReader(str(path)).tensors if len(t.shape) > 1}
    if not kinds - {"F32", "F16", "BF16"}:
        return None
    log.info("GGUF %s (%s): served in its own block formats (quantization \"gguf\"; \"none\" widens to float)",
             path.name, ", ".join(sorted(kinds)))
    return "gguf"


def maybe_quantize(model, config, prequantized: Optional[str] = None) -> Optional[QuantPolicy]:
    """The runner's hook: quantizes when the config asks for it (`quantization`), else does nothing.

    `prequantized`: the scheme of a pre-quantized checkpoint already loaded into the model (quant/checkpoint.py):
    its quantized weights get the per-step policy; its float linears stay float unless `quantization` names that
    same scheme (a different one was refused at start)."""
    q = dataclasses.replace(config.quant)
    if str(q.scheme or "").strip().lower() in NO_QUANTIZATION:
        log.info("quantization %r: weights kept in float (a GGUF source stays widened)", q.scheme)
        q.scheme = None
    elif not q.scheme and not prequantized and q.from_gguf:
        q.scheme = default_gguf_scheme(config.model_path)
    if not q.scheme and not prequantized:
        return None
    gguf = None
    if q.from_gguf and not prequantized:
        from ..weights import find_gguf
        gguf = find_gguf(config.model_path)
        if gguf is not None and not all(hasattr(L.mlp, "gate_up_proj") for L in model.layers):
            log.info("GGUF %s: weights from its own blocks are built for dense models only; quantizing the float "
                     "import instead", gguf.name)
            gguf = None
    with torch.inference_mode():
        return quantize_model(model, q.scheme or prequantized, q.group_size, q.dense, q.crossover, gguf,
                              q.dense_dtype, float_too=bool(q.scheme), act_bits=q.act_bits)
