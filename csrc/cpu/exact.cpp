// SIMD versions of the exact kernel (bit-identical to l2.hpp's exact_l2) and what is built
// on them: exact_many / exact_pairs / exact_gather / exact_range, row_norms, row_distances,
// and the regularizer's power terms. Which path runs follows active_isa() (runtime.cpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "simd.hpp"

namespace usl_fast {
namespace cpu {

// ----------------------------------------------------------------------------- exact
namespace {

#ifdef USL_FAST_X86
// Four pairs at once (a[p] against b[p], p < 4; the a[p] may be one row): four independent
// add chains keep the FP units busy where one pair alone would wait on its adds' latency
// (one pair is latency-bound at about 3x the cost of a pair of four). The float32
// differences of 16 coordinates are split into two float64 halves, which go to lanes 0-7 in
// order, so lane l still sums t % 8 == l in ascending t.
__attribute__((target("avx512f,fma"))) void exact4_avx512(const float* const* a,
                                                          const float* const* b, idx_t d,
                                                          float* out) {
  __m512d acc[4];
  for (int p = 0; p < 4; ++p) acc[p] = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 16 <= d; t += 16) {
    for (int p = 0; p < 4; ++p) {
      const __m512 df = _mm512_sub_ps(_mm512_loadu_ps(a[p] + t), _mm512_loadu_ps(b[p] + t));
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(df));
      const __m512d hi =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(df), 1)));
      // lo * lo is exact in float64, so the fused multiply-add rounds like mul + add.
      acc[p] = _mm512_fmadd_pd(lo, lo, acc[p]);
      acc[p] = _mm512_fmadd_pd(hi, hi, acc[p]);
    }
  }
  if (t + 8 <= d) {
    for (int p = 0; p < 4; ++p) {
      const __m512d df =
          _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(a[p] + t), _mm256_loadu_ps(b[p] + t)));
      acc[p] = _mm512_fmadd_pd(df, df, acc[p]);
    }
    t += 8;
  }
  for (int p = 0; p < 4; ++p) {
    alignas(64) double s[8];
    _mm512_store_pd(s, acc[p]);
    for (int l = 0; t + l < d; ++l) {
      const double df = static_cast<double>(a[p][t + l] - b[p][t + l]);
      s[l] += df * df;
    }
    out[p] = static_cast<float>(exact_lanes_combine(s));
  }
}

// One pair (the last n % 4 of a batch).
__attribute__((target("avx512f,fma"))) float exact1_avx512(const float* a, const float* b,
                                                           idx_t d) {
  __m512d acc = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t)));
    acc = _mm512_fmadd_pd(df, df, acc);
  }
  alignas(64) double s[8];
  _mm512_store_pd(s, acc);
  for (int l = 0; t + l < d; ++l) {
    const double df = static_cast<double>(a[t + l] - b[t + l]);
    s[l] += df * df;
  }
  return static_cast<float>(exact_lanes_combine(s));
}

__attribute__((target("avx2,fma"))) float exact1_avx2(const float* a, const float* b, idx_t d) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 df = _mm256_sub_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t));
    const __m256d dl = _mm256_cvtps_pd(_mm256_castps256_ps128(df));
    const __m256d dh = _mm256_cvtps_pd(_mm256_extractf128_ps(df, 1));
    lo = _mm256_fmadd_pd(dl, dl, lo);
    hi = _mm256_fmadd_pd(dh, dh, hi);
  }
  alignas(32) double s[8];
  _mm256_store_pd(s, lo);
  _mm256_store_pd(s + 4, hi);
  for (int l = 0; t + l < d; ++l) {
    const double df = static_cast<double>(a[t + l] - b[t + l]);
    s[l] += df * df;
  }
  return static_cast<float>(exact_lanes_combine(s));
}

__attribute__((target("avx2,fma"))) void exact4_avx2(const float* const* a, const float* const* b,
                                                     idx_t d, float* out) {
  __m256d lo[4], hi[4];
  for (int p = 0; p < 4; ++p) lo[p] = hi[p] = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    for (int p = 0; p < 4; ++p) {
      const __m256 df = _mm256_sub_ps(_mm256_loadu_ps(a[p] + t), _mm256_loadu_ps(b[p] + t));
      const __m256d dl = _mm256_cvtps_pd(_mm256_castps256_ps128(df));
      const __m256d dh = _mm256_cvtps_pd(_mm256_extractf128_ps(df, 1));
      lo[p] = _mm256_fmadd_pd(dl, dl, lo[p]);
      hi[p] = _mm256_fmadd_pd(dh, dh, hi[p]);
    }
  }
  for (int p = 0; p < 4; ++p) {
    alignas(32) double s[8];
    _mm256_store_pd(s, lo[p]);
    _mm256_store_pd(s + 4, hi[p]);
    for (int l = 0; t + l < d; ++l) {
      const double df = static_cast<double>(a[p][t + l] - b[p][t + l]);
      s[l] += df * df;
    }
    out[p] = static_cast<float>(exact_lanes_combine(s));
  }
}
#endif

