// The selection regularizer (REFERENCE.md section 3) as an epilogue of the tile engine:
// per point, a masked power-sum over the current picks, or over its horizon_num nearest
// picks. Rows are split over threads; each row's sum runs in a fixed order, so the
// result does not depend on the thread count.
#include <atomic>
#include <cmath>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// D^-alpha in float64, with the two exponents the published configs use done exactly.
inline double neg_pow(double dv, double alpha) {
  if (alpha == 0.5) return 1.0 / std::sqrt(dv);
  if (alpha == 1.0) return 1.0 / dv;
  return std::pow(dv, -alpha);
}

constexpr int kLanes = 8;
// Tiny distances are re-computed directly below this fraction of the norms: a wider margin
// than the kNN's kExactRel, because 1/D^alpha magnifies the error of a small D.
constexpr float kRegExactRel = 1e-3f;

__attribute__((target_clones("avx512f", "avx2", "default"))) void distances_row(
    const float* ip, float xn, const float* pn, idx_t nj, float* out) {
  for (idx_t c = 0; c < nj; ++c) out[c] = l2_from_ip(xn, pn[c], ip[c]);
}

// lanes[c % kLanes] += term(D[c]) for one point against nj picks, where a masked entry
// (own cluster, beyond the horizon, or an exact zero under mask_zero) counts as `far`.
// kLanes independent float64 accumulators let the loop vectorize without reordering any
// single sum. alpha_mode 0: alpha = 0.5, 1: alpha = 1, 2: any other alpha (std::pow).
__attribute__((target_clones("avx512f", "avx2", "default"))) void add_terms(
    const float* dv, const int32_t* tag, idx_t nj, int32_t label, float horizon_dist,
    bool mask_zero, int alpha_mode, double alpha, double far_term, double* lanes) {
  idx_t c = 0;
  for (; c + kLanes <= nj; c += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float v = dv[c + l];
      const bool m = tag[c + l] == label || v >= horizon_dist || (mask_zero && v == 0.0f);
      const double dd = static_cast<double>(v);
      const double t = alpha_mode == 0 ? 1.0 / std::sqrt(dd)
                       : alpha_mode == 1 ? 1.0 / dd
                                         : std::pow(dd, -alpha);
      lanes[l] += m ? far_term : t;
    }
  for (; c < nj; ++c) {
    const float v = dv[c];
    const bool m = tag[c] == label || v >= horizon_dist || (mask_zero && v == 0.0f);
    lanes[c % kLanes] += m ? far_term : neg_pow(static_cast<double>(v), alpha);
  }
}

// Squared distance from the tile's inner product, re-computed directly when it is tiny
// compared to the norms: the expanded form cannot resolve those (a point and its own pick
// would come out as 1e-7 instead of 0, and 0 is what the masks test for).
inline float exact_when_close(const float* xr, const float* pr, idx_t d, float xn, float pn,
                              float ip) {
  const float dv = l2_from_ip(xn, pn, ip);
  if (dv > kRegExactRel * (xn + pn)) return dv;
  return direct_l2(xr, pr, d);
}

}  // namespace

void regularizer(const MatView& x, const float* x_norms, const MatView& picks,
                 const int32_t* labels, const int32_t* pick_tag, double alpha,
                 float horizon_dist, int horizon_num, bool mask_zero, double far, double* out,
                 int threads, const Control& ctl) {
  const idx_t n = x.rows, d = x.cols, p = picks.rows;
  require(picks.cols == d, "regularizer: same dimension");
  require(p >= 1, "regularizer: at least one pick");
  const bool top_h = horizon_num > 0 && horizon_num < p;
  const double far_term = neg_pow(far, alpha);
  const int alpha_mode = alpha == 0.5 ? 0 : alpha == 1.0 ? 1 : 2;
  std::vector<float> pn(p);
  row_norms(picks, pn.data(), threads);
  const idx_t TR = num_tiles(n), TC = num_tiles(p);
  ctl.set_total(TR);
  std::atomic<bool> stop{false};

  auto masked = [&](idx_t i, idx_t j, float dv) {
    return labels[i] == pick_tag[j] || (mask_zero && dv == 0.0f);
  };

#pragma omp parallel num_threads(resolve_threads(threads))
  {
    float* const tile = thread_tile();
    std::vector<double> lanes(static_cast<size_t>(kTile) * kLanes);
    std::vector<float> dist_row(kTile);
    Reservoir res;
    if (top_h) res.init(kTile, horizon_num);
    std::vector<float> hd(top_h ? horizon_num : 0);
    std::vector<int64_t> hi(top_h ? horizon_num : 0);
#pragma omp for schedule(dynamic, 1)
    for (idx_t I = 0; I < TR; ++I) {
      if (stop.load(std::memory_order_relaxed)) continue;
      if (ctl.cancelled()) {
        stop = true;
        continue;
      }
      const idx_t i0 = I * kTile, mi = std::min(kTile, n - i0);
      std::fill(lanes.begin(), lanes.end(), 0.0);
      if (top_h) {
        res.reset(kTile);
      }
      for (idx_t J = 0; J < TC; ++J) {
        const idx_t j0 = J * kTile, nj = std::min(kTile, p - j0);
        gemm_nt(x.row(i0), mi, picks.row(j0), nj, d, tile, kTile);
        for (idx_t r = 0; r < mi; ++r) {
          const idx_t i = i0 + r;
          const float* row = tile + r * kTile;
          const float xn = x_norms[i];
          if (top_h) {
            for (idx_t c = 0; c < nj; ++c) {
              const float dv =
                  exact_when_close(x.row(i), picks.row(j0 + c), d, xn, pn[j0 + c], row[c]);
              if (dv <= res.thr[r]) res.push(r, dv, static_cast<int32_t>(j0 + c));
            }
          } else {
            float* dv = dist_row.data();
            distances_row(row, xn, pn.data() + j0, nj, dv);
            for (idx_t c = 0; c < nj; ++c)  // rare: tiny distances, re-computed directly
              if (dv[c] <= kRegExactRel * (xn + pn[j0 + c]))
                dv[c] = direct_l2(x.row(i), picks.row(j0 + c), d);
            add_terms(dv, pick_tag + j0, nj, labels[i], horizon_dist, mask_zero, alpha_mode,
                      alpha, far_term, lanes.data() + r * kLanes);
          }
        }
      }
      for (idx_t r = 0; r < mi; ++r) {
        const idx_t i = i0 + r;
        if (top_h) {
          // The horizon_num nearest picks, ascending; masks apply after the selection,
          // as in the reference (a masked pick still takes one of the h places).
          res.finish(r, hd.data(), hi.data());
          double s = 0.0;
          for (int t = 0; t < horizon_num; ++t) {
            const float dv = hd[t];
            s += (masked(i, hi[t], dv) || dv >= horizon_dist) ? far_term : neg_pow(dv, alpha);
          }
          out[i] = s;
        } else {
          // The lanes hold interleaved partial sums (column c in lane c % kLanes); add
          // them in lane order, the same for every thread count and ISA.
          double t = 0.0;
          for (int l = 0; l < kLanes; ++l) t += lanes[r * kLanes + l];
          out[i] = t;
        }
      }
      ctl.add(1);
    }
  }
  if (stop) throw Cancelled();
}

}  // namespace cpu
}  // namespace usl_fast
