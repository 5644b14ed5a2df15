// kNN on the tile engine: the self graph visits each unordered pair of row tiles once and
// feeds both sides' reservoirs; queries against a base set feed the query side only.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// Final distance of one accepted candidate: the tile's value, or - when that is tiny next
// to the norms, where the expanded form has no accuracy left - the direct sum, so exact
// duplicates are at exactly 0 and tie-break by index like the point itself.
inline float settle(const TileScan& t, idx_t r, idx_t c, float dv) {
  if (t.diag && t.i0 + r == t.j0 + c) return 0.0f;  // the point itself
  if (dv <= kExactRel * (t.norms_i[r] + t.norms_j[c]))
    return direct_l2(t.rows_i + r * t.d, t.rows_j + c * t.d, t.d);
  return dv;
}

inline void offer(const TileScan& t, idx_t r, idx_t c, float dv, bool to_row, bool to_col) {
  const idx_t i = t.i0 + r, j = t.j0 + c;
  if (to_row && dv <= t.rows->thr[i]) t.rows->push(i, dv, static_cast<int32_t>(j));
  if (to_col && dv <= t.cols->thr[j]) t.cols->push(j, dv, static_cast<int32_t>(i));
}

// The lanes of one SIMD step that passed a threshold test (bit b of mr: row side, of mc:
// column side), settled and offered one by one.
inline void offer_lanes(const TileScan& t, idx_t r, idx_t c, const float* dbuf, unsigned mr,
                        unsigned mc) {
  unsigned bits = mr | mc;
  while (bits) {
    const int b = __builtin_ctz(bits);
    bits &= bits - 1;
    const float dv = settle(t, r, c + b, dbuf[b]);
    offer(t, r, c + b, dv, (mr >> b) & 1u, (mc >> b) & 1u);
  }
}

// Portable version of scan_tile (also the reference for the SIMD ones).
void scan_scalar(const TileScan& t, idx_t r_begin, idx_t r_end, idx_t c_begin) {
  for (idx_t r = r_begin; r < r_end; ++r) {
    const float* row = t.ip + r * t.ldt;
    for (idx_t c = c_begin; c < t.nj; ++c) {
      const float dv = settle(t, r, c, l2_from_ip(t.norms_i[r], t.norms_j[c], row[c]));
      offer(t, r, c, dv, true, t.cols != nullptr);
    }
  }
}

// AVX-512: 16 distances per step, one compare against the row threshold and one against
// the 16 column thresholds; almost every step rejects all lanes and moves on. Lanes whose
// distance is tiny are compared as 0 and settled exactly in the scalar path, so every
// path accepts exactly what scan_scalar accepts.
__attribute__((target("avx512f"))) void scan_avx512(const TileScan& t) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512 rel = _mm512_set1_ps(kExactRel);
  alignas(64) float dbuf[16];
  for (idx_t r = 0; r < t.mi; ++r) {
    const idx_t i = t.i0 + r;
    const float* row = t.ip + r * t.ldt;
    const __m512 xn = _mm512_set1_ps(t.norms_i[r]);
    __m512 ti = _mm512_set1_ps(t.rows->thr[i]);
    for (idx_t c = 0; c < t.nj; c += 16) {
      const idx_t left = t.nj - c;
      const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                        : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(live, row + c);
      const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.norms_j + c));
      // Same rounding as l2_from_ip: (xn + yn) then minus 2 ip (exact doubling).
      const __m512 d = _mm512_max_ps(_mm512_sub_ps(s, _mm512_mul_ps(two, v)), zero);
      __mmask16 tiny = _mm512_mask_cmp_ps_mask(live, d, _mm512_mul_ps(rel, s), _CMP_LE_OQ);
      if (t.diag && i >= t.j0 + c && i < t.j0 + c + 16)
        tiny |= static_cast<__mmask16>(1u << (i - t.j0 - c));
      const __m512 dc = _mm512_mask_mov_ps(d, tiny, zero);
      const __mmask16 mr = _mm512_mask_cmp_ps_mask(live, dc, ti, _CMP_LE_OQ);
      const __mmask16 mc =
          t.cols ? _mm512_mask_cmp_ps_mask(
                       live, dc, _mm512_maskz_loadu_ps(live, t.cols->thr + t.j0 + c), _CMP_LE_OQ)
                 : static_cast<__mmask16>(0);
      if (!(mr | mc)) continue;
      _mm512_store_ps(dbuf, d);
      offer_lanes(t, r, c, dbuf, mr, mc);
      ti = _mm512_set1_ps(t.rows->thr[i]);
    }
  }
}

