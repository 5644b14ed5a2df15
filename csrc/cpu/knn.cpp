// kNN on the tile engine: the self graph visits each unordered pair of row tiles once and
// feeds both sides' reservoirs; queries against a base set feed the query side only.
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// Portable version of scan_tile (also the reference for the SIMD one).
void scan_tile_scalar(const float* ip, idx_t ldt, idx_t mi, idx_t nj, idx_t i0, idx_t j0,
                      const float* norms_i, const float* norms_j, Reservoir& rr,
                      Reservoir* cr, bool diag) {
  for (idx_t r = 0; r < mi; ++r) {
    const idx_t i = i0 + r;
    const float* row = ip + r * ldt;
    for (idx_t c = 0; c < nj; ++c) {
      const idx_t j = j0 + c;
      float d = l2_from_ip(norms_i[r], norms_j[c], row[c]);
      if (diag && i == j) d = 0.0f;
      if (d <= rr.thr[i]) rr.push(i, d, static_cast<int32_t>(j));
      if (cr && d <= cr->thr[j]) cr->push(j, d, static_cast<int32_t>(i));
    }
  }
}

// AVX-512: 16 distances per step, a single compare against the row threshold and one
// against the 16 column thresholds; almost every step rejects all lanes and moves on.
__attribute__((target("avx512f"))) void scan_tile_avx512(
    const float* ip, idx_t ldt, idx_t mi, idx_t nj, idx_t i0, idx_t j0, const float* norms_i,
    const float* norms_j, Reservoir& rr, Reservoir* cr, bool diag) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 two = _mm512_set1_ps(2.0f);
  alignas(64) float dbuf[16];
  for (idx_t r = 0; r < mi; ++r) {
    const idx_t i = i0 + r;
    const float* row = ip + r * ldt;
    const __m512 xn = _mm512_set1_ps(norms_i[r]);
    __m512 ti = _mm512_set1_ps(rr.thr[i]);
    for (idx_t c = 0; c < nj; c += 16) {
      const idx_t left = nj - c;
      const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(live, row + c);
      const __m512 yn = _mm512_maskz_loadu_ps(live, norms_j + c);
      // Same rounding as l2_from_ip: (xn + yn) then minus 2 ip (exact doubling).
      __m512 d = _mm512_sub_ps(_mm512_add_ps(xn, yn), _mm512_mul_ps(two, v));
      d = _mm512_max_ps(d, zero);
      if (diag && i >= j0 + c && i < j0 + c + 16)
        d = _mm512_mask_mov_ps(d, static_cast<__mmask16>(1u << (i - j0 - c)), zero);
      __mmask16 mr = _mm512_mask_cmp_ps_mask(live, d, ti, _CMP_LE_OQ);
      __mmask16 mc = 0;
      if (cr) {
        const __m512 tj = _mm512_maskz_loadu_ps(live, cr->thr + j0 + c);
        mc = _mm512_mask_cmp_ps_mask(live, d, tj, _CMP_LE_OQ);
      }
      if (!(mr | mc)) continue;
      _mm512_store_ps(dbuf, d);
      unsigned bits = mr;
      while (bits) {
        const int b = __builtin_ctz(bits);
        bits &= bits - 1;
        // The threshold may have tightened after a compaction earlier in this step.
        if (dbuf[b] <= rr.thr[i]) rr.push(i, dbuf[b], static_cast<int32_t>(j0 + c + b));
      }
      ti = _mm512_set1_ps(rr.thr[i]);
      bits = mc;
      while (bits) {
        const int b = __builtin_ctz(bits);
        bits &= bits - 1;
        const idx_t j = j0 + c + b;
        if (dbuf[b] <= cr->thr[j]) cr->push(j, dbuf[b], static_cast<int32_t>(i));
      }
    }
  }
}

