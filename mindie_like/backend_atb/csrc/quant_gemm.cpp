// Weight-only int8 / int4 matmuls for x86 CPUs with AVX2 + FMA, float32 accumulation.
// y[m, n] = sum_k x[m, k] * W[n, k] (+ b[n]) with W stored quantized:
//   int8: q [N, K] int8, W[n, k] = q[n, k] * scale[n]                      (scale applied once per output)
//   int4: packed [N, K/2] uint8 in blocks of 32 weights (16 bytes): byte j of a block holds weight j in its low
//         nibble and weight j + 16 in its high nibble (so one AND / one shift give 16 weights in order);
//         W[n, k] = (q - 8) * s[n, g] + z[n, g], g = k / group, computed as s * sum(q x) + (z - 8 s) * sum(x),
//         sum(q x) in exact integer arithmetic on 8- or 16-bit fixed-point activations (see quantize_x).
// Why: torch's _weight_int8pack_mm / _weight_int4pack_mm_for_cpu have no fast AVX2 path (measured on an AVX2-only
// EPYC: 3.5 GB/s of int4 weights per core at batch 1, well below memory bandwidth). These kernels stream each
// weight row once per block of up to 4 rows of x, keep the rows of a block in registers, and work on float32
// activations directly (no bf16 casts around each matmul).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "avx2_util.h"
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
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
// Activations for the int4 kernel: each row of x in blocks of 32, rounded to fixed point with one float scale per
// block (xq = round(x / d), d = max|x| / qmax), plus the sum of the rounded x (d * sum xq) over each weight group
// for the zero term: the same x as in the block dots, so the result is exactly W times the rounded x (a float sum
// of the unrounded x would add (8 s - z) * sum(rounding errors) per group, measured 2x the error at 8 bits).
//   8 bits (qmax 127, as llama.cpp's Q8_0 activations): error <= 2^-8 of the block's largest value; the block dot
//     is one vpmaddubsw (unsigned nibbles x signed bytes, 32 MACs) + one vpmaddwd.
//   16 bits (qmax 32767): error <= 2^-16 of the block's largest value; the nibbles are widened to 16 bits and
//     multiplied in pairs (two vpmaddwd per block), ~1.4x the instructions.
// Both give the block's dot product sum(q * xq) in exact int32.
struct XQ {
  std::vector<int8_t> q8;
  std::vector<int16_t> q16;
  std::vector<float> d, gsum;
};

XQ quantize_x(const float* x, int64_t M, int64_t K, int64_t group, bool act8) {
  XQ r;
  if (act8) r.q8.resize(M * K); else r.q16.resize(M * K);
  r.d.resize(M * (K / 32));
  r.gsum.assign(M * (K / group), 0.0f);
  const float qmax = act8 ? 127.0f : 32767.0f;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < K / 32; ++b) {
      const float* xb = x + m * K + b * 32;
      float amax = 0.0f;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float inv = amax > 0.0f ? qmax / amax : 0.0f;
      int32_t qsum = 0;
      for (int j = 0; j < 32; ++j) {
        const int32_t v = int32_t(std::nearbyint(xb[j] * inv));
        qsum += v;
        if (act8) r.q8[m * K + b * 32 + j] = int8_t(v); else r.q16[m * K + b * 32 + j] = int16_t(v);
      }
      r.d[m * (K / 32) + b] = amax / qmax;
      r.gsum[m * (K / group) + b * 32 / group] += float(qsum) * (amax / qmax);
    }
  }
  return r;
}

// Scale / zero planes: bf16 (the bits, when the weight's scales are bf16: exact, 4 bytes per group instead of 8)
// or float32.
inline float plane_f(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float plane_f(float f) { return f; }
inline __m256 plane8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline __m256 plane8(const float* p) { return _mm256_loadu_ps(p); }
inline __m128 plane4(const uint16_t* p) {
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
                                         16));
}
inline __m128 plane4(const float* p) { return _mm_loadu_ps(p); }

