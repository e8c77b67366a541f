"""GGUF block formats -> quantized weights without a detour through float where the layouts map.

Which formats map (w = dequantized value, q the stored integers, per GGUF block):

========  ==============================  =======================================================================
format    ggml definition                 here
========  ==============================  =======================================================================
Q4_0      w = d * (q - 8), 32 per block   int4, group 32: scale = d, zero = 0                       (exact)
Q4_1      w = d * q + m, 32 per block     int4, group 32: scale = d, zero = m + 8 d                 (exact)
Q4_K      w = d*sc_j * q - dmin*m_j,      int4, group 32: scale = d*sc_j, zero = 8 d*sc_j - dmin*m_j (exact)
          8 sub-blocks of 32 in 256
Q8_0      w = d * q, 32 per block         "gguf" mode with the own block kernel: grouped int8 blocks
Q5_0      w = d * (q - 16), 32 per block  (block_weight.py; q as int8, d or d*sc_j as a float32 scale per
Q6_K      w = d*sc_j * (q - 32),          group of 32 / 16; bit-exact to the file's dequantization). Otherwise
          16 sub-blocks of 16 in 256      int8 per output channel re-quantized from w (one more rounding)
Q5_1,Q5_K 5-bit with mins                 int8 per output channel from w (grouped int8 re-rounded per 32 in
                                          block mode; not exact)
F32/F16/  float                           the requested scheme (round to nearest), or int8 in "gguf" mode
BF16
others    Q2_K, Q3_K, IQ*, TQ*, MXFP4...  refused at start: "GGUF tensor X: format Y is not supported ..."
========  ==============================  =======================================================================

A GGUF source whose linears are quantized runs in "gguf" mode by default (quant/model.py,
`default_gguf_scheme`); `"quantization": "none"` keeps the widened float import.
Scales and zeros are stored in the activation dtype (bf16 on CPU), as the kernels take them: the fp16 ``d`` of
a block is rounded once more there (8 instead of 11 mantissa bits).

`quantization: "gguf"` keeps each tensor at its own precision class (4-bit formats -> int4, the rest -> int8);
a fused weight (qkv, gate_up) whose parts differ in class is int8 as a whole (in block mode: grouped int8 blocks
at the finest group among its parts, int4 parts kept exactly with their zeros). With "w4a16" / "w8a16" and a GGUF
source, tensors already in that class map exactly and the others are converted to it from their values.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .quantize import quantize_int4_grouped, quantize_int8_per_channel
from .weight import Int4Weight, Int8Weight, QuantizedWeight

log = logging.getLogger(__name__)

INT4_EXACT = ("Q4_0", "Q4_1", "Q4_K")
TO_INT8 = ("Q8_0", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "F32", "F16", "BF16")
SUPPORTED = INT4_EXACT + TO_INT8


class Parts:
    """One GGUF tensor as either int4 pieces (q [N, K] 0..15, scale/zero [N, K/32], float32) or a float [N, K]."""

    def __init__(self, name, fmt, q=None, scale=None, zero=None, w=None):
        self.name, self.fmt, self.q, self.scale, self.zero, self._w = name, fmt, q, scale, zero, w

    @property
    def is_int4(self) -> bool:
        return self.q is not None

    def float(self) -> torch.Tensor:
        if self._w is None:
            N, K = self.q.shape
            qg = self.q.float().reshape(N, K // 32, 32)
            self._w = ((qg - 8) * self.scale[..., None] + self.zero[..., None]).reshape(N, K)
        return self._w


def _nibbles_q4_0(qs: np.ndarray) -> np.ndarray:
    """[nb, 16] bytes -> [nb, 32]: element j < 16 in the low nibble of byte j, j >= 16 in the high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def tensor_parts(t, fmt: Optional[str] = None) -> Parts:
    """A gguf ReaderTensor -> Parts (rows = output features, HF order before any llama q/k un-permutation)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import Q4_K, dequantize
    fmt = fmt or t.tensor_type.name
    if fmt not in SUPPORTED:
        raise ValueError(f"GGUF tensor {t.name}: format {fmt} is not supported (supported: {', '.join(SUPPORTED)})")
    K = int(t.shape[0])
    N = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    data = np.asarray(t.data)
    if fmt in ("Q4_0", "Q4_1"):
        bs = 18 if fmt == "Q4_0" else 20
        blocks = data.reshape(-1, bs)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)[:, 0]
        if fmt == "Q4_0":
            zero = np.zeros_like(d)
            qs = blocks[:, 2:]
        else:
            m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0]
            zero = m + 8.0 * d
            qs = blocks[:, 4:]
        q = _nibbles_q4_0(qs)
        return Parts(t.name, fmt, torch.from_numpy(q.reshape(N, K).astype(np.uint8)),
                     torch.from_numpy(d.reshape(N, K // 32)), torch.from_numpy(zero.reshape(N, K // 32)))
    if fmt == "Q4_K":
        blocks = data.reshape(-1, 144)
        nb = blocks.shape[0]
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        sc, mn = Q4_K.get_scale_min(blocks[:, 4:16].copy())
        scale = d * sc.astype(np.float32)                      # [nb, 8]
        zero = 8.0 * scale - dmin * mn.astype(np.float32)
        qs = blocks[:, 16:].reshape(nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        q = (qs & 0x0F).reshape(nb, 256)                      # sub-block 2c+h = nibble h of chunk c
        return Parts(t.name, fmt, torch.from_numpy(q.reshape(N, K).astype(np.uint8)),
                     torch.from_numpy(scale.reshape(N, K // 32).copy()),
                     torch.from_numpy(zero.reshape(N, K // 32).copy()))
    if fmt in ("F32", "F16"):
        w = torch.from_numpy(data.astype(np.float32).reshape(N, K))
    else:
        w = torch.from_numpy(dequantize(data, getattr(T, fmt)).astype(np.float32).reshape(N, K))
    return Parts(t.name, fmt, w=w)


BLOCK_EXACT = ("Q8_0", "Q5_0", "Q6_K", "Q4_0", "Q4_1", "Q4_K")


def block_parts(t, fmt: Optional[str] = None):
    """A GGUF tensor in one of BLOCK_EXACT -> (q int8 [N, K], scale float32 [N, K/G], zero float32 or None, G):
    w = q * scale (+ zero) equals the file's own dequantization (the same float32 products)."""
    fmt = fmt or t.tensor_type.name
    K = int(t.shape[0])
    N = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    data = np.asarray(t.data)
    f16 = lambda b: b.copy().view(np.float16).astype(np.float32)          # noqa: E731
    if fmt == "Q8_0":                                       # d fp16, 32 x int8
        b = data.reshape(-1, 34)
        q, d, z, G = b[:, 2:].view(np.int8), f16(b[:, 0:2]), None, 32
    elif fmt == "Q5_0":                                     # d fp16, qh (32 high bits), 16 bytes of low nibbles
        b = data.reshape(-1, 22)
        qh = b[:, 2:6].copy().view(np.uint32)               # [nb, 1]
        hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        q = (_nibbles_q4_0(b[:, 6:]) | (hi << 4)).astype(np.int16) - 16
        d, z, G = f16(b[:, 0:2]), None, 32
    elif fmt == "Q6_K":                                     # ql[128], qh[64], int8 scales[16], d fp16 per 256
        b = data.reshape(-1, 210)
        nb = b.shape[0]
        ql, qh = b[:, :128].reshape(nb, 2, 64), b[:, 128:192].reshape(nb, 2, 32)
        lo = np.concatenate([ql[..., :32] & 0xF, ql[..., 32:] & 0xF, ql[..., :32] >> 4, ql[..., 32:] >> 4], -1)
        hi = np.concatenate([(qh >> s_) & 3 for s_ in (0, 2, 4, 6)], -1)
        q = (lo | (hi << 4)).astype(np.int16).reshape(nb, 256) - 32
        d = f16(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(np.float32)     # [nb, 16], exact
        z, G = None, 16
    elif fmt in ("Q4_0", "Q4_1", "Q4_K"):                   # the int4 split, values kept unsigned with a zero
        p = tensor_parts(t, fmt)
        q = (p.q.numpy().astype(np.int16) - 8)
        d, z, G = p.scale.numpy(), p.zero.numpy(), 32
        return (torch.from_numpy(q.astype(np.int8).reshape(N, K)), torch.from_numpy(d.reshape(N, K // G).copy()),
                torch.from_numpy(z.reshape(N, K // G).copy()), G)
    else:
        raise ValueError(f"GGUF tensor {t.name}: format {fmt} has no exact block form ({', '.join(BLOCK_EXACT)})")
    return (torch.from_numpy(np.ascontiguousarray(q).astype(np.int8).reshape(N, K)),
            torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32).reshape(N, K // G)), z, G)


def _unpermute_llama(p: Parts, n_head: int) -> Parts:
    """llama.cpp's converter interleaves q/k rows for its rope; undo it (rows only, so exact for quantized data)."""
    def fix(x):
        N = x.shape[0]
        hd = N // n_head
        return x.reshape(n_head, hd // 2, 2, *x.shape[1:]).transpose(1, 2).reshape(N, *x.shape[1:]).contiguous()
    if p.is_int4:
        return Parts(p.name, p.fmt, fix(p.q), fix(p.scale), fix(p.zero))
    return Parts(p.name, p.fmt, w=fix(p.float()))


class Blocks:
    """One GGUF tensor in the grouped int8 form (block_parts), or a float one re-rounded to it (group 32)."""

    def __init__(self, name, fmt, q, scale, zero, group):
        self.name, self.fmt, self.q, self.scale, self.zero, self.group = name, fmt, q, scale, zero, group

    @classmethod
    def of(cls, t, fmt=None) -> "Blocks":
        fmt = fmt or t.tensor_type.name
        if fmt in BLOCK_EXACT:
            return cls(t.name, fmt, *block_parts(t, fmt))
        w = tensor_parts(t, fmt).float()                     # F16/F32/BF16, Q5_1, Q5_K: re-rounded per 32
        N, K = w.shape
        wg = w.reshape(N, K // 32, 32)
        s = wg.abs().amax(-1) / 127.0
        q = torch.round(wg / torch.where(s > 0, s, torch.ones_like(s))[..., None]).clamp(-127, 127)
        return cls(t.name, fmt + " (re-rounded)", q.to(torch.int8).reshape(N, K), s, None, 32)

    def rows_permuted(self, fix) -> "Blocks":
        z = None if self.zero is None else fix(self.zero)
        return Blocks(self.name, self.fmt, fix(self.q), fix(self.scale), z, self.group)

    def regrouped(self, group: int) -> "Blocks":
        """The same weights with scales per `group` (a divisor of the current group): exact."""
        if group == self.group:
            return self
        r = self.group // group
        z = None if self.zero is None else self.zero.repeat_interleave(r, 1)
        return Blocks(self.name, self.fmt, self.q, self.scale.repeat_interleave(r, 1), z, group)


def build_block_weight(parts: list[Blocks], dtype, device, keep_dense=False) -> QuantizedWeight:
    """Row-concatenates block parts (qkv, gate_up) into one BlockInt8Weight at the finest group among them."""
    from .block_weight import BlockInt8Weight
    g = min(p.group for p in parts)
    parts = [p.regrouped(g) for p in parts]
    zero = None
    if any(p.zero is not None for p in parts):
        zero = torch.cat([p.zero if p.zero is not None else torch.zeros_like(p.scale) for p in parts])
    qw = BlockInt8Weight(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), zero, g,
                         dtype=dtype, device=device)
    if keep_dense:
        qw.materialize_dense()
    return qw


def build_weight(parts: list[Parts], scheme: str, dtype, device, keep_rows=False, keep_dense=False) -> QuantizedWeight:
    """Row-concatenates GGUF parts (qkv, gate_up) into one QuantizedWeight of `scheme` ("gguf": natural class)."""
    if scheme == "gguf":
        scheme = "w4a16" if all(p.is_int4 for p in parts) else "w8a16"
    if scheme == "w4a16":
        qs, ss, zs = [], [], []
        for p in parts:
            if p.is_int4:
                q, s, z = p.q, p.scale, p.zero
            else:
                q, s, z = quantize_int4_grouped(p.float(), 32, torch.float32)
            qs.append(q)
            ss.append(s.float())
            zs.append(z.float())
        return Int4Weight(torch.cat(qs), torch.cat(ss).to(dtype), torch.cat(zs).to(dtype), 32, dtype=dtype,
                          device=device, keep_rows=keep_rows, keep_dense=keep_dense)
    w = torch.cat([p.float() for p in parts])
    q, s = quantize_int8_per_channel(w, dtype)
    qw = Int8Weight(q, s, dtype=dtype, device=device)
    if keep_dense:
        qw.materialize_dense()
    return qw


def load_gguf_weights(model, gguf_path: Path, scheme: str, keep_dense: bool = False) -> dict:
    """Replaces the model's linears by weights built from the GGUF's own blocks. Returns {format: tensors}."""
    from ..weights import gguf_reader
    r = gguf_reader(Path(gguf_path))
    tensors = {t.name: t for t in r.tensors}
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    permute = arch == "llama"
    counts: dict[str, int] = {}
    bad = sorted({f"{t.name} ({t.tensor_type.name})" for t in r.tensors
                  if len(t.shape) > 1 and t.tensor_type.name not in SUPPORTED})
    if bad:
        raise ValueError(f"GGUF {gguf_path.name}: format {bad[0].split('(')[1][:-1]} is not supported "
                         f"(tensors {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}); supported: "
                         f"{', '.join(SUPPORTED)}")

    dtype, device = model.dtype, model.device
    blocks = scheme == "gguf" and block_kernels_here(device)

    def parts(name, heads=None, comp=None, shard_id=None, rows=None):
        """The tensor's blocks or parts in Hugging Face row order, cut to this rank's part of `comp` (tensor
        parallelism: the layer's own shard_spec, quant/gguf_shard.py)."""
        t = tensors[name]
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        if blocks and t.tensor_type.name not in INT4_EXACT:
            p = Blocks.of(t)
            p = p.rows_permuted(lambda x: _unpermute_rows(x, heads)) if (permute and heads) else p
        else:
            p = tensor_parts(t)
            p = _unpermute_llama(p, heads) if (permute and heads) else p
        if comp is None or model.par.size == 1:
            return p
        from .gguf_shard import shard
        return shard(p, comp.shard_spec("weight", shard_id), rows)

    def build(ps, keep_rows=False):
        if blocks:              # Q4_x too: the block kernel's batched, int8-activation path beats the int4 one
            return build_block_weight([p if isinstance(p, Blocks) else _int4_as_blocks(p) for p in ps], dtype, device,
                                      keep_dense=keep_dense)
        return build_weight(ps, scheme, dtype, device, keep_rows=keep_rows, keep_dense=keep_dense)

    for i, L in enumerate(model.layers):
        b = f"blk.{i}."
        qkv, o = L.self_attn.qkv_proj, L.self_attn.o_proj
        gate_up, down = L.mlp.gate_up_proj, L.mlp.down_proj
        L.qkv = build([parts(b + "attn_q.weight", model.num_heads_total, qkv, "q"),
                       parts(b + "attn_k.weight", model.num_kv_heads_total, qkv, "k"),
                       parts(b + "attn_v.weight", None, qkv, "v")])
        L.o = build([parts(b + "attn_output.weight", None, o)])
        L.gate_up = build([parts(b + "ffn_gate.weight", None, gate_up, 0),
                           parts(b + "ffn_up.weight", None, gate_up, 1)])
        L.down = build([parts(b + "ffn_down.weight", None, down)])
    per = None
    if model.par.size > 1:           # every rank's vocabulary shard has the same rows (the last one zero-padded)
        from ..layers.distributed import ceil_split
        per = ceil_split(model.vocab_size, model.par)[2]
    if model.tied or "output.weight" not in tensors:
        e = build([parts("token_embd.weight", None, model.embed_tokens, None, per)], keep_rows=True)
        model.lm_head = e
        if model.tied:
            model.embed = e
    else:
        model.lm_head = build([parts("output.weight", None, model.head, None, per)])
    return counts


def block_kernels_here(device) -> bool:
    """Whether "gguf" mode keeps Q8_0 / Q5_0 / Q6_K in their exact block form (the own block kernel runs here);
    else they are re-rounded to int8 per output channel."""
    if torch.device(device).type != "cpu":
        return False
    from .. import cpu_kernels
    return cpu_kernels.load() is not None


def _int4_as_blocks(p: Parts) -> Blocks:
    """An int4 part (Q4_x) in a fused weight whose other parts are int8 blocks: exact (value q - 8, its zero)."""
    return Blocks(p.name, p.fmt, (p.q.to(torch.int16) - 8).to(torch.int8), p.scale.float(), p.zero.float(), 32)


def _unpermute_rows(x: torch.Tensor, n_head: int) -> torch.Tensor:
    N = x.shape[0]
    hd = N // n_head
    return x.reshape(n_head, hd // 2, 2, *x.shape[1:]).transpose(1, 2).reshape(N, *x.shape[1:]).contiguous()
