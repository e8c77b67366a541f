// Weight-only int8 / int4 matmuls for x86 CPUs with AVX2 + FMA, float32 accumulation.
// y[m, n] = sum_k x[m, k] * W[n, k] (+ b[n]) with W stored quantized:
//   int8: q [N, K] int8, W[n, k] = q[n, k] * scale[n]                      (scale applied once per output)
//   int4: packed [N, K/2] uint8 in blocks of 32 weights (16 bytes): byte j of a block holds weight j in its low
//         nibble and weight j + 16 in its high nibble (so one AND / one shift give 16 weights in order);
//         W[n, k] = (q - 8) * s[n, g] + z[n, g], g = k / group, computed as s * sum(q x) + (z - 8 s) * sum(x),
//         sum(q x) in exact integer arithmetic on 16-bit fixed-point activations (see quantize_x).
// Why: torch's _weight_int8pack_mm / _weight_int4pack_mm_for_cpu have no fast AVX2 path (measured on an AVX2-only
// EPYC: 3.5 GB/s of int4 weights per core at batch 1, well below memory bandwidth). These kernels stream each
// weight row once per block of up to 4 rows of x, keep the rows of a block in registers, and work on float32
// activations directly (no bf16 casts around each matmul).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "avx2_util.h"
#include <cmath>
#include <vector>

namespace {

inline __m256 load_i8x8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// ---- int8: R weight rows at a time (independent FMA chains), M rows of x (M <= 4) ----------------------------
template <int M, int R>
inline void i8_block(const float* x, int64_t K, const int8_t* q, const float* scale, const float* bias, float* y,
                     int64_t N, int64_t n) {
  const int64_t K8 = K & ~int64_t(7);
  __m256 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 w[R];
    for (int r = 0; r < R; ++r) w[r] = load_i8x8(q + (n + r) * K + k);
    for (int m = 0; m < M; ++m) {
      __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int r = 0; r < R; ++r) acc[r][m] = _mm256_fmadd_ps(w[r], xv, acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int8_t* qr = q + (n + r) * K;
    for (int m = 0; m < M; ++m) {
      float s = hsum256(acc[r][m]);
      for (int64_t k = K8; k < K; ++k) s += float(qr[k]) * x[m * K + k];
      s *= scale[n + r];
      if (bias) s += bias[n + r];
      y[m * N + n + r] = s;
    }
  }
}

template <int M, int R>
void i8_rows(const float* x, int64_t K, const int8_t* q, const float* scale, const float* bias, float* y, int64_t N,
             int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) i8_block<M, R>(x, K, q, scale, bias, y, N, n);
  for (; n < n1; ++n) i8_block<M, 1>(x, K, q, scale, bias, y, N, n);
}

// ---- int4 ------------------------------------------------------------------------------------------------------
// Activations for the int4 kernel: each row of x in blocks of 32, rounded to 16-bit fixed point with one float
// scale per block (xq = round(x / d), d = max|x| / 32767: relative error <= 2^-16 of the block's largest value,
// against 2^-9 for bf16 activations), plus the float sum of x over each weight group (for the zero term).
struct XQ {
  std::vector<int16_t> q;
  std::vector<float> d, gsum;
};

XQ quantize_x(const float* x, int64_t M, int64_t K, int64_t group) {
  XQ r;
  r.q.resize(M * K);
  r.d.resize(M * (K / 32));
  r.gsum.assign(M * (K / group), 0.0f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < K / 32; ++b) {
      const float* xb = x + m * K + b * 32;
      float amax = 0.0f, sum = 0.0f;
      for (int j = 0; j < 32; ++j) { amax = std::max(amax, std::fabs(xb[j])); sum += xb[j]; }
      const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
      for (int j = 0; j < 32; ++j) r.q[m * K + b * 32 + j] = int16_t(std::nearbyint(xb[j] * inv));
      r.d[m * (K / 32) + b] = amax / 32767.0f;
      r.gsum[m * (K / group) + b * 32 / group] += sum;
    }
  }
  return r;
}

