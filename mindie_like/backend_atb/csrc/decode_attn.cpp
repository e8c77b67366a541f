// Decode-step attention for float32 or bf16 activations and KV cache (AVX2 + FMA; bf16 widened to float32 on load,
// float32 math, results rounded to bf16 once, to nearest even), one call per layer instead of ~12 torch ops: rotary embedding of q and k (neox / rotate-half style), the new k and v written to their paged-cache slots,
// and attention of each sequence's one query row over its cached keys (GQA, optional sliding window).
// Why: on a single decode stream the torch version of these steps (rope tables, rope, two index_copy_, the paged
// gather, SDPA) was ~40% of the step time outside the matmuls on the AVX2 hosts (py-spy), mostly per-op dispatch
// on tensors of a few hundred floats; here the keys are read in place through the block table (no gather).
// Also silu(gate) * up of the MLP in one pass.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "avx2_util.h"
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline float to_f32(float x) { return x; }
inline float to_f32(at::BFloat16 x) { return static_cast<float>(x); }
inline void store(float* p, float v) { *p = v; }
inline void store(at::BFloat16* p, float v) { *p = at::BFloat16(v); }       // round to nearest even

template <typename T>
inline float dot_f32(const float* a, const T* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc);
  float r = hsum256(acc);
  for (; i < n; ++i) r += a[i] * to_f32(b[i]);
  return r;
}

// out = rotate(x) for one head of D floats: out[i] = x[i] c[i] - x[i + D/2] s[i], out[i + D/2] = x[i + D/2] c[i] +
// x[i] s[i] (c, s: the D/2 cos / sin of this position), as TorchOps.rope_heads computes it.
template <typename T>
inline void rope_head(const T* x, const float* c, const float* s, float* out, int64_t D) {
  const int64_t h = D / 2;
  int64_t i = 0;
  for (; i + 8 <= h; i += 8) {
    const __m256 x1 = load8(x + i), x2 = load8(x + h + i);
    const __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
    _mm256_storeu_ps(out + i, _mm256_fnmadd_ps(x2, sv, _mm256_mul_ps(x1, cv)));
    _mm256_storeu_ps(out + h + i, _mm256_fmadd_ps(x1, sv, _mm256_mul_ps(x2, cv)));
  }
  for (; i < h; ++i) {
    const float x1 = to_f32(x[i]), x2 = to_f32(x[h + i]);
    out[i] = std::fma(-x2, s[i], x1 * c[i]);
    out[h + i] = std::fma(x1, s[i], x2 * c[i]);
  }
}

void check_rows(const torch::Tensor& t, int64_t T, int64_t H, int64_t D, at::ScalarType dt, const char* what) {
  TORCH_CHECK(t.scalar_type() == dt && t.dim() == 3 && t.size(0) == T && t.size(1) == H && t.size(2) == D &&
              t.stride(2) == 1 && t.stride(1) == D, what, ": ", dt == at::kFloat ? "float32" : "bf16",
              " [T, heads, D] with contiguous heads");
}

}  // namespace

