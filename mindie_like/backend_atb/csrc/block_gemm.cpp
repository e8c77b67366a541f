// Grouped int8 weights ("blocks"), the exact form of GGUF's Q8_0 / Q5_0 / Q6_K (and Q4_x) tensors:
//   W[n, k] = q[n, k] * s[n, g] (+ z[n, g]),  g = k / G,  q int8 [N, K], s / z float32 [N, K/G], G = 16 or 32.
// y[m, n] = sum_k x[m, k] W[n, k] (+ b[n]) in float32: per group, the weights are widened and scaled (q * s, the
// same float32 product the file's own dequantization forms) and FMA'd against the activations; the zero term is
// z[n, g] * sum(x[m, group g]), from per-group sums of x computed once per call.
//
// One implementation per instruction set, selected at run time (cpu_isa() / the `isa` argument), each compiled
// with its own target attribute so the module itself needs nothing beyond x86-64: portable (plain C++, what the
// compiler makes of it for baseline x86-64), AVX2+FMA (8 lanes), AVX512F/BW/VL (16 lanes).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <vector>

namespace blocks {

enum Isa : int64_t { PORTABLE = 0, AVX2 = 1, AVX512 = 2 };

// What this CPU runs (cpuid through the compiler's builtins).
int64_t cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
  return PORTABLE;
}

// ---- portable ---------------------------------------------------------------------------------------------------
template <int M>
void rows_portable(const float* x, int64_t K, const int8_t* q, const float* s, int64_t G, float* acc, int64_t n) {
  const int64_t NG = K / G;
  const int8_t* qr = q + n * K;
  const float* sr = s + n * NG;
  for (int m = 0; m < M; ++m) acc[m] = 0.f;
  for (int64_t g = 0; g < NG; ++g) {
    const float sc = sr[g];
    for (int64_t j = 0; j < G; ++j) {
      const float w = float(qr[g * G + j]) * sc;
      for (int m = 0; m < M; ++m) acc[m] += w * x[m * K + g * G + j];
    }
  }
}

// ---- AVX2 + FMA -------------------------------------------------------------------------------------------------
__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int M>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* x, int64_t K, const int8_t* q, const float* s,
                                                   int64_t G, float* acc_out, int64_t n) {
  const int64_t NG = K / G;
  const int8_t* qr = q + n * K;
  const float* sr = s + n * NG;
  __m256 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < NG; ++g) {
    const __m256 sc = _mm256_set1_ps(sr[g]);
    for (int64_t j = 0; j < G; j += 8) {
      const int64_t k = g * G + j;
      const __m256 w = _mm256_mul_ps(
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qr + k)))), sc);
      for (int m = 0; m < M; ++m) acc[m] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + m * K + k), acc[m]);
    }
  }
  for (int m = 0; m < M; ++m) acc_out[m] = hsum_avx2(acc[m]);
}

// ---- AVX512F/BW/VL ----------------------------------------------------------------------------------------------
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_avx512(const float* x, int64_t K, const int8_t* q,
                                                                      const float* s, int64_t G, float* acc_out,
                                                                      int64_t n) {
  const int64_t NG = K / G;
  const int8_t* qr = q + n * K;
  const float* sr = s + n * NG;
  __m512 acc[M];
  for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < NG; ++g) {
    const __m512 sc = _mm512_set1_ps(sr[g]);
    for (int64_t j = 0; j < G; j += 16) {
      const int64_t k = g * G + j;
      const __m512 w = _mm512_mul_ps(
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + k)))), sc);
      for (int m = 0; m < M; ++m) acc[m] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + m * K + k), acc[m]);
    }
  }
  for (int m = 0; m < M; ++m) acc_out[m] = _mm512_reduce_add_ps(acc[m]);
}

