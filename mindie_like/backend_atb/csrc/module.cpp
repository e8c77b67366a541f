// The CPU kernels' Python module (one extension, built once by cpu_kernels.load()). One translation unit: the
// kernel files are included here, so torch's heavy headers are compiled once (a build of four separate units
// took 2-4 minutes on the shared 2-core host).
#include <torch/extension.h>

#include "bf16_gemv.cpp"
#include "norm.cpp"
#include "quant_gemm.cpp"
#include "decode_attn.cpp"
#include "decode_step.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_linear", &bf16_linear, "small-batch bf16-weight GEMV (AVX2+FMA)");
  m.def("int8_linear", &int8_linear, "int8 per-channel weight x float activations (AVX2+FMA)");
  m.def("int4_linear", &int4_linear, "int4 grouped weight x 8/16-bit fixed-point activations (AVX2+FMA)");
  m.def("rms_norm_f32", &rms_norm_f32, "RMSNorm of float32 rows (AVX2+FMA)");
  m.def("add_rms_norm_f32", &add_rms_norm_f32, "(RMSNorm(x + residual), x + residual) of float32 rows");
  m.def("rope_attention_decode_f32", &rope_attention_decode_f32,
        "decode step: rope, KV cache write and paged attention of one query row per sequence (float32)");
  register_decode_step(m);
  m.def("silu_mul_f32", &silu_mul_f32, "silu(gate) * up of float32 rows [T, 2I] -> [T, I]");
}