// Benchmark hook: with USL_FAST_COUNT_EXACT=1 in the environment, exact_many and
// exact_pairs count the pairs they evaluate (how many pairs a filter lets through); off,
// one predicted branch.
const bool g_count_exact = [] {
  const char* env = std::getenv("USL_FAST_COUNT_EXACT");
  return env && std::string(env) == "1";
}();
std::atomic<int64_t> g_exact_count{0};

}  // namespace

int64_t exact_evaluations() { return g_exact_count.load(); }

// exact_l2 of a against n rows given by pointers: four at a time on SIMD paths, the
// portable header kernel otherwise (and for the last n % 4).
void exact_many(int isa, const float* a, const float* const* b, idx_t n, idx_t d, float* out) {
  if (g_count_exact) g_exact_count.fetch_add(n, std::memory_order_relaxed);
  idx_t t = 0;
#ifdef USL_FAST_X86
  const float* const a4[4] = {a, a, a, a};
  if (isa == 2) {
    for (; t + 4 <= n; t += 4) exact4_avx512(a4, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx512(a, b[t], d);
  } else if (isa == 1) {
    for (; t + 4 <= n; t += 4) exact4_avx2(a4, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx2(a, b[t], d);
  }
#endif
  (void)isa;
  for (; t < n; ++t) out[t] = exact_l2(a, b[t], d);
}


void exact_pairs(int isa, const float* const* a, const float* const* b, idx_t n, idx_t d,
                 float* out) {
  if (g_count_exact) g_exact_count.fetch_add(n, std::memory_order_relaxed);
  idx_t t = 0;
#ifdef USL_FAST_X86
  if (isa == 2) {
    for (; t + 4 <= n; t += 4) exact4_avx512(a + t, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx512(a[t], b[t], d);
  } else if (isa == 1) {
    for (; t + 4 <= n; t += 4) exact4_avx2(a + t, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx2(a[t], b[t], d);
  }
#endif
  (void)isa;
  for (; t < n; ++t) out[t] = exact_l2(a[t], b[t], d);
}

void exact_gather(const float* a, const View& base, const int32_t* idx, idx_t n, float* out) {
  const int isa = active_isa();
  const float* ptr[64];
  for (idx_t t0 = 0; t0 < n; t0 += 64) {
    const idx_t m = std::min<idx_t>(64, n - t0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = base.row(idx[t0 + t]);
    exact_many(isa, a, ptr, m, base.cols, out + t0);
  }
}

void exact_range(const float* a, const View& base, idx_t j0, idx_t n, float* out) {
  const int isa = active_isa();
  const float* ptr[64];
  for (idx_t t0 = 0; t0 < n; t0 += 64) {
    const idx_t m = std::min<idx_t>(64, n - t0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = base.row(j0 + t0 + t);
    exact_many(isa, a, ptr, m, base.cols, out + t0);
  }
}

// ----------------------------------------------------------------------------- blocks
// exact_block: every row of a short list against every column row, for the epilogues that
// need (nearly) all pairs of a tile (the regularizer's power-sum). One row against 8 columns
// per step: the row's 8 coordinates are loaded once for 8 pairs, the 8 accumulators (lane l
// = coordinates t % 8 == l, ascending t, exactly exact_l2's lanes) combine into one vector
// of 8 results with shuffles and vector adds, and the tail of d is one more step on
// zero-filled loads (0 - 0 = 0 adds +0.0 to a lane, which leaves its bits as they are).
// What bounds the speed is the conversion: every pair converts its own d float32
// differences to float64 (docs/engine.md, "The exact regularizer").
namespace {

#ifdef USL_FAST_X86
// (s0 + s1), (s2 + s3), ... of two accumulators, interleaved: [a01 b01 a23 b23 a45 b45 a67 b67].
__attribute__((target("avx512f"))) inline __m512d pair_sums(__m512d a, __m512d b) {
  return _mm512_add_pd(_mm512_unpacklo_pd(a, b), _mm512_unpackhi_pd(a, b));
}

// exact_lanes_combine of 8 accumulators at once, as float32: every add is one of the adds of
// ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) for one pair, only gathered differently.
__attribute__((target("avx512f"))) inline __m256 combine8_avx512(const __m512d* acc) {
  const __m512d p01 = pair_sums(acc[0], acc[1]), p23 = pair_sums(acc[2], acc[3]);
  const __m512d p45 = pair_sums(acc[4], acc[5]), p67 = pair_sums(acc[6], acc[7]);
  // 128-bit lanes (x, y) of p01 are [01, 23, 45, 67] of accumulators 0 and 1; 0x88 takes
  // lanes 0 and 2 of each source, 0xDD lanes 1 and 3.
  const __m512d q0 = _mm512_add_pd(_mm512_shuffle_f64x2(p01, p23, 0x88),
                                   _mm512_shuffle_f64x2(p01, p23, 0xDD));  // 0123, 4567 of 0-3
  const __m512d q1 = _mm512_add_pd(_mm512_shuffle_f64x2(p45, p67, 0x88),
                                   _mm512_shuffle_f64x2(p45, p67, 0xDD));
  const __m512d s = _mm512_add_pd(_mm512_shuffle_f64x2(q0, q1, 0x88),
                                  _mm512_shuffle_f64x2(q0, q1, 0xDD));
  return _mm512_cvtpd_ps(s);
}

// One row a against the 8 rows b[0..8): out[0..8) (lanes of `store` only).
__attribute__((target("avx512f,fma"))) void row8_avx512(const float* a, const float* const* b,
                                                        idx_t d, float* out, __mmask16 store) {
  __m512d acc[8];
#pragma GCC unroll 8
  for (int p = 0; p < 8; ++p) acc[p] = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 va = _mm256_loadu_ps(a + t);
#pragma GCC unroll 8
    for (int p = 0; p < 8; ++p) {
      const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(va, _mm256_loadu_ps(b[p] + t)));
      acc[p] = _mm512_fmadd_pd(df, df, acc[p]);  // df * df is exact: rounds as mul + add
    }
  }
  if (t < d) {
    const __mmask16 m = static_cast<__mmask16>((1u << (d - t)) - 1u);
    const __m256 va = _mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, a + t));
#pragma GCC unroll 8
    for (int p = 0; p < 8; ++p) {
      const __m256 vb = _mm512_castps512_ps256(_mm512_maskz_loadu_ps(m, b[p] + t));
      const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(va, vb));
      acc[p] = _mm512_fmadd_pd(df, df, acc[p]);
    }
  }
  // (the upper half is never stored; zero it so that no lane is undefined)
  const __m256d v = _mm256_castps_pd(combine8_avx512(acc));
  _mm512_mask_storeu_ps(out, store, _mm512_castpd_ps(_mm512_insertf64x4(_mm512_setzero_pd(), v, 0)));
}

// The same combine for 4 pairs of two 4-lane halves (lanes 0-3 in lo, 4-7 in hi).
__attribute__((target("avx2"))) inline __m128 combine4_avx2(const __m256d* lo, const __m256d* hi) {
  __m256d q[2];
  for (int h = 0; h < 2; ++h) {
    // [a01 b01 a23 b23] and [a45 b45 a67 b67] of pairs a = 2h, b = 2h + 1
    const __m256d x = _mm256_hadd_pd(lo[2 * h], lo[2 * h + 1]);
    const __m256d y = _mm256_hadd_pd(hi[2 * h], hi[2 * h + 1]);
    q[h] = _mm256_add_pd(_mm256_permute2f128_pd(x, y, 0x20), _mm256_permute2f128_pd(x, y, 0x31));
  }
  // q[h] = [a0123 b0123 a4567 b4567]
  return _mm256_cvtpd_ps(_mm256_add_pd(_mm256_permute2f128_pd(q[0], q[1], 0x20),
                                       _mm256_permute2f128_pd(q[0], q[1], 0x31)));
}

// 8 coordinates of a against 4 rows: lanes 0-3 of each pair to lo, 4-7 to hi.
__attribute__((target("avx2,fma"))) inline void step4_avx2(__m256 va, const __m256* vb,
                                                           __m256d* lo, __m256d* hi) {
  for (int p = 0; p < 4; ++p) {
    const __m256 df = _mm256_sub_ps(va, vb[p]);
    const __m256d dl = _mm256_cvtps_pd(_mm256_castps256_ps128(df));
    const __m256d dh = _mm256_cvtps_pd(_mm256_extractf128_ps(df, 1));
    lo[p] = _mm256_fmadd_pd(dl, dl, lo[p]);
    hi[p] = _mm256_fmadd_pd(dh, dh, hi[p]);
  }
}

// One row a against the 4 rows b[0..4): out[0..n) (n <= 4).
__attribute__((target("avx2,fma"))) void row4_avx2(const float* a, const float* const* b, idx_t d,
                                                   float* out, int n) {
  __m256d lo[4], hi[4];
  for (int p = 0; p < 4; ++p) lo[p] = hi[p] = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    __m256 vb[4];
    for (int p = 0; p < 4; ++p) vb[p] = _mm256_loadu_ps(b[p] + t);
    step4_avx2(_mm256_loadu_ps(a + t), vb, lo, hi);
  }
  if (t < d) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(d - t)), lane);
    __m256 vb[4];
    for (int p = 0; p < 4; ++p) vb[p] = _mm256_maskload_ps(b[p] + t, m);
    step4_avx2(_mm256_maskload_ps(a + t, m), vb, lo, hi);
  }
  const __m128 r = combine4_avx2(lo, hi);
  if (n == 4) {
    _mm_storeu_ps(out, r);
  } else {
    alignas(16) float v[4];
    _mm_store_ps(v, r);
    for (int p = 0; p < n; ++p) out[p] = v[p];
  }
}
#endif

