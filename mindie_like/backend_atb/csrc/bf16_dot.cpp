// bf16 weights x bf16 activations with float32 accumulation, for CPUs with native bf16 dot products.
// y[m, n] = sum_k x[m, k] * W[n, k] (+ b[n]); W bf16 [N, K] row-major as loaded (no repacking: the same tensor
// serves the embedding of a tied lm_head and torch's prefill matmul), x rounded to bf16 (round to nearest even)
// when it is not bf16 already.
//
// AVX512-BF16: `vdpbf16ps` multiplies 32 bf16 pairs of a weight row and an activation row and adds each pair's
// two products into one of 16 float32 lanes. A tile is MR activation rows x 4 weight rows (16 accumulators at
// MR = 4): every weight vector loaded feeds MR dot products, every activation vector 4, so a decode batch of 16
// reads each weight row from memory once; the 16 lanes of each output are summed at the end of the row.
// Portable: the same lane layout and order in plain C++ (odd element of each pair first, as the instruction
// does), for CPUs without AVX512-BF16 and for tests of the fallback on any machine.
//
// Every output is computed by one tile, whatever the thread split (the split is in whole 4-row tiles), so the
// result does not depend on the thread count.
namespace bf16dot {

enum Isa : int64_t { PORTABLE = 0, AVX512BF16 = 1 };

int64_t cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16"))
    return AVX512BF16;
  return PORTABLE;
}

constexpr int NR = 4;       // weight rows per tile
constexpr int MR = 4;       // activation rows per tile

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- portable -------------------------------------------------------------------------------------------------
// lanes[16] of one (row, weight row) pair, reduced like the vector path: per 128-bit quarter (a0+a2)+(a1+a3),
// then the quarters (q0+q2)+(q1+q3)
inline float reduce_lanes(const float* l) {
  float q[4];
  for (int i = 0; i < 4; ++i) q[i] = (l[4 * i] + l[4 * i + 2]) + (l[4 * i + 1] + l[4 * i + 3]);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

void rows_portable(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, const float* bias, float* y,
                   int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const uint16_t* xr = x + m * K;
      float lanes[16] = {0};
      for (int64_t k = 0; k < K; k += 32) {
        for (int l = 0; l < 16; ++l) {
          const int64_t k1 = k + 2 * l + 1, k0 = k + 2 * l;
          if (k1 < K) lanes[l] += bf16_to_f32(xr[k1]) * bf16_to_f32(wr[k1]);
          if (k0 < K) lanes[l] += bf16_to_f32(xr[k0]) * bf16_to_f32(wr[k0]);
        }
      }
      float s = reduce_lanes(lanes);
      if (bias) s += bias[n];
      y[m * N + n] = s;
    }
  }
}

// ---- AVX512-BF16 ----------------------------------------------------------------------------------------------
#define TBF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

// four accumulators -> their four sums (lane i of the result: sum of a[i]'s 16 lanes), same order as reduce_lanes
TBF16 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // per 128-bit quarter: [a0+a2, b0+b2, a1+a3, b1+b3]
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // per quarter: [a, b, c, d] = (x0+x2) + (x1+x3)
  __m512 q = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
  // quarters: (q0 + q2) + (q1 + q3)
  __m512 h = _mm512_add_ps(q, _mm512_shuffle_f32x4(q, q, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm512_add_ps(h, _mm512_shuffle_f32x4(h, h, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(h);
}

TBF16 inline __m512 dot32(__m512 acc, __m512i x, __m512i w) {
  return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
}

// rows m0 .. m0+R of x against weight rows n .. n+C (C <= 4; missing rows read row n and are not stored)
// pf[0 .. npf): rows of the next tile to prefetch along the way (one cache line per row per 32 columns), so the
// weight stream from memory continues while the later row blocks of this tile compute from cache
template <int R, int C>
TBF16 void tile_bf16(const uint16_t* x, int64_t K, const uint16_t* w, const float* bias, float* y, int64_t N,
                     int64_t n, const uint16_t* const* pf, int npf) {
  __m512 acc[R][NR];
  for (int m = 0; m < R; ++m)
    for (int j = 0; j < NR; ++j) acc[m][j] = _mm512_setzero_ps();
  const uint16_t* wr[NR];
  for (int j = 0; j < NR; ++j) wr[j] = w + (n + (j < C ? j : 0)) * K;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[C];
    for (int j = 0; j < C; ++j) wv[j] = _mm512_loadu_si512(wr[j] + k);
    for (int i = 0; i < npf; ++i) _mm_prefetch(reinterpret_cast<const char*>(pf[i] + k), _MM_HINT_T0);
    for (int m = 0; m < R; ++m) {
      const __m512i xv = _mm512_loadu_si512(x + m * K + k);
      for (int j = 0; j < C; ++j) acc[m][j] = dot32(acc[m][j], xv, wv[j]);
    }
  }
  if (k < K) {
    const __mmask32 mask = (__mmask32)((1ull << (K - k)) - 1);
    __m512i wv[C];
    for (int j = 0; j < C; ++j) wv[j] = _mm512_maskz_loadu_epi16(mask, wr[j] + k);
    for (int m = 0; m < R; ++m) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * K + k);
      for (int j = 0; j < C; ++j) acc[m][j] = dot32(acc[m][j], xv, wv[j]);
    }
  }
  for (int m = 0; m < R; ++m) {
    float s[4];
    _mm_storeu_ps(s, reduce4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));
    for (int j = 0; j < C; ++j) y[m * N + n + j] = bias ? s[j] + bias[n + j] : s[j];
  }
}