// q [T, Hq, D], k / v [T, Hk, D] (float32; rows may be strided views of a fused qkv output, heads contiguous);
// k_cache / v_cache [num_blocks, block_size, Hk, D] float32; cos_sin [max_pos, D] float32 (cat(cos, sin) of the D/2
// frequencies); positions, slot_mapping [T] int64; block_tables [T, max_blocks] int32; context_lens [T] int64 (row t
// is sequence t: a decode step); window: keys within the last `window` positions only (0: all). Returns o
// [T, Hq * D] float32 and leaves the rotated k and the v of each row in its cache slot.
// The same for a bf16 cache and bf16 q / k / v (returns bf16): rope_attention_decode_bf16.
template <typename Scalar>
torch::Tensor rope_attention_decode_impl(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor k_cache,
                                         torch::Tensor v_cache, torch::Tensor cos_sin, torch::Tensor positions,
                                         torch::Tensor slot_mapping, torch::Tensor block_tables,
                                         torch::Tensor context_lens, int64_t window, double scale) {
  const at::ScalarType dt = c10::CppTypeToScalarType<Scalar>::value;
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2), Hk = k.size(1);
  check_rows(q, T, Hq, D, dt, "q");
  check_rows(k, T, Hk, D, dt, "k");
  check_rows(v, T, Hk, D, dt, "v");
  TORCH_CHECK(D % 2 == 0 && Hk > 0 && Hq % Hk == 0, "head_dim even, query heads a multiple of kv heads");
  TORCH_CHECK(k_cache.scalar_type() == dt && k_cache.is_contiguous() && k_cache.dim() == 4 &&
              k_cache.size(2) == Hk && k_cache.size(3) == D && v_cache.sizes() == k_cache.sizes() &&
              v_cache.scalar_type() == dt && v_cache.is_contiguous(),
              "caches: contiguous ", dt == at::kFloat ? "float32" : "bf16", " [blocks, block_size, Hk, D]");
  TORCH_CHECK(cos_sin.scalar_type() == at::kFloat && cos_sin.is_contiguous() && cos_sin.dim() == 2 &&
              cos_sin.size(1) == D, "cos_sin: contiguous float32 [max_pos, D]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == T && positions.is_contiguous() &&
              slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == T && slot_mapping.is_contiguous() &&
              context_lens.scalar_type() == at::kLong && context_lens.numel() == T && context_lens.is_contiguous(),
              "positions, slot_mapping, context_lens: contiguous int64 [T]");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && block_tables.dim() == 2 && block_tables.size(0) == T &&
              block_tables.is_contiguous(), "block_tables: contiguous int32 [T, max_blocks]");
  const int64_t bs = k_cache.size(1), nslots = k_cache.size(0) * bs, max_pos = cos_sin.size(0);
  const int64_t G = Hq / Hk, maxb = block_tables.size(1), half = D / 2;
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* slots = slot_mapping.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int32_t* bt = block_tables.data_ptr<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_pos, "position ", pos[t], " outside the rotary table");
    TORCH_CHECK(slots[t] >= 0 && slots[t] < nslots, "slot ", slots[t], " outside the cache");
    TORCH_CHECK(lens[t] >= 1 && lens[t] <= maxb * bs, "context length ", lens[t], " outside the block table");
  }
  auto out = torch::empty({T, Hq * D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  const Scalar* qp = q.data_ptr<Scalar>();
  const Scalar* kp = k.data_ptr<Scalar>();
  const Scalar* vp = v.data_ptr<Scalar>();
  Scalar* kc = k_cache.data_ptr<Scalar>();
  Scalar* vc = v_cache.data_ptr<Scalar>();
  const float* cs = cos_sin.data_ptr<float>();
  Scalar* op = out.data_ptr<Scalar>();
  const int64_t qs = q.stride(0), ks = k.stride(0), vs = v.stride(0);
  const float sc = float(scale);
  int64_t longest = 1;
  for (int64_t t = 0; t < T; ++t) longest = std::max(longest, lens[t]);
  // one task per (sequence, kv head); a single short sequence stays on one thread
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, longest * D * (G + 1)));
  at::parallel_for(0, T * Hk, grain, [&](int64_t a, int64_t b) {
    std::vector<float> qr(G * D), w, kr(D), orow(D);
    for (int64_t task = a; task < b; ++task) {
      const int64_t t = task / Hk, h = task % Hk;
      const float* c = cs + pos[t] * D;
      const float* s = c + half;
      // this row's key (rotated) and value into its slot: the query attends to itself
      rope_head(kp + t * ks + h * D, c, s, kr.data(), D);
      for (int64_t i = 0; i < D; ++i) store(kc + (slots[t] * Hk + h) * D + i, kr[i]);
      std::copy(vp + t * vs + h * D, vp + t * vs + (h + 1) * D, vc + (slots[t] * Hk + h) * D);
      for (int64_t g = 0; g < G; ++g) rope_head(qp + t * qs + (h * G + g) * D, c, s, qr.data() + g * D, D);
      const int64_t L = lens[t], start = window > 0 ? std::max<int64_t>(0, L - window) : 0, n = L - start;
      const int32_t* tab = bt + t * maxb;
      w.assign(G * n, 0.0f);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t p = start + j;
        const Scalar* key = kc + ((int64_t(tab[p / bs]) * bs + p % bs) * Hk + h) * D;
        for (int64_t g = 0; g < G; ++g) w[g * n + j] = dot_f32(qr.data() + g * D, key, D) * sc;
      }
      for (int64_t g = 0; g < G; ++g) {          // softmax over the n scores of query head g
        float* wg = w.data() + g * n;
        float mx = wg[0];
        for (int64_t j = 1; j < n; ++j) mx = std::max(mx, wg[j]);
        const __m256 vmx = _mm256_set1_ps(mx);
        __m256 vsum = _mm256_setzero_ps();
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) {
          const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(wg + j), vmx));
          _mm256_storeu_ps(wg + j, e);
          vsum = _mm256_add_ps(vsum, e);
        }
        float sum = hsum256(vsum);
        for (; j < n; ++j) {
          wg[j] = std::exp(wg[j] - mx);
          sum += wg[j];
        }
        const float inv = 1.0f / sum;
        for (j = 0; j < n; ++j) wg[j] *= inv;
      }
      for (int64_t g = 0; g < G; ++g) {          // o = sum_j w_j v_j, D floats per query head
        float* o = orow.data();
        const float* wg = w.data() + g * n;
        int64_t i = 0;
        for (; i + 32 <= D; i += 32) {
          __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
          for (int64_t j = 0; j < n; ++j) {
            const int64_t p = start + j;
            const Scalar* val = vc + ((int64_t(tab[p / bs]) * bs + p % bs) * Hk + h) * D + i;
            const __m256 wj = _mm256_set1_ps(wg[j]);
            a0 = _mm256_fmadd_ps(wj, load8(val), a0);
            a1 = _mm256_fmadd_ps(wj, load8(val + 8), a1);
            a2 = _mm256_fmadd_ps(wj, load8(val + 16), a2);
            a3 = _mm256_fmadd_ps(wj, load8(val + 24), a3);
          }
          _mm256_storeu_ps(o + i, a0);
          _mm256_storeu_ps(o + i + 8, a1);
          _mm256_storeu_ps(o + i + 16, a2);
          _mm256_storeu_ps(o + i + 24, a3);
        }
        for (; i < D; ++i) {
          float acc = 0.0f;
          for (int64_t j = 0; j < n; ++j) {
            const int64_t p = start + j;
            acc += wg[j] * to_f32(vc[((int64_t(tab[p / bs]) * bs + p % bs) * Hk + h) * D + i]);
          }
          o[i] = acc;
        }
        Scalar* dst = op + t * Hq * D + (h * G + g) * D;
        for (int64_t i = 0; i < D; ++i) store(dst + i, o[i]);
      }
    }
  });
  return out;
}

