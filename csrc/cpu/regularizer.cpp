// The selection regularizer as epilogues of the tile driver: per point, a masked power-sum
// over the current picks, or over its horizon_num nearest picks (top-h, then the masks).
// Every distance that enters a sum or a mask is exact_l2; the filter only skips the pairs
// whose lower bound already puts them beyond the horizon. Each row's sum runs in a fixed
// order (ascending pick for the power-sum, ascending (distance, pick) for top-h), so the
// result depends neither on threads nor on the path.
#include <algorithm>
#include <cmath>
#include <limits>

#include "dedup.hpp"
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
  // The distance memo (or nullptr): memo[r * picks + j] = D[r, j] from an earlier call with
  // the same rows, kept where fresh[j] == 0, computed and stored where fresh[j] == 1.
  float* memo;
  const uint8_t* fresh;
  idx_t picks;

  bool masked(idx_t i, idx_t j, float dv) const {
    return labels[i] == tag[j] || dv >= horizon_dist || (mask_zero && dv == 0.0f);
  }
};

struct PowerSum {
  const RegParams& p;
  // Rows are handled in blocks of kRows: the block's exact distances come from one
  // register-blocked call (exact_block: each row against 8 picks a step), each row's terms
  // go to its own line of a buffer, then the block's sums advance one column at a time for
  // all its rows at once, so every row still adds its terms in ascending pick order (the
  // same bits as one running sum per row) while kRows independent sums keep the adder busy.
  static constexpr int kRows = 8;
  struct Local {
    PowerSum& e;
    std::vector<double> sum, terms;
    std::vector<uint8_t> far;
    std::vector<float> dv;
    std::vector<const float*> cols;
    std::vector<idx_t> fcol;  // memo mode: the tile's fresh columns
    explicit Local(PowerSum& epi)
        : e(epi), sum(kTile), terms(kTile * kRows), far(kTile * kRows), dv(kTile * kRows),
          cols(kTile), fcol(kTile) {}
    // The filter pays only where its bound spares evaluations: with an infinite horizon
    // never, and on data whose pairs all lie inside the horizon (unit vectors under the
    // CIFAR horizon 4) its GEMM is a fifth of the evaluation cost, spent for nothing. So a
    // tile where it spared under 1/8 of the evaluations turns it off for the next `rest`
    // tiles of this thread, twice as many after each such probe (8, 16, ... 64); a probe
    // where it pays turns it back on for every tile. A pair masked by the filter is one
    // whose exact value is masked too, so this changes the time, never a bit of the sum.
    int rest = 0, pause = 8;
    bool wants_filter(idx_t J) {
      if (!std::isfinite(e.p.horizon_dist)) return false;
      // With the memo the filter can spare only the fresh columns' evaluations, while its
      // GEMM costs the whole tile's (about a fifth of evaluating all 256 columns): below a
      // quarter of the tile fresh it cannot pay.
      if (e.p.memo && e.fresh_in_tile[J] < kTile / 4) return false;
      if (rest > 0) {
        --rest;
        return false;
      }
      return true;
    }
    void begin(idx_t, idx_t) { std::fill(sum.begin(), sum.end(), 0.0); }

    // far[c]: pair (r, c) is masked without needing its distance (own cluster, or with
    // `filter` surely beyond the horizon: lower - abs >= horizon_dist).
    void far_flags(const Tile& t, idx_t r, float beyond, bool filter, uint8_t* f) const {
      const RegParams& p = e.p;
      const int32_t label = p.labels[t.i0 + r];
      const int32_t* tag = p.tag + t.j0;
      if (!filter) {
        for (idx_t c = 0; c < t.nj; ++c) f[c] = tag[c] == label;
        return;
      }
      for (idx_t c = 0; c < t.nj; ++c) f[c] = (tag[c] == label) | (t.lower(r, c) >= beyond);
    }

    // After a tile that had the filter's products: a filter that spared under 1/8 of the
    // `pairs` it could spare pauses (wants_filter).
    void filter_paid(idx_t pairs, idx_t evaluated) {
      const bool pays = (pairs - evaluated) * 8 >= pairs;
      rest = pays ? 0 : pause;
      pause = pays ? 8 : std::min(2 * pause, 64);
    }

