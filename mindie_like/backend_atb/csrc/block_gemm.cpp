// Grouped block weights at their own bit width, the exact form of GGUF's Q8_0 / Q5_0 / Q6_K / Q4_x tensors:
//   W[n, k] = s[n, g] * (u[n, k] - OFF) (+ z[n, g]),  g = k / G,  G = 16 or 32,  u unsigned `bits`-bit,
//   OFF = 2^(bits-1), so q = u - OFF is the block's signed integer (Q5_0: q - 16 in the file's terms, ...).
//
// Packed layout (block_pack): per weight row, K/32 blocks of 32 weights, each block of BS bytes:
//   bits 4/5/6: 16 bytes of nibbles (byte j: weight j in the low nibble, weight j + 16 in the high one), then
//               bits - 4 planes of 4 bytes (a little-endian u32 whose bit j is bit 4 (plane 0) / bit 5 (plane 1)
//               of weight j): 16 / 20 / 24 bytes, the file's own 0.5 / 0.625 / 0.75 bytes per weight;
//   bits 8:     32 bytes, u = q + 128.
// One AND + one shift give the 32 low nibbles in order; each plane widens to 32 bytes with one mask op (AVX512BW)
// or a shuffle + compare (AVX2).
//
// Two activation modes, both computing y[m, n] = sum_k x[m, k] W[n, k] (+ b[n]):
//  * int8 (default): each activation row quantized once per call per block of 32 to int8 with a float scale
//    (xq = round(x / d), d = max|x| / 127, as llama.cpp's Q8_0 activations); per block the integer dot
//    sum(u * xq) is exact in int32 (AVX512-VNNI vpdpbusd, or AVX2 vpmaddubsw + vpmaddwd), scaled by s * d and
//    accumulated in float; the offset and zero enter once per output as sum_g (z_g - OFF s_g) * d * sum(xq_g).
//    The result is W times the rounded activations (float accumulation order aside).
//  * float: the weights widened to float32 per block (the same float32 products s * q as the file's own
//    dequantization) and FMA'd against float32 activations (portable / AVX2 / AVX512).
//
// One implementation per instruction set, each compiled with its own target attribute, so the module itself needs
// nothing beyond x86-64; `isa` picks at run time.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace blocks {

enum Isa : int64_t { PORTABLE = 0, AVX2 = 1, AVX512 = 2, AVX512VNNI = 3 };

// What this CPU runs (cpuid through the compiler's builtins).
int64_t cpu_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return __builtin_cpu_supports("avx512vnni") ? AVX512VNNI : AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
  return PORTABLE;
}

inline int64_t block_bytes(int64_t bits) { return bits == 8 ? 32 : 16 + 4 * (bits - 4); }
inline int32_t offset(int64_t bits) { return 1 << (bits - 1); }

// ---- unpacking one block of 32 to unsigned bytes u ---------------------------------------------------------------
inline void unpack_portable(const uint8_t* b, int64_t bits, uint8_t* u) {
  if (bits == 8) {
    std::memcpy(u, b, 32);
    return;
  }
  for (int j = 0; j < 16; ++j) {
    u[j] = b[j] & 15;
    u[j + 16] = b[j] >> 4;
  }
  for (int p = 0; p < bits - 4; ++p) {
    uint32_t h;
    std::memcpy(&h, b + 16 + 4 * p, 4);
    for (int j = 0; j < 32; ++j) u[j] |= uint8_t(((h >> j) & 1u) << (4 + p));
  }
}

// 0xFF in byte j where bit j of the u32 at p is set
__attribute__((target("avx2,fma"))) inline __m256i bits_to_bytes_avx2(const uint8_t* p) {
  uint32_t h;
  std::memcpy(&h, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(h)), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

__attribute__((target("avx2,fma"))) inline __m256i unpack_avx2(const uint8_t* b, int64_t bits) {
  if (bits == 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  const __m128i lo4 = _mm_set1_epi8(15);
  __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), lo4), _mm_and_si128(v, lo4));
  if (bits >= 5) u = _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes_avx2(b + 16), _mm256_set1_epi8(16)));
  if (bits == 6) u = _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes_avx2(b + 20), _mm256_set1_epi8(32)));
  return u;
}

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define TVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

