// The CPU tile engine: a per-thread single-threaded SGEMM on cache-sized tiles
// (x.y for a row tile against a column tile) whose result the caller's epilogue consumes
// while it is still in L2. Nothing larger than a tile of distances ever exists.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "usl_fast/common.hpp"

namespace usl_fast {
namespace cpu {

// Rows per tile side. 256 x 256 floats = 256 KiB: the tile and both operand panels
// (256 x d each) stay in a 1-2 MiB L2 for d up to ~512, and OpenBLAS still runs at
// full speed on a 256 x 256 x d product (measured: benchmarks/bench_knn.py).
constexpr idx_t kTile = 256;

// C[m x n] = A[m x d] * B[n x d]^T, row-major, single-threaded OpenBLAS.
void gemm_nt(const float* a, idx_t m, const float* b, idx_t n, idx_t d, float* c, idx_t ldc);

// A kTile x kTile scratch tile owned by the calling thread, allocated once per thread
// (OpenMP keeps its pool between parallel regions): a fresh 256 KiB vector per call
// costs page faults on every k-means iteration.
inline float* thread_tile() {
  thread_local std::vector<float> tile(static_cast<size_t>(kTile) * kTile);
  return tile.data();
}

// Below this fraction of ||x||^2 + ||y||^2, a squared distance from the expanded form is
// mostly rounding error (a few ulp of the norms): such distances are re-computed directly.
constexpr float kExactRel = 1e-4f;

// Squared L2 summed directly in float64 and rounded once: exactly 0 for identical rows.
inline float direct_l2(const float* a, const float* b, idx_t d) {
  double s = 0.0;
  for (idx_t t = 0; t < d; ++t) {
    const double diff = static_cast<double>(a[t]) - b[t];
    s += diff * diff;
  }
  return static_cast<float>(s);
}

inline idx_t num_tiles(idx_t n) { return (n + kTile - 1) / kTile; }

// Fixed-size, per-row candidate reservoir for exact top-k under the (distance, index)
// order: accept anything <= the current k-th best, compact with nth_element when full.
// The final result is the k smallest pairs of everything offered, whatever the order.
// Candidates are packed as one uint64 key, distance bits high and index low: distances
// are >= 0, and the IEEE bits of non-negative floats sort like the floats, so integer
// order on keys IS the (distance, index) order, and selection runs on plain integers.
inline uint64_t pack_key(float d, int32_t j) {
  uint32_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(j);
}
inline float key_dist(uint64_t key) {
  const uint32_t bits = static_cast<uint32_t>(key >> 32);
  float d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}
inline int32_t key_index(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

struct Reservoir {
  int k = 0, cap = 0;
  uint64_t* keys = nullptr;  // rows * cap
  int32_t* count = nullptr;  // rows
  float* thr = nullptr;      // rows: current acceptance threshold (+inf until k seen)

  std::unique_ptr<uint64_t[]> key_store;  // not zero-filled: only [0, count) is read
  std::vector<int32_t> count_store;
  std::vector<float> thr_store;

  void init(idx_t rows, int k_) {
    k = k_;
    cap = 2 * k + 16;
    key_store.reset(new uint64_t[static_cast<size_t>(rows) * cap]);
    count_store.assign(rows, 0);
    thr_store.assign(rows, std::numeric_limits<float>::infinity());
    keys = key_store.get();
    count = count_store.data();
    thr = thr_store.data();
  }

  void reset(idx_t rows) {
    std::fill(count, count + rows, 0);
    std::fill(thr, thr + rows, std::numeric_limits<float>::infinity());
  }

  // Keep the k best of row r's buffer; the threshold becomes the k-th best distance.
  void compact(idx_t r) {
    uint64_t* kr = keys + r * cap;
    const int n = count[r];
    if (n <= k) return;
    std::nth_element(kr, kr + (k - 1), kr + n);
    count[r] = k;
    thr[r] = key_dist(kr[k - 1]);
  }

  inline void push(idx_t r, float dv, int32_t j) {
    const int c = count[r];
    keys[r * cap + c] = pack_key(dv, j);
    count[r] = c + 1;
    if (c + 1 == cap) compact(r);
  }

  // Sorted k best of row r (fewer seen than k: padded with +inf / -1).
  void finish(idx_t r, float* out_d, int64_t* out_i) {
    uint64_t* kr = keys + r * cap;
    const int n = count[r];
    const int kk = std::min(k, n);
    if (n > kk) std::nth_element(kr, kr + (kk - 1), kr + n);
    std::sort(kr, kr + kk);
    for (int t = 0; t < kk; ++t) {
      out_d[t] = key_dist(kr[t]);
      out_i[t] = key_index(kr[t]);
    }
    for (int t = kk; t < k; ++t) {
      out_d[t] = std::numeric_limits<float>::infinity();
      out_i[t] = -1;
    }
  }
};

// One tile of inner products to scan: rows [0, mi) of the tile are global rows i0 + r of
// the row set, columns [0, nj) are global j0 + c of the column set. Each distance
// d = max(xn_i + yn_j - 2 ip, 0) is offered to row i's reservoir and, when `cols` is
// set, to column j's (symmetric self graph). `diag`: a diagonal tile of the self graph,
// where i == j is the point itself and gets distance 0.
struct TileScan {
  const float* ip;
  idx_t ldt, mi, nj, i0, j0;
  const float* norms_i;  // mi norms of the tile's rows
  const float* norms_j;  // nj norms of the tile's columns
  const float* rows_i;   // the tile's row vectors (mi x d), for exact re-computation
  const float* rows_j;   // the tile's column vectors (nj x d)
  idx_t d;
  Reservoir* rows;
  Reservoir* cols;
  bool diag;
};

void scan_tile(const TileScan& t);

}  // namespace cpu
}  // namespace usl_fast
