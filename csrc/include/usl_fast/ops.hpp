// Every operation of the engine, one declaration each, in back-end-neutral terms: views in,
// caller-allocated outputs, a Context for threads / stream, cancellation and progress. The
// CPU back end implements these in csrc/cpu/ (knn.cpp, kmeans.cpp, regularizer.cpp,
// range_count.cpp; row_norms in exact.cpp). csrc/cuda/ does not mirror them: it holds a few
// kernels (exact_grid, exact_gather, segment_sum; usl_fast/cuda_ops.hpp) that the portable
// back end (usl_fast/portable.py) calls for its hot steps on GPU tensors, and their pybind11
// module. Inputs are validated by Python: finite float32 rows whose squared norms are
// <= kMaxSquaredNorm, shapes that agree, <= kMaxRows rows.
// Every distance any op returns or uses is exact_l2 (usl_fast/l2.hpp).
#pragma once

#include "usl_fast/common.hpp"
#include "usl_fast/l2.hpp"

namespace usl_fast {
namespace cpu {

// Squared norms of the rows of x: exact_l2 against the zero vector.
void row_norms(const View& x, float* out, const Context& ctx);

struct KnnOptions {
  // Large k: start each row from a sampled upper bound of its k-th distance (0 disables;
  // the result is the same either way, only the work changes).
  double sample_hits = 24.0;
  // Past this many bytes of all-rows reservoirs, the self graph is searched as queries.
  double max_reservoir_bytes = 4.0 * (1 << 30);
};
double reservoir_bytes_per_row(int k);

// k nearest rows of x for every query row (queries == nullptr: the self graph, every row in
// its own list at distance 0, after any lower-index exact duplicates), ascending
// (distance, index). out_*: rows * k; out_idx may be null (distances only).
void knn(const View& x, const View* queries, int k, float* out_dist, int64_t* out_idx,
         const Context& ctx, const KnnOptions& opt);

// Both sides of one rectangular block: for every row of a, the k smallest exact distances
// to rows of b, and for every row of b the k smallest to rows of a, ascending, +inf where
// fewer were kept. a_start / b_start (may be null): per-row upper bounds of the distance
// the caller still needs (e.g. the k-th distance already found elsewhere); pairs beyond a
// row's bound may be left out. Every pair is computed once (a distributed kNN's
// off-diagonal shard block). out_a: a.rows * k, out_b: b.rows * k.
void knn_cross(const View& a, const View& b, int k, const float* a_start, const float* b_start,
               float* out_a, float* out_b, const Context& ctx);

// Self kNN density without lists: out[i] = 1 / max(mean of the k smallest distances of row i
// (itself included), min_mean), the mean in float64 over the ascending distances.
void knn_density(const View& x, int k, double min_mean, float* out_density, const Context& ctx,
                 const KnnOptions& opt);

// Nearest centroid of every row (ties to the lower centroid) and its distance (may be null).
// x_norms: row_norms(x) if the caller keeps them across calls (k-means), else null.
void assign(const View& x, const float* x_norms, const View& centroids, int32_t* out_label,
            float* out_dist, const Context& ctx);

// Float64 member sums (K x d) and member counts (K) per cluster; each sum in ascending row
// order, whatever the thread count. labels in [0, K). Only clusters [c_lo, c_hi) are
// summed; accumulate: add onto out_sums (continue another process's sums) instead of zero.
// rows (may be null): visit only these n_rows rows, in that order (ascending per cluster).
void segment_sum(const View& x, const int32_t* labels, int K, double* out_sums,
                 int64_t* out_counts, const Context& ctx, int c_lo, int c_hi, bool accumulate,
                 const int64_t* rows, idx_t n_rows);

// inout_min[i] = min(inout_min[i], distance of row i to its nearest center); inout_arg (may be
// null) gets arg_offset + that center's row where the distance got strictly smaller, or equal
// with a lower index.
void min_update(const View& x, const View& centers, int64_t arg_offset, float* inout_min,
                int64_t* inout_arg, const Context& ctx);

// out[i] = number of base rows within squared distance `radius` of query row i (<=).
void range_count(const View& q, const View& base, float radius, int64_t* out_count,
                 const Context& ctx);

// The same pairs as a CSR list: the base rows within `radius` of query row i, ascending, in
// out_index[offsets[i], offsets[i + 1]); offsets (q.rows + 1) are the prefix sums of
// range_count's counts (an engine error, not corruption, if they disagree).
void range_search(const View& q, const View& base, float radius, const int64_t* offsets,
                  int32_t* out_index, const Context& ctx);

// One round of the selection regularizer, per row i of x:
//   D[i, j] = exact_l2(x_i, picks_j);
//   horizon_num > 0 (and < picks): only the horizon_num smallest (D, j) of the row count;
//   an entry is masked when labels[i] == pick_tag[j] (-1 never matches), D >= horizon_dist,
//   or (mask_zero and D == 0); a masked entry adds far^-alpha, any other D^-alpha (1/0 = inf).
//   out[i] = the float64 sum, in ascending j (power-sum) or ascending (D, j) (top-h).
// memo (power-sum only, or nullptr): x.rows x picks.rows float32, what an earlier call with
// the same x, labels, pick count and horizon_dist left there; columns j with fresh[j] == 0
// are read from it instead of evaluated, those with fresh[j] == 1 evaluated and stored. Row
// r holds the distances of the r-th row the power-sum runs on (after the duplicate
// collapse, a group's representative; the rows past the groups stay unwritten), and a pair
// the filter proves beyond the horizon is stored as +inf (masked either way, but only for
// this horizon). The result has the same bits with or without it.
void regularizer(const View& x, const View& picks, const int32_t* labels, const int32_t* pick_tag,
                 double alpha, float horizon_dist, int horizon_num, bool mask_zero, double far,
                 double* out, const Context& ctx, float* memo = nullptr,
                 const uint8_t* fresh = nullptr);

// Per-cluster arg-max of density[i] - weight * reg[i] (float64; reg may be null), first index
// on ties; out_best: K, -1 for a cluster with no member.
void segment_argmax(const float* density, const double* reg, double weight,
                    const int32_t* labels, int64_t n, int K, int64_t* out_best);

// k-means++ seeding (D^2 sampling with exact distances, splitmix64 from `seed`).
void kmeanspp_init(const View& x, int K, uint64_t seed, int64_t* out_index, const Context& ctx);

}  // namespace cpu
}  // namespace usl_fast
