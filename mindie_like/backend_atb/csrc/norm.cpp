// RMSNorm for float32 rows (AVX2 + FMA): y = x * rsqrt(mean(x^2) + eps) * w, optionally after residual = x + r.
// Why: at decode a row is one hidden vector (896 floats for Qwen2.5-0.5B) and torch's rms_norm runs several
// dispatched kernels per call; it was ~10% of a quantized decode step on the AVX2 hosts (py-spy), this is one
// pass over the row.
#include <torch/extension.h>
#include <immintrin.h>
#include "avx2_util.h"
#include <cmath>

namespace {

// out[i] = x[i] * inv * w[i] for one row of H floats; returns nothing. ss: sum of squares of x.
inline void scale_row(const float* x, const float* w, float* out, int64_t H, float inv) {
  const __m256 vi = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= H; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi), _mm256_loadu_ps(w + i)));
  for (; i < H; ++i) out[i] = x[i] * inv * w[i];
}

inline float sum_sq(const float* x, int64_t H) {
  __m256 a = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= H; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    a = _mm256_fmadd_ps(v, v, a);
  }
  float s = hsum256(a);
  for (; i < H; ++i) s += x[i] * x[i];
  return s;
}

void check(const torch::Tensor& x, const torch::Tensor& w) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(), "x: contiguous float32 [T, H]");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.dim() == 1 && w.is_contiguous() && w.size(0) == x.size(1),
              "w: contiguous float32 [H]");
}

}  // namespace

torch::Tensor rms_norm_f32(torch::Tensor x, torch::Tensor w, double eps) {
  check(x, w);
  const int64_t T = x.size(0), H = x.size(1);
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = xp + t * H;
    scale_row(xr, wp, yp + t * H, H, 1.0f / std::sqrt(sum_sq(xr, H) / float(H) + float(eps)));
  }
  return y;
}

// (rms_norm(x + residual), x + residual)
std::tuple<torch::Tensor, torch::Tensor> add_rms_norm_f32(torch::Tensor x, torch::Tensor residual, torch::Tensor w,
                                                          double eps) {
  check(x, w);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == at::kFloat && residual.is_contiguous(),
              "residual: contiguous float32, the shape of x");
  const int64_t T = x.size(0), H = x.size(1);
  auto sum = torch::empty_like(x);
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* sp = sum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* sr = sp + t * H;
    int64_t i = 0;
    for (; i + 8 <= H; i += 8)
      _mm256_storeu_ps(sr + i, _mm256_add_ps(_mm256_loadu_ps(xp + t * H + i), _mm256_loadu_ps(rp + t * H + i)));
    for (; i < H; ++i) sr[i] = xp[t * H + i] + rp[t * H + i];
    scale_row(sr, wp, yp + t * H, H, 1.0f / std::sqrt(sum_sq(sr, H) / float(H) + float(eps)));
  }
  return {y, sum};
}