// AVX2 + FMA machines without AVX-512: the same scan, 8 lanes per step.
__attribute__((target("avx2"))) void scan_tile_avx2(const float* ip, idx_t ldt, idx_t mi,
                                                    idx_t nj, idx_t i0, idx_t j0,
                                                    const float* norms_i, const float* norms_j,
                                                    Reservoir& rr, Reservoir* cr, bool diag) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 two = _mm256_set1_ps(2.0f);
  const idx_t nj8 = nj - nj % 8;
  alignas(32) float dbuf[8];
  for (idx_t r = 0; r < mi; ++r) {
    const idx_t i = i0 + r;
    const float* row = ip + r * ldt;
    const __m256 xn = _mm256_set1_ps(norms_i[r]);
    __m256 ti = _mm256_set1_ps(rr.thr[i]);
    for (idx_t c = 0; c < nj8; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_add_ps(xn, _mm256_loadu_ps(norms_j + c)),
                               _mm256_mul_ps(two, _mm256_loadu_ps(row + c)));
      d = _mm256_max_ps(d, zero);
      unsigned mr = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(d, ti, _CMP_LE_OQ)));
      unsigned mc = cr ? static_cast<unsigned>(_mm256_movemask_ps(
                             _mm256_cmp_ps(d, _mm256_loadu_ps(cr->thr + j0 + c), _CMP_LE_OQ)))
                       : 0u;
      const bool has_self = diag && i >= j0 + c && i < j0 + c + 8;
      if (!(mr | mc) && !has_self) continue;
      _mm256_store_ps(dbuf, d);
      if (has_self) {
        const int b = static_cast<int>(i - j0 - c);
        dbuf[b] = 0.0f;  // the point itself, exactly
        mr |= 1u << b;
      }
      while (mr) {
        const int b = __builtin_ctz(mr);
        mr &= mr - 1;
        if (dbuf[b] <= rr.thr[i]) rr.push(i, dbuf[b], static_cast<int32_t>(j0 + c + b));
      }
      ti = _mm256_set1_ps(rr.thr[i]);
      while (mc) {
        const int b = __builtin_ctz(mc);
        mc &= mc - 1;
        const idx_t j = j0 + c + b;
        if (dbuf[b] <= cr->thr[j]) cr->push(j, dbuf[b], static_cast<int32_t>(i));
      }
    }
    // Tail columns: the portable path for this row only.
    if (nj8 < nj)
      scan_tile_scalar(row + nj8, ldt, 1, nj - nj8, i, j0 + nj8, norms_i + r, norms_j + nj8, rr,
                       cr, diag);
  }
}

bool have_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

bool have_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

}  // namespace

void scan_tile(const float* ip, idx_t ldt, idx_t mi, idx_t nj, idx_t i0, idx_t j0,
               const float* norms_i, const float* norms_j, Reservoir& rows_res,
               Reservoir* cols_res, bool diag) {
  // USL_FAST_ISA=avx2|scalar forces a narrower path (tests cover every path here).
  static const int isa = [] {
    const char* env = std::getenv("USL_FAST_ISA");
    const std::string want = env ? env : "";
    if (want == "scalar") return 0;
    if (want == "avx2") return have_avx2() ? 1 : 0;
    return have_avx512() ? 2 : have_avx2() ? 1 : 0;
  }();
  if (isa == 2)
    scan_tile_avx512(ip, ldt, mi, nj, i0, j0, norms_i, norms_j, rows_res, cols_res, diag);
  else if (isa == 1)
    scan_tile_avx2(ip, ldt, mi, nj, i0, j0, norms_i, norms_j, rows_res, cols_res, diag);
  else
    scan_tile_scalar(ip, ldt, mi, nj, i0, j0, norms_i, norms_j, rows_res, cols_res, diag);
}

