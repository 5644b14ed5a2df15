// k-means on the tile engine: the assignment is an arg-min epilogue over centroid tiles;
// the update sums members in float64 in row order, each cluster owned by one thread, so
// centroids are bit-identical for any thread count.
#include <immintrin.h>

#include <cmath>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// Arg-min of cn[c] - 2 row[c] over c in [0, nj), folded into (best, arg) with strict <
// so the lower index wins ties (earlier tiles hold lower indices).
void argmin_scalar(const float* row, const float* cn, idx_t nj, idx_t j0, float& best,
                   int32_t& arg) {
  for (idx_t c = 0; c < nj; ++c) {
    const float v = cn[c] - 2.0f * row[c];
    if (v < best) {
      best = v;
      arg = static_cast<int32_t>(j0 + c);
    }
  }
}

__attribute__((target("avx512f"))) void argmin_avx512(const float* row, const float* cn,
                                                      idx_t nj, idx_t j0, float& best,
                                                      int32_t& arg) {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  const __m512 two = _mm512_set1_ps(2.0f);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 vmin = inf;
  __m512i vidx = _mm512_set1_epi32(-1);
  for (idx_t c = 0; c < nj; c += 16) {
    const idx_t left = nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 v = _mm512_sub_ps(_mm512_mask_loadu_ps(inf, live, cn + c),
                                   _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, row + c)));
    // Per lane, strict < keeps the first (lowest-index) minimum of that lane.
    const __mmask16 lt = _mm512_mask_cmp_ps_mask(live, v, vmin, _CMP_LT_OQ);
    vmin = _mm512_mask_mov_ps(vmin, lt, v);
    vidx = _mm512_mask_mov_epi32(vidx, lt, lane);
    lane = _mm512_add_epi32(lane, step);
  }
  alignas(64) float lv[16];
  alignas(64) int32_t li[16];
  _mm512_store_ps(lv, vmin);
  _mm512_store_si512(li, vidx);
  // Smallest value, then the lowest index among lanes holding it = the first minimum.
  float m = lv[0];
  int32_t local = li[0];
  for (int t = 1; t < 16; ++t)
    if (lv[t] < m || (lv[t] == m && li[t] >= 0 && (local < 0 || li[t] < local))) {
      m = lv[t];
      local = li[t];
    }
  if (!(m < best)) return;
  best = m;
  arg = static_cast<int32_t>(j0 + local);
}

bool have_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

// Member sums of the clusters c with c % T == t, rows visited in ascending order, in
// float64: each row is read by exactly one thread, and every cluster's sum has the same
// order (hence the same bits) for any thread count. Cloned per ISA: the float->double
// adds vectorize.
__attribute__((target_clones("avx512f", "avx2", "default"))) void accumulate_owned(
    const float* x, idx_t n, idx_t d, const int32_t* labels, double* sums, int t, int T) {
  for (idx_t i = 0; i < n; ++i) {
    const int32_t c = labels[i];
    if (c % T != t) continue;
    const float* xr = x + i * d;
    double* s = sums + static_cast<size_t>(c) * d;
    for (idx_t k = 0; k < d; ++k) s[k] += xr[k];
  }
}

}  // namespace

void assign_nearest(const MatView& x, const float* x_norms, const MatView& cent,
                    const uint8_t* alive, int32_t* out_label, float* out_dist, int threads) {
  const idx_t n = x.rows, d = x.cols, K = cent.rows;
  require(cent.cols == d, "assign_nearest: same dimension");
  require(K >= 1, "assign_nearest: at least one centroid");
  std::vector<float> cn(K);
  row_norms(cent, cn.data(), threads);
  // A dead centroid gets an infinite norm: it can never be the nearest one.
  if (alive)
    for (idx_t c = 0; c < K; ++c)
      if (!alive[c]) cn[c] = std::numeric_limits<float>::infinity();
  const idx_t TR = num_tiles(n), TC = num_tiles(K);
  const bool avx512 = have_avx512();

#pragma omp parallel num_threads(resolve_threads(threads))
  {
    float* const tile = thread_tile();
    std::vector<float> best(kTile);
    std::vector<int32_t> arg(kTile);
#pragma omp for schedule(dynamic, 1)
    for (idx_t I = 0; I < TR; ++I) {
      const idx_t i0 = I * kTile, mi = std::min(kTile, n - i0);
      std::fill(best.begin(), best.end(), std::numeric_limits<float>::infinity());
      std::fill(arg.begin(), arg.end(), -1);
      for (idx_t J = 0; J < TC; ++J) {
        const idx_t j0 = J * kTile, nj = std::min(kTile, K - j0);
        gemm_nt(x.row(i0), mi, cent.row(j0), nj, d, tile, kTile);
        for (idx_t r = 0; r < mi; ++r) {
          // ||x||^2 is common to the row: compare ||c||^2 - 2 x.c.
          const float* row = tile + r * kTile;
          if (avx512)
            argmin_avx512(row, cn.data() + j0, nj, j0, best[r], arg[r]);
          else
            argmin_scalar(row, cn.data() + j0, nj, j0, best[r], arg[r]);
        }
      }
      for (idx_t r = 0; r < mi; ++r) {
        out_label[i0 + r] = arg[r];
        if (out_dist) {
          const float v = x_norms[i0 + r] + best[r];
          out_dist[i0 + r] = v > 0.0f ? v : 0.0f;
        }
      }
    }
  }
}