// all row blocks of M against weight rows n .. n+C; the next tile's rows (up to n1) are prefetched spread over
// the row blocks (block b takes rows j with j % blocks == b)
template <int C>
TBF16 void rows_tile_bf16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, const float* bias, float* y,
                          int64_t N, int64_t n, int64_t n1) {
  const int64_t blocks = (M + MR - 1) / MR;
  const int next = int(std::max<int64_t>(0, std::min<int64_t>(NR, n1 - (n + NR))));
  const uint16_t* pf[NR];
  int64_t m = 0;
  for (int64_t b = 0; b < blocks; ++b, m += MR) {
    int npf = 0;
    for (int j = 0; j < next; ++j)
      if (j % blocks == b) pf[npf++] = w + (n + NR + j) * K;
    switch (std::min<int64_t>(MR, M - m)) {
      case 1: tile_bf16<1, C>(x + m * K, K, w, bias, y + m * N, N, n, pf, npf); break;
      case 2: tile_bf16<2, C>(x + m * K, K, w, bias, y + m * N, N, n, pf, npf); break;
      case 3: tile_bf16<3, C>(x + m * K, K, w, bias, y + m * N, N, n, pf, npf); break;
      default: tile_bf16<MR, C>(x + m * K, K, w, bias, y + m * N, N, n, pf, npf); break;
    }
  }
}

TBF16 void rows_bf16(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, const float* bias, float* y,
                     int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) rows_tile_bf16<NR>(x, M, K, w, bias, y, N, n, n1);
  switch (n1 - n) {
    case 1: rows_tile_bf16<1>(x, M, K, w, bias, y, N, n, n1); break;
    case 2: rows_tile_bf16<2>(x, M, K, w, bias, y, N, n, n1); break;
    case 3: rows_tile_bf16<3>(x, M, K, w, bias, y, N, n, n1); break;
    default: break;
  }
}

#undef TBF16

}  // namespace bf16dot

// x [M, K] any float dtype (rounded to bf16), w [N, K] contiguous bf16, bias [N] or None; isa: bf16dot::Isa.
// Returns [M, N] float32 when out_float, else in x's dtype.
torch::Tensor bf16_dot_linear(torch::Tensor x, torch::Tensor w, c10::optional<torch::Tensor> bias, int64_t isa,
                              bool out_float) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.is_contiguous() && w.dim() == 2,
              "bf16_dot_linear: w must be contiguous bf16 [N, K]");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == w.size(1), "bf16_dot_linear: x must be [M, K] with K = w.size(1)");
  TORCH_CHECK(isa >= bf16dot::PORTABLE && isa <= bf16dot::cpu_isa(), "bf16_dot_linear: isa ", isa,
              " not available on this CPU (", bf16dot::cpu_isa(), ")");
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  auto xb = x.to(at::kBFloat16).contiguous();
  torch::Tensor bf;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, "bf16_dot_linear: bias must have N elements");
    bf = bias->to(at::kFloat).contiguous();
    bp = bf.data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options().dtype(at::kFloat));
  if (M == 0 || N == 0) return out_float ? y : y.to(x.scalar_type());
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  float* yp = y.data_ptr<float>();
  // whole 4-row tiles per task, >= ~64 KiB of weights each
  const int64_t tiles = (N + bf16dot::NR - 1) / bf16dot::NR;
  const int64_t grain = std::max<int64_t>(1, (int64_t(64) << 10) / std::max<int64_t>(K * 2 * bf16dot::NR, 1));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    const int64_t n0 = t0 * bf16dot::NR, n1 = std::min(N, t1 * bf16dot::NR);
    if (isa == bf16dot::AVX512BF16) bf16dot::rows_bf16(xp, M, K, wp, bp, yp, N, n0, n1);
    else bf16dot::rows_portable(xp, M, K, wp, bp, yp, N, n0, n1);
  });
  return out_float || x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}