namespace {

// Top-k of every query row among the base rows; `finish(r, res, local_row)` consumes the
// reservoir of global query row r. One query tile per task, a private reservoir per thread.
template <class Finish>
void query_topk(const MatView& q, const MatView& base, int k, int threads, const Control& ctl,
                Finish&& finish) {
  const idx_t nq = q.rows, nb = base.rows, d = q.cols;
  std::vector<float> qn(nq), bn(nb);
  row_norms(q, qn.data(), threads);
  row_norms(base, bn.data(), threads);
  const idx_t TQ = num_tiles(nq), TB = num_tiles(nb);
  std::atomic<bool> stop{false};

#pragma omp parallel num_threads(resolve_threads(threads))
  {
    float* const tile = thread_tile();
    Reservoir res;
    res.init(kTile, k);
#pragma omp for schedule(dynamic, 1)
    for (idx_t I = 0; I < TQ; ++I) {
      if (stop.load(std::memory_order_relaxed)) continue;
      if (ctl.cancelled()) {
        stop = true;
        continue;
      }
      const idx_t i0 = I * kTile, mi = std::min(kTile, nq - i0);
      res.reset(kTile);
      for (idx_t J = 0; J < TB; ++J) {
        const idx_t j0 = J * kTile, nj = std::min(kTile, nb - j0);
        gemm_nt(q.row(i0), mi, base.row(j0), nj, d, tile, kTile);
        // Row indices are tile-local here (0..mi); columns are global base indices.
        scan_tile(tile, kTile, mi, nj, 0, j0, qn.data() + i0, bn.data() + j0, res, nullptr,
                  false);
      }
      for (idx_t r = 0; r < mi; ++r) finish(i0 + r, res, r);
      ctl.add(1);
    }
  }
  if (stop) throw Cancelled();
}

// Dot product for the rare rows the sampled threshold failed on.
__attribute__((target_clones("avx512f", "avx2", "default"))) float dot(const float* a,
                                                                       const float* b, idx_t d) {
  float s = 0.0f;
  for (idx_t t = 0; t < d; ++t) s += a[t] * b[t];
  return s;
}

// Per-row acceptance thresholds from a strided sample of the base set: the q-th smallest
// distance from row i to the sample, with q chosen so that, on average, `hits` sample
// points lie within row i's true k-th distance, plus 5 standard deviations. The threshold
// is then almost surely >= the true k-th distance, so the main pass can reject early
// everything beyond it; a row that ends with fewer than k candidates is recomputed
// exactly, so the result never depends on the sample.
bool sampled_thresholds(const MatView& x, int k, double hits, int threads, const Control& ctl,
                        float* thr) {
  const idx_t n = x.rows, d = x.cols;
  if (hits <= 0.0) return false;
  const idx_t s = static_cast<idx_t>(std::ceil(hits * static_cast<double>(n) / k));
  const int q = static_cast<int>(std::ceil(hits + 5.0 * std::sqrt(hits) + 1.0));
  // Only worth it when the sample is much smaller than the data and q well below k.
  if (s * 4 > n || q * 2 > k || q >= s) return false;
  std::vector<float> sample(static_cast<size_t>(s) * d);
  for (idx_t t = 0; t < s; ++t) {
    const idx_t src = t * n / s;
    std::copy(x.row(src), x.row(src) + d, sample.data() + t * d);
  }
  const MatView sv{sample.data(), s, d};
  query_topk(x, sv, q, threads, ctl, [&](idx_t i, Reservoir& res, idx_t r) {
    // k-th best among the row's kept candidates = its threshold after a final compaction.
    res.compact(r);
    thr[i] = res.count[r] >= q ? res.thr[r] : std::numeric_limits<float>::infinity();
  });
  return true;
}

}  // namespace

void knn_query(const MatView& q, const MatView& base, int k, float* out_dist, int64_t* out_idx,
               int threads, const Control& ctl) {
  require(k >= 1 && k <= base.rows, "knn_query: 1 <= k <= base rows");
  require(base.cols == q.cols, "knn_query: same dimension");
  ctl.set_total(num_tiles(q.rows));
  query_topk(q, base, k, threads, ctl, [&](idx_t i, Reservoir& res, idx_t r) {
    res.finish(r, out_dist + i * k, out_idx + i * k);
  });
}

