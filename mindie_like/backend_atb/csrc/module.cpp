// The CPU kernels' Python module (one extension, built once by cpu_kernels.load()).
#include <torch/extension.h>

torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias);
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias);
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor sb, int64_t group,
                          c10::optional<torch::Tensor> bias);
torch::Tensor rms_norm_f32(torch::Tensor x, torch::Tensor w, double eps);
std::tuple<torch::Tensor, torch::Tensor> add_rms_norm_f32(torch::Tensor x, torch::Tensor residual, torch::Tensor w,
                                                          double eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bf16_linear", &bf16_linear, "small-batch bf16-weight GEMV (AVX2+FMA)");
  m.def("int8_linear", &int8_linear, "int8 per-channel weight x float activations (AVX2+FMA)");
  m.def("int4_linear", &int4_linear, "int4 grouped weight x float activations (AVX2+FMA)");
  m.def("rms_norm_f32", &rms_norm_f32, "RMSNorm of float32 rows (AVX2+FMA)");
  m.def("add_rms_norm_f32", &add_rms_norm_f32, "(RMSNorm(x + residual), x + residual) of float32 rows");
}
