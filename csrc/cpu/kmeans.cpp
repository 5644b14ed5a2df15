// k-means primitives (the Lloyd loop itself lives in Python, so that an all-reduce or a
// device stream fits between assign and update): the deterministic CSR segment-sum of the
// update step, and k-means++ seeding. The assignment is knn.cpp's top-1 epilogue.
#include <cmath>

#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

// Member sums per cluster in float64, each cluster's members added in ascending row order by
// one thread, so every sum has the same bits for any thread count. Only clusters in
// [c_lo, c_hi) are summed (the others' sums are left untouched); `accumulate` adds onto the
// sums already in out_sums instead of starting from zero, which lets processes holding
// consecutive row ranges continue one another's sums and get exactly the one-process bits.
// `rows` (may be null): visit only these rows, in the order given (ascending within each
// cluster keeps the sums' order), e.g. the members of [c_lo, c_hi) from a sort by label, so
// a call per block of clusters costs its members, not all rows. Counts cover every cluster
// (of the rows visited). Labels outside [0, K) are an internal error.
void segment_sum(const View& x, const int32_t* labels, int K, double* out_sums,
                 int64_t* out_counts, const Context& ctx, int c_lo, int c_hi, bool accumulate,
                 const int64_t* rows, idx_t n_rows) {
  const idx_t n = rows ? n_rows : x.rows, d = x.cols;
  require(0 <= c_lo && c_lo <= c_hi && c_hi <= K, "segment_sum: 0 <= c_lo <= c_hi <= K");
  std::fill(out_counts, out_counts + K, 0);
  for (idx_t t = 0; t < n; ++t) {
    const idx_t i = rows ? rows[t] : t;
    require(i >= 0 && i < x.rows, "segment_sum: row in [0, rows)");
    const int32_t c = labels[i];
    require(c >= 0 && c < K, "segment_sum: label in [0, K)");
    out_counts[c] += 1;
  }
  // Thread t owns the clusters [lo_t, hi_t), ranges of about (members in range) / T each,
  // and scans all rows in order adding its own: every row is read by one thread,
  // sequentially, and every cluster's sum has the same (ascending row) order for any
  // thread count.
  const int T = ctx.threads;
  int64_t members = 0;
  for (int c = c_lo; c < c_hi; ++c) members += out_counts[c];
  std::vector<int> bounds(T + 1, c_hi);
  bounds[0] = c_lo;
  {
    int64_t acc = 0;
    int t = 1;
    for (int c = c_lo; c < c_hi && t < T; ++c) {
      acc += out_counts[c];
      while (t < T && acc * T >= static_cast<int64_t>(t) * members) bounds[t++] = c + 1;
    }
  }
  Guard guard;
#pragma omp parallel num_threads(T)
  guard.run([&] {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (t == 0) ctx.ran_with(nt);
    // Fewer threads than asked (a nested or limited region): one thread does every range.
    const int lo = nt == T ? bounds[t] : (t == 0 ? c_lo : c_hi);
    const int hi = nt == T ? bounds[t + 1] : c_hi;
    if (lo >= hi) return;
    if (!accumulate)
      std::fill(out_sums + static_cast<size_t>(lo) * d, out_sums + static_cast<size_t>(hi) * d,
                0.0);
    for (idx_t t = 0; t < n; ++t) {
      const idx_t i = rows ? rows[t] : t;
      const int32_t c = labels[i];
      if (c < lo || c >= hi) continue;
      const float* xr = x.row(i);
      double* s = out_sums + static_cast<size_t>(c) * d;
      for (idx_t u = 0; u < d; ++u) s[u] += xr[u];
    }
  });
  guard.rethrow();
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

// D^2 sampling, one candidate per step, with the engine's exact distances.
void kmeanspp_init(const View& x, int K, uint64_t seed, int64_t* out_index, const Context& ctx) {
  const idx_t n = x.rows;
  require(K >= 1 && K <= n, "kmeans++: 1 <= K <= n");
  SplitMix64 rng{seed};
  Buffer<double> mind(n);
  mind.fill(std::numeric_limits<double>::infinity());
  idx_t cur = static_cast<idx_t>(rng.next() % static_cast<uint64_t>(n));
  ctx.set_total(K);
  Buffer<uint8_t> used(n);
  used.fill(0);
  for (int c = 0; c < K; ++c) {
    if (ctx.cancelled()) throw Cancelled();
    out_index[c] = cur;
    used[cur] = 1;
    const float* y = x.row(cur);
    const idx_t blocks = (n + 255) / 256;
#pragma omp parallel for schedule(static) num_threads(ctx.threads)
    for (idx_t b = 0; b < blocks; ++b) {
      float dv[256];
      const idx_t i0 = b * 256, m = std::min<idx_t>(256, n - i0);
      exact_range(y, x, i0, m, dv);
      for (idx_t t = 0; t < m; ++t)
        if (dv[t] < mind[i0 + t]) mind[i0 + t] = dv[t];
    }
    ctx.add(1);
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
      // Rounding can leave u at the very end of the cumulative sum: the last point with
      // positive weight.
      if (next < 0)
        for (idx_t i = n - 1; i >= 0; --i)
          if (mind[i] > 0.0) {
            next = i;
            break;
          }
    }
    if (next < 0)
      // Every point coincides with a chosen centre (fewer distinct points than K): the
      // lowest index not chosen yet, so the K indices stay distinct.
      for (idx_t i = 0; i < n; ++i)
        if (!used[i]) {
          next = i;
          break;
        }
    cur = next;
  }
}

// Per-cluster arg-max of density[i] - weight * reg[i] (float64), first member on ties: one
// O(n) pass (the reference loops over clusters and scans every point for each).
void segment_argmax(const float* density, const double* reg, double weight,
                    const int32_t* labels, int64_t n, int K, int64_t* out_best) {
  std::vector<double> best(K, 0.0);
  for (int c = 0; c < K; ++c) out_best[c] = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t c = labels[i];
    if (c < 0 || c >= K) continue;  // Python rejects these; never index out of range
    const double s = static_cast<double>(density[i]) - (reg ? weight * reg[i] : 0.0);
    // Strict > in ascending i keeps the first member on ties; a cluster whose members all
    // score -inf (infinite regularizer) still gets its first member.
    if (out_best[c] < 0 || s > best[c]) {
      best[c] = s;
      out_best[c] = i;
    }
  }
}

}  // namespace cpu
}  // namespace usl_fast