    void tile(const Tile& t) {
      if (e.p.memo) return memo_tile(t);
      const RegParams& p = e.p;
      const float beyond = round_up(static_cast<double>(p.horizon_dist) + t.abs);
      for (idx_t c = 0; c < t.nj; ++c) cols[c] = t.cols.row(t.j0 + c);
      idx_t evaluated = 0;
      for (idx_t r0 = 0; r0 < t.mi; r0 += kRows) {
        const int nr = static_cast<int>(std::min<idx_t>(kRows, t.mi - r0));
        const float* rows[kRows];
        for (int u = 0; u < nr; ++u) {
          rows[u] = t.rows.row(t.i0 + r0 + u);
          far_flags(t, r0 + u, beyond, t.ip != nullptr, far.data() + u * kTile);
        }
        // Far pairs may be evaluated too (with a neighbour that is not); the terms ignore
        // their values.
        evaluated +=
            exact_block(rows, nr, cols.data(), t.nj, p.d, far.data(), kTile, dv.data(), kTile);
        for (int u = 0; u < nr; ++u)
          power_terms(dv.data() + u * kTile, far.data() + u * kTile, t.nj, p.alpha,
                      p.horizon_dist, p.mask_zero, p.far_term, terms.data() + u * kTile);
        add_terms(r0, nr, t.nj);
      }
      if (t.ip) filter_paid(t.mi * t.nj, evaluated);
    }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) e.p.out[i0 + r] = sum[r];
    }

    // With the memo: the tile's fresh columns are evaluated (all pairs but those the filter
    // puts surely beyond the horizon, stored as +inf: masked either way, so the same term)
    // into the memo, then every column's terms come from the memo rows, own-cluster pairs
    // masked by their flags, and the sums advance as in tile().
    void memo_tile(const Tile& t) {
      const RegParams& p = e.p;
      const float beyond = round_up(static_cast<double>(p.horizon_dist) + t.abs);
      idx_t nf = 0;
      for (idx_t c = 0; c < t.nj; ++c)
        if (p.fresh[t.j0 + c]) {
          fcol[nf] = c;
          cols[nf++] = t.cols.row(t.j0 + c);
        }
      idx_t evaluated = 0;
      for (idx_t r0 = 0; r0 < t.mi; r0 += kRows) {
        const int nr = static_cast<int>(std::min<idx_t>(kRows, t.mi - r0));
        if (nf > 0) {
          const float* rows[kRows];
          for (int u = 0; u < nr; ++u) {
            rows[u] = t.rows.row(t.i0 + r0 + u);
            uint8_t* f = far.data() + u * kTile;
            for (idx_t q = 0; q < nf; ++q) f[q] = t.ip && t.lower(r0 + u, fcol[q]) >= beyond;
          }
          evaluated +=
              exact_block(rows, nr, cols.data(), nf, p.d, far.data(), kTile, dv.data(), kTile);
          for (int u = 0; u < nr; ++u) {
            float* mrow = memo_row(t, r0 + u);
            const float* du = dv.data() + u * kTile;
            const uint8_t* f = far.data() + u * kTile;
            for (idx_t q = 0; q < nf; ++q)
              mrow[fcol[q]] = f[q] ? std::numeric_limits<float>::infinity() : du[q];
          }
        }
        for (int u = 0; u < nr; ++u) {
          uint8_t* f = far.data() + u * kTile;
          far_flags(t, r0 + u, beyond, false, f);  // own cluster only
          power_terms(memo_row(t, r0 + u), f, t.nj, p.alpha, p.horizon_dist, p.mask_zero,
                      p.far_term, terms.data() + u * kTile);
        }
        add_terms(r0, nr, t.nj);
      }
      if (t.ip) filter_paid(t.mi * nf, evaluated);
    }

    // The memo's line for tile row r, from the tile's first column.
    float* memo_row(const Tile& t, idx_t r) const {
      return e.p.memo + (t.i0 + r) * e.p.picks + t.j0;
    }

    // Rows r0 .. r0 + nr of the block add their terms, column by column in ascending pick
    // order, kRows independent sums at once.
    void add_terms(idx_t r0, int nr, idx_t nj) {
      for (int u = nr; u < kRows; ++u)
        for (idx_t c = 0; c < nj; ++c) terms[u * kTile + c] = 0.0;
      double acc[kRows];
      for (int u = 0; u < kRows; ++u) acc[u] = u < nr ? sum[r0 + u] : 0.0;
      for (idx_t c = 0; c < nj; ++c)
        for (int u = 0; u < kRows; ++u) acc[u] += terms[u * kTile + c];
      for (int u = 0; u < nr; ++u) sum[r0 + u] = acc[u];
    }
  };
  // Per column tile: how many of its picks are fresh (memo mode only).
  std::vector<idx_t> fresh_in_tile;
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

