// The top-k filter scan (scan_topk) and the arg-min candidates: which pairs of a tile pass
// the filter's lower bound and go on to exact evaluation (exact_pairs, exact.cpp). SIMD per
// active_isa() (runtime.cpp).
#include <algorithm>
#include <cstring>
#include <limits>

#include "simd.hpp"

namespace usl_fast {
namespace cpu {

// ----------------------------------------------------------------------------- top-k scan
namespace {

// Pairs whose lower bound passed a threshold wait in `Pending` and are evaluated four at a
// time (exact_pairs: four independent pairs per SIMD call, which may belong to different tile
// rows), then each is kept on every side whose threshold its exact value still passes. A
// tile row's end evaluates the whole groups of four; what is left waits for the next row,
// and the tile's end evaluates everything. A pair evaluated alone costs about three times a
// pair evaluated beside three others (its adds wait on each other), and a row of a tile
// offers fewer than one pair on average. While pairs wait, the thresholds their pushes would
// lower stay stale (up to the tile's end for the last few), which only adds evaluations,
// never changes the result.
struct Pending {
  static constexpr int kCap = 32;
  const float* a[kCap + 16];    // the pair's row
  const float* ptr[kCap + 16];  // its column row
  idx_t row[kCap + 16], col[kCap + 16];
  float v[kCap + 16];
  int n = 0;
  idx_t last = -1;  // the tile row of the latest offer
};

// Evaluates and keeps the pending pairs: all of them, or (all = false) the largest multiple
// of four, the rest moved to the front.
inline void flush(int isa, const Tile& t, TopK* rows, idx_t row_off, TopK* cols, Pending& p,
                  bool all) {
  const int m = all ? p.n : p.n - p.n % 4;
  if (!m) return;
  exact_pairs(isa, p.a, p.ptr, m, t.cols.cols, p.v);
  for (int u = 0; u < m; ++u) {
    const idx_t r = p.row[u], i = t.i0 + r, j = t.j0 + p.col[u];
    if (p.v[u] <= rows->thresholds()[row_off + r])
      rows->push(row_off + r, p.v[u], static_cast<int32_t>(j));
    if (cols && p.v[u] <= cols->thresholds()[j]) cols->push(j, p.v[u], static_cast<int32_t>(i));
  }
  for (int u = m; u < p.n; ++u) {
    p.a[u - m] = p.a[u];
    p.ptr[u - m] = p.ptr[u];
    p.row[u - m] = p.row[u];
    p.col[u - m] = p.col[u];
  }
  p.n -= m;
}

// Asks for a row's first 4 KiB in cache. An offered pair is evaluated at its row's end at
// the earliest (or as soon as 32 pairs wait), usually a few hundred cycles later; with a
// GEMM that reads the rows' int16 images the float rows are not in cache otherwise, and
// measured, the evaluations then waited on them (exact1_avx2: 3 % of the AVX2 kNN's samples
// before the images, 10 % with them and no prefetch).
inline void prefetch_row(const float* row, idx_t d) {
  const char* p = reinterpret_cast<const char*>(row);
  const idx_t bytes = std::min<idx_t>(4 * d, 4096);
  for (idx_t o = 0; o < bytes + 63; o += 64) __builtin_prefetch(p + o, 0, 3);
}

inline void offer(int isa, const Tile& t, idx_t r, idx_t c, unsigned bits, TopK* rows,
                  idx_t row_off, TopK* cols, Pending& p) {
  const float* a = t.rows.row(t.i0 + r);
  if (p.last != r) {
    prefetch_row(a, t.rows.cols);
    p.last = r;
  }
  while (bits) {
    const int b = __builtin_ctz(bits);
    bits &= bits - 1;
    p.a[p.n] = a;
    p.row[p.n] = r;
    p.col[p.n] = c + b;
    p.ptr[p.n++] = t.cols.row(t.j0 + c + b);
    prefetch_row(p.ptr[p.n - 1], t.cols.cols);
    if (cols) cols->prefetch_slot(t.j0 + c + b);
  }
  if (p.n >= Pending::kCap) flush(isa, t, rows, row_off, cols, p, false);
}

void scan_portable(const Tile& t, TopK* rows, idx_t row_off, TopK* cols, int isa,
                   idx_t c_begin, idx_t r_begin, idx_t r_end, Pending& p) {
  for (idx_t r = r_begin; r < r_end; ++r) {
    for (idx_t c = c_begin; c < t.nj; ++c) {
      const float l = t.lower(r, c);
      if (l <= rows->thresholds()[row_off + r] || (cols && l <= cols->thresholds()[t.j0 + c]))
        offer(isa, t, r, c, 1u, rows, row_off, cols, p);
    }
    flush(isa, t, rows, row_off, cols, p, false);
  }
}

#ifdef USL_FAST_X86
// 16 lanes a step: the same roundings as scan_portable, one compare against the row
// threshold and one against the 16 column thresholds; almost every step rejects all lanes.
// Lower bounds of 16 pairs of tile row r, columns c .. c + 15 (lanes in `live`): the same
// roundings as Tile::lower.
__attribute__((target("avx512f"))) inline __m512 lower16(const Tile& t, const float* ip, __m512 xn,
                                                        idx_t c, __mmask16 live) {
  const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
  const __m512 e =
      _mm512_sub_ps(s, _mm512_mul_ps(_mm512_set1_ps(2.0f), _mm512_maskz_loadu_ps(live, ip + c)));
  return _mm512_sub_ps(e, _mm512_mul_ps(_mm512_set1_ps(t.rel), s));
}

// Columns 64 at a time with one branch for all four groups of 16 (almost every step rejects
// every lane), then 16 at a time for the rest. A group offered after another in the same
// step used the row threshold from before that offer: a few extra evaluations at most.
template <bool kCols>
__attribute__((target("avx512f"))) void scan_avx512(const Tile& t, TopK* rows, idx_t row_off,
                                                    TopK* cols) {
  Pending p;
  float* const rthr = rows->thresholds() + row_off;
  const float* const cthr = kCols ? cols->thresholds() + t.j0 : nullptr;
  const __mmask16 all = static_cast<__mmask16>(0xFFFF);
  for (idx_t r = 0; r < t.mi; ++r) {
    const float* ip = t.ip + r * t.ldt;
    const __m512 xn = _mm512_set1_ps(t.rn[r]);
    __m512 tr = _mm512_set1_ps(rthr[r]);
    idx_t c = 0;
    for (; c + 64 <= t.nj; c += 64) {
      __mmask16 m[4];
      for (int g = 0; g < 4; ++g) {
        const __m512 l = lower16(t, ip, xn, c + 16 * g, all);
        m[g] = _mm512_cmp_ps_mask(l, tr, _CMP_LE_OQ);
        if (kCols) m[g] |= _mm512_cmp_ps_mask(l, _mm512_loadu_ps(cthr + c + 16 * g), _CMP_LE_OQ);
      }
      if (!(m[0] | m[1] | m[2] | m[3])) continue;
      for (int g = 0; g < 4; ++g)
        if (m[g]) offer(2, t, r, c + 16 * g, static_cast<unsigned>(m[g]), rows, row_off, cols, p);
      tr = _mm512_set1_ps(rthr[r]);
    }
    for (; c < t.nj; c += 16) {
      const idx_t left = t.nj - c;
      const __mmask16 live = left >= 16 ? all : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 l = lower16(t, ip, xn, c, live);
      __mmask16 m = _mm512_mask_cmp_ps_mask(live, l, tr, _CMP_LE_OQ);
      if (kCols)
        m |= _mm512_mask_cmp_ps_mask(live, l, _mm512_maskz_loadu_ps(live, cthr + c), _CMP_LE_OQ);
      if (!m) continue;
      offer(2, t, r, c, static_cast<unsigned>(m), rows, row_off, cols, p);
      tr = _mm512_set1_ps(rthr[r]);
    }
    flush(2, t, rows, row_off, cols, p, false);
  }
  flush(2, t, rows, row_off, cols, p, true);
}

// 8 lanes a step, as lower16 for AVX2.
__attribute__((target("avx2"))) inline unsigned pass8(const Tile& t, const float* ip, __m256 xn,
                                                     __m256 tr, const float* cthr, idx_t c) {
  const __m256 two = _mm256_set1_ps(2.0f), rel = _mm256_set1_ps(t.rel);
  const __m256 s = _mm256_add_ps(xn, _mm256_loadu_ps(t.cn + c));
  const __m256 e = _mm256_sub_ps(s, _mm256_mul_ps(two, _mm256_loadu_ps(ip + c)));
  const __m256 l = _mm256_sub_ps(e, _mm256_mul_ps(rel, s));
  unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(l, tr, _CMP_LE_OQ)));
  if (cthr)
    bits |= static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(l, _mm256_loadu_ps(cthr + c), _CMP_LE_OQ)));
  return bits;
}

