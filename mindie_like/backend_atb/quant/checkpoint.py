"""Pre-quantized checkpoints (GPTQ, AWQ, msmodelslim W8A16/W4A16) loaded straight into the quantized weights.

A checkpoint says it is quantized in its own files; no `quantization` key is needed:

* ``config.json`` ``quantization_config.quant_method`` ``gptq`` or ``awq`` (any other method is refused, naming it);
* msmodelslim (MindIE's quantization tool) exports: a ``quantize`` key in ``config.json`` and/or a
  ``quant_model_description*.json`` next to the weights, whose ``model_quant_type`` is ``W8A16`` or ``W4A16`` (each
  tensor is listed with its own type; ``FLOAT`` tensors stay float; W8A8, W8A8S, W4A8, ... are refused).

Layouts and the dequantization each one defines (``w`` the float weight of ``nn.Linear``, ``[N, K]`` = [out, in]):

==================  ==========================================================================================
GPTQ (AutoGPTQ /    ``qweight`` int32 ``[K/8, N]``: element ``(8i+j, n)`` in bits ``4j..4j+3`` of ``qweight[i, n]``;
GPTQModel)          ``qzeros`` int32 ``[G, N/8]``: zero ``(g, 8c+j)`` in bits ``4j`` of ``qzeros[g, c]``; ``scales``
                    ``[G, N]``; ``g_idx`` int32 ``[K]`` (group of each input channel).
                    ``w[n, k] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])``, with
                    ``zero = stored + 1`` in ``checkpoint_format`` ``gptq`` (v1: the packer stores zero - 1) and
                    ``zero = stored`` in ``gptq_v2``. Relied on: AutoGPTQ's ``dequantize_weight`` (``zeros & 0xF``,
                    then ``+ 1``), GPTQModel's ``convert_gptq_v1_to_v2_format``, vLLM's ``gptq`` method
                    (``use_v2_format``) and its GPTQv2 notes (vllm-project/vllm#26092).
AWQ (AutoAWQ GEMM)  ``qweight`` int32 ``[K, N/8]`` packed along N in AWQ's order: nibble ``p`` of word ``c`` holds
                    column ``8c + [0, 2, 4, 6, 1, 3, 5, 7][p]``; ``qzeros`` int32 ``[G, N/8]`` the same; ``scales``
                    ``[G, N]``; ``w[n, k] = (q[k, n] - zero[k // g, n]) * scales[k // g, n]``. Relied on: AutoAWQ's
                    ``pack`` (``order_map``) and its ``unpack_awq`` / ``reverse_awq_order``, vLLM's
                    ``awq_dequantize`` (``AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]``).
msmodelslim W8A16   ``weight`` int8 ``[N, K]``, ``weight_scale`` ``[N, 1]``, ``weight_offset`` ``[N, 1]``:
                    ``w = (q - offset) * scale``. Relied on: MindIE atb_models ``W8A16LinearStatic`` (it hands
                    ``-weight_offset`` to the NPU op, which computes ``(w + offset) * scale``) and vllm-ascend's
                    ``AscendW8A16LinearMethod``.
msmodelslim W4A16   ``weight`` int8 ``[N, K]`` holding one int4 value in ``[-8, 7]`` per byte, ``weight_scale`` and
                    ``weight_offset`` ``[N, K/g]`` (``[N, 1]``: per channel): ``w = (q - offset) * scale``. Relied on:
                    MindIE atb_models ``W4A16LinearStatic`` (quant_version 0.0.0: it packs two values per byte itself
                    at load, ``int42int8``). A weight already stored packed (``[N, K/2]``) is refused: its layout is
                    not published.
==================  ==========================================================================================

What each becomes (exact: the kernels compute the checkpoint's own dequantization; only the scale/zero rounding
to the compute dtype differs, as for GGUF, none in float32):

* int4 (GPTQ, AWQ, msmodelslim W4A16) -> `Int4Weight` (``w = (q' - 8) * scale + zero``, ``q' in [0, 15]``):
  GPTQ/AWQ ``q' = q``, ``zero = scale * (8 - z)``; msmodelslim ``q' = q + 8``, ``zero = -offset * scale``.
  A group size the kernels lack (GPTQ ``-1`` = one group per row, 512, 1024...) is split into the largest of
  32/64/128/256 that divides it, repeating the scale and zero (exact); a group size none of those divides is
  refused.
* GPTQ act-order (``desc_act``, ``g_idx`` not ``k // g``): the input channels are sorted by group (exact when every
  group has the same size, refused otherwise) and the weight is an `InputPermutedWeight` that gathers x first.
  q/k/v (and gate/up) share their input; their permutations agree in AutoGPTQ's output (same Hessian); when they do
  not, that fused weight is built in float from the dequantized parts (exact, logged).
* int8 (msmodelslim W8A16) -> `Int8Weight`, with its per-channel offset when it has one.
* Parts of one fused weight (q/k/v, gate/up) in different formats (one FLOAT, one W8A16): float, dequantized.

Refusals raise `CheckpointRefused` (one line; the daemon prints it and exits 2): an unsupported method/format,
GPTQ/AWQ bits other than 4, AWQ versions other than GEMM, a conflicting `quantization` key, worldSize > 1, a model
without the own model code.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch

from .quantize import INT4_GROUP_SIZES
from .weight import InputPermutedWeight, Int4Weight, Int8Weight, normalize_scheme

log = logging.getLogger(__name__)

AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)      # column j of a word sits in nibble AWQ_REVERSE_ORDER[j]
MSMODELSLIM_TYPES = {"W8A16": "w8a16", "W4A16": "w4a16"}
DESCRIPTION_META_KEYS = ("model_quant_type", "version", "group_size", "quant_version", "metadata")
LEAVES = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales"),
          "msmodelslim": ("weight", "weight_scale", "weight_offset")}


class CheckpointRefused(ValueError):
    """A pre-quantized checkpoint this backend cannot serve exactly: one line, printed as a start-up refusal
    (exit 2) under the ModelConfig key it concerns (`key`: modelWeightPath, quantization or worldSize)."""

    def __init__(self, message: str, key: str = "modelWeightPath"):
        super().__init__(message)
        self.key = key


@dataclass
class CheckpointQuant:
    """What a checkpoint's own files say about its quantization."""
    method: str                      # "gptq" | "awq" | "msmodelslim"
    scheme: str                      # what its quantized linears become: "w4a16" | "w8a16"
    label: str                       # for messages and logs
    group_size: int = -1
    zero_plus_one: bool = False      # GPTQ v1: stored zeros are zero - 1
    description: dict = field(default_factory=dict)      # msmodelslim: tensor name -> type

    def quantized_modules(self, tensor_names: Iterable[str]) -> set[str]:
        """Module names (``model.layers.0.self_attn.q_proj``) whose weight is quantized in the checkpoint."""
        if self.method == "msmodelslim":
            return {k[:-len(".weight")] for k, v in self.description.items()
                    if k.endswith(".weight") and str(v).upper() in MSMODELSLIM_TYPES}
        return {n[:-len(".qweight")] for n in tensor_names if n.endswith(".qweight")}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointRefused(f"{path}: cannot read ({e})") from e


