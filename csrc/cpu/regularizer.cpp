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

// Squared distance from the tile's inner product, re-computed directly when it is tiny
// compared to the norms: the expanded form cannot resolve those (a point and its own pick
// would come out as 1e-7 instead of 0, and 0 is what the masks test for).
inline float exact_when_close(const float* xr, const float* pr, idx_t d, float xn, float pn,
                              float ip) {
  // A wider margin than the kNN's kExactRel: 1/D^alpha magnifies the error of a small D.
  const float dv = l2_from_ip(xn, pn, ip);
  if (dv > 1e-3f * (xn + pn)) return dv;
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
    std::vector<double> acc(kTile);
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
      std::fill(acc.begin(), acc.end(), 0.0);
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
            double s = acc[r];
            for (idx_t c = 0; c < nj; ++c) {
              const idx_t j = j0 + c;
              const float dv = exact_when_close(x.row(i), picks.row(j), d, xn, pn[j], row[c]);
              s += (masked(i, j, dv) || dv >= horizon_dist) ? far_term : neg_pow(dv, alpha);
            }
            acc[r] = s;
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
          out[i] = acc[r];
        }
      }
      ctl.add(1);
    }
  }
  if (stop) throw Cancelled();
}

}  // namespace cpu
}  // namespace usl_fast