// Columns 32 at a time with one branch for the four groups of 8, as scan_avx512 does with
// 64 (a group offered after another in the same step used the row threshold from before
// that offer: a few extra evaluations at most), then 8 at a time, then the scalar tail.
__attribute__((target("avx2"))) void scan_avx2(const Tile& t, TopK* rows, idx_t row_off,
                                               TopK* cols) {
  Pending p;
  float* const rthr = rows->thresholds() + row_off;
  const float* const cthr = cols ? cols->thresholds() + t.j0 : nullptr;
  const idx_t nj8 = t.nj - t.nj % 8;
  for (idx_t r = 0; r < t.mi; ++r) {
    const float* ip = t.ip + r * t.ldt;
    const __m256 xn = _mm256_set1_ps(t.rn[r]);
    __m256 tr = _mm256_set1_ps(rthr[r]);
    idx_t c = 0;
    for (; c + 32 <= nj8; c += 32) {
      unsigned m[4];
      for (int g = 0; g < 4; ++g) m[g] = pass8(t, ip, xn, tr, cthr, c + 8 * g);
      if (!(m[0] | m[1] | m[2] | m[3])) continue;
      for (int g = 0; g < 4; ++g)
        if (m[g]) offer(1, t, r, c + 8 * g, m[g], rows, row_off, cols, p);
      tr = _mm256_set1_ps(rthr[r]);
    }
    for (; c < nj8; c += 8) {
      const unsigned bits = pass8(t, ip, xn, tr, cthr, c);
      if (!bits) continue;
      offer(1, t, r, c, bits, rows, row_off, cols, p);
      tr = _mm256_set1_ps(rthr[r]);
    }
    if (nj8 < t.nj)
      scan_portable(t, rows, row_off, cols, 1, nj8, r, r + 1, p);
    else
      flush(1, t, rows, row_off, cols, p, false);
  }
  flush(1, t, rows, row_off, cols, p, true);
}
#endif

}  // namespace

