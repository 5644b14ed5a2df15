// k-means on the tile engine: the assignment is an arg-min epilogue over centroid tiles;
// the update sums members in float64 in row order, split over feature columns across
// threads, so centroids are bit-identical for any thread count.
#include <cmath>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

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

#pragma omp parallel num_threads(resolve_threads(threads))
  {
    std::vector<float> tile(static_cast<size_t>(kTile) * kTile);
    std::vector<float> best(kTile);
    std::vector<int32_t> arg(kTile);
#pragma omp for schedule(dynamic, 1)
    for (idx_t I = 0; I < TR; ++I) {
      const idx_t i0 = I * kTile, mi = std::min(kTile, n - i0);
      std::fill(best.begin(), best.end(), std::numeric_limits<float>::infinity());
      std::fill(arg.begin(), arg.end(), -1);
      for (idx_t J = 0; J < TC; ++J) {
        const idx_t j0 = J * kTile, nj = std::min(kTile, K - j0);
        gemm_nt(x.row(i0), mi, cent.row(j0), nj, d, tile.data(), kTile);
        for (idx_t r = 0; r < mi; ++r) {
          const float* row = tile.data() + r * kTile;
          float b = best[r];
          int32_t a = arg[r];
          // ||x||^2 is common to the row: compare ||c||^2 - 2 x.c; strict < keeps the
          // lower centroid index on ties (columns are visited in ascending order).
          for (idx_t c = 0; c < nj; ++c) {
            const float v = cn[j0 + c] - 2.0f * row[c];
            if (v < b) {
              b = v;
              a = static_cast<int32_t>(j0 + c);
            }
          }
          best[r] = b;
          arg[r] = a;
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

void kmeans_lloyd(const MatView& x, float* centroids, int K, int n_iter, int32_t* labels,
                  int64_t* counts, float* inertia_per_iter, int threads, const Control& ctl) {
  const idx_t n = x.rows, d = x.cols;
  require(K >= 1 && K <= n, "kmeans: 1 <= K <= n");
  require(n_iter >= 1, "kmeans: n_iter >= 1");
  const int nt = resolve_threads(threads);
  std::vector<float> xn(n), dist(n);
  row_norms(x, xn.data(), threads);
  std::vector<uint8_t> alive(K, 1);
  std::vector<double> sums(static_cast<size_t>(K) * d);
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
    for (int c = 0; c < K; ++c)
      if (counts[c] == 0) alive[c] = 0;

    std::fill(sums.begin(), sums.end(), 0.0);
#pragma omp parallel num_threads(nt)
    {
      // Each thread owns a slice of feature columns and walks all rows in order.
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      const idx_t c0 = d * t / T, c1 = d * (t + 1) / T;
      for (idx_t i = 0; i < n; ++i) {
        const float* xr = x.row(i);
        double* s = sums.data() + static_cast<size_t>(labels[i]) * d;
        for (idx_t c = c0; c < c1; ++c) s[c] += xr[c];
      }
    }
    for (int c = 0; c < K; ++c) {
      if (counts[c] == 0) continue;  // dead: keep the last position, never NaN
      const double inv = 1.0 / static_cast<double>(counts[c]);
      for (idx_t t = 0; t < d; ++t)
        centroids[static_cast<size_t>(c) * d + t] =
            static_cast<float>(sums[static_cast<size_t>(c) * d + t] * inv);
    }
    ctl.add(1);
  }
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