T512 inline __m256i unpack_avx512(const uint8_t* b, int64_t bits) {
  if (bits == 8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  const __m128i lo4 = _mm_set1_epi8(15);
  __m256i u = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), lo4), _mm_and_si128(v, lo4));
  uint32_t h;
  if (bits >= 5) {
    std::memcpy(&h, b + 16, 4);
    u = _mm256_mask_add_epi8(u, __mmask32(h), u, _mm256_set1_epi8(16));
  }
  if (bits == 6) {
    std::memcpy(&h, b + 20, 4);
    u = _mm256_mask_add_epi8(u, __mmask32(h), u, _mm256_set1_epi8(32));
  }
  return u;
}

// ---- activations quantized to int8 per block of 32 ---------------------------------------------------------------
struct XQ {
  std::vector<int8_t> q;      // [M, K]
  std::vector<float> d;       // [M, K/32]
  std::vector<float> d8;      // [M, K/4]: each block's d repeated 8 times, one per int32 lane of its dot
  std::vector<float> dsum;    // [M, K/G]: d * sum(xq) over each weight group
};

void quantize_x(const float* x, int64_t M, int64_t K, int64_t G, XQ& out) {
  const int64_t NB = K / 32, NG = K / G;
  out.q.resize(M * K);
  out.d.resize(M * NB);
  out.dsum.resize(M * NG);
  out.d8.resize(M * K / 4);
  at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t b = 0; b < NB; ++b) {
        const float* xb = x + m * K + b * 32;
        float amax = 0.f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
        const float d = amax / 127.f;
        const float id = d > 0.f ? 1.f / d : 0.f;
        int8_t* qb = out.q.data() + m * K + b * 32;
        for (int j = 0; j < 32; ++j) qb[j] = int8_t(std::lrintf(xb[j] * id));
        out.d[m * NB + b] = d;
        for (int l = 0; l < 8; ++l) out.d8[(m * NB + b) * 8 + l] = d;
        for (int64_t h = 0; h < 32 / G; ++h) {
          int32_t s = 0;
          for (int64_t j = 0; j < G; ++j) s += qb[h * G + j];
          out.dsum[m * NG + b * (32 / G) + h] = d * float(s);
        }
      }
    }
  });
}

// c[g] = z[g] - off * s[g]: the per-group constant the integer dots leave out
inline void group_consts(const float* s, const float* z, int64_t NG, float off, float* c) {
  for (int64_t g = 0; g < NG; ++g) c[g] = (z ? z[g] : 0.f) - off * s[g];
}

inline float dot_portable(const float* a, const float* b, int64_t n) {
  float t = 0.f;
  for (int64_t i = 0; i < n; ++i) t += a[i] * b[i];
  return t;
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float t = hsum_avx2(acc);
  for (; i < n; ++i) t += a[i] * b[i];
  return t;
}

// The block's weight scales per 8 int32 lanes of a 32-byte dot (lanes 0-3: weights 0-15, 4-7: weights 16-31).
__attribute__((target("avx2,fma"))) inline __m256 lane_scales(const float* s, int64_t b, int64_t G) {
  if (G == 32) return _mm256_set1_ps(s[b]);
  return _mm256_set_m128(_mm_set1_ps(s[2 * b + 1]), _mm_set1_ps(s[2 * b]));
}

