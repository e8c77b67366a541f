"""Quantized weight objects with their own matmul dispatch (CPU, CUDA, NPU kernels; a dequantize reference).

A `QuantizedWeight` stands where a dense ``[out_features, in_features]`` weight would: ``w.linear(x, bias)``
computes ``x @ W.T + bias`` with the backend's weight-only kernel, and ``torch.nn.functional.linear(x, w, b)`` /
``torch.nn.functional.embedding(ids, w)`` work on it too (torch's ``__torch_function__`` protocol for tensor-like
objects), so model code written against a generic ``linear(x, weight)`` needs no change.

Backends (chosen from the device, or forced with ``backend=``):

=========  ====================================================  ===============================================
backend    W8A16 (int8, per output channel)                      W4A16 (int4, grouped scales + zeros)
=========  ====================================================  ===============================================
cpu        own AVX2 kernel ``int8_linear`` (cpu_kernels.py;      own AVX2 kernel ``int4_linear`` (own block
           CPUs without native bf16), float32 math on any x      layout), float32 math on any x dtype
           dtype; else ``aten._weight_int8pack_mm``              else ``aten._weight_int4pack_mm_for_cpu`` after
                                                                 ``_convert_weight_to_int4pack_for_cpu``
                                                                 (N padded to 16, group 32/64/128/256)
cuda       ``aten._weight_int8pack_mm`` when this torch has the  ``aten._weight_int4pack_mm`` (tinygemm, bf16 x
           CUDA kernel, else int8 -> x dtype matmul, scaled       only) after ``_convert_weight_to_int4pack``;
                                                                 other dtypes: dequantize + matmul
npu        ``torch_npu.npu_weight_quant_batchmatmul`` (weight    same op, weight packed by
           passed transposed, per-channel scale)                 ``npu_convert_weight_to_int4pack`` (int32, 8 per
                                                                 word), ``antiquant_group_size`` = group size,
                                                                 offset = zero / scale
reference  dequantize, then ``F.linear``                         dequantize, then ``F.linear``
=========  ====================================================  ===============================================

torch's CPU int8 kernel reads out of bounds (wrong results or SIGSEGV) outside the shapes and alignments its
vectorized path steps through (bfloat16 activations: K % 16 on AVX512 CPUs, K % 8 on AVX2; torch_cpu_limits.py):
such weights are never given to it. They take the own kernel when it runs here, else dequantize + matmul; decided
when the weight is built and logged once per reason.

Why own CPU kernels: torch's int8/int4 CPU kernels have no fast path for small batches (measured on an AVX2 EPYC:
2.5 ms per Qwen2.5-0.5B layer at batch 1 for either, and they take bf16 activations only, so a float32 model casts
around every matmul). `cpu_kernels.wanted("quant")` decides (AVX2+FMA, MINDIE_LIKE_CPU_KERNELS not 0); the kernel
name is in `QuantizedWeight.kernel`.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from ...engine.types import QUANT_SCHEME_ALIASES

from .quantize import (check_group_size, dequantize_int4, dequantize_int8, pack_nibbles, quantize_int4_grouped,
                       quantize_int8_per_channel, unpack_nibbles)
from .torch_cpu_limits import int8pack_limits, int8pack_refusal

log = logging.getLogger(__name__)

SCHEMES = ("w8a16", "w4a16")
BACKENDS = ("cpu", "cuda", "npu", "reference")


def _npu():
    import torch_npu  # guarded by the caller: only reached on the npu backend
    return torch_npu


def backend_for(device: torch.device) -> str:
    t = torch.device(device).type
    if t in ("cpu", "cuda", "npu"):
        return t
    return "reference"


def native_cpu_kernels():
    """The own AVX2 int8/int4 kernels (cpu_kernels.py) where they are wanted and built, else None."""
    from .. import cpu_kernels
    return cpu_kernels.load() if cpu_kernels.wanted("quant") else None


_LOGGED: set = set()


def _log_once(msg: str, *args) -> None:
    key = msg % args
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info(msg, *args)


def _aligned(t: torch.Tensor, align: int) -> torch.Tensor:
    """`t` (contiguous) starting on an `align`-byte boundary: a copy when its storage offset puts it off one."""
    return t if t.data_ptr() % align == 0 else t.clone()


NATIVE_INT8 = "mindie_like int8_linear (AVX2)"
NATIVE_INT4 = "mindie_like int4_linear (AVX2)"
ACT_BITS = (8, 16)      # the own int4 kernel's activation fixed point (csrc/quant_gemm.cpp, quantize_x)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


_CUDA_INT8_OK: dict = {}


def _cuda_has_int8pack(device: torch.device) -> bool:
    key = str(device)
    if key not in _CUDA_INT8_OK:
        try:
            x = torch.ones(1, 32, dtype=torch.bfloat16, device=device)
            w = torch.ones(8, 32, dtype=torch.int8, device=device)
            s = torch.ones(8, dtype=torch.bfloat16, device=device)
            ok = bool(torch.ops.aten._weight_int8pack_mm(x, w, s).float().sum().item() == 256.0)
        except Exception as e:  # NotImplementedError: no CUDA kernel in this torch build
            log.info("no CUDA _weight_int8pack_mm in this torch (%s); W8A16 uses int8->bf16 matmul", type(e).__name__)
            ok = False
        _CUDA_INT8_OK[key] = ok
    return _CUDA_INT8_OK[key]


class QuantizedWeight:
    """Base: shape bookkeeping, per-step dense/quant choice, torch function protocol."""

    scheme: str = ""
    kernel: str = ""            # the matmul actually used (for logs and tests)
    is_quantized_weight = True  # duck-typed marker for op tables that must not treat this as a tensor

    def __init__(self, out_features: int, in_features: int, dtype: torch.dtype, device, backend: Optional[str]):
        self.out_features, self.in_features = int(out_features), int(in_features)
        self.dtype = dtype
        self.device = torch.device(device)
        self.backend = backend or backend_for(self.device)
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown quantization backend {self.backend!r} ({BACKENDS})")
        self.dense: Optional[torch.Tensor] = None   # bf16 copy for large batches (per-step choice)
        self.policy = None                           # QuantPolicy deciding quant vs dense per call
        self._native = None                          # own CPU kernel: takes x in any float dtype, adds the bias

    # ---- shape / accounting, so code that inspects weights keeps working ---------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.out_features, self.in_features))

    def size(self, dim: Optional[int] = None):
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """Bytes this weight reads per matmul on the quantized path (packed values + scales/zeros)."""
        raise NotImplementedError

    @property
    def storage_bytes(self) -> int:
        """Memory held (quantized data, scales, row copy, dense copy)."""
        return self.nbytes + (self.dense.numel() * self.dense.element_size() if self.dense is not None else 0)

    def numel(self) -> int:          # with element_size() == 1: numel() * element_size() == nbytes
        return self.nbytes

    def element_size(self) -> int:
        return 1

    def data_ptr(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.out_features}x{self.in_features}, {self.scheme}, backend={self.backend}, "
                f"kernel={self.kernel}, dtype={str(self.dtype).replace('torch.', '')}"
                f"{', dense copy' if self.dense is not None else ''})")

    # ---- matmul ------------------------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [..., K] -> x @ W.T + bias; dense copy when the policy says this many rows run faster in bf16."""
        if self.dense is not None and self.policy is not None and self.policy.choose(x.numel() // x.shape[-1]) == "dense":
            return self.dense_linear(x, bias)
        return self.quant_linear(x, bias)

    def dense_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Through the dense copy; a float32 copy (CPUs without native bf16 matmul) casts in and out."""
        d = self.dense
        if d.dtype == x.dtype:
            return F.linear(x, d, bias)
        y = F.linear(x.to(d.dtype), d, None if bias is None else bias.to(d.dtype))
        return y.to(x.dtype)

    def quant_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Through the quantized kernel, in the weight's compute dtype; the result comes back in x's dtype (float32
        activations on bf16 weights: cast in and out)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self._native is not None:                 # float32 math on x as it comes, bias added in the kernel
            return self._native(x2, bias).reshape(*lead, self.out_features)
        if x2.dtype != self.dtype:
            x2 = x2.to(self.dtype)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = self._mm(x2)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        if bias is not None:
            y = y + bias
        return y.reshape(*lead, self.out_features)

    def reference_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Dequantize then matmul in float32 (the reference of the tests)."""
        y = F.linear(x.float(), self.dequantize(torch.float32).to(x.device))
        if bias is not None:
            y = y + bias.float()
        return y

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        raise NotImplementedError

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` dequantized (embedding lookup on a quantized, possibly tied, table)."""
        raise NotImplementedError

    def materialize_dense(self) -> torch.Tensor:
        """Keeps a dequantized copy in the compute dtype for the large-batch path."""
        if self.dense is None:
            self.dense = self.dequantize(self.dtype).contiguous()
        return self.dense

    def drop_dense(self) -> None:
        self.dense = None

    # ---- torch function protocol -------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (F.linear, torch._C._nn.linear):
            x, w = args[0], args[1]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if isinstance(w, QuantizedWeight) and not isinstance(x, QuantizedWeight):
                return w.linear(x, b)
        if func is F.embedding:
            ids, w = args[0], args[1]
            if isinstance(w, QuantizedWeight) and len(args) <= 2 and not any(
                    kwargs.get(k) not in (None, False, 2.0) for k in ("padding_idx", "max_norm", "scale_grad_by_freq",
                                                                       "sparse")):
                return w.embedding(ids)
        raise TypeError(f"{cls.__name__} supports only torch.nn.functional.linear and embedding (got {func})")


class Int8Weight(QuantizedWeight):
    """W8A16: int8 values [N, K], one scale per output channel: w = (q - offset[n]) * scale[n].

    `offset` (optional, per channel; pre-quantized msmodelslim W8A16 checkpoints with asymmetric weights) is exact
    on every backend: the NPU op takes it as its `antiquant_offset` (negated: it computes (w + offset) * scale), the
    other kernels compute the symmetric product and subtract ``sum(x) * scale * offset`` in float32."""

    scheme = "w8a16"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16,
                 device="cpu", backend: Optional[str] = None, offset: Optional[torch.Tensor] = None):
        if q.dtype != torch.int8 or q.dim() != 2:
            raise ValueError(f"int8 weight must be int8 [N, K], got {q.dtype} {tuple(q.shape)}")
        if scale.shape != (q.shape[0],):
            raise ValueError(f"int8 scale must be [N]={q.shape[0]}, got {tuple(scale.shape)}")
        if offset is not None and offset.shape != (q.shape[0],):
            raise ValueError(f"int8 offset must be [N]={q.shape[0]}, got {tuple(offset.shape)}")
        super().__init__(q.shape[0], q.shape[1], dtype, device, backend)
        self.q = q.to(self.device).contiguous()
        self.scale = scale.to(device=self.device, dtype=dtype).contiguous()
        has_offset = offset is not None and bool(offset.ne(0).any())
        self.offset = offset.to(device=self.device, dtype=dtype).contiguous() if has_offset else None
        # scale * offset in float32: the term the symmetric kernels' result is corrected by
        self._zero_term = (self.scale.float() * self.offset.float()) if has_offset else None
        b, K = self.backend, self.in_features
        mod = native_cpu_kernels() if b == "cpu" else None
        if mod is not None:
            self.kernel = NATIVE_INT8
            scale32 = self.scale.float().contiguous()
            self._native = lambda x, bias: mod.int8_linear(x, self.q, scale32, bias)
        elif b == "cpu":
            refusal = int8pack_refusal(dtype, K)
            if refusal:
                self.kernel = "dequant-matmul (torch's int8 kernel refuses this shape)"
                _log_once("W8A16 %s weights with K=%d: dequantize + matmul, not aten._weight_int8pack_mm (%s)",
                          str(dtype).replace("torch.", ""), K, refusal)
            else:
                self.kernel = "aten._weight_int8pack_mm"
                self._x_align = int8pack_limits(dtype)[1]
                self.q = _aligned(self.q, 64)
        elif b == "cuda":
            self.kernel = "aten._weight_int8pack_mm" if _cuda_has_int8pack(self.device) else "int8->x-dtype matmul"
        elif b == "npu":
            if dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(f"npu_weight_quant_batchmatmul takes float16/bfloat16 activations, not {dtype}")
            self.kernel = "torch_npu.npu_weight_quant_batchmatmul"
        else:
            self.kernel = "dequant-matmul"

    @classmethod
    def from_float(cls, w: torch.Tensor, *, dtype: Optional[torch.dtype] = None, device=None,
                   backend: Optional[str] = None) -> "Int8Weight":
        dtype = dtype or (w.dtype if w.is_floating_point() else torch.bfloat16)
        q, s = quantize_int8_per_channel(w, dtype)
        return cls(q, s, dtype=dtype, device=device if device is not None else w.device, backend=backend)

    @property
    def nbytes(self) -> int:
        n = self.q.numel() + self.scale.numel() * self.scale.element_size()
        return n + (self.offset.numel() * self.offset.element_size() if self.offset is not None else 0)

    def quant_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = super().quant_linear(x, bias)
        if self._zero_term is None or self.kernel == "torch_npu.npu_weight_quant_batchmatmul" or \
                self.kernel.startswith("dequant-matmul"):        # those already apply the offset
            return y
        return (y.float() - x.float().sum(-1, keepdim=True) * self._zero_term).to(y.dtype)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel
        if self._native is not None:
            return self._native(x, None)
        if k == "aten._weight_int8pack_mm":
            if self.backend == "cpu":
                x = _aligned(x, self._x_align)
            return torch.ops.aten._weight_int8pack_mm(x, self.q, self.scale)
        if k == "torch_npu.npu_weight_quant_batchmatmul":
            if self.offset is not None:
                return _npu().npu_weight_quant_batchmatmul(x, self.q.t(), self.scale, antiquant_offset=-self.offset)
            return _npu().npu_weight_quant_batchmatmul(x, self.q.t(), self.scale)
        if k == "int8->x-dtype matmul":
            return F.linear(x, self.q.to(x.dtype)) * self.scale
        return F.linear(x, self.dequantize(x.dtype))

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        if self.offset is None:
            return dequantize_int8(self.q, self.scale, dtype or self.dtype)
        w = (self.q.float() - self.offset.float()[:, None]) * self.scale.float()[:, None]
        return w.to(dtype or self.dtype)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self.q.index_select(0, flat).to(self.dtype)
        if self.offset is not None:
            rows = rows - self.offset.index_select(0, flat)[:, None]
        return (rows * self.scale.index_select(0, flat)[:, None]).reshape(*ids.shape, self.in_features)


class Int4Weight(QuantizedWeight):
    """W4A16: int4 values (0..15) [N, K], grouped along K: w = (q - 8) * scale[n, g] + zero[n, g]."""

    scheme = "w4a16"

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int, *,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", backend: Optional[str] = None,
                 keep_rows: bool = False, keep_dense: bool = False, act_bits: int = 16):
        """`q`: [N, K] uint8 values 0..15 (unpacked). `keep_rows`: also keep the plain nibble-packed rows (needed
        for embedding lookups and a cheap dequantize; costs K/2 bytes per row more). `keep_dense`: build the dense
        copy for the large-batch path now, from the unpacked values (cheaper than dequantizing packed data)."""
        if q.dim() != 2:
            raise ValueError(f"int4 weight must be [N, K], got {tuple(q.shape)}")
        N, K = q.shape
        check_group_size(K, group_size)
        G = K // group_size
        if scale.shape != (N, G) or zero.shape != (N, G):
            raise ValueError(f"int4 scale/zero must be [N, K/group]=({N}, {G}), got {tuple(scale.shape)}, "
                             f"{tuple(zero.shape)}")
        super().__init__(N, K, dtype, device, backend)
        self.group_size = group_size
        if act_bits not in ACT_BITS:
            raise ValueError(f"int4 act_bits must be one of {ACT_BITS}, got {act_bits!r}")
        # own CPU kernel: the activations' fixed point. 16 (the default here: ~exact) or 8 (faster; what serving uses
        # unless told otherwise: quant_act_bits in quant/model.py)
        self.act_bits = act_bits
        dev = self.device
        self.scale = scale.to(dtype)
        self.zero = zero.to(dtype)
        self.rows: Optional[torch.Tensor] = pack_nibbles(q).to(dev) if keep_rows else None
        self._row_scale = self.scale.to(dev).contiguous() if keep_rows else None
        self._row_zero = self.zero.to(dev).contiguous() if keep_rows else None
        if keep_dense:
            self.dense = dequantize_int4(q, self.scale, self.zero, group_size, dtype).to(dev).contiguous()
        b = self.backend
        mod = native_cpu_kernels() if b == "cpu" else None
        if mod is not None:
            from ..cpu_kernels import pack_int4_blocks
            self.packed = pack_int4_blocks(q).to(dev)
            # [2, N, G] planes of the scales and zeros as stored: bf16 scales stay bf16 (4 bytes per group, not 8),
            # others go to float32 (exact for fp16 too); the kernel forms the offsets z - 8 s in float32
            plane_dtype = torch.bfloat16 if self.scale.dtype == torch.bfloat16 else torch.float32
            self.sz = torch.stack((self.scale, self.zero)).to(device=dev, dtype=plane_dtype).contiguous()
            self.kernel = NATIVE_INT4
            self._native = lambda x, bias: mod.int4_linear(x, self.packed, self.sz, group_size, bias,
                                                           self.act_bits)
        elif b == "cpu":
            Np = _round_up(N, 16)             # _convert_weight_to_int4pack_for_cpu: N % 16 == 0
            qp, sp, zp = self._pad_n(q, Np)
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qp.to(torch.int32).contiguous(), 1)
            self.packed = self.packed.to(dev)
            self.sz = torch.stack((sp.t(), zp.t()), dim=-1).to(device=dev, dtype=dtype).contiguous()  # [G, Np, 2]
            self.kernel = "aten._weight_int4pack_mm_for_cpu"
        elif b == "cuda" and dtype == torch.bfloat16:
            Np = _round_up(N, 8)
            qp, sp, zp = self._pad_n(q, Np)
            tiles = 8 if K % 128 == 0 else (4 if K % 64 == 0 else 2)
            hi_first = ((qp[:, 0::2] << 4) | qp[:, 1::2]).to(torch.uint8).contiguous()   # tinygemm's byte order
            self.packed = torch.ops.aten._convert_weight_to_int4pack(hi_first.to(dev), tiles)
            self.sz = torch.stack((sp.t(), zp.t()), dim=-1).to(device=dev, dtype=dtype).contiguous()
            self.kernel = "aten._weight_int4pack_mm"
        elif b == "npu":
            if dtype not in (torch.float16, torch.bfloat16):
                raise ValueError(f"npu_weight_quant_batchmatmul takes float16/bfloat16 activations, not {dtype}")
            Np = _round_up(N, 8)              # npu_convert_weight_to_int4pack: last dim % 8 == 0
            qp, sp, zp = self._pad_n(q, Np)
            signed_kn = (qp.to(torch.int32) - 8).t().contiguous().to(dev)          # [K, Np] in [-8, 7]
            self.packed = _npu().npu_convert_weight_to_int4pack(signed_kn)          # [K, Np/8] int32
            sp = sp.float()
            self.npu_scale = sp.t().to(device=dev, dtype=dtype).contiguous()       # [G, Np]
            self.npu_offset = (zp.float() / sp).t().to(device=dev, dtype=dtype).contiguous()
            self.kernel = "torch_npu.npu_weight_quant_batchmatmul"
        else:
            self.packed = pack_nibbles(q).to(dev) if self.rows is None else self.rows
            self.kernel = "dequant-matmul"

    def _pad_n(self, q: torch.Tensor, Np: int):
        N = q.shape[0]
        s, z = self.scale, self.zero
        if Np == N:
            return q.to(torch.uint8), s, z
        pad = Np - N
        q = torch.cat((q.to(torch.uint8), torch.full((pad, q.shape[1]), 8, dtype=torch.uint8)), 0)
        s = torch.cat((s, torch.ones(pad, s.shape[1], dtype=s.dtype)), 0)
        z = torch.cat((z, torch.zeros(pad, z.shape[1], dtype=z.dtype)), 0)
        return q, s, z

    @classmethod
    def from_float(cls, w: torch.Tensor, group_size: int = 32, *, dtype: Optional[torch.dtype] = None, device=None,
                   backend: Optional[str] = None, keep_rows: bool = False, keep_dense: bool = False) -> "Int4Weight":
        dtype = dtype or (w.dtype if w.is_floating_point() else torch.bfloat16)
        q, s, z = quantize_int4_grouped(w.cpu(), group_size, dtype)
        return cls(q, s, z, group_size, dtype=dtype, device=device if device is not None else w.device,
                   backend=backend, keep_rows=keep_rows, keep_dense=keep_dense)

    @property
    def nbytes(self) -> int:
        """Bytes a matmul reads (packed values + scales/zeros); the row copy for lookups is not read per step."""
        params = (self.sz,) if hasattr(self, "sz") else \
            (self.npu_scale, self.npu_offset) if hasattr(self, "npu_scale") else (self.scale, self.zero)
        return sum(t.numel() * t.element_size() for t in (self.packed,) + params)

    @property
    def storage_bytes(self) -> int:
        n = self.nbytes
        if self.rows is not None and self.rows is not self.packed:
            n += self.rows.numel() + 2 * self._row_scale.numel() * self._row_scale.element_size()
        return n + (self.dense.numel() * self.dense.element_size() if self.dense is not None else 0)

    def _mm(self, x: torch.Tensor) -> torch.Tensor:
        k, N = self.kernel, self.out_features
        if self._native is not None:
            return self._native(x, None)
        if k == "aten._weight_int4pack_mm_for_cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group_size, self.sz)
        elif k == "aten._weight_int4pack_mm":
            y = torch.ops.aten._weight_int4pack_mm(x, self.packed, self.group_size, self.sz)
        elif k == "torch_npu.npu_weight_quant_batchmatmul":
            y = _npu().npu_weight_quant_batchmatmul(x, self.packed, self.npu_scale, self.npu_offset,
                                                    antiquant_group_size=self.group_size)
        else:
            return F.linear(x, self.dequantize(x.dtype))
        return y if y.shape[-1] == N else y[:, :N].contiguous()

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if self.kernel == NATIVE_INT4:
            from ..cpu_kernels import unpack_int4_blocks
            return dequantize_int4(unpack_int4_blocks(self.packed), self.scale.to(self.device),
                                   self.zero.to(self.device), self.group_size, dtype)
        if self.rows is not None or self.kernel == "dequant-matmul":
            src = self.rows if self.rows is not None else self.packed
            return dequantize_int4(unpack_nibbles(src), self.scale.to(src.device), self.zero.to(src.device),
                                   self.group_size, dtype)
        # no plain copy kept: run the kernel on the identity (exact: one product per output element)
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.device)
        return self._mm(eye).t().contiguous().to(dtype)

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            raise RuntimeError("embedding lookup on an int4 weight built without keep_rows=True")
        flat = ids.reshape(-1)
        q = unpack_nibbles(self.rows.index_select(0, flat))
        s = self._row_scale.index_select(0, flat)
        z = self._row_zero.index_select(0, flat)
        out = dequantize_int4(q, s, z, self.group_size, self.dtype)
        return out.reshape(*ids.shape, self.in_features)


class InputPermutedWeight(QuantizedWeight):
    """A quantized weight stored with its input channels permuted: ``W[:, perm]`` is `inner`, so
    ``x @ W.T == x[..., perm] @ inner.T``. GPTQ's act-order (``desc_act``) checkpoints group input channels by a
    permutation (``g_idx``); sorting the channels by group makes the groups contiguous, as the int4 kernels need,
    and gathering x (K values per row, before each matmul) keeps the result exact."""

    def __init__(self, inner: QuantizedWeight, perm: torch.Tensor):
        self.inner = inner              # before the base init: `dense` and `policy` are the inner weight's
        dense, policy = inner.dense, inner.policy
        super().__init__(inner.out_features, inner.in_features, inner.dtype, inner.device, inner.backend)
        inner.dense, inner.policy = dense, policy       # the base init reset them through the properties
        if perm.shape != (inner.in_features,):
            raise ValueError(f"input permutation must be [K]={inner.in_features}, got {tuple(perm.shape)}")
        self.perm = perm.to(device=self.device, dtype=torch.long).contiguous()
        self.inverse = torch.argsort(self.perm)
        self.scheme = inner.scheme
        self.kernel = inner.kernel + " (input channels permuted)"

    @property
    def dense(self):
        return self.inner.dense

    @dense.setter
    def dense(self, value):
        self.inner.dense = value

    @property
    def policy(self):
        return self.inner.policy

    @policy.setter
    def policy(self, value):
        self.inner.policy = value

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + self.perm.numel() * self.perm.element_size()

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.inner.linear(x.index_select(-1, self.perm), bias)

    def quant_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.inner.quant_linear(x.index_select(-1, self.perm), bias)

    def dense_linear(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.inner.dense_linear(x.index_select(-1, self.perm), bias)

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return self.inner.dequantize(dtype).index_select(1, self.inverse)

    def materialize_dense(self) -> torch.Tensor:
        return self.inner.materialize_dense()

    def drop_dense(self) -> None:
        self.inner.drop_dense()


def quantize_linear_weight(weight: torch.Tensor, scheme: str, group_size: int = 32, *,
                           dtype: Optional[torch.dtype] = None, device=None, backend: Optional[str] = None,
                           keep_rows: bool = False, keep_dense: bool = False) -> QuantizedWeight:
    """A float weight [N, K] -> its W8A16 / W4A16 `QuantizedWeight` (round-to-nearest, per channel / per group).
    `keep_dense`: also keep the dequantized copy for the large-batch path (see policy.py)."""
    scheme = normalize_scheme(scheme)
    if scheme == "w8a16":
        qw = Int8Weight.from_float(weight, dtype=dtype, device=device, backend=backend)
        if keep_dense:
            qw.materialize_dense()
        return qw
    return Int4Weight.from_float(weight, group_size, dtype=dtype, device=device, backend=backend,
                                 keep_rows=keep_rows, keep_dense=keep_dense)


_ALIASES = {k: v for k, v in QUANT_SCHEME_ALIASES.items() if v != "gguf"}


def normalize_scheme(scheme: str) -> str:
    s = str(scheme or "").lower().strip()
    if s not in _ALIASES:
        raise ValueError(f"quantization {scheme!r} not supported (w8a16 or w4a16)")
    return _ALIASES[s]