// One weight row n, M rows of x (M <= 4). Per block of 32 weights: the nibbles widened to 16 bits, multiplied
// with the 16-bit activations in pairs (madd: exact int32), converted once and scaled by the block's activation
// scale and the group's weight scale. The zero term sum_g (z - 8 s) * sum(x_g) is added at the end.
template <int M>
inline void i4_block(const int16_t* xq, const float* xd, int64_t K, int64_t NB, const uint8_t* row,
                     const float* scale, int64_t blk, __m256* acc) {
  const __m128i m0f = _mm_set1_epi8(0x0F);
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + blk * 16));
  __m256i wl = _mm256_cvtepu8_epi16(_mm_and_si128(v, m0f));                      // weights 0..15
  __m256i wh = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m0f));  // weights 16..31
  const __m256 vs = _mm256_broadcast_ss(scale);
  for (int m = 0; m < M; ++m) {
    const int16_t* xm = xq + m * K + blk * 32;
    __m256i prod = _mm256_add_epi32(
        _mm256_madd_epi16(wl, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm))),
        _mm256_madd_epi16(wh, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + 16))));
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(prod), _mm256_broadcast_ss(xd + m * NB + blk));
    acc[m] = _mm256_fmadd_ps(f, vs, acc[m]);
  }
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float r = hsum256(acc);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// One weight row n, M rows of x (M <= 4). Per block of 32 weights: the nibbles widened to 16 bits, multiplied
// with the 16-bit activations in pairs (madd: exact int32), converted once, scaled by the block's activation
// scale and the group's weight scale. The zero term sum_g (z - 8 s) * sum(x over g) is one dot per row.
// sb: [2, N, G] float32, plane 0 the scales s, plane 1 the offsets z - 8 s.
template <int M>
inline void i4_row(const int16_t* xq, const float* xd, const float* xg, int64_t K, int64_t group,
                   const uint8_t* p, const float* sb, const float* bias, float* y, int64_t N, int64_t n) {
  const int64_t G = K / group, NB = K / 32, shift = __builtin_ctzll(group / 32);   // group / 32: a power of 2
  const uint8_t* row = p + n * (K / 2);
  const float* sr = sb + n * G;
  const float* br = sb + N * G + n * G;
  __m256 acc0[M], acc1[M];        // two accumulators per x row (even / odd blocks): independent FMA chains
  for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
  int64_t blk = 0;
  for (; blk + 2 <= NB; blk += 2) {
    i4_block<M>(xq, xd, K, NB, row, sr + (blk >> shift), blk, acc0);
    i4_block<M>(xq, xd, K, NB, row, sr + ((blk + 1) >> shift), blk + 1, acc1);
  }
  if (blk < NB) i4_block<M>(xq, xd, K, NB, row, sr + (blk >> shift), blk, acc0);
  for (int m = 0; m < M; ++m) {
    float r = hsum256(_mm256_add_ps(acc0[m], acc1[m])) + dot(br, xg + m * G, G);
    if (bias) r += bias[n];
    y[m * N + n] = r;
  }
}

template <int M>
void i4_rows(const XQ& xq, int64_t m, int64_t K, int64_t group, const uint8_t* p, const float* sb,
             const float* bias, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int16_t* q = xq.q.data() + m * K;
  const float* d = xq.d.data() + m * (K / 32);
  const float* g = xq.gsum.data() + m * (K / group);
  for (int64_t n = n0; n < n1; ++n) i4_row<M>(q, d, g, K, group, p, sb, bias, y + m * N, N, n);
}