void knn_self(const MatView& x, int k, float* out_dist, int64_t* out_idx, int threads,
              const Control& ctl, double sample_hits) {
  const idx_t n = x.rows, d = x.cols;
  require(k >= 1 && k <= n, "knn_self: 1 <= k <= n");
  std::vector<float> norms(n);
  row_norms(x, norms.data(), threads);
  Reservoir res;
  res.init(n, k);
  // Large k: start every row's threshold at a sampled upper bound of its k-th distance
  // instead of +inf (measured: ~3x fewer candidates kept on 50k x 128, k = 400).
  const bool sampled = sampled_thresholds(x, k, sample_hits, threads, ctl, res.thr);

  // Round-robin tournament over row tiles: within a round no two pairs share a tile, so
  // threads update disjoint reservoirs without locks; diagonal tiles form one more round.
  const idx_t T = num_tiles(n);
  const idx_t P = (T % 2 == 0) ? T : T + 1;
  std::vector<std::vector<std::pair<idx_t, idx_t>>> rounds;
  for (idx_t r = 0; r + 1 < P; ++r) {
    std::vector<std::pair<idx_t, idx_t>> pairs;
    if (P - 1 < T) pairs.emplace_back(r, P - 1);
    for (idx_t s = 1; s < P / 2; ++s) {
      idx_t a = (r + s) % (P - 1), b = (r - s + (P - 1)) % (P - 1);
      if (a < T && b < T) pairs.emplace_back(std::min(a, b), std::max(a, b));
    }
    rounds.push_back(std::move(pairs));
  }
  {
    std::vector<std::pair<idx_t, idx_t>> diag;
    for (idx_t t = 0; t < T; ++t) diag.emplace_back(t, t);
    rounds.push_back(std::move(diag));
  }
  ctl.set_total(T * (T + 1) / 2);
  std::atomic<bool> stop{false};

#pragma omp parallel num_threads(resolve_threads(threads))
  {
    float* const tile = thread_tile();
    for (const auto& pairs : rounds) {
#pragma omp for schedule(dynamic, 1)
      for (size_t p = 0; p < pairs.size(); ++p) {
        if (stop.load(std::memory_order_relaxed)) continue;
        if (ctl.cancelled()) {
          stop = true;
          continue;
        }
        const idx_t I = pairs[p].first, J = pairs[p].second;
        const idx_t i0 = I * kTile, j0 = J * kTile;
        const idx_t mi = std::min(kTile, n - i0), nj = std::min(kTile, n - j0);
        gemm_nt(x.row(i0), mi, x.row(j0), nj, d, tile, kTile);
        if (I == J)
          scan_tile(tile, kTile, mi, nj, i0, j0, norms.data() + i0, norms.data() + j0,
                    res, nullptr, true);
        else
          scan_tile(tile, kTile, mi, nj, i0, j0, norms.data() + i0, norms.data() + j0,
                    res, &res, false);
        ctl.add(1);
      }
    }
  }
  if (stop) throw Cancelled();

  if (sampled) {
    // Rows whose sampled threshold was below their true k-th distance kept fewer than k
    // candidates: redo them exhaustively (expected: none; tests force some).
    std::vector<idx_t> redo;
    for (idx_t i = 0; i < n; ++i)
      if (res.count[i] < k) redo.push_back(i);
#pragma omp parallel for schedule(dynamic, 1) num_threads(resolve_threads(threads))
    for (size_t t = 0; t < redo.size(); ++t) {
      const idx_t i = redo[t];
      res.count[i] = 0;
      res.thr[i] = std::numeric_limits<float>::infinity();
      for (idx_t j = 0; j < n; ++j) {
        const float dv = i == j ? 0.0f : l2_from_ip(norms[i], norms[j], dot(x.row(i), x.row(j), d));
        if (dv <= res.thr[i]) res.push(i, dv, static_cast<int32_t>(j));
      }
    }
  }

#pragma omp parallel for schedule(static) num_threads(resolve_threads(threads))
  for (idx_t i = 0; i < n; ++i) res.finish(i, out_dist + i * k, out_idx + i * k);
}

}  // namespace cpu
}  // namespace usl_fast
