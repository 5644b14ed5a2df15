// The selection regularizer as epilogues of the tile driver: per point, a masked power-sum
// over the current picks, or over its horizon_num nearest picks (top-h, then the masks).
// Every distance that enters a sum or a mask is exact_l2; the filter only skips the pairs
// whose lower bound already puts them beyond the horizon. Each row's sum runs in a fixed
// order (ascending pick for the power-sum, ascending (distance, pick) for top-h), so the
// result depends neither on threads nor on the path.
#include <cmath>

#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

inline double neg_pow(double dv, double alpha) {
  if (alpha == 0.5) return 1.0 / std::sqrt(dv);
  if (alpha == 1.0) return 1.0 / dv;
  return std::pow(dv, -alpha);
}

struct RegParams {
  idx_t d;
  const int32_t* labels;
  const int32_t* tag;
  double alpha, far_term;
  float horizon_dist;
  int horizon_num;
  bool mask_zero;
  double* out;

  bool masked(idx_t i, idx_t j, float dv) const {
    return labels[i] == tag[j] || dv >= horizon_dist || (mask_zero && dv == 0.0f);
  }
};

struct PowerSum {
  const RegParams& p;
  struct Local {
    PowerSum& e;
    std::vector<double> sum;
    std::vector<int32_t> need;
    std::vector<uint8_t> cls;
    std::vector<float> vals;
    explicit Local(PowerSum& epi) : e(epi), sum(kTile), need(kTile), cls(kTile), vals(kTile) {}
    void begin(idx_t, idx_t) { std::fill(sum.begin(), sum.end(), 0.0); }
    void tile(const Tile& t) {
      const RegParams& p = e.p;
      const bool finite_h = std::isfinite(p.horizon_dist);
      // Surely beyond the horizon: lower - abs >= horizon_dist.
      const float beyond = round_up(static_cast<double>(p.horizon_dist) + t.abs);
      for (idx_t r = 0; r < t.mi; ++r) {
        const idx_t i = t.i0 + r;
        const int32_t label = p.labels[i];
        idx_t nneed = 0;
        for (idx_t c = 0; c < t.nj; ++c) {
          const idx_t j = t.j0 + c;
          // 0: masked without needing the distance; 1: needs the exact value.
          const bool far = p.tag[j] == label || (finite_h && t.lower(r, c) >= beyond);
          cls[c] = far ? 0 : 1;
          if (!far) need[nneed++] = static_cast<int32_t>(j);
        }
        if (nneed) {
          exact_gather(t.rows.row(i), t.cols, need.data(), nneed, vals.data());
        }
        double s = sum[r];
        idx_t q = 0;
        for (idx_t c = 0; c < t.nj; ++c) {
          if (!cls[c]) {
            s += p.far_term;
            continue;
          }
          const float dv = vals[q++];
          s += p.masked(i, t.j0 + c, dv) ? p.far_term : neg_pow(dv, p.alpha);
        }
        sum[r] = s;
      }
    }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) e.p.out[i0 + r] = sum[r];
    }
  };
};

struct TopH {
  const RegParams& p;
  struct Local {
    TopH& e;
    TopK res;
    std::vector<uint64_t> keys;
    explicit Local(TopH& epi) : e(epi), keys(epi.p.horizon_num) {
      res.init(kTile, e.p.horizon_num, filter_abs(e.p.d));
    }
    void begin(idx_t, idx_t) { res.reset(); }
    void tile(const Tile& t) { scan_topk(t, &res, 0, nullptr); }
    void end(idx_t i0, idx_t mi) {
      const RegParams& p = e.p;
      for (idx_t r = 0; r < mi; ++r) {
        const idx_t i = i0 + r;
        // The horizon_num nearest picks, ascending; the masks apply after the selection,
        // as in the reference (a masked pick still takes one of the h places).
        const int kk = res.finish(r, keys.data());
        double s = 0.0;
        for (int t = 0; t < kk; ++t) {
          const float dv = key_dist(keys[t]);
          s += p.masked(i, key_index(keys[t]), dv) ? p.far_term : neg_pow(dv, p.alpha);
        }
        p.out[i] = s;
      }
    }
  };
};

}  // namespace

void regularizer(const View& x, const View& picks, const int32_t* labels, const int32_t* pick_tag,
                 double alpha, float horizon_dist, int horizon_num, bool mask_zero, double far,
                 double* out, const Context& ctx) {
  require(picks.cols == x.cols && picks.rows >= 1, "regularizer: picks");
  require(picks.rows <= kMaxRows, "regularizer: picks fit in int32");
  const Buffer<float> xn = norms(x, ctx), pn = norms(picks, ctx);
  const RegParams p{x.cols, labels,       pick_tag,  alpha,    neg_pow(far, alpha),
                    horizon_dist, horizon_num, mask_zero, out};
  ctx.set_total(num_tiles(x.rows));
  // The h nearest of at most h picks are all of them: the power-sum. (The reference's
  // top-h pads the missing slots with (inf, index 0) instead, and its own-position mask then
  // turns every score of cluster 0 into NaN; docs/parity.md.)
  if (horizon_num > 0 && horizon_num < picks.rows) {
    TopH epi{p};
    for_each_tile(x, xn.data(), picks, pn.data(), epi, ctx);
  } else {
    PowerSum epi{p};
    for_each_tile(x, xn.data(), picks, pn.data(), epi, ctx);
  }
}

}  // namespace cpu
}  // namespace usl_fast
