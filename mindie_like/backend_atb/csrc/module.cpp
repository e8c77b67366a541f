// The CPU kernels' Python module (one extension, built once by cpu_kernels.load()). One translation unit: the
// kernel files are included here, so torch's heavy headers are compiled once (a build of four separate units
// took 2-4 minutes on the shared 2-core host).
//
// Built without instruction-set flags (-march / -mavx2): every header is included first, for baseline x86-64;
// the AVX2 kernels below are compiled under a target pragma and only called where the CPU has AVX2 + FMA
// (cpu_kernels.wanted); block_gemm.cpp carries one target attribute per implementation and picks at run time.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "block_gemm.cpp"
#include "block_panels.cpp"
#include "bf16_dot.cpp"          // one target attribute per implementation, picked at run time

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include "bf16_gemv.cpp"
#include "norm.cpp"
#include "quant_gemm.cpp"
#include "decode_attn.cpp"
#pragma GCC pop_options
#include "decode_step.cpp"      // baseline code: ATen ops, and the kernels above only where the op table uses them

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_linear", &bf16_linear, "small-batch bf16-weight GEMV (AVX2+FMA)");
  m.def("int8_linear", &int8_linear, "int8 per-channel weight x float activations (AVX2+FMA)");
  m.def("int4_linear", &int4_linear, "int4 grouped weight x 8/16-bit fixed-point activations (AVX2+FMA)");
  m.def("rms_norm_f32", &rms_norm_f32, "RMSNorm of float32 rows (AVX2+FMA)");
  m.def("add_rms_norm_f32", &add_rms_norm_f32, "(RMSNorm(x + residual), x + residual) of float32 rows");
  m.def("rope_attention_decode_f32", &rope_attention_decode_f32,
        "decode step: rope, KV cache write and paged attention of one query row per sequence (float32)");
  m.def("rope_attention_decode_bf16", &rope_attention_decode_bf16,
        "the same for bf16 activations and KV cache (float32 math, results rounded to bf16 once)");
  register_decode_step(m);
  m.def("silu_mul_f32", &silu_mul_f32, "silu(gate) * up of float32 rows [T, 2I] -> [T, I]");
  m.def("cpu_isa", &blocks::cpu_isa, "the widest block-kernel instruction set this CPU runs (0 portable, 1 AVX2, "
        "2 AVX512, 3 AVX512-VNNI)");
  m.def("cpu_bf16_isa", &bf16dot::cpu_isa, "the bf16 dot-product kernels' instruction set on this CPU (0 portable, "
        "1 AVX512-BF16)");
  m.def("bf16_dot_linear", &bf16_dot_linear,
        "bf16 weights x bf16-rounded activations, float32 accumulation (AVX512-BF16 vdpbf16ps or portable)");
  m.def("block_pack", &block_pack, "signed int8 block values -> the packed bits-wide block layout");
  m.def("block_unpack", &block_unpack, "packed block rows -> signed int8 values");
  m.def("block_pack_panels", &block_pack_panels, "signed int8 block values -> 16-row VNNI panels");
  m.def("block_unpack_panels", &block_unpack_panels, "16-row VNNI panels -> signed int8 values of the rows asked");
  m.def("block_linear_panels", &block_linear_panels,
        "16-row block panels x int8-quantized activations, AVX512-VNNI (one vpdpbusd: 16 outputs' partial dots)");
  m.def("block_linear", &block_linear,
        "packed block weights (s * q + z per group of 16/32) x int8-quantized or float activations, per ISA");
}