// AVX2 machines without AVX-512: the same scan, 8 lanes per step, scalar tail.
__attribute__((target("avx2"))) void scan_avx2(const TileScan& t) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 two = _mm256_set1_ps(2.0f);
  const __m256 rel = _mm256_set1_ps(kExactRel);
  const idx_t nj8 = t.nj - t.nj % 8;
  alignas(32) float dbuf[8];
  for (idx_t r = 0; r < t.mi; ++r) {
    const idx_t i = t.i0 + r;
    const float* row = t.ip + r * t.ldt;
    const __m256 xn = _mm256_set1_ps(t.norms_i[r]);
    __m256 ti = _mm256_set1_ps(t.rows->thr[i]);
    for (idx_t c = 0; c < nj8; c += 8) {
      const __m256 s = _mm256_add_ps(xn, _mm256_loadu_ps(t.norms_j + c));
      const __m256 d =
          _mm256_max_ps(_mm256_sub_ps(s, _mm256_mul_ps(two, _mm256_loadu_ps(row + c))), zero);
      unsigned tiny = static_cast<unsigned>(
          _mm256_movemask_ps(_mm256_cmp_ps(d, _mm256_mul_ps(rel, s), _CMP_LE_OQ)));
      if (t.diag && i >= t.j0 + c && i < t.j0 + c + 8) tiny |= 1u << (i - t.j0 - c);
      const __m256 dc =
          _mm256_blendv_ps(d, zero, _mm256_castsi256_ps(_mm256_setr_epi32(
                                        -(int)(tiny & 1u), -(int)((tiny >> 1) & 1u),
                                        -(int)((tiny >> 2) & 1u), -(int)((tiny >> 3) & 1u),
                                        -(int)((tiny >> 4) & 1u), -(int)((tiny >> 5) & 1u),
                                        -(int)((tiny >> 6) & 1u), -(int)((tiny >> 7) & 1u))));
      const unsigned mr =
          static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(dc, ti, _CMP_LE_OQ)));
      const unsigned mc =
          t.cols ? static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(
                       dc, _mm256_loadu_ps(t.cols->thr + t.j0 + c), _CMP_LE_OQ)))
                 : 0u;
      if (!(mr | mc)) continue;
      _mm256_store_ps(dbuf, d);
      offer_lanes(t, r, c, dbuf, mr, mc);
      ti = _mm256_set1_ps(t.rows->thr[i]);
    }
    if (nj8 < t.nj) scan_scalar(t, r, r + 1, nj8);
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