// ---- int8 activations: MT rows of x against weight row n; acc[m] gets sum_b s * d * dot(u, xq) ------------------
template <int MT>
void rows_i8_portable(const XQ& xq, int64_t m0, int64_t K, const uint8_t* w, const float* s, int64_t G,
                      int64_t bits, float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits);
  float acc[MT] = {};
  uint8_t u[32];
  for (int64_t b = 0; b < NB; ++b) {
    unpack_portable(w + b * BS, bits, u);
    for (int m = 0; m < MT; ++m) {
      const int8_t* xb = xq.q.data() + (m0 + m) * K + b * 32;
      const float dx = xq.d[(m0 + m) * NB + b];
      for (int64_t h = 0; h < 32 / G; ++h) {
        int32_t t = 0;
        for (int64_t j = h * G; j < (h + 1) * G; ++j) t += int32_t(u[j]) * int32_t(xb[j]);
        acc[m] += float(t) * (s[b * (32 / G) + h] * dx);
      }
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = acc[m];
}

// AVX2: vpmaddubsw needs u * xq pairs within int16: u < 64 for bits <= 6; 8-bit blocks use the signed weight
// q = u ^ 0x80 with the sign trick (|q| * sign(xq, q)), so their dot leaves no offset (see `dot_offset`).
template <int MT>
__attribute__((target("avx2,fma"))) void rows_i8_avx2(const XQ& xq, int64_t m0, int64_t K, const uint8_t* w,
                                                      const float* s, int64_t G, int64_t bits, float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < NB; ++b) {
    __m256i u = unpack_avx2(w + b * BS, bits);
    __m256i q = u;
    if (bits == 8) {
      q = _mm256_xor_si256(u, _mm256_set1_epi8(char(0x80)));
      u = _mm256_sign_epi8(q, q);
    }
    const __m256 ws = lane_scales(s, b, G);
    for (int m = 0; m < MT; ++m) {
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.q.data() + (m0 + m) * K + b * 32));
      if (bits == 8) xv = _mm256_sign_epi8(xv, q);
      const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(ws, _mm256_set1_ps(xq.d[(m0 + m) * NB + b])),
                               acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = hsum_avx2(acc[m]);
}

// Two blocks per 512-bit vpdpbusd; the block scales of x and of the weights per int32 lane (8 lanes a block).
template <int MT>
TVNNI void rows_i8_vnni(const XQ& xq, int64_t m0, int64_t K, const uint8_t* w, const float* s, int64_t G,
                        int64_t bits, float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits), K4 = K / 4;
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= NB; b += 2) {
    const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(unpack_avx512(w + b * BS, bits)),
                                         unpack_avx512(w + (b + 1) * BS, bits), 1);
    const __m512 ws = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lane_scales(s, b, G))),
                                                          _mm256_castps_pd(lane_scales(s, b + 1, G)), 1));
    for (int m = 0; m < MT; ++m) {
      const __m512i xv = _mm512_loadu_si512(xq.q.data() + (m0 + m) * K + b * 32);
      const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv);
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                               _mm512_mul_ps(ws, _mm512_loadu_ps(xq.d8.data() + (m0 + m) * K4 + b * 8)), acc[m]);
    }
  }
  float tail[MT] = {};
  if (b < NB) {                 // an odd block count: the last one at 256 bits
    const __m256i u = unpack_avx512(w + b * BS, bits);
    const __m256 ws = lane_scales(s, b, G);
    for (int m = 0; m < MT; ++m) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq.q.data() + (m0 + m) * K + b * 32));
      const __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, xv);
      tail[m] = hsum_avx2(
          _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(ws, _mm256_set1_ps(xq.d[(m0 + m) * NB + b]))));
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = _mm512_reduce_add_ps(acc[m]) + tail[m];
}

// the offset the integer dot of an int8-activation path leaves in (the AVX2 8-bit sign trick leaves none)
inline float dot_offset(int64_t isa, int64_t bits) {
  return (bits == 8 && isa < AVX512VNNI && isa != PORTABLE) ? 0.f : float(offset(bits));
}