torch::Tensor rope_attention_decode_f32(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor k_cache,
                                        torch::Tensor v_cache, torch::Tensor cos_sin, torch::Tensor positions,
                                        torch::Tensor slot_mapping, torch::Tensor block_tables,
                                        torch::Tensor context_lens, int64_t window, double scale) {
  return rope_attention_decode_impl<float>(q, k, v, k_cache, v_cache, cos_sin, positions, slot_mapping,
                                           block_tables, context_lens, window, scale);
}

torch::Tensor rope_attention_decode_bf16(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor k_cache,
                                         torch::Tensor v_cache, torch::Tensor cos_sin, torch::Tensor positions,
                                         torch::Tensor slot_mapping, torch::Tensor block_tables,
                                         torch::Tensor context_lens, int64_t window, double scale) {
  return rope_attention_decode_impl<at::BFloat16>(q, k, v, k_cache, v_cache, cos_sin, positions, slot_mapping,
                                                  block_tables, context_lens, window, scale);
}

// x [T, 2I] float32 (gate | up) -> silu(gate) * up [T, I], silu(g) = g / (1 + exp(-g)).
torch::Tensor silu_mul_f32(torch::Tensor x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0,
              "x: contiguous float32 [T, 2I]");
  const int64_t T = x.size(0), I = x.size(1) / 2;
  auto y = torch::empty({T, I}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (int64_t t = 0; t < T; ++t) {
    const float* g = xp + t * 2 * I;
    const float* u = g + I;
    float* o = yp + t * I;
    int64_t i = 0;
    for (; i + 8 <= I; i += 8) {
      const __m256 gv = _mm256_loadu_ps(g + i);
      const __m256 e = exp256(_mm256_sub_ps(zero, gv));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < I; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
  return y;
}