// All of the `w` (<= 8) flags at f set.
inline bool all_set(const uint8_t* f, idx_t w) {
  for (idx_t c = 0; c < w; ++c)
    if (!f[c]) return false;
  return true;
}

}  // namespace

idx_t exact_block(const float* const* a, idx_t na, const float* const* b, idx_t nb, idx_t d,
                  const uint8_t* skip, idx_t lds, float* out, idx_t ldo) {
  const int isa = active_isa();
  idx_t skipped = 0;
  idx_t c0 = 0;  // the columns before c0 are done for every row
#ifdef USL_FAST_X86
  // Columns outer, rows inner: a group's 4 or 8 column rows (2-4 KB at d = 128) stay in L1
  // for all the rows of the block, where rows outer streamed the whole tile's columns (128
  // KB, beyond L1) from L2 once per row, and the loads, not the arithmetic, set the pace.
  const idx_t g = isa == 2 ? 8 : isa == 1 ? 4 : 0;
  if (g > 0) {
    for (; c0 < nb; c0 += g) {
      const idx_t w = std::min<idx_t>(g, nb - c0);
      // the last columns: lanes past nb repeat the last column and are not stored
      const float* bp[8];
      for (idx_t p = 0; p < g; ++p) bp[p] = b[c0 + std::min(p, w - 1)];
      for (idx_t u = 0; u < na; ++u) {
        if (skip && all_set(skip + u * lds + c0, w)) {
          skipped += w;
          continue;
        }
        float* ou = out + u * ldo + c0;
        if (isa == 2)
          row8_avx512(a[u], bp, d, ou, static_cast<__mmask16>((1u << w) - 1u));
        else
          row4_avx2(a[u], bp, d, ou, static_cast<int>(w));
      }
    }
  }
#endif
  (void)isa;
  for (idx_t u = 0; u < na; ++u) {
    const uint8_t* su = skip ? skip + u * lds : nullptr;
    float* ou = out + u * ldo;
    for (idx_t c = c0; c < nb; ++c) {
      if (su && su[c]) {
        ++skipped;
        continue;
      }
      ou[c] = exact_l2(a[u], b[c], d);
    }
  }
  return na * nb - skipped;
}