// The weight scales of blocks b .. b+7 (b .. b+3): s[(b + j) >> shift]; group > 32 (shift > 0) is the rare case.
template <typename P>
inline __m256 scales8(const P* sr, int64_t b, int shift) {
  if (shift == 0) return plane8(sr + b);
  alignas(32) float t[8];
  for (int j = 0; j < 8; ++j) t[j] = plane_f(sr[(b + j) >> shift]);
  return _mm256_load_ps(t);
}
template <typename P>
inline __m128 scales4(const P* sr, int64_t b, int shift) {
  if (shift == 0) return plane4(sr + b);
  alignas(16) float t[4];
  for (int j = 0; j < 4; ++j) t[j] = plane_f(sr[(b + j) >> shift]);
  return _mm_load_ps(t);
}

// One block of 32 weights (16 bytes: byte j = weight j | weight j + 16 << 4) against M rows of quantized x: out[m]
// = 8 int32 partial sums of sum_j q_j * xq[m][j] (exact). The unpacked weights are shared by the M rows.
template <int M, bool ACT8>
inline void block_dots(const uint8_t* wblk, const void* const* xr, int64_t blk, __m256i* out) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wblk));
  if constexpr (ACT8) {
    const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(0x0F));
    for (int m = 0; m < M; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
          static_cast<const int8_t*>(xr[m]) + blk * 32));
      out[m] = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), _mm256_set1_epi16(1));
    }
  } else {
    const __m128i m0f = _mm_set1_epi8(0x0F);
    const __m256i wl = _mm256_cvtepu8_epi16(_mm_and_si128(v, m0f));                      // weights 0..15
    const __m256i wh = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), m0f));  // weights 16..31
    for (int m = 0; m < M; ++m) {
      const int16_t* xm = static_cast<const int16_t*>(xr[m]) + blk * 32;
      out[m] = _mm256_add_epi32(
          _mm256_madd_epi16(wl, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm))),
          _mm256_madd_epi16(wh, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xm + 16))));
    }
  }
}

// (sum of a's 8 lanes, sum of b's 8 lanes, ...) for 4 vectors -> 4 lanes; for 8 vectors -> 8 lanes.
inline __m128i sum_lanes4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
inline __m256i sum_lanes8(const __m256i* p) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