// ---- float activations: acc[m] = sum_k s * q * x (the zero term added by the caller from per-group sums) ----------
template <int MT>
void rows_f32_portable(const float* x, int64_t K, const uint8_t* w, const float* s, int64_t G, int64_t bits,
                       float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits);
  const int32_t off = offset(bits);
  float acc[MT] = {};
  uint8_t u[32];
  for (int64_t b = 0; b < NB; ++b) {
    unpack_portable(w + b * BS, bits, u);
    for (int64_t j = 0; j < 32; ++j) {
      const float wv = float(int32_t(u[j]) - off) * s[(b * 32 + j) / G];
      for (int m = 0; m < MT; ++m) acc[m] += wv * x[m * K + b * 32 + j];
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = acc[m];
}

template <int MT>
__attribute__((target("avx2,fma"))) void rows_f32_avx2(const float* x, int64_t K, const uint8_t* w, const float* s,
                                                       int64_t G, int64_t bits, float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits);
  const __m256i off = _mm256_set1_epi32(offset(bits));
  __m256 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < NB; ++b) {
    const __m256i u = unpack_avx2(w + b * BS, bits);
    const __m128i halves[2] = {_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1)};
    for (int c = 0; c < 4; ++c) {              // 8 weights at a time
      const __m128i part = (c & 1) ? _mm_srli_si128(halves[c >> 1], 8) : halves[c >> 1];
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(part), off);
      const int64_t k = b * 32 + c * 8;
      const __m256 wv = _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(s[k / G]));
      for (int m = 0; m < MT; ++m) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * K + k), acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = hsum_avx2(acc[m]);
}

template <int MT>
T512 void rows_f32_avx512(const float* x, int64_t K, const uint8_t* w, const float* s, int64_t G, int64_t bits,
                          float* out) {
  const int64_t NB = K / 32, BS = block_bytes(bits);
  const __m512i off = _mm512_set1_epi32(offset(bits));
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t b = 0; b < NB; ++b) {
    const __m256i u = unpack_avx512(w + b * BS, bits);
    for (int c = 0; c < 2; ++c) {              // 16 weights at a time
      const __m128i part = c ? _mm256_extracti128_si256(u, 1) : _mm256_castsi256_si128(u);
      const __m512i q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(part), off);
      const int64_t k = b * 32 + c * 16;
      const __m512 wv = _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(s[k / G]));
      for (int m = 0; m < MT; ++m) acc[m] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + m * K + k), acc[m]);
    }
  }
  for (int m = 0; m < MT; ++m) out[m] = _mm512_reduce_add_ps(acc[m]);
}

// ---- one weight row n against rows m0 .. m0 + MT of x -------------------------------------------------------------
struct Problem {
  int64_t M, K, N, G, bits, isa;
  bool act8;
  const float* x;            // float32 [M, K] (float mode)
  const XQ* xq;              // int8 mode
  const float* xsum;         // float mode with zeros: [M, K/G]
  const uint8_t* w;          // packed [N, K/32 * BS]
  const float* s;            // [N, K/G]
  const float* z;            // [N, K/G] or null
  const float* bias;         // [N] or null
  float* y;                  // [M, N]
};

template <int MT>
void tile(const Problem& p, int64_t n, int64_t m0, const float* c) {
  const int64_t NG = p.K / p.G, BS = block_bytes(p.bits);
  const uint8_t* w = p.w + n * (p.K / 32) * BS;
  const float* s = p.s + n * NG;
  float acc[MT];
  if (p.act8) {
    if (p.isa == AVX512VNNI) rows_i8_vnni<MT>(*p.xq, m0, p.K, w, s, p.G, p.bits, acc);
    else if (p.isa == PORTABLE) rows_i8_portable<MT>(*p.xq, m0, p.K, w, s, p.G, p.bits, acc);
    else rows_i8_avx2<MT>(*p.xq, m0, p.K, w, s, p.G, p.bits, acc);
  } else {
    const float* x = p.x + m0 * p.K;
    if (p.isa >= AVX512) rows_f32_avx512<MT>(x, p.K, w, s, p.G, p.bits, acc);
    else if (p.isa == AVX2) rows_f32_avx2<MT>(x, p.K, w, s, p.G, p.bits, acc);
    else rows_f32_portable<MT>(x, p.K, w, s, p.G, p.bits, acc);
  }
  const float* zr = p.z ? p.z + n * NG : nullptr;
  for (int m = 0; m < MT; ++m) {
    float v = acc[m];
    // int8: sum_g (z - OFF s) * d * sum(xq); float: sum_g z * sum(x)
    const float* per_group = p.act8 ? p.xq->dsum.data() + (m0 + m) * NG : (zr ? p.xsum + (m0 + m) * NG : nullptr);
    const float* cg = p.act8 ? c : zr;
    if (per_group) v += p.isa == PORTABLE ? dot_portable(cg, per_group, NG) : dot_avx2(cg, per_group, NG);
    if (p.bias) v += p.bias[n];
    p.y[(m0 + m) * p.N + n] = v;
  }
}