// ----------------------------------------------------------------------------- arg-min
namespace {

void argmin_portable(const Tile& t, idx_t r, float best, int32_t* out, idx_t& n) {
  const float* ip = t.ip + r * t.ldt;
  float U = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : U)
  for (idx_t c = 0; c < t.nj; ++c) {
    const float s = t.rn[r] + t.cn[c];
    const float u = (s - 2.0f * ip[c]) + t.rel * s;
    U = u < U ? u : U;
  }
  float thr = round_up(static_cast<double>(U) + 2.0 * t.abs);
  thr = best < thr ? best : thr;
  for (idx_t c = 0; c < t.nj; ++c)
    if (t.lower(r, c) <= thr) out[n++] = static_cast<int32_t>(t.j0 + c);
}

#ifdef USL_FAST_X86
__attribute__((target("avx512f"))) void argmin_avx512(const Tile& t, idx_t r, float best,
                                                      int32_t* out, idx_t& n) {
  const float* ip = t.ip + r * t.ldt;
  const __m512 two = _mm512_set1_ps(2.0f), rel = _mm512_set1_ps(t.rel);
  const __m512 xn = _mm512_set1_ps(t.rn[r]);
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 umin = inf;
  for (idx_t c = 0; c < t.nj; c += 16) {
    const idx_t left = t.nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
    const __m512 u = _mm512_add_ps(_mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, ip + c))),
                                   _mm512_mul_ps(rel, s));
    umin = _mm512_mask_min_ps(umin, live, umin, u);
  }
  float thr = round_up(static_cast<double>(_mm512_reduce_min_ps(umin)) + 2.0 * t.abs);
  thr = best < thr ? best : thr;
  const __m512 vt = _mm512_set1_ps(thr);
  for (idx_t c = 0; c < t.nj; c += 16) {
    const idx_t left = t.nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
    const __m512 l = _mm512_sub_ps(_mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, ip + c))),
                                   _mm512_mul_ps(rel, s));
    unsigned bits = _mm512_mask_cmp_ps_mask(live, l, vt, _CMP_LE_OQ);
    while (bits) {
      const int b = __builtin_ctz(bits);
      bits &= bits - 1;
      out[n++] = static_cast<int32_t>(t.j0 + c + b);
    }
  }
}
#endif

}  // namespace

