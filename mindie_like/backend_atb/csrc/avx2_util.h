// Helpers shared by the AVX2 kernels (bf16_gemv.cpp, norm.cpp, quant_gemm.cpp; one translation unit via module.cpp).
#pragma once
#include <immintrin.h>

// Sum of the 8 floats of v.
static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  __m128 s = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, s);
  s = _mm_add_ss(s, sh);
  return _mm_cvtss_f32(s);
}
