// SIMD versions of the exact kernel (bit-identical to l2.hpp's exact_l2) and what is built
// on them: exact_many / exact_gather / exact_range, row_norms, row_distances, and the
// regularizer's power terms. Which path runs follows active_isa() (runtime.cpp).
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
// Four pairs at once (a against b[0..3]): four independent add chains keep the FP units
// busy where one pair alone would wait on its adds' latency. The float32 differences of 16
// coordinates are split into two float64 halves, which go to lanes 0-7 in order, so lane l
// still sums t % 8 == l in ascending t.
__attribute__((target("avx512f,fma"))) void exact4_avx512(const float* a, const float* const* b,
                                                      idx_t d, float* out) {
  __m512d acc[4];
  for (int p = 0; p < 4; ++p) acc[p] = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 16 <= d; t += 16) {
    const __m512 va = _mm512_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m512 df = _mm512_sub_ps(va, _mm512_loadu_ps(b[p] + t));
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(df));
      const __m512d hi =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(df), 1)));
      // lo * lo is exact in float64, so the fused multiply-add rounds like mul + add.
      acc[p] = _mm512_fmadd_pd(lo, lo, acc[p]);
      acc[p] = _mm512_fmadd_pd(hi, hi, acc[p]);
    }
  }
  if (t + 8 <= d) {
    const __m256 va = _mm256_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(va, _mm256_loadu_ps(b[p] + t)));
      acc[p] = _mm512_fmadd_pd(df, df, acc[p]);
    }
    t += 8;
  }
  for (int p = 0; p < 4; ++p) {
    alignas(64) double s[8];
    _mm512_store_pd(s, acc[p]);
    for (int l = 0; t + l < d; ++l) {
      const double df = static_cast<double>(a[t + l] - b[p][t + l]);
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

__attribute__((target("avx2,fma"))) void exact4_avx2(const float* a, const float* const* b, idx_t d,
                                                 float* out) {
  __m256d lo[4], hi[4];
  for (int p = 0; p < 4; ++p) lo[p] = hi[p] = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 va = _mm256_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m256 df = _mm256_sub_ps(va, _mm256_loadu_ps(b[p] + t));
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
      const double df = static_cast<double>(a[t + l] - b[p][t + l]);
      s[l] += df * df;
    }
    out[p] = static_cast<float>(exact_lanes_combine(s));
  }
}
#endif

// Benchmark hook: with USL_FAST_COUNT_EXACT=1 in the environment, exact_many counts the
// pairs it evaluates (how many pairs a filter lets through); off, one predicted branch.
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
  if (isa == 2) {
    for (; t + 4 <= n; t += 4) exact4_avx512(a, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx512(a, b[t], d);
  } else if (isa == 1) {
    for (; t + 4 <= n; t += 4) exact4_avx2(a, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx2(a, b[t], d);
  }
#endif
  (void)isa;
  for (; t < n; ++t) out[t] = exact_l2(a, b[t], d);
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
#endif

}  // namespace

void power_terms(const float* dv, const uint8_t* far, idx_t n, double alpha, float horizon,
                 bool mask_zero, double far_term, double* out) {
#ifdef USL_FAST_X86
  if (active_isa() == 2 && (alpha == 0.5 || alpha == 1.0))
    return power_terms_avx512(dv, far, n, alpha == 0.5, horizon, mask_zero, far_term, out);
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