constexpr int64_t M_CHUNK = 64;     // activation rows whose int8 copy stays in L2 while a weight row is reused

void run(const Problem& p, int64_t n0, int64_t n1) {
  const int64_t NG = p.K / p.G;
  std::vector<float> c(p.act8 ? NG : 0);
  const float off = dot_offset(p.isa, p.bits);
  for (int64_t mc = 0; mc < p.M; mc += M_CHUNK) {
    const int64_t me = std::min(p.M, mc + M_CHUNK);
    for (int64_t n = n0; n < n1; ++n) {
      if (p.act8) group_consts(p.s + n * NG, p.z ? p.z + n * NG : nullptr, NG, off, c.data());
      int64_t m = mc;
      if (p.act8 && p.isa == AVX512VNNI)        // 16 zmm accumulators fit (32 registers); AVX2 has 16 in all
        for (; m + 16 <= me; m += 16) tile<16>(p, n, m, c.data());
      for (; m + 8 <= me; m += 8) tile<8>(p, n, m, c.data());
      if (m + 4 <= me) { tile<4>(p, n, m, c.data()); m += 4; }
      if (m + 2 <= me) { tile<2>(p, n, m, c.data()); m += 2; }
      if (m < me) tile<1>(p, n, m, c.data());
    }
  }
}

}  // namespace blocks

// q int8 [N, K] with q + 2^(bits-1) in [0, 2^bits) -> packed uint8 [N, K/32 * block_bytes(bits)] (layout above).
torch::Tensor block_pack(torch::Tensor q, int64_t bits) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kInt8, "block_pack: q int8 [N, K]");
  TORCH_CHECK(bits == 4 || bits == 5 || bits == 6 || bits == 8, "block_pack: bits must be 4, 5, 6 or 8");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(K % 32 == 0, "block_pack: K % 32 != 0");
  auto qc = q.contiguous();
  const int64_t NB = K / 32, BS = blocks::block_bytes(bits);
  const int32_t off = blocks::offset(bits), hi = (1 << bits) - 1;
  auto out = torch::zeros({N, NB * BS}, torch::kUInt8);
  const int8_t* qp = qc.data_ptr<int8_t>();
  uint8_t* op = out.data_ptr<uint8_t>();
  bool bad = false;
  for (int64_t i = 0; i < N * NB; ++i) {
    const int8_t* qb = qp + i * 32;
    uint8_t* ob = op + i * BS;
    uint8_t u[32];
    for (int j = 0; j < 32; ++j) {
      const int32_t v = int32_t(qb[j]) + off;
      bad |= v < 0 || v > hi;
      u[j] = uint8_t(v & hi);
    }
    if (bits == 8) {
      std::memcpy(ob, u, 32);
      continue;
    }
    for (int j = 0; j < 16; ++j) ob[j] = uint8_t((u[j] & 15) | ((u[j + 16] & 15) << 4));
    for (int pl = 0; pl < bits - 4; ++pl) {
      uint32_t h = 0;
      for (int j = 0; j < 32; ++j) h |= uint32_t((u[j] >> (4 + pl)) & 1) << j;
      std::memcpy(ob + 16 + 4 * pl, &h, 4);
    }
  }
  TORCH_CHECK(!bad, "block_pack: values outside the signed ", bits, "-bit range");
  return out;
}