namespace {

inline double power_term(float dv, bool far, double alpha, float horizon, bool mask_zero,
                         double far_term) {
  if (far || dv >= horizon || (mask_zero && dv == 0.0f)) return far_term;
  const double v = static_cast<double>(dv);
  if (alpha == 0.5) return 1.0 / std::sqrt(v);
  if (alpha == 1.0) return 1.0 / v;
  return std::pow(v, -alpha);
}

#ifdef USL_FAST_X86
__attribute__((target("avx512f"))) void power_terms_avx512(const float* dv, const uint8_t* far,
                                                           idx_t n, bool half, float horizon,
                                                           bool mask_zero, double far_term,
                                                           double* out) {
  const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
  const __m512d hz = _mm512_set1_pd(static_cast<double>(horizon)), ft = _mm512_set1_pd(far_term);
  for (idx_t c = 0; c < n; c += 8) {
    const idx_t left = n - c;
    const __mmask8 live = left >= 8 ? static_cast<__mmask8>(0xFF)
                                    : static_cast<__mmask8>((1u << left) - 1u);
    // masked-off lanes read 1.0: any finite positive value, discarded below
    const __m512d v = _mm512_cvtps_pd(_mm512_castps512_ps256(
        _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), static_cast<__mmask16>(live), dv + c)));
    uint64_t fb = 0;
    std::memcpy(&fb, far + c, static_cast<size_t>(left >= 8 ? 8 : left));
    __mmask8 m = _mm512_test_epi64_mask(_mm512_cvtepu8_epi64(_mm_cvtsi64_si128(static_cast<long long>(fb))),
                                        _mm512_set1_epi64(0xFF));
    m |= _mm512_cmp_pd_mask(v, hz, _CMP_GE_OQ);
    if (mask_zero) m |= _mm512_cmp_pd_mask(v, zero, _CMP_EQ_OQ);
    const __m512d t = _mm512_div_pd(one, half ? _mm512_sqrt_pd(v) : v);
    _mm512_mask_storeu_pd(out + c, live, _mm512_mask_blend_pd(m, t, ft));
  }
}