// Weight rows split over threads; each thread walks its rows in ~64 KiB chunks and runs every block of up to 4 rows
// of x over a chunk while it is in cache (f1/f2/f4: the 1-, 2- and 4-row kernels).
template <typename F1, typename F2, typename F4>
void over_blocks(int64_t M, int64_t N, int64_t bytes_per_row, F1 f1, F2 f2, F4 f4) {
  const int64_t grain = std::max<int64_t>(8, 32768 / std::max<int64_t>(bytes_per_row, 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    // sub-chunks of ~64 KiB of weights, all x blocks over each
    const int64_t sub = std::max<int64_t>(1, 65536 / std::max<int64_t>(bytes_per_row, 1));
    for (int64_t c0 = n0; c0 < n1; c0 += sub) {
      const int64_t c1 = std::min(n1, c0 + sub);
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) f4(m, c0, c1);
      switch (M - m) {
        case 3: f2(m, c0, c1); f1(m + 2, c0, c1); break;
        case 2: f2(m, c0, c1); break;
        case 1: f1(m, c0, c1); break;
        default: break;
      }
    }
  });
}

torch::Tensor prep_x(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "x: [M, K] with K = in_features");
  return x.to(at::kFloat).contiguous();
}

const float* bias_ptr(const c10::optional<torch::Tensor>& bias, torch::Tensor& holder, int64_t N) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  TORCH_CHECK(bias->numel() == N, "bias: [N]");
  holder = bias->to(at::kFloat).contiguous();
  return holder.data_ptr<float>();
}

}  // namespace

// x [M, K] (float32/bf16/fp16), q [N, K] int8, scale [N] float32, bias [N] or None -> [M, N] in x's dtype.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(q.scalar_type() == at::kChar && q.dim() == 2 && q.is_contiguous(), "q: contiguous int8 [N, K]");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == q.size(0) && scale.is_contiguous(),
              "scale: contiguous float32 [N]");
  const int64_t N = q.size(0), K = q.size(1);
  auto xf = prep_x(x, K);
  const int64_t M = xf.size(0);
  torch::Tensor bh;
  const float* bp = bias_ptr(bias, bh, N);
  auto y = torch::empty({M, N}, xf.options());
  const float* xp = xf.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  auto f1 = [&](int64_t m, int64_t a, int64_t b) { i8_rows<1, 4>(xp + m * K, K, qp, sp, bp, yp + m * N, N, a, b); };
  auto f2 = [&](int64_t m, int64_t a, int64_t b) { i8_rows<2, 4>(xp + m * K, K, qp, sp, bp, yp + m * N, N, a, b); };
  auto f4 = [&](int64_t m, int64_t a, int64_t b) { i8_rows<4, 2>(xp + m * K, K, qp, sp, bp, yp + m * N, N, a, b); };
  over_blocks(M, N, K, f1, f2, f4);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// x [M, K], packed [N, K/2] uint8 (the block layout above), sb [2, N, K/group] float32 (scales; zero - 8 * scale),
// bias [N] or None -> [M, N] in x's dtype. group: 32 times a power of two, dividing K.
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor sb, int64_t group,
                          c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
              "packed: contiguous uint8 [N, K/2]");
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(group >= 32 && group % 32 == 0 && ((group / 32) & (group / 32 - 1)) == 0 && K % group == 0,
              "group must be 32 times a power of two and divide K");
  TORCH_CHECK(sb.scalar_type() == at::kFloat && sb.dim() == 3 && sb.size(0) == 2 && sb.size(1) == N &&
              sb.size(2) == K / group && sb.is_contiguous(), "sb: contiguous float32 [2, N, K/group]");
  auto xf = prep_x(x, K);
  const int64_t M = xf.size(0);
  torch::Tensor bh;
  const float* bp = bias_ptr(bias, bh, N);
  auto y = torch::empty({M, N}, xf.options());
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  const float* sbp = sb.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const XQ xq = quantize_x(xf.data_ptr<float>(), M, K, group);
  auto f1 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<1>(xq, m, K, group, pp, sbp, bp, yp, N, a, b); };
  auto f2 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<2>(xq, m, K, group, pp, sbp, bp, yp, N, a, b); };
  auto f4 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<4>(xq, m, K, group, pp, sbp, bp, yp, N, a, b); };
  over_blocks(M, N, K / 2, f1, f2, f4);
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}