void scan_tile(const TileScan& t) {
  // USL_FAST_ISA=avx2|scalar forces a narrower path (tests cover every path here).
  static const int isa = [] {
    const char* env = std::getenv("USL_FAST_ISA");
    const std::string want = env ? env : "";
    if (want == "scalar") return 0;
    if (want == "avx2") return have_avx2() ? 1 : 0;
    return have_avx512() ? 2 : have_avx2() ? 1 : 0;
  }();
  if (isa == 2)
    scan_avx512(t);
  else if (isa == 1)
    scan_avx2(t);
  else
    scan_scalar(t, 0, t.mi, 0);
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
        scan_tile(TileScan{tile, kTile, mi, nj, 0, j0, qn.data() + i0, bn.data() + j0, q.row(i0),
                           base.row(j0), d, &res, nullptr, false});
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

// ---------------------------------------------------------------------------------------
// Exact duplicates. Rows with equal values are at exactly the same distance from any
// query, so they must sit together in a kNN list, lower index first. The GEMM cannot
// promise that: OpenBLAS's kernels round x.y differently depending on where a pair falls
// in a tile and on which operand side (measured on the Haswell kernel: identical columns of
// one 256 x 256 product differ in the last bit). So duplicate rows are grouped once
// (O(n d) hashing + a sort of hashes) and each finished list is repaired: a group that
// has c members in the list gets its c lowest-index members, all at one directly computed
// distance, and the list is re-sorted. Rows without duplicates cost nothing.

struct DuplicateGroups {
  std::vector<int32_t> rep;   // empty: no duplicates; else the lowest index equal to row i
  std::vector<int32_t> next;  // next higher index in row i's group, -1 after the last
  bool empty() const { return rep.empty(); }
  bool duplicated(int64_t j) const { return rep[j] != j || next[j] >= 0; }
};

// Hash of a row's values; -0.0 and +0.0 are equal values, so they hash alike.
uint64_t row_hash(const float* r, idx_t d) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (idx_t t = 0; t < d; ++t) {
    const float v = r[t] == 0.0f ? 0.0f : r[t];
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    h = (h ^ bits) * 0x100000001B3ull;
    h ^= h >> 29;
  }
  return h;
}

bool rows_equal(const float* a, const float* b, idx_t d) {
  for (idx_t t = 0; t < d; ++t)
    if (a[t] != b[t]) return false;
  return true;
}

DuplicateGroups find_duplicates(const MatView& x, int threads) {
  const idx_t n = x.rows, d = x.cols;
  std::vector<std::pair<uint64_t, int32_t>> h(n);
#pragma omp parallel for schedule(static) num_threads(resolve_threads(threads))
  for (idx_t i = 0; i < n; ++i) h[i] = {row_hash(x.row(i), d), static_cast<int32_t>(i)};
  std::sort(h.begin(), h.end());
  DuplicateGroups g;
  for (idx_t a = 0, b; a < n; a = b) {
    for (b = a + 1; b < n && h[b].first == h[a].first;) ++b;
    if (b - a == 1) continue;
    // Rows of one hash value, by (values, index): equal rows end up adjacent, in index
    // order (a hash collision between different rows just splits the run).
    std::sort(h.begin() + a, h.begin() + b, [&](const auto& p, const auto& q) {
      const float *u = x.row(p.second), *v = x.row(q.second);
      for (idx_t t = 0; t < d; ++t)
        if (u[t] != v[t]) return u[t] < v[t];
      return p.second < q.second;
    });
    for (idx_t t = a + 1; t < b; ++t) {
      const int32_t prev = h[t - 1].second, cur = h[t].second;
      if (!rows_equal(x.row(prev), x.row(cur), d)) continue;
      if (g.empty()) {
        g.rep.resize(n);
        for (idx_t i = 0; i < n; ++i) g.rep[i] = static_cast<int32_t>(i);
        g.next.assign(n, -1);
      }
      g.rep[cur] = g.rep[prev];
      g.next[prev] = cur;
    }
  }
  return g;
}