__attribute__((target("avx2"))) void power_terms_avx2(const float* dv, const uint8_t* far, idx_t n,
                                                      bool half, float horizon, bool mask_zero,
                                                      double far_term, double* out) {
  const __m256d one = _mm256_set1_pd(1.0), zero = _mm256_setzero_pd();
  const __m256d hz = _mm256_set1_pd(static_cast<double>(horizon)), ft = _mm256_set1_pd(far_term);
  idx_t c = 0;
  for (; c + 4 <= n; c += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(dv + c));
    int32_t fb = 0;
    std::memcpy(&fb, far + c, 4);
    const __m256i f = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(fb));
    __m256d m = _mm256_castsi256_pd(_mm256_cmpgt_epi64(f, _mm256_setzero_si256()));
    m = _mm256_or_pd(m, _mm256_cmp_pd(v, hz, _CMP_GE_OQ));
    if (mask_zero) m = _mm256_or_pd(m, _mm256_cmp_pd(v, zero, _CMP_EQ_OQ));
    const __m256d t = _mm256_div_pd(one, half ? _mm256_sqrt_pd(v) : v);
    _mm256_storeu_pd(out + c, _mm256_blendv_pd(t, ft, m));
  }
  for (; c < n; ++c)
    out[c] = power_term(dv[c], far[c] != 0, half ? 0.5 : 1.0, horizon, mask_zero, far_term);
}
#endif

}  // namespace

void power_terms(const float* dv, const uint8_t* far, idx_t n, double alpha, float horizon,
                 bool mask_zero, double far_term, double* out) {
#ifdef USL_FAST_X86
  if (active_isa() == 2 && (alpha == 0.5 || alpha == 1.0))
    return power_terms_avx512(dv, far, n, alpha == 0.5, horizon, mask_zero, far_term, out);
  if (active_isa() == 1 && (alpha == 0.5 || alpha == 1.0))
    return power_terms_avx2(dv, far, n, alpha == 0.5, horizon, mask_zero, far_term, out);
#endif
  for (idx_t c = 0; c < n; ++c)
    out[c] = power_term(dv[c], far[c] != 0, alpha, horizon, mask_zero, far_term);
}

void row_norms(const View& x, float* out, const Context& ctx) {
  // exact_l2 against the zero vector: fl(0 - b_t) = -b_t, the same square.
  const std::vector<float> zero(static_cast<size_t>(x.cols), 0.0f);
  row_distances(x, zero.data(), out, ctx);
}

void row_distances(const View& x, const float* a, float* out, const Context& ctx) {
  const idx_t d = x.cols;
  const int isa = active_isa();
  const idx_t blocks = (x.rows + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(ctx.threads)
  for (idx_t b = 0; b < blocks; ++b) {
    const float* ptr[64];
    const idx_t i0 = b * 64, m = std::min<idx_t>(64, x.rows - i0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = x.row(i0 + t);
    exact_many(isa, a, ptr, m, d, out + i0);
  }
}

}  // namespace cpu
}  // namespace usl_fast