// packed uint8 [R, K/32 * BS] -> q int8 [R, K]
torch::Tensor block_unpack(torch::Tensor packed, int64_t bits, int64_t K) {
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == torch::kUInt8, "block_unpack: packed uint8 [R, bytes]");
  TORCH_CHECK(bits == 4 || bits == 5 || bits == 6 || bits == 8, "block_unpack: bits must be 4, 5, 6 or 8");
  TORCH_CHECK(K % 32 == 0 && packed.size(1) == K / 32 * blocks::block_bytes(bits), "block_unpack: shape");
  auto pc = packed.contiguous();
  const int64_t R = pc.size(0), NB = K / 32, BS = blocks::block_bytes(bits);
  const int32_t off = blocks::offset(bits);
  auto q = torch::empty({R, K}, torch::kInt8);
  const uint8_t* pp = pc.data_ptr<uint8_t>();
  int8_t* qp = q.data_ptr<int8_t>();
  at::parallel_for(0, R * NB, 1024, [&](int64_t i0, int64_t i1) {
    uint8_t u[32];
    for (int64_t i = i0; i < i1; ++i) {
      blocks::unpack_portable(pp + i * BS, bits, u);
      for (int j = 0; j < 32; ++j) qp[i * 32 + j] = int8_t(int32_t(u[j]) - off);
    }
  });
  return q;
}

// x [M, K] any float dtype; packed uint8 [N, K/32 * BS]; s float32 [N, K/G]; z float32 [N, K/G] or empty;
// bias [N] or None; act8: int8 activations (else float32). Returns [M, N] in x's dtype.
torch::Tensor block_linear(torch::Tensor x, torch::Tensor packed, int64_t bits, torch::Tensor s, torch::Tensor z,
                           int64_t G, c10::optional<torch::Tensor> bias, int64_t isa, bool act8) {
  TORCH_CHECK(x.dim() == 2 && packed.dim() == 2 && packed.scalar_type() == torch::kUInt8,
              "block_linear: x [M, K], packed uint8 [N, bytes]");
  TORCH_CHECK(bits == 4 || bits == 5 || bits == 6 || bits == 8, "block_linear: bits must be 4, 5, 6 or 8");
  TORCH_CHECK(G == 16 || G == 32, "block_linear: group must be 16 or 32");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  TORCH_CHECK(K % 32 == 0 && packed.size(1) == K / 32 * blocks::block_bytes(bits), "block_linear: K mismatch");
  TORCH_CHECK(s.scalar_type() == torch::kFloat && s.size(0) == N && s.size(1) == K / G, "block_linear: s");
  const bool has_z = z.numel() > 0;
  if (has_z) TORCH_CHECK(z.scalar_type() == torch::kFloat && z.size(0) == N && z.size(1) == K / G, "block_linear: z");
  TORCH_CHECK(isa >= blocks::PORTABLE && isa <= blocks::cpu_isa(), "block_linear: isa ", isa,
              " not available on this CPU (", blocks::cpu_isa(), ")");
  auto xf = x.to(torch::kFloat).contiguous();
  auto pc = packed.contiguous();
  auto sc = s.contiguous();
  auto zc = has_z ? z.contiguous() : z;
  torch::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(torch::kFloat).contiguous();
  auto y = torch::empty({M, N}, xf.options());
  const int64_t NG = K / G;
  blocks::XQ xq;
  torch::Tensor xsum;
  if (act8) blocks::quantize_x(xf.data_ptr<float>(), M, K, G, xq);
  else if (has_z) xsum = xf.view({M, NG, G}).sum(-1).contiguous();
  blocks::Problem p{M, K, N, G, bits, isa, act8, xf.data_ptr<float>(), &xq,
                    xsum.defined() ? xsum.data_ptr<float>() : nullptr, pc.data_ptr<uint8_t>(), sc.data_ptr<float>(),
                    has_z ? zc.data_ptr<float>() : nullptr, bf.defined() ? bf.data_ptr<float>() : nullptr,
                    y.data_ptr<float>()};
  // ~32 KiB of packed weights per chunk
  const int64_t row_bytes = K / 32 * blocks::block_bytes(bits);
  const int64_t grain = std::max<int64_t>(1, (int64_t(32) << 10) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) { blocks::run(p, n0, n1); });
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}
