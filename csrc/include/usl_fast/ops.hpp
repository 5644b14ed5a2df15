// Every operation of the engine, one declaration each. The CPU back end implements these
// in csrc/cpu/<op>.cpp; a CUDA back end is to mirror the same names and argument order.
// Inputs are already validated by Python: finite float32, C-contiguous, shapes agree.
#pragma once

#include "usl_fast/common.hpp"

namespace usl_fast {
namespace cpu {

// Number of OpenMP threads to use: `threads` if > 0, else the OpenMP default.
int resolve_threads(int threads);

// Squared L2 norms of the rows of x (out: x.rows floats).
void row_norms(const MatView& x, float* out, int threads);

// Self kNN graph: for every row i of x, its k nearest rows by squared L2, the row itself
// included at distance exactly 0. Each pair of row tiles is computed once (symmetry) and
// both rows' and columns' top-k are updated. Ties break to the lower index.
// out_dist: x.rows * k floats (ascending per row); out_idx: x.rows * k int64.
// Requires 1 <= k <= x.rows. sample_hits > 0 enables the sampled early-rejection
// threshold for large k (see knn.cpp; the result is exact either way); 0 disables it.
// max_reservoir_bytes bounds the symmetric pass's candidate buffers (all rows at once);
// past it the rows are searched as queries (2x the GEMM work, per-thread buffers only).
constexpr double kDefaultSampleHits = 24.0;
constexpr double kDefaultMaxReservoirBytes = 4.0 * (1 << 30);
void knn_self(const MatView& x, int k, float* out_dist, int64_t* out_idx, int threads,
              const Control& ctl, double sample_hits = kDefaultSampleHits,
              double max_reservoir_bytes = kDefaultMaxReservoirBytes);

// kNN of each query row among the base rows (no self special case).
// Requires 1 <= k <= base.rows; out arrays are queries.rows * k.
void knn_query(const MatView& queries, const MatView& base, int k, float* out_dist,
               int64_t* out_idx, int threads, const Control& ctl);

// Nearest centroid of every row (k-means assignment). Centroids whose alive[c] == 0 are
// never chosen (alive may be null: all alive). Ties go to the lower centroid index.
// out_label: x.rows int32, out_dist: x.rows floats (squared L2, clamped at 0).
void assign_nearest(const MatView& x, const float* x_norms, const MatView& centroids,
                    const uint8_t* alive, int32_t* out_label, float* out_dist, int threads);

// Lloyd's k-means from given initial centroids (centroids: K x d, updated in place).
// Each iteration assigns then updates; a cluster that ends an assignment with no member
// is marked dead (never assigned again, its centroid left where it was): the reference
// implementation's NaN centroid, without the NaN. labels: the last assignment (made
// before the last update). counts: members per cluster in that assignment.
// Centroid sums are accumulated in float64 in row order (thread-count independent).
// Stops early at a fixed point (an assignment equal to the previous one), which gives
// exactly the result of all n_iter iterations; returns the iterations actually run and
// fills the rest of inertia_per_iter with the final value.
int kmeans_lloyd(const MatView& x, float* centroids, int K, int n_iter, int32_t* labels,
                  int64_t* counts, float* inertia_per_iter, int threads, const Control& ctl);

// k-means++ seeding (D^2 sampling, one candidate per step) with a deterministic RNG.
// out_index: K row indices of x.
void kmeanspp_init(const MatView& x, int K, uint64_t seed, int64_t* out_index, int threads,
                   const Control& ctl);

// The selection regularizer of one round (REFERENCE.md section 3), per row i of x:
//   D[i, j]  = squared L2 from x_i to picks_j (exact, re-computed directly when tiny, so
//              that a point and its own pick give exactly 0)
//   horizon_num > 0: keep only the horizon_num smallest D[i, :] (ties to lower j)
//   an entry is "masked" when labels[i] == pick_tag[j] (own cluster; pick_tag -1 never
//   matches), or D >= horizon_dist, or (mask_zero and D == 0); a masked entry counts as
//   distance `far`.
//   out[i] = sum over kept entries of D^-alpha  (float64, in ascending (D, j) order for
//            top-h, in j order otherwise).
void regularizer(const MatView& x, const float* x_norms, const MatView& picks,
                 const int32_t* labels, const int32_t* pick_tag, double alpha,
                 float horizon_dist, int horizon_num, bool mask_zero, double far,
                 double* out, int threads, const Control& ctl);

// Per-cluster argmax of score[i] = density[i] - weight * reg[i] (float64), first index on
// ties. out_best: K int64, -1 for clusters with no member.
void segment_argmax(const float* density, const double* reg, double weight,
                    const int32_t* labels, int64_t n, int K, int64_t* out_best);

}  // namespace cpu
}  // namespace usl_fast