def detect(model_dir) -> Optional[CheckpointQuant]:
    """The quantization `model_dir`'s files declare (None: a float checkpoint). Raises CheckpointRefused for a
    declared format that is not served."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not model_dir.is_dir() or not cfg_path.is_file():
        return None
    cfg = _read_json(cfg_path)
    qc = cfg.get("quantization_config")
    descriptions = sorted(model_dir.glob("quant_model_description*.json"))
    if isinstance(qc, dict) and "quant_method" in qc:
        method = str(qc["quant_method"]).lower()
        if method == "gptq":
            return _gptq(qc)
        if method == "awq":
            return _awq(qc)
        if method == "fp8" and qc.get("weight_block_size"):
            return None     # block FP8 is dequantized while it streams in (fp8_block.py), a float load after that
        raise CheckpointRefused(f"{cfg_path}: quantization_config.quant_method {qc['quant_method']!r} is not "
                                f"supported (pre-quantized checkpoints: gptq, awq, msmodelslim W8A16/W4A16)")
    if cfg.get("quantize") or descriptions or (isinstance(qc, dict) and "model_quant_type" in qc):
        return _msmodelslim(model_dir, cfg, descriptions)
    return None


def _gptq(qc: dict) -> CheckpointQuant:
    bits = int(qc.get("bits", 4))
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    group = int(qc.get("group_size", -1))
    label = f"GPTQ (bits {bits}, group_size {group}, sym {qc.get('sym', True)}, desc_act " \
            f"{qc.get('desc_act', False)}, checkpoint_format {fmt})"
    if bits != 4:
        raise CheckpointRefused(f"{label}: bits {bits} is not supported (4-bit GPTQ maps onto the int4 kernels; "
                                f"grouped {bits}-bit values have no exact form on the per-channel int8 kernels)")
    if fmt not in ("gptq", "gptq_v2"):
        raise CheckpointRefused(f"{label}: checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
    return CheckpointQuant("gptq", "w4a16", label, group_size=group, zero_plus_one=fmt == "gptq")


def _awq(qc: dict) -> CheckpointQuant:
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    version = str(qc.get("version", "gemm")).lower()
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    label = f"AWQ (bits {bits}, group_size {group}, version {version})"
    if bits != 4:
        raise CheckpointRefused(f"{label}: bits {bits} is not supported (4-bit AWQ only)")
    if version != "gemm":
        raise CheckpointRefused(f"{label}: version {version!r} is not supported (the GEMM layout is; "
                                f"GEMV/Marlin/exllama layouts are not)")
    if not qc.get("zero_point", True):
        raise CheckpointRefused(f"{label}: zero_point false is not supported")
    return CheckpointQuant("awq", "w4a16", label, group_size=group)


def _msmodelslim(model_dir: Path, cfg: dict, descriptions: list[Path]) -> CheckpointQuant:
    declared = cfg.get("quantize") or (cfg.get("quantization_config") or {}).get("model_quant_type")
    if not descriptions:
        raise CheckpointRefused(f"{model_dir}: config.json declares quantize {declared!r} but the folder has no "
                                f"quant_model_description*.json (msmodelslim's per-tensor description)")
    if len(descriptions) > 1:
        raise CheckpointRefused(f"{model_dir}: several quant_model_description*.json "
                                f"({', '.join(p.name for p in descriptions)}): keep the one matching the weights")
    desc = _read_json(descriptions[0])
    mqt = str(desc.get("model_quant_type") or declared or "").upper()
    label = f"msmodelslim {mqt or '?'} ({descriptions[0].name})"
    if mqt not in MSMODELSLIM_TYPES:
        raise CheckpointRefused(f"{label}: model_quant_type {mqt or '(missing)'} is not supported (weight-only "
                                f"W8A16 and W4A16 are; activation quantization such as W8A8 is not)")
    if declared and str(declared).upper() != mqt:
        raise CheckpointRefused(f"{label}: config.json quantize {declared!r} disagrees with model_quant_type {mqt}")
    for name, kind in desc.items():
        if name in DESCRIPTION_META_KEYS or not isinstance(kind, str):
            continue
        if kind.upper() not in ("FLOAT",) + tuple(MSMODELSLIM_TYPES):
            raise CheckpointRefused(f"{label}: tensor {name} is {kind}, which is not supported (FLOAT, W8A16, "
                                    f"W4A16 are)")
    return CheckpointQuant("msmodelslim", MSMODELSLIM_TYPES[mqt], label,
                           group_size=int(desc.get("group_size", -1) or -1), description=desc)


def check_serving(ckq: CheckpointQuant, config, *, world_size: int, own_path: bool, why_not_own: str = "") -> None:
    """Refuses what this checkpoint cannot be served with (a conflicting `quantization` key, tensor parallelism,
    a model outside the own model code)."""
    asked = config.quant.scheme
    if asked:
        try:
            scheme = normalize_scheme(asked)
        except ValueError:
            scheme = str(asked)
        if scheme != ckq.scheme:
            raise CheckpointRefused(
                f"ModelConfig.quantization {asked!r} conflicts with the checkpoint: {ckq.label} holds {ckq.scheme} "
                f"weights; leave the key out (the checkpoint's format is detected) or set {ckq.scheme!r} to also "
                f"quantize its float linears", key="quantization")
    if world_size > 1:
        raise CheckpointRefused(f"worldSize {world_size}: tensor parallelism is not supported with a pre-quantized "
                                f"checkpoint ({ckq.label}); use worldSize 1", key="worldSize")
    if not own_path:
        raise CheckpointRefused(f"{ckq.label}: pre-quantized checkpoints need the own model code (llama, mistral, "
                                f"qwen2, qwen3): {why_not_own or 'not available for this model'}")


# ---- unpacking -------------------------------------------------------------------------------------------------
def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] -> uint8 [R, C, 8]: the 8 nibbles of each word, nibble j = bits 4j..4j+3. Through the words'
    bytes (a quarter of the memory traffic of shifting int32 copies); byte order checked."""
    packed = packed.to(torch.int32).contiguous()
    if sys.byteorder == "little":
        b = packed.view(torch.uint8).reshape(*packed.shape, 4)     # byte j: nibbles 2j (low) and 2j + 1 (high)
        return torch.stack((b & 0xF, b >> 4), dim=-1).reshape(*packed.shape, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    return ((packed[..., None] >> shifts) & 0xF).to(torch.uint8)


def unpack_int32_rows_transposed(packed: torch.Tensor) -> torch.Tensor:
    """[R/8, C] int32 -> [C, R] uint8 values 0..15, where row 8i+j (before the transpose) is in bits 4j of word i
    (GPTQ qweight [K/8, N] -> q [N, K]: moving whole 8-value runs, not single bytes)."""
    r8, c = packed.shape
    return _nibbles(packed).permute(1, 0, 2).reshape(c, r8 * 8)


def unpack_int32_cols(packed: torch.Tensor, order: Optional[tuple] = None) -> torch.Tensor:
    """[R, C/8] int32 -> [R, C] uint8 values 0..15: column 8c+j from bits 4j of word c (GPTQ qzeros), or from
    nibble order[j] (AWQ)."""
    r, c8 = packed.shape
    nib = _nibbles(packed)                                          # [R, C/8, 8] by nibble
    if order is not None:
        nib = nib[:, :, list(order)]
    return nib.reshape(r, c8 * 8)


# ---- one checkpoint linear ---------------------------------------------------------------------------------
def kernel_group(group: int, in_features: int, what: str) -> int:
    """The int4 kernels' group size for a checkpoint group `group`: the largest of 32/64/128/256 dividing it."""
    for g in sorted(INT4_GROUP_SIZES, reverse=True):
        if group % g == 0 and in_features % g == 0:
            return g
    raise CheckpointRefused(f"{what}: group size {group} does not map onto the int4 kernels' groups "
                            f"({', '.join(map(str, INT4_GROUP_SIZES))})")


@dataclass
class Int4Part:
    """One linear as int4: q [N, K] 0..15, scale/zero [N, K/group] float32 (w = (q - 8) * scale + zero), its input
    channels permuted by `perm` (act-order) when not None."""
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    group: int
    perm: Optional[torch.Tensor] = None

    def regroup(self, group: int) -> "Int4Part":
        r = self.group // group
        if r == 1:
            return self
        return Int4Part(self.q, self.scale.repeat_interleave(r, 1), self.zero.repeat_interleave(r, 1), group,
                        self.perm)

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K] in the checkpoint's input order."""
        N, K = self.q.shape
        w = ((self.q.float().reshape(N, K // self.group, self.group) - 8.0) * self.scale[..., None]
             + self.zero[..., None]).reshape(N, K)
        return w if self.perm is None else w.index_select(1, torch.argsort(self.perm))


@dataclass
class Int8Part:
    q: torch.Tensor                  # int8 [N, K]
    scale: torch.Tensor              # float32 [N]
    offset: Optional[torch.Tensor]   # float32 [N] or None: w = (q - offset) * scale

    def dequantize(self) -> torch.Tensor:
        off = self.offset[:, None] if self.offset is not None else 0.0
        return (self.q.float() - off) * self.scale[:, None]


def _need(t: dict, leaf: str, module: str) -> torch.Tensor:
    if leaf not in t:
        raise ValueError(f"pre-quantized checkpoint: {module}.{leaf} missing")
    return t[leaf]


def _int4_part(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
               module: str) -> Int4Part:
    """q [N, K] and per-group zeros/scales [G, N] with each input channel's group in g_idx -> Int4Part."""
    N, K = q.shape
    G = scales.shape[0]
    if zeros.shape != (G, N) or scales.shape != (G, N):
        raise ValueError(f"{module}: zeros {tuple(zeros.shape)} / scales {tuple(scales.shape)} do not match "
                         f"[{G}, {N}]")
    g_idx = g_idx.to(torch.long)
    if g_idx.shape != (K,) or int(g_idx.min()) < 0 or int(g_idx.max()) >= G:
        raise ValueError(f"{module}: g_idx does not index the {G} groups of {K} input channels")
    counts = torch.bincount(g_idx, minlength=G)
    if K % G or not bool((counts == K // G).all()):
        raise CheckpointRefused(f"{module}: g_idx groups of unequal size ({int(counts.min())}..{int(counts.max())} "
                                f"channels): no contiguous grouping maps it exactly")
    group = K // G
    contiguous = torch.arange(K) // group
    perm = None
    if not torch.equal(g_idx, contiguous):
        perm = torch.argsort(g_idx, stable=True)
        q = q.index_select(1, perm)
    scale = scales.float().t().contiguous()
    zero = scale * (8.0 - zeros.float().t())
    part = Int4Part(q.contiguous(), scale, zero.contiguous(), group, perm)
    return part.regroup(kernel_group(group, K, module))


def gptq_part(ckq: CheckpointQuant, module: str, t: dict) -> Int4Part:
    qweight, qzeros, scales = (_need(t, x, module) for x in ("qweight", "qzeros", "scales"))
    q = unpack_int32_rows_transposed(qweight)
    N, K = q.shape
    z = unpack_int32_cols(qzeros)[:, :N].to(torch.int16)
    if ckq.zero_plus_one:
        z = z + 1                   # 1..16: a stored 0xF (zero 0 written as -1) reads as 16, as in AutoGPTQ
    g_idx = t.get("g_idx")
    if g_idx is None:
        group = ckq.group_size if ckq.group_size > 0 else K
        g_idx = torch.arange(K) // group
    return _int4_part(q, z, scales, g_idx, module)


def awq_part(ckq: CheckpointQuant, module: str, t: dict) -> Int4Part:
    qweight, qzeros, scales = (_need(t, x, module) for x in ("qweight", "qzeros", "scales"))
    q = unpack_int32_cols(qweight, AWQ_REVERSE_ORDER).t()
    N, K = q.shape
    z = unpack_int32_cols(qzeros, AWQ_REVERSE_ORDER)[:, :N]
    group = K // scales.shape[0]
    return _int4_part(q, z, scales, torch.arange(K) // group, module)


def msmodelslim_part(ckq: CheckpointQuant, module: str, t: dict, in_features: int):
    kind = str(ckq.description.get(module + ".weight", "")).upper()
    w, scale = _need(t, "weight", module), _need(t, "weight_scale", module).float()
    offset = t.get("weight_offset")
    offset = offset.float() if offset is not None else None
    if w.dtype != torch.int8 or w.dim() != 2:
        raise ValueError(f"{module}.weight: msmodelslim {kind} weight must be int8 [N, K], got {w.dtype} "
                         f"{tuple(w.shape)}")
    N = w.shape[0]
    if kind == "W8A16":
        return Int8Part(w, scale.reshape(N), offset.reshape(N) if offset is not None else None)
    if w.shape[1] * 2 == in_features:
        raise CheckpointRefused(f"{module}.weight: msmodelslim W4A16 weight stored packed ({tuple(w.shape)} for "
                                f"{in_features} input channels): that layout is not published; export with one int4 "
                                f"value per int8 (quant_version 0.0.0)")
    if int(w.min()) < -8 or int(w.max()) > 7:
        raise ValueError(f"{module}.weight: msmodelslim W4A16 values outside [-8, 7]")
    K = w.shape[1]
    scale = scale.reshape(N, -1)
    G = scale.shape[1]
    if K % G:
        raise ValueError(f"{module}: weight_scale {tuple(scale.shape)} does not group {K} input channels")
    zero = -offset.reshape(N, G) * scale if offset is not None else torch.zeros_like(scale)
    part = Int4Part((w.to(torch.int16) + 8).to(torch.uint8), scale.contiguous(), zero.contiguous(), K // G)
    return part.regroup(kernel_group(K // G, K, module))


# ---- fusing parts into the model's weights ------------------------------------------------------------------
def build_fused(parts: list, dtype, device, name: str):
    """Row-concatenates the parts of one model weight (q/k/v, gate/up, or a single linear) into one
    QuantizedWeight; a float tensor when the parts cannot share one (formats differ, act-order permutations
    differ): exact either way. Returns (weight, note) with note saying what was done, for the log."""
    if all(isinstance(p, Int4Part) for p in parts):
        same_perm = all((p.perm is None and parts[0].perm is None) or
                        (p.perm is not None and parts[0].perm is not None and torch.equal(p.perm, parts[0].perm))
                        for p in parts)
        if same_perm:
            group = math.gcd(*(p.group for p in parts))
            parts = [p.regroup(group) for p in parts]
            qw = Int4Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]),
                            torch.cat([p.zero for p in parts]), group, dtype=dtype, device=device)
            if parts[0].perm is not None:
                return InputPermutedWeight(qw, parts[0].perm), f"int4 g{group}, act-order"
            return qw, f"int4 g{group}"
        why = "act-order permutations differ"
    elif all(isinstance(p, Int8Part) for p in parts):
        offsets = None
        if any(p.offset is not None for p in parts):
            offsets = torch.cat([p.offset if p.offset is not None else torch.zeros_like(p.scale) for p in parts])
        qw = Int8Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), dtype=dtype,
                        device=device, offset=offsets)
        return qw, "int8" + (" with offsets" if qw.offset is not None else "")
    else:
        why = "parts in different formats"
    log.warning("%s: %s; this weight is kept in float (dequantized, exact)", name, why)
    w = torch.cat([p.dequantize() if isinstance(p, (Int4Part, Int8Part)) else p.float() for p in parts])
    return w.to(device=device, dtype=dtype), f"float ({why})"


class PrequantizedLoader:
    """Loads a pre-quantized checkpoint into an own model (models/): `take(tensors)` keeps the quantized linears'
    tensors and passes every other tensor on to the model's own loader; `finish()` builds the model's quantized
    weights from them (fused as the float path fuses them)."""

    def __init__(self, ckq: CheckpointQuant, model, tensor_names: Iterable[str]):
        self.ckq, self.model = ckq, model
        self.quantized = ckq.quantized_modules(tensor_names)
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self.leaves = LEAVES[ckq.method]
        # the model's loader must not expect these (their float `.weight` is not in the checkpoint)
        model.external_weights.update(m + ".weight" for m in self.quantized)
        for lin in model.linears():
            if all(src in self.quantized for src, _ in lin.source_prefixes()):
                lin.weight = None         # frees the float buffer: the whole weight comes quantized

    def take(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in tensors:
            module, _, leaf = name.rpartition(".")
            if module in self.quantized and leaf in self.leaves:
                self.tensors.setdefault(module, {})[leaf] = t
                continue
            yield name, t

    def _part(self, module: str, in_features: int):
        t = self.tensors.pop(module, {})
        if self.ckq.method == "gptq":
            return gptq_part(self.ckq, module, t)
        if self.ckq.method == "awq":
            return awq_part(self.ckq, module, t)
        return msmodelslim_part(self.ckq, module, t, in_features)

    def finish(self) -> dict:
        """Builds the quantized weights into the model; returns {what: count} (also logged)."""
        m = self.model
        dtype, device = m.dtype, m.device
        counts: dict[str, int] = {}
        for lin in m.linears():
            sources = lin.source_prefixes()
            if not any(src in self.quantized for src, _ in sources):
                continue
            parts = [self._part(src, lin.in_features) if src in self.quantized
                     else lin.weight.narrow(0, *lin.part_rows(shard)) for src, shard in sources]
            w, note = build_fused(parts, dtype, device, lin.prefix)
            self._check_shape(w, (lin.out_features, lin.in_features), lin.prefix)
            lin.weight = w
            counts[note] = counts.get(note, 0) + 1
        hidden = m.cfg.hidden_size
        if "lm_head" in self.quantized and not m.tied:
            w, note = build_fused([self._part("lm_head", hidden)], dtype, device, "lm_head")
            self._check_shape(w, (m.vocab_size, hidden), "lm_head")
            m.lm_head = w
            counts["lm_head " + note] = 1
        if self.tensors:
            raise ValueError(f"pre-quantized checkpoint: tensors of {sorted(self.tensors)[:4]} were not used")
        log.info("pre-quantized checkpoint %s: %s", self.ckq.label,
                 ", ".join(f"{n} x{c}" for n, c in sorted(counts.items())))
        return counts

    @staticmethod
    def _check_shape(w, expected: tuple, name: str) -> None:
        if tuple(w.shape) != tuple(expected):
            raise ValueError(f"pre-quantized checkpoint: {name} is {tuple(w.shape)}, the model expects "
                             f"{tuple(expected)}")


def tensor_names(model_dir: Path) -> list[str]:
    """Every tensor name in the folder's safetensors (headers only)."""
    from safetensors import safe_open

    from ..weights import safetensors_files
    names: list[str] = []
    for f in safetensors_files(Path(model_dir)):
        with safe_open(str(f), framework="pt", device="cpu") as h:
            names.extend(h.keys())
    return names


def prequantized_loader(model_dir: Path, model) -> Optional[PrequantizedLoader]:
    """The loader for `model_dir` when its checkpoint is pre-quantized, else None."""
    ckq = detect(model_dir)
    if ckq is None:
        return None
    return PrequantizedLoader(ckq, model, tensor_names(model_dir))
