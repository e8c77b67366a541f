// Small-batch bf16 weight x fp32-converted activations GEMM for CPUs without native bf16 (AVX2 + FMA).
// y[m, n] = sum_k x[m, k] * W[n, k] (+ b[n]); W bf16 [N, K] row-major, x bf16/fp32 [M, K], M <= 8.
// Memory bound at batch 1: streams W once, converting bf16 -> fp32 with a 16-bit shift.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "avx2_util.h"

static inline __m256 load_bf16x8(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int M>
static void kernel(const float* x, const uint16_t* w, const float* bias, float* y, int64_t N, int64_t K,
                   int64_t n0, int64_t n1) {
  const int64_t K8 = K & ~int64_t(7);
  int64_t n = n0;
  for (; n + 1 < n1; n += 2) {            // two weight rows per pass: each x load feeds 2*M FMAs
    const uint16_t* w0 = w + n * K;
    const uint16_t* w1 = w0 + K;
    __m256 acc0[M], acc1[M];
    for (int m = 0; m < M; ++m) { acc0[m] = _mm256_setzero_ps(); acc1[m] = _mm256_setzero_ps(); }
    for (int64_t k = 0; k < K8; k += 8) {
      __m256 a = load_bf16x8(w0 + k), b = load_bf16x8(w1 + k);
      for (int m = 0; m < M; ++m) {
        __m256 xv = _mm256_loadu_ps(x + m * K + k);
        acc0[m] = _mm256_fmadd_ps(a, xv, acc0[m]);
        acc1[m] = _mm256_fmadd_ps(b, xv, acc1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s0 = hsum256(acc0[m]), s1 = hsum256(acc1[m]);
      for (int64_t k = K8; k < K; ++k) {
        uint32_t u0 = uint32_t(w0[k]) << 16, u1 = uint32_t(w1[k]) << 16;
        float f0, f1;
        std::memcpy(&f0, &u0, 4);
        std::memcpy(&f1, &u1, 4);
        s0 += f0 * x[m * K + k];
        s1 += f1 * x[m * K + k];
      }
      if (bias) { s0 += bias[n]; s1 += bias[n + 1]; }
      y[m * N + n] = s0;
      y[m * N + n + 1] = s1;
    }
  }
  for (; n < n1; ++n) {
    const uint16_t* w0 = w + n * K;
    for (int m = 0; m < M; ++m) {
      __m256 acc = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8)
        acc = _mm256_fmadd_ps(load_bf16x8(w0 + k), _mm256_loadu_ps(x + m * K + k), acc);
      float s = hsum256(acc);
      for (int64_t k = K8; k < K; ++k) {
        uint32_t u = uint32_t(w0[k]) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        s += f * x[m * K + k];
      }
      if (bias) s += bias[n];
      y[m * N + n] = s;
    }
  }
}

// x: [M, K] (any float dtype), w: [N, K] bf16 contiguous, bias: [N] or empty. Returns [M, N] in x's dtype.
torch::Tensor bf16_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.dim() == 2, "w: contiguous bf16 [N, K]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.size(1), "x: [M, K]");
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(M >= 1 && M <= 8, "M must be 1..8");
  auto xf = x.to(at::kFloat).contiguous();
  torch::Tensor bf;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) { bf = bias->to(at::kFloat).contiguous(); bp = bf.data_ptr<float>(); }
  auto y = torch::empty({M, N}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(16, (int64_t)(16384 / std::max<int64_t>(K, 1)));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    switch (M) {
      case 1: kernel<1>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 2: kernel<2>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 3: kernel<3>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 4: kernel<4>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 5: kernel<5>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 6: kernel<6>(xp, wp, bp, yp, N, K, n0, n1); break;
      case 7: kernel<7>(xp, wp, bp, yp, N, K, n0, n1); break;
      default: kernel<8>(xp, wp, bp, yp, N, K, n0, n1); break;
    }
  });
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}