template <int M>
void rows(int64_t isa, const float* x, int64_t K, const int8_t* q, const float* s, int64_t G, float* acc, int64_t n) {
  if (isa == AVX512) rows_avx512<M>(x, K, q, s, G, acc, n);
  else if (isa == AVX2) rows_avx2<M>(x, K, q, s, G, acc, n);
  else rows_portable<M>(x, K, q, s, G, acc, n);
}

template <int M>
void block_rows(int64_t isa, const float* x, int64_t K, const int8_t* q, const float* s, const float* z,
                const float* xsum, int64_t G, const float* bias, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t NG = K / G;
  float acc[M];
  for (int64_t n = n0; n < n1; ++n) {
    rows<M>(isa, x, K, q, s, G, acc, n);
    for (int m = 0; m < M; ++m) {
      float v = acc[m];
      if (z) {
        const float* zr = z + n * NG;
        const float* xs = xsum + m * NG;
        float t = 0.f;
        for (int64_t g = 0; g < NG; ++g) t += zr[g] * xs[g];
        v += t;
      }
      if (bias) v += bias[n];
      y[m * N + n] = v;
    }
  }
}

}  // namespace blocks

// x [M, K] any float dtype; q int8 [N, K]; s float32 [N, K/G]; z float32 [N, K/G] or empty; bias [N] or None.
// Returns [M, N] in x's dtype.
torch::Tensor block_int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor s, torch::Tensor z, int64_t G,
                                c10::optional<torch::Tensor> bias, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && q.scalar_type() == torch::kInt8, "block_int8_linear: x [M, K], q int8 [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) == K, "block_int8_linear: K mismatch");
  TORCH_CHECK(G == 16 || G == 32, "block_int8_linear: group must be 16 or 32");
  TORCH_CHECK(K % G == 0, "block_int8_linear: K % group != 0");
  TORCH_CHECK(s.scalar_type() == torch::kFloat && s.size(0) == N && s.size(1) == K / G, "block_int8_linear: s");
  const bool has_z = z.numel() > 0;
  if (has_z) TORCH_CHECK(z.scalar_type() == torch::kFloat && z.size(0) == N && z.size(1) == K / G, "block_int8_linear: z");
  TORCH_CHECK(isa >= blocks::PORTABLE && isa <= blocks::cpu_isa(), "block_int8_linear: isa ", isa,
              " not available on this CPU (", blocks::cpu_isa(), ")");
  auto xf = x.to(torch::kFloat).contiguous();
  auto qc = q.contiguous();
  auto sc = s.contiguous();
  auto zc = has_z ? z.contiguous() : z;
  torch::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(torch::kFloat).contiguous();
  auto y = torch::empty({M, N}, xf.options());
  const int64_t NG = K / G;
  torch::Tensor xsum;
  if (has_z) xsum = xf.view({M, NG, G}).sum(-1).contiguous();
  const float* xp = xf.data_ptr<float>();
  const int8_t* qp = qc.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  const float* zp = has_z ? zc.data_ptr<float>() : nullptr;
  const float* xsp = has_z ? xsum.data_ptr<float>() : nullptr;
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // ~64 KiB of weights per chunk
  const int64_t grain = std::max<int64_t>(1, (int64_t(64) << 10) / std::max<int64_t>(K, 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const float* xm = xp + m0 * K;
      const float* xs = xsp ? xsp + m0 * NG : nullptr;
      float* ym = yp + m0 * N;
      switch (mb) {
        case 4: blocks::block_rows<4>(isa, xm, K, qp, sp, zp, xs, G, bp, ym, N, n0, n1); break;
        case 3: blocks::block_rows<3>(isa, xm, K, qp, sp, zp, xs, G, bp, ym, N, n0, n1); break;
        case 2: blocks::block_rows<2>(isa, xm, K, qp, sp, zp, xs, G, bp, ym, N, n0, n1); break;
        default: blocks::block_rows<1>(isa, xm, K, qp, sp, zp, xs, G, bp, ym, N, n0, n1); break;
      }
    }
  });
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}