// One weight row n against M rows of x (M <= 4): y[m] = sum_blk s[g(blk)] * d[m][blk] * dot(q, xq[m])_blk
// + sum_g (z_g - 8 s_g) * gsum[m][g]. The block dots of 8 (one row of x) or 4 blocks are reduced to one int32 lane
// each with hadds, then converted, scaled and accumulated as a vector: one convert / multiply / FMA per 8 or 4
// blocks instead of per block (the kernel is compute-bound on AVX2: ~8 GB/s of weights per core before this).
// planes: [2, N, G] of P, plane 0 the scales s, plane 1 the zeros z (w = (q - 8) s + z).
template <int M, bool ACT8, typename P>
inline void i4_row(const void* const* xr, const float* const* xd, const float* const* xg, int64_t K, int64_t group,
                   const uint8_t* p, const P* planes, const float* bias, float* const* y, int64_t N, int64_t n) {
  const int64_t G = K / group, NB = K / 32;
  const int shift = __builtin_ctzll(group / 32);   // group / 32: a power of 2
  const uint8_t* row = p + n * (K / 2);
  const P* sr = planes + n * G;
  const P* zr = planes + N * G + n * G;
  float r[M];
  __m128 acc4[M];
  for (int m = 0; m < M; ++m) acc4[m] = _mm_setzero_ps();
  int64_t b = 0;
  if constexpr (M == 1) {         // 8 blocks per step: half the reductions (the single-stream decode case)
    __m256 acc8 = _mm256_setzero_ps();
    for (; b + 8 <= NB; b += 8) {
      __m256i pr[8];
      for (int j = 0; j < 8; ++j) block_dots<1, ACT8>(row + (b + j) * 16, xr, b + j, &pr[j]);
      const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(sum_lanes8(pr)), _mm256_loadu_ps(xd[0] + b));
      acc8 = _mm256_fmadd_ps(f, scales8(sr, b, shift), acc8);
    }
    acc4[0] = _mm_add_ps(_mm256_castps256_ps128(acc8), _mm256_extractf128_ps(acc8, 1));
  }
  for (; b + 4 <= NB; b += 4) {
    __m256i p0[M], p1[M], p2[M], p3[M];
    block_dots<M, ACT8>(row + b * 16, xr, b, p0);
    block_dots<M, ACT8>(row + (b + 1) * 16, xr, b + 1, p1);
    block_dots<M, ACT8>(row + (b + 2) * 16, xr, b + 2, p2);
    block_dots<M, ACT8>(row + (b + 3) * 16, xr, b + 3, p3);
    const __m128 s4 = scales4(sr, b, shift);
    for (int m = 0; m < M; ++m) {
      const __m128 f = _mm_mul_ps(_mm_cvtepi32_ps(sum_lanes4(p0[m], p1[m], p2[m], p3[m])), _mm_loadu_ps(xd[m] + b));
      acc4[m] = _mm_fmadd_ps(f, s4, acc4[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    __m128 s = _mm_hadd_ps(acc4[m], acc4[m]);
    r[m] = _mm_cvtss_f32(_mm_hadd_ps(s, s));
  }
  for (; b < NB; ++b) {           // the last 1-3 blocks
    __m256i pr[M];
    block_dots<M, ACT8>(row + b * 16, xr, b, pr);
    const float sc = plane_f(sr[b >> shift]);
    for (int m = 0; m < M; ++m) {
      const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(pr[m]), _mm256_extracti128_si256(pr[m], 1));
      const __m128i h2 = _mm_hadd_epi32(h, h);
      r[m] += float(_mm_cvtsi128_si32(_mm_hadd_epi32(h2, h2))) * xd[m][b] * sc;
    }
  }
  // zero term: the offsets z - 8 s (one rounding, as z - 8 s in float32) against each row's group sums
  const __m256 eight = _mm256_set1_ps(8.0f);
  int64_t g = 0;
  __m256 za[M];
  for (int m = 0; m < M; ++m) za[m] = _mm256_setzero_ps();
  for (; g + 8 <= G; g += 8) {
    const __m256 off = _mm256_fnmadd_ps(eight, plane8(sr + g), plane8(zr + g));
    for (int m = 0; m < M; ++m) za[m] = _mm256_fmadd_ps(off, _mm256_loadu_ps(xg[m] + g), za[m]);
  }
  for (int m = 0; m < M; ++m) r[m] += hsum256(za[m]);
  for (; g < G; ++g) {
    const float off = std::fma(-8.0f, plane_f(sr[g]), plane_f(zr[g]));
    for (int m = 0; m < M; ++m) r[m] += off * xg[m][g];
  }
  for (int m = 0; m < M; ++m) y[m][n] = bias ? r[m] + bias[n] : r[m];
}

template <int M, bool ACT8, typename P>
void i4_rows(const XQ& xq, int64_t m0, int64_t K, int64_t group, const uint8_t* p, const P* planes,
             const float* bias, float* y, int64_t N, int64_t n0, int64_t n1) {
  const void* xr[M];
  const float* xd[M];
  const float* xg[M];
  float* ym[M];
  for (int m = 0; m < M; ++m) {
    xr[m] = ACT8 ? static_cast<const void*>(xq.q8.data() + (m0 + m) * K)
                 : static_cast<const void*>(xq.q16.data() + (m0 + m) * K);
    xd[m] = xq.d.data() + (m0 + m) * (K / 32);
    xg[m] = xq.gsum.data() + (m0 + m) * (K / group);
    ym[m] = y + (m0 + m) * N;
  }
  for (int64_t n = n0; n < n1; ++n) i4_row<M, ACT8, P>(xr, xd, xg, K, group, p, planes, bias, ym, N, n);
}

// Weight rows in chunks of ~64 KiB; every block of up to 4 rows of x runs over a chunk while it is in cache
// (f1/f2/f4: the 1-, 2- and 4-row kernels). Threads take chunks from a shared counter rather than a fixed half each:
// on a shared host a thread whose core is also running someone else's process gets fewer chunks instead of
// holding every matmul back (measured with 2 threads next to a busy process: a static split ran no faster than one
// thread).
template <typename F1, typename F2, typename F4>
void over_blocks(int64_t M, int64_t N, int64_t bytes_per_row, F1 f1, F2 f2, F4 f4) {
  const int64_t chunk = std::max<int64_t>(1, 65536 / std::max<int64_t>(bytes_per_row, 1));
  const int64_t nchunks = (N + chunk - 1) / chunk;
  auto run_chunk = [&](int64_t c) {
    const int64_t c0 = c * chunk, c1 = std::min(N, c0 + chunk);
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) f4(m, c0, c1);
    switch (M - m) {
      case 3: f2(m, c0, c1); f1(m + 2, c0, c1); break;
      case 2: f2(m, c0, c1); break;
      case 1: f1(m, c0, c1); break;
      default: break;
    }
  };
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), nchunks);
  if (workers <= 1 || at::in_parallel_region()) {
    for (int64_t c = 0; c < nchunks; ++c) run_chunk(c);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < nchunks; c = next.fetch_add(1)) run_chunk(c);
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