// The regularizer of every row of x, rows taken as they are (no duplicate collapse).
void regularizer_rows(const View& x, const View& picks, const int32_t* labels,
                      const int32_t* pick_tag, double alpha, float horizon_dist, int horizon_num,
                      bool mask_zero, double far, double* out, float* memo,
                      const uint8_t* fresh, const Context& ctx) {
  const Buffer<float> xn = norms(x, ctx), pn = norms(picks, ctx);
  const RegParams p{x.cols,    labels,    pick_tag, alpha, neg_pow(far, alpha),
                    horizon_dist, horizon_num, mask_zero, out, memo,  fresh,
                    picks.rows};
  ctx.set_total(num_tiles(x.rows));
  // The h nearest of at most h picks are all of them: the power-sum. (The reference's
  // top-h pads the missing slots with (inf, index 0) instead, and its own-position mask then
  // turns every score of cluster 0 into NaN; docs/parity.md.)
  if (horizon_num > 0 && horizon_num < picks.rows) {
    TopH epi{p};
    for_each_tile(x, xn.data(), picks, pn.data(), epi, ctx);
  } else {
    PowerSum epi{p, {}};
    // Row images only where some tile may run the filter (wants_filter): never with an
    // infinite horizon, nor in a memo round where no column tile has a quarter fresh.
    bool filter = std::isfinite(horizon_dist);
    if (memo) {
      epi.fresh_in_tile.assign(static_cast<size_t>(num_tiles(picks.rows)), 0);
      for (idx_t j = 0; j < picks.rows; ++j)
        if (fresh[j]) ++epi.fresh_in_tile[static_cast<size_t>(j / kTile)];
      filter = filter && std::any_of(epi.fresh_in_tile.begin(), epi.fresh_in_tile.end(),
                                     [](idx_t f) { return f >= kTile / 4; });
    }
    for_each_tile(x, xn.data(), picks, pn.data(), epi, ctx, filter);
  }
}

}  // namespace

void regularizer(const View& x, const View& picks, const int32_t* labels, const int32_t* pick_tag,
                 double alpha, float horizon_dist, int horizon_num, bool mask_zero, double far,
                 double* out, const Context& ctx, float* memo, const uint8_t* fresh) {
  require(picks.cols == x.cols && picks.rows >= 1, "regularizer: picks");
  require(picks.rows <= kMaxRows, "regularizer: picks fit in int32");
  require(!memo || (fresh && !(horizon_num > 0 && horizon_num < picks.rows)),
          "regularizer: the memo serves the power-sum, with its fresh flags");
  // A row's sum depends only on its bytes and its label: one sum per group of rows that
  // match in both (dedup.hpp), copied to the members. The picks are never collapsed (each
  // pick is one term of the sum, in pick order). The representatives go straight to the
  // body: looking for groups among them again would find none and cost a hash pass. (The
  // groups depend on x, the labels and the pick count only, so a memo filled by an earlier
  // call with the same rows holds the same representatives in the same memo rows.)
  Groups g;
  if (find_groups_rect(x, labels, picks.rows, 12.0, ctx, g)) {
    const Buffer<float> gx = gather_first(x, g);
    Buffer<int32_t> gl(g.count);
    Buffer<double> go(g.count);
    for (idx_t c = 0; c < g.count; ++c) gl[c] = labels[g.first[c]];
    regularizer_rows(View{gx.data(), g.count, x.cols, x.cols}, picks, gl.data(), pick_tag, alpha,
                     horizon_dist, horizon_num, mask_zero, far, go.data(), memo, fresh, ctx);
    for (idx_t i = 0; i < x.rows; ++i) out[i] = go[g.of[i]];
    return;
  }
  regularizer_rows(x, picks, labels, pick_tag, alpha, horizon_dist, horizon_num, mask_zero, far,
                   out, memo, fresh, ctx);
}

}  // namespace cpu
}  // namespace usl_fast
