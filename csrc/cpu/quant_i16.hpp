// The int16 image of a (centred) row for the integer filter GEMMs (gemm_avx2.cpp): a
// per-row power-of-two scale chosen from the row's norm, the rounding to integers, and the
// measurement of that rounding (kappa) that the filter's bound rests on (docs/engine.md,
// "AVX2: the filter in int16"). Plain AVX2 so that any x86 kernel with integer products
// (vpmaddwd here; vpdpwssd on AVX-512 VNNI) can share it.
// The AVX-512 int16 kernel (gemm_lowp.cpp) still has its own quantizer, to_i16 (gemm.hpp):
// one power-of-two scale per row AND per 512-coordinate pass, chosen from the maximum. Both
// are rigorous under the same bound (lowp_rel); they were written in parallel and are not
// unified yet, because switching the vpdpwssd kernel to one scale per row changes its
// epilogue and fallback rules and needs its own proof and tests (docs/engine.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.hpp"

namespace usl_fast {
namespace cpu {

#ifdef USL_FAST_X86
// The scaled row's squared norm is at most 2^29 (norm 2^14.5): with the rounding added,
// ||x'|| <= 2^14.5 + sqrt(d) / 2 < 2^15 - 1 for d <= kI16MaxCols, so no coordinate is -2^15
// (vpmaddwd's one overflowing pair) and every partial integer dot product, in any order, is
// at most ||a'|| ||b'|| < 2^30 by Cauchy-Schwarz: the int32 sums are exact.
constexpr idx_t kI16MaxCols = idx_t(1) << 24;
// Scales 2^k with |k| <= 60: 2^-(ka + kb) is a normal float32 and so is any nonzero
// product scaled by it (|int| >= 1), so the only rounding after the exact integer sum is
// the int32 -> float32 conversion. Rows outside (centred squared norms below ~2^-93) make
// the tile fall back to float32.
constexpr int kI16MaxShift = 60;

// The scale exponent k of a row: the largest with ||v||^2 4^k <= 2^29 (so ||v 2^k||^2 is in
// (2^27 (1 - 2^-40), 2^29]); 0 for a zero row. ||v||^2 is summed in float64 (each square of
// a float32 is exact there and cannot underflow), with a d 2^-52 margin for the sum.
__attribute__((target("avx2,fma"))) inline int i16_shift(const float* x, const float* c,
                                                        idx_t d) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + t), _mm256_loadu_ps(c + t));
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    s0 = _mm256_fmadd_pd(lo, lo, s0);
    s1 = _mm256_fmadd_pd(hi, hi, s1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(s0, s1));
  double ns = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  for (; t < d; ++t) {
    const double v = static_cast<double>(x[t] - c[t]);
    ns += v * v;
  }
  if (!(ns > 0.0)) return 0;
  int e = 0;
  std::frexp(ns * (1.0 + static_cast<double>(d) * 0x1p-52), &e);  // ns_up < 2^e
  // k = floor((29 - e) / 2): ns_up 4^k < 2^(2k + e) <= 2^29.
  const int num = 29 - e;
  return num >= 0 ? num / 2 : -((1 - num) / 2);
}

// Coordinates [0, kc) of the row, w = fl(x - c) 2^k (exact: a power of two and no
// underflow), rounded to the nearest integer (ties to even) into out[0, kp) (zero padded).
// Adds this pass's ||w - x'||^2 and ||w||^2, summed in float32 (each difference w - x' is
// exact), to res2 and norm2; kc 2^-125 covers squares that underflow. KappaMax turns the
// two into the row's kappa^2 bound.
__attribute__((target("avx2,fma"))) inline void quantize_i16(const float* x, const float* c,
                                                            idx_t kc, idx_t kp, float scale,
                                                            int16_t* out, double& res2,
                                                            double& norm2) {
  const __m256 s = _mm256_set1_ps(scale);
  __m256 r2 = _mm256_setzero_ps(), n2 = _mm256_setzero_ps();
  alignas(32) static const int32_t kLanes[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                                 8, 9, 10, 11, 12, 13, 14, 15};
  const __m256i lanes0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes));
  const __m256i lanes1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes + 8));
  for (idx_t t = 0; t < kc; t += 16) {
    const idx_t left = kc - t;
    __m256i q[2];
    for (int h = 0; h < 2; ++h) {
      __m256 v;
      if (left >= 16) {
        v = _mm256_sub_ps(_mm256_loadu_ps(x + t + 8 * h), _mm256_loadu_ps(c + t + 8 * h));
      } else {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)),
                                             h ? lanes1 : lanes0);
        v = _mm256_sub_ps(_mm256_maskload_ps(x + t + 8 * h, m),
                          _mm256_maskload_ps(c + t + 8 * h, m));
      }
      const __m256 w = _mm256_mul_ps(v, s);
      q[h] = _mm256_cvtps_epi32(w);  // MXCSR's default rounding: nearest, ties to even
      const __m256 e = _mm256_sub_ps(w, _mm256_cvtepi32_ps(q[h]));
      r2 = _mm256_fmadd_ps(e, e, r2);
      n2 = _mm256_fmadd_ps(w, w, n2);
    }
    // packs works per 128-bit lane: (q0 0-3, q1 0-3 | q0 4-7, q1 4-7); put the 64-bit
    // quarters back in coordinate order.
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
    if (left >= 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), p);
    } else {
      alignas(32) int16_t tmp[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), p);
      std::memcpy(out + t, tmp, sizeof(int16_t) * left);
    }
  }
  for (idx_t t = kc; t < kp; ++t) out[t] = 0;
  alignas(32) float lr[8], ln[8];
  _mm256_store_ps(lr, r2);
  _mm256_store_ps(ln, n2);
  double sr = 0.0, sn = 0.0;
  for (int l = 0; l < 8; ++l) {
    sr += lr[l];
    sn += ln[l];
  }
  res2 += sr + static_cast<double>(kc) * 0x1p-125;
  norm2 += sn;
}
#endif  // USL_FAST_X86

}  // namespace cpu
}  // namespace usl_fast