void argmin_candidates(const Tile& t, idx_t r, float best, int32_t* out, idx_t& n) {
#ifdef USL_FAST_X86
  if (active_isa() == 2) return argmin_avx512(t, r, best, out, n);
#endif
  argmin_portable(t, r, best, out, n);
}

// A row (or column) that has no threshold yet (+inf: nothing kept so far) starts from the
// k-th smallest filter UPPER bound among this tile's pairs: at least k candidates are
// surely within it, so it bounds the k-th exact distance. Without it, the first 2k + 16
// pairs of every row would all be evaluated exactly before the first compaction.
void seed_thresholds(const Tile& t, TopK* rows, idx_t row_off, TopK* cols) {
  const int k = rows->k();
  float u[kTile];
  if (t.nj >= k)
    for (idx_t r = 0; r < t.mi; ++r) {
      float& thr = rows->thresholds()[row_off + r];
      if (thr != std::numeric_limits<float>::infinity()) continue;
      for (idx_t c = 0; c < t.nj; ++c) u[c] = t.upper(r, c);
      std::nth_element(u, u + (k - 1), u + t.nj);
      thr = round_up(static_cast<double>(u[k - 1]) + t.abs);
    }
  if (cols && t.mi >= k)
    for (idx_t c = 0; c < t.nj; ++c) {
      float& thr = cols->thresholds()[t.j0 + c];
      if (thr != std::numeric_limits<float>::infinity()) continue;
      for (idx_t r = 0; r < t.mi; ++r) u[r] = t.upper(r, c);
      std::nth_element(u, u + (k - 1), u + t.mi);
      thr = round_up(static_cast<double>(u[k - 1]) + t.abs);
    }
}

void scan_topk(const Tile& t, TopK* rows, idx_t row_off, TopK* cols) {
  const int isa = active_isa();
  seed_thresholds(t, rows, row_off, cols);
#ifdef USL_FAST_X86
  if (isa == 2)
    return cols ? scan_avx512<true>(t, rows, row_off, cols)
                : scan_avx512<false>(t, rows, row_off, cols);
  if (isa == 1) return scan_avx2(t, rows, row_off, cols);
#endif
  Pending p;
  scan_portable(t, rows, row_off, cols, isa, 0, 0, t.mi, p);
  flush(isa, t, rows, row_off, cols, p, true);
}

}  // namespace cpu
}  // namespace usl_fast