// Repairs one finished, sorted list (k entries, base indices) of query row q.
void tie_duplicates(const float* q, const MatView& base, const DuplicateGroups& g, int k,
                    float* od, int64_t* oi) {
  std::vector<std::pair<int32_t, int>> in_group;  // (group, position in the list)
  for (int t = 0; t < k; ++t)
    if (oi[t] >= 0 && g.duplicated(oi[t])) in_group.emplace_back(g.rep[oi[t]], t);
  if (in_group.empty()) return;
  std::sort(in_group.begin(), in_group.end());
  int32_t member = -1;
  float dist = 0.0f;
  for (size_t u = 0; u < in_group.size(); ++u) {
    const int32_t group = in_group[u].first;
    if (u == 0 || group != in_group[u - 1].first) {
      member = group;  // the lowest index of the group
      dist = direct_l2(q, base.row(group), base.cols);
    }
    oi[in_group[u].second] = member;
    od[in_group[u].second] = dist;
    member = g.next[member];
  }
  std::vector<uint64_t> keys(k);
  for (int t = 0; t < k; ++t) keys[t] = pack_key(od[t], static_cast<int32_t>(oi[t]));
  std::sort(keys.begin(), keys.end());
  for (int t = 0; t < k; ++t) {
    od[t] = key_dist(keys[t]);
    oi[t] = key_index(keys[t]);
  }
}

}  // namespace

void knn_query(const MatView& q, const MatView& base, int k, float* out_dist, int64_t* out_idx,
               int threads, const Control& ctl) {
  require(k >= 1 && k <= base.rows, "knn_query: 1 <= k <= base rows");
  require(base.cols == q.cols, "knn_query: same dimension");
  const DuplicateGroups dup = find_duplicates(base, threads);
  ctl.set_total(num_tiles(q.rows));
  query_topk(q, base, k, threads, ctl, [&](idx_t i, Reservoir& res, idx_t r) {
    res.finish(r, out_dist + i * k, out_idx + i * k);
    if (!dup.empty()) tie_duplicates(q.row(i), base, dup, k, out_dist + i * k, out_idx + i * k);
  });
}

void knn_self(const MatView& x, int k, float* out_dist, int64_t* out_idx, int threads,
              const Control& ctl, double sample_hits, double max_reservoir_bytes) {
  const idx_t n = x.rows, d = x.cols;
  require(k >= 1 && k <= n, "knn_self: 1 <= k <= n");
  // The symmetric pass keeps every row's reservoir alive at once (8 (2k + 16) bytes a row:
  // 8 GiB for 1.28M rows at k = 400). Past the budget, search the rows as queries instead:
  // twice the GEMM work, but only per-thread reservoirs. Same answer (a point meets itself
  // at a tiny expanded distance, re-computed exactly to 0; ties go to the lower index).
  if (static_cast<double>(n) * (2.0 * k + 16.0) * 8.0 > max_reservoir_bytes) {
    knn_query(x, x, k, out_dist, out_idx, threads, ctl);
    return;
  }
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
        // A diagonal tile holds both (i, j) and (j, i): feed rows only, self forced to 0.
        scan_tile(TileScan{tile, kTile, mi, nj, i0, j0, norms.data() + i0, norms.data() + j0,
                           x.row(i0), x.row(j0), d, &res, I == J ? nullptr : &res, I == J});
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
      // The same settle/offer rules as the tiles, one row against every point.
      float ip[kTile];
      for (idx_t j0 = 0; j0 < n; j0 += kTile) {
        const idx_t nj = std::min(kTile, n - j0);
        for (idx_t c = 0; c < nj; ++c) ip[c] = dot(x.row(i), x.row(j0 + c), d);
        scan_scalar(TileScan{ip, kTile, 1, nj, i, j0, norms.data() + i, norms.data() + j0,
                             x.row(i), x.row(j0), d, &res, nullptr, false},
                    0, 1, 0);
      }
    }
  }

  const DuplicateGroups dup = find_duplicates(x, threads);
#pragma omp parallel for schedule(static) num_threads(resolve_threads(threads))
  for (idx_t i = 0; i < n; ++i) {
    res.finish(i, out_dist + i * k, out_idx + i * k);
    if (!dup.empty()) tie_duplicates(x.row(i), x, dup, k, out_dist + i * k, out_idx + i * k);
  }
}

}  // namespace cpu
}  // namespace usl_fast