int kmeans_lloyd(const MatView& x, float* centroids, int K, int n_iter, int32_t* labels,
                 int64_t* counts, float* inertia_per_iter, int threads, const Control& ctl) {
  const idx_t n = x.rows, d = x.cols;
  require(K >= 1 && K <= n, "kmeans: 1 <= K <= n");
  require(n_iter >= 1, "kmeans: n_iter >= 1");
  // Small problems run on one thread: with ~2 x n_iter parallel regions, a thread that
  // another process has descheduled stalls every barrier (measured on a busy 2-core
  // machine: 0.3 s for 1,797 x 32, K = 10, instead of 0.02 s). Results do not depend on
  // the thread count, so this only changes speed.
  const double flops_per_iter = 2.0 * static_cast<double>(n) * static_cast<double>(K) * d;
  if (flops_per_iter < 5e7) threads = 1;
  const int nt = resolve_threads(threads);
  std::vector<float> xn(n), dist(n);
  row_norms(x, xn.data(), threads);
  std::vector<uint8_t> alive(K, 1);
  std::vector<double> sums(static_cast<size_t>(K) * d);
  std::vector<int32_t> prev(n);
  ctl.set_total(n_iter);
  const MatView cent{centroids, K, d};

  for (int it = 0; it < n_iter; ++it) {
    if (ctl.cancelled()) throw Cancelled();
    assign_nearest(x, xn.data(), cent, alive.data(), labels, dist.data(), threads);
    std::fill(counts, counts + K, 0);
    double inertia = 0.0;
    for (idx_t i = 0; i < n; ++i) {
      counts[labels[i]] += 1;
      inertia += dist[i];
    }
    if (inertia_per_iter) inertia_per_iter[it] = static_cast<float>(inertia);
    // A repeated assignment is a fixed point: the update would rebuild these very centroids
    // (same members, same summation order) and no cluster dies, so every remaining
    // iteration would repeat this one bit for bit. Stopping here returns exactly what
    // running all n_iter iterations returns.
    if (it > 0 && std::equal(labels, labels + n, prev.begin())) {
      if (inertia_per_iter)
        std::fill(inertia_per_iter + it + 1, inertia_per_iter + n_iter, static_cast<float>(inertia));
      ctl.add(n_iter - it);
      return it + 1;
    }
    std::copy(labels, labels + n, prev.begin());
    for (int c = 0; c < K; ++c)
      if (counts[c] == 0) alive[c] = 0;

    std::fill(sums.begin(), sums.end(), 0.0);
#pragma omp parallel num_threads(nt)
    accumulate_owned(x.data, n, d, labels, sums.data(), omp_get_thread_num(),
                     omp_get_num_threads());
    for (int c = 0; c < K; ++c) {
      if (counts[c] == 0) continue;  // dead: keep the last position, never NaN
      const double inv = 1.0 / static_cast<double>(counts[c]);
      const double* src = sums.data() + static_cast<size_t>(c) * d;
      float* dst = centroids + static_cast<size_t>(c) * d;
      for (idx_t t = 0; t < d; ++t) dst[t] = static_cast<float>(src[t] * inv);
    }
    ctl.add(1);
  }
  return n_iter;
}

namespace {
// splitmix64: small, fast, and the same stream on every platform.
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
};
}  // namespace

void kmeanspp_init(const MatView& x, int K, uint64_t seed, int64_t* out_index, int threads,
                   const Control& ctl) {
  const idx_t n = x.rows, d = x.cols;
  require(K >= 1 && K <= n, "kmeans++: 1 <= K <= n");
  SplitMix64 rng{seed};
  std::vector<double> mind(n, std::numeric_limits<double>::infinity());
  idx_t cur = static_cast<idx_t>(rng.next() % static_cast<uint64_t>(n));
  ctl.set_total(K);
  for (int c = 0; c < K; ++c) {
    if (ctl.cancelled()) throw Cancelled();
    out_index[c] = cur;
    const float* y = x.row(cur);
#pragma omp parallel for schedule(static) num_threads(resolve_threads(threads))
    for (idx_t i = 0; i < n; ++i) {
      const float* xr = x.row(i);
      double s = 0.0;
      for (idx_t t = 0; t < d; ++t) {
        const double diff = static_cast<double>(xr[t]) - y[t];
        s += diff * diff;
      }
      if (s < mind[i]) mind[i] = s;
    }
    if (c + 1 == K) break;
    double total = 0.0;
    for (idx_t i = 0; i < n; ++i) total += mind[i];
    idx_t next = -1;
    if (total > 0.0) {
      const double u = rng.uniform() * total;
      double acc = 0.0;
      for (idx_t i = 0; i < n; ++i) {
        acc += mind[i];
        if (acc > u && mind[i] > 0.0) {
          next = i;
          break;
        }
      }
      // Rounding can leave u at the very end of the cumulative sum: take the last
      // point with positive weight.
      if (next < 0)
        for (idx_t i = n - 1; i >= 0; --i)
          if (mind[i] > 0.0) {
            next = i;
            break;
          }
    }
    if (next < 0) {
      // Every point coincides with a chosen centre (fewer distinct points than K):
      // take the lowest index not chosen yet, so the K indices stay distinct.
      std::vector<uint8_t> used(n, 0);
      for (int t = 0; t <= c; ++t) used[out_index[t]] = 1;
      for (idx_t i = 0; i < n; ++i)
        if (!used[i]) {
          next = i;
          break;
        }
    }
    cur = next;
    ctl.add(1);
  }
  ctl.add(1);
}

}  // namespace cpu
}  // namespace usl_fast