// x [M, K], packed [N, K/2] uint8 (the block layout above), planes [2, N, K/group] (scales, zeros) bf16 or
// float32, bias [N] or None -> [M, N] in x's dtype. group: 32 times a power of two, dividing K. act_bits: 8 or 16
// (the activations' fixed point, see quantize_x).
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor planes, int64_t group,
                          c10::optional<torch::Tensor> bias, int64_t act_bits) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2 && packed.is_contiguous(),
              "packed: contiguous uint8 [N, K/2]");
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  TORCH_CHECK(group >= 32 && group % 32 == 0 && ((group / 32) & (group / 32 - 1)) == 0 && K % group == 0,
              "group must be 32 times a power of two and divide K");
  const bool bf16 = planes.scalar_type() == at::kBFloat16;
  TORCH_CHECK((bf16 || planes.scalar_type() == at::kFloat) && planes.dim() == 3 && planes.size(0) == 2 &&
              planes.size(1) == N && planes.size(2) == K / group && planes.is_contiguous(),
              "planes: contiguous bf16 or float32 [2, N, K/group]");
  TORCH_CHECK(act_bits == 8 || act_bits == 16, "act_bits: 8 or 16");
  auto xf = prep_x(x, K);
  const int64_t M = xf.size(0);
  torch::Tensor bh;
  const float* bp = bias_ptr(bias, bh, N);
  auto y = torch::empty({M, N}, xf.options());
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const XQ xq = quantize_x(xf.data_ptr<float>(), M, K, group, act_bits == 8);
  auto run = [&](auto act8, const auto* pl) {
    constexpr bool A8 = decltype(act8)::value;
    using P = std::remove_cv_t<std::remove_pointer_t<decltype(pl)>>;
    auto f1 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<1, A8, P>(xq, m, K, group, pp, pl, bp, yp, N, a, b); };
    auto f2 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<2, A8, P>(xq, m, K, group, pp, pl, bp, yp, N, a, b); };
    auto f4 = [&](int64_t m, int64_t a, int64_t b) { i4_rows<4, A8, P>(xq, m, K, group, pp, pl, bp, yp, N, a, b); };
    over_blocks(M, N, K / 2, f1, f2, f4);
  };
  const uint16_t* p16 = bf16 ? reinterpret_cast<const uint16_t*>(planes.data_ptr<at::BFloat16>()) : nullptr;
  const float* p32 = bf16 ? nullptr : planes.data_ptr<float>();
  if (act_bits == 8) {
    if (bf16) run(std::true_type{}, p16); else run(std::true_type{}, p32);
  } else {
    if (bf16) run(std::false_type{}, p16); else run(std::false_type{}, p32);
  }
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}
