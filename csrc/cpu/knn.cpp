// kNN and kNN density on the tile driver: the top-k epilogue over the symmetric pass
// (each unordered pair of tiles once, both sides fed) or the rectangular one (queries
// against a base set, and the self graph past the reservoir budget). The density epilogue
// keeps no lists: each row's k exact distances are averaged as soon as they are final.
#include <cmath>
#include <cstring>

#include "dedup.hpp"
#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// What happens to a finished row: its k nearest, as sorted exact keys.
struct ListSink {
  float* dist;
  int64_t* idx;
  int k;
  void operator()(idx_t i, const uint64_t* keys, int kk) const {
    for (int t = 0; t < kk; ++t) {
      dist[i * k + t] = key_dist(keys[t]);
      if (idx) idx[i * k + t] = key_index(keys[t]);
    }
    for (int t = kk; t < k; ++t) {
      dist[i * k + t] = std::numeric_limits<float>::infinity();
      if (idx) idx[i * k + t] = -1;
    }
  }
};

struct DensitySink {
  float* density;
  double min_mean;
  void operator()(idx_t i, const uint64_t* keys, int kk) const {
    double s = 0.0;  // ascending order: the same sum on every path
    for (int t = 0; t < kk; ++t) s += key_dist(keys[t]);
    const double mean = s / kk;
    density[i] = static_cast<float>(1.0 / (mean > min_mean ? mean : min_mean));
  }
};

// Sink that keeps the q-th distance of each row (the sampled threshold).
struct KthSink {
  float* kth;
  int q;
  void operator()(idx_t i, const uint64_t* keys, int kk) const {
    kth[i] = kk >= q ? key_dist(keys[q - 1]) : std::numeric_limits<float>::infinity();
  }
};

// Rectangular top-k epilogue: a kTile-row reservoir per thread, rows of one row tile at a
// time. `start` (optional): per-row upper bounds of the k-th distance (sampled pass).
template <class Sink>
struct RectTopK {
  int k;
  View rows, cands;
  const float* rn;
  const float* cn;
  const float* start;
  const Sink& sink;

  struct Local {
    RectTopK& e;
    TopK res;
    std::vector<uint64_t> keys;
    explicit Local(RectTopK& epi) : e(epi), keys(epi.k) {
      res.init(kTile, e.k, filter_abs(e.rows.cols));
    }
    void begin(idx_t i0, idx_t mi) {
      res.reset();
      if (e.start)
        for (idx_t r = 0; r < mi; ++r) res.start_below(r, e.start[i0 + r]);
    }
    void tile(const Tile& t) { scan_topk(t, &res, 0, nullptr); }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) {
        const int kk = res.finish(r, keys.data());
        e.sink(i0 + r, keys.data(), kk);
      }
    }
  };
};

template <class Sink>
void rect_topk(const View& q, const float* qn, const View& base, const float* bn, int k,
               const float* start, const Sink& sink, const Context& ctx, bool images = true) {
  RectTopK<Sink> epi{k, q, base, qn, bn, start, sink};
  for_each_tile(q, qn, base, bn, epi, ctx, images);
}

struct SymTopK {
  TopK* res;
  struct Local {
    SymTopK& e;
    explicit Local(SymTopK& epi) : e(epi) {}
    // A diagonal tile holds both (i, j) and (j, i): feed the rows only.
    void pair(const Tile& t) { scan_topk(t, e.res, t.i0, t.diagonal ? nullptr : e.res); }
  };
};

// Per-row upper bounds of the k-th exact distance from a strided sample: the q-th nearest
// sample point, with q chosen so that on average `hits` sample points lie within a row's
// true k-th distance, plus kSampleSigmas standard deviations. Usually >= the true k-th
// distance, so the main pass can reject early everything beyond it; a row where it was not
// is detected after the pass and redone exhaustively (the result never depends on it).
// Margin of the sampled bound in standard deviations of the hit count: 2 leaves ~2% of
// rows to be redone exhaustively (cheap: one query pass over those rows) and keeps the
// bound tight, so fewer pairs are evaluated exactly (measured on 50k x 128, k = 400: 2 was
// the fastest of 1, 2, 3, 5).
constexpr double kSampleSigmas = 2.0;
bool sampled_bounds(const View& x, const float* xn, int k, double hits, const Context& ctx,
                    Buffer<float>& tau) {
  const idx_t n = x.rows, d = x.cols;
  if (!(hits > 0.0) || !(hits < 1e6)) return false;  // off, or not a usable sample size
  const idx_t s_want = static_cast<idx_t>(std::ceil(hits * static_cast<double>(n) / k));
  const int q = static_cast<int>(std::ceil(hits + kSampleSigmas * std::sqrt(hits) + 1.0));
  if (s_want * 4 > n || q * 2 > k || q >= s_want) return false;
  // Every stride-th row: a strided view of x, no copy.
  const idx_t stride = n / s_want;
  const View sample{x.data, n / stride, d, x.ld * stride};
  Buffer<float> sn(sample.rows);
  for (idx_t t = 0; t < sample.rows; ++t) sn[t] = xn[t * stride];
  tau.reset(n);
  rect_topk(x, xn, sample, sn.data(), q, nullptr, KthSink{tau.data(), q}, ctx, false);
  return true;
}

template <class Sink>
void self_topk(const View& x, int k, const Sink& sink, const Context& ctx, const KnnOptions& opt) {
  const idx_t n = x.rows;
  const Buffer<float> xn = norms(x, ctx);
  // The symmetric pass keeps every row's reservoir alive at once (8 (2k + 16) + 8 bytes a
  // row). Past the budget, search the rows as queries: twice the GEMM work, per-thread
  // reservoirs only, the same answer (exact distances do not depend on the path).
  if (static_cast<double>(n) * reservoir_bytes_per_row(k) > opt.max_reservoir_bytes) {
    ctx.set_total(num_tiles(n));
    rect_topk(x, xn.data(), x, xn.data(), k, nullptr, sink, ctx);
    return;
  }
  const idx_t T = num_tiles(n);
  const bool want_sample = opt.sample_hits > 0.0;
  ctx.set_total(T * (T + 1) / 2);
  Buffer<float> tau;
  bool sampled = false;
  if (want_sample) {
    ctx.add_total(T);  // the sampled pass: one unit per row tile, counted if it runs
    sampled = sampled_bounds(x, xn.data(), k, opt.sample_hits, ctx, tau);
    if (!sampled) ctx.add_total(-T);
  }
  TopK res;
  res.init(n, k, filter_abs(x.cols));
  if (sampled)
    for (idx_t i = 0; i < n; ++i) res.start_below(i, tau[i]);
  SymTopK epi{&res};
  for_each_tile_pair(x, xn.data(), epi, ctx);

  Buffer<uint8_t> redo(sampled ? n : 0);
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
    std::vector<uint64_t> keys;
    guard.run([&] { keys.resize(k); });
#pragma omp for schedule(dynamic, 256)
    for (idx_t i = 0; i < n; ++i)
      guard.run([&] {
        const int kk = res.finish(i, keys.data());
        // Correct iff the k nearest kept are all within the row's starting bound: then
        // every point that could be among them was offered.
        if (sampled) {
          redo[i] = (kk < k || key_dist(keys[k - 1]) > tau[i]) ? 1 : 0;
          if (redo[i]) return;
        }
        sink(i, keys.data(), kk);
      });
  }
  guard.rethrow();
  if (!sampled) return;
  // Rows whose sampled bound was too tight (expected: none; tests force some): exhaustive.
  std::vector<idx_t> rows;
  for (idx_t i = 0; i < n; ++i)
    if (redo[i]) rows.push_back(i);
  if (rows.empty()) return;
  const idx_t nr = static_cast<idx_t>(rows.size()), d = x.cols;
  Buffer<float> sub(static_cast<size_t>(nr) * d), subn(nr);
  for (idx_t t = 0; t < nr; ++t) {
    std::copy(x.row(rows[t]), x.row(rows[t]) + d, sub.data() + t * d);
    subn[t] = xn[rows[t]];
  }
  const View sv{sub.data(), nr, d, d};
  ctx.add_total(num_tiles(nr));
  auto remap = [&](idx_t t, const uint64_t* keys, int kk) { sink(rows[t], keys, kk); };
  rect_topk(sv, subn.data(), x, xn.data(), k, nullptr, remap, ctx, false);  // (no images:
  // the symmetric pass's reservoirs are still held, and its estimate counted one image)
}

// The self graph over one representative per group of identical rows (dedup.hpp): each
// group's list over the first k groups, expanded to rows and shared by its members.
template <class Sink>
void self_topk_groups(const View& x, int k, const Sink& sink, const Context& ctx,
                      const KnnOptions& opt) {
  Groups g;
  if (!find_groups(x, nullptr, ctx, g)) return self_topk(x, k, sink, ctx, opt);
  const int kg = static_cast<int>(std::min<idx_t>(k, g.count));
  // The symmetric pass's buffers (self_topk) for all rows and for the groups, the int16
  // row images included where the filter makes them: gathering may not take more memory
  // than it saves there (plus the slack; dedup.hpp).
  auto pass_bytes = [&](idx_t rows, int kk) {
    const double res = static_cast<double>(rows) * reservoir_bytes_per_row(kk);
    return res > opt.max_reservoir_bytes
               ? 0.0
               : res + 4.0 * static_cast<double>(rows) + filter_image_bytes(rows, x.cols);
  };
  const double saved = pass_bytes(x.rows, k) - pass_bytes(g.count, kg);
  if (!gather_fits(x.rows, g.count, x.cols, 8.0 * kg, saved)) {
    g = Groups();  // the uncollapsed pass was sized without the groups: free them first
    return self_topk(x, k, sink, ctx, opt);
  }
  const Buffer<float> rx = gather_first(x, g);
  const View rv{rx.data(), g.count, x.cols, x.cols};
  Buffer<uint64_t> lists(static_cast<size_t>(g.count) * kg);
  self_topk(rv, kg, KeySink{lists.data(), kg}, ctx, opt);
  expand_lists(&g, &g, g.count, lists.data(), kg, k, sink, ctx);
}

}  // namespace

double reservoir_bytes_per_row(int k) { return 8.0 * (2.0 * k + 16.0) + 8.0; }

void knn(const View& x, const View* queries, int k, float* out_dist, int64_t* out_idx,
         const Context& ctx, const KnnOptions& opt) {
  require(k >= 1 && k <= x.rows, "knn: 1 <= k <= base rows");
  require(x.rows <= kMaxRows, "knn: rows fit in int32");
  const ListSink sink{out_dist, out_idx, k};
  if (!queries) return self_topk_groups(x, k, sink, ctx, opt);
  require(queries->cols == x.cols, "knn: same dimension");
  // Identical queries share one list; identical base rows are searched once, as one group.
  Groups gq, gb;
  bool cq = find_groups(*queries, nullptr, ctx, gq);
  bool cb = find_groups(x, nullptr, ctx, gb);
  if (cq || cb) {
    // What gathering adds (the query pass's own buffers are per thread, so nothing is
    // saved): the groups, the representatives' rows and their lists (dedup.hpp).
    const idx_t nq = cq ? gq.count : queries->rows, nb = cb ? gb.count : x.rows;
    const double d4 = 4.0 * x.cols;
    double extra = static_cast<double>(nq) * 8.0 * std::min<idx_t>(k, nb);
    if (cq) extra += static_cast<double>(gq.count) * (d4 + 12.0) + 8.0 * queries->rows;
    if (cb) extra += static_cast<double>(gb.count) * (d4 + 12.0) + 8.0 * x.rows;
    if (extra > kDedupSlackBytes) {
      cq = cb = false;
      gq = Groups();
      gb = Groups();
    }
  }
  if (!cq && !cb) {
    const Buffer<float> qn = norms(*queries, ctx), bn = norms(x, ctx);
    ctx.set_total(num_tiles(queries->rows));
    rect_topk(*queries, qn.data(), x, bn.data(), k, nullptr, sink, ctx);
    return;
  }
  Buffer<float> qx, bx;
  View qv = *queries, bv = x;
  if (cq) {
    qx = gather_first(*queries, gq);
    qv = View{qx.data(), gq.count, x.cols, x.cols};
  }
  if (cb) {
    bx = gather_first(x, gb);
    bv = View{bx.data(), gb.count, x.cols, x.cols};
  }
  const int kg = static_cast<int>(std::min<idx_t>(k, bv.rows));
  Buffer<uint64_t> lists(static_cast<size_t>(qv.rows) * kg);
  {
    const Buffer<float> qn = norms(qv, ctx), bn = norms(bv, ctx);
    ctx.set_total(num_tiles(qv.rows));
    rect_topk(qv, qn.data(), bv, bn.data(), kg, nullptr, KeySink{lists.data(), kg}, ctx);
  }
  expand_lists(cq ? &gq : nullptr, cb ? &gb : nullptr, qv.rows, lists.data(), kg, k, sink, ctx);
}

namespace {
// Bipartite top-k epilogue: a tile of (a rows) x (b rows) feeds both reservoirs.
struct CrossTopK {
  TopK* a;
  TopK* b;
  struct Local {
    CrossTopK& e;
    explicit Local(CrossTopK& epi) : e(epi) {}
    void pair(const Tile& t) { scan_topk(t, e.a, t.i0, e.b); }
  };
};

// Each row's kept distances, ascending, +inf past the kept ones.
void finish_distances(TopK& res, idx_t n, int k, float* out, const Context& ctx) {
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
    std::vector<uint64_t> keys;
    guard.run([&] { keys.resize(k); });
#pragma omp for schedule(dynamic, 256)
    for (idx_t i = 0; i < n; ++i)
      guard.run([&] {
        const int kk = res.finish(i, keys.data());
        ListSink{out, nullptr, k}(i, keys.data(), kk);
      });
  }
  guard.rethrow();
}
}  // namespace

namespace {
// Each row's kept keys, ascending, ~0 past the kept ones (list r at r * k).
void finish_keys(TopK& res, idx_t n, int k, uint64_t* out, const Context& ctx) {
  parallel_rows(n, ctx, [&](idx_t i) {
    uint64_t* o = out + static_cast<size_t>(i) * k;
    const int kk = res.finish(i, o);
    for (int t = kk; t < k; ++t) o[t] = ~uint64_t(0);
  });
}

// A side's groups for knn_cross: identical rows with the same start bound (its bits as the
// tag) have the same list; false if no two match.
bool cross_groups(const View& x, const float* start, const Context& ctx, Groups& g) {
  Buffer<int32_t> tag;
  if (start) {
    tag.reset(x.rows);
    std::memcpy(tag.data(), start, sizeof(float) * x.rows);
  }
  return find_groups(x, start ? tag.data() : nullptr, ctx, g);
}

// One side of knn_cross as its pass sees it: the rows and start bounds as given, or (with
// groups) the representatives' rows and bounds, gathered.
struct CrossSide {
  Buffer<float> gathered, gathered_start;
  View rows;
  const float* start;
  CrossSide(const View& x, const float* s, const Groups* g) : rows(x), start(s) {
    if (!g) return;
    gathered = gather_first(x, *g);
    rows = View{gathered.data(), g->count, x.cols, x.cols};
    if (s) {
      gathered_start.reset(g->count);
      for (idx_t c = 0; c < g->count; ++c) gathered_start[c] = s[g->first[c]];
      start = gathered_start.data();
    }
  }
};

// Both sides' reservoirs, each row's started below its bound, filled by one tiled pass
// (the norms live only as long as the pass).
void cross_pass(const CrossSide& a, const CrossSide& b, int k, TopK& ra, TopK& rb,
                const Context& ctx) {
  const Buffer<float> an = norms(a.rows, ctx), bn = norms(b.rows, ctx);
  const float abs = filter_abs(a.rows.cols);
  ra.init(a.rows.rows, k, abs);
  rb.init(b.rows.rows, k, abs);
  if (a.start)
    for (idx_t i = 0; i < a.rows.rows; ++i) ra.start_below(i, a.start[i]);
  if (b.start)
    for (idx_t j = 0; j < b.rows.rows; ++j) rb.start_below(j, b.start[j]);
  ctx.set_total(num_tiles(a.rows.rows) * num_tiles(b.rows.rows));
  CrossTopK epi{&ra, &rb};
  for_each_tile_cross(a.rows, an.data(), b.rows, bn.data(), epi, ctx);
}
}  // namespace

void knn_cross(const View& a, const View& b, int k, const float* a_start, const float* b_start,
               float* out_a, float* out_b, const Context& ctx) {
  require(k >= 1, "knn_cross: k >= 1");
  require(a.cols == b.cols, "knn_cross: same dimension");
  require(a.rows <= kMaxRows && b.rows <= kMaxRows, "knn_cross: rows fit in int32");
  // Duplicate groups on either side (dedup.hpp): a row's list is the k smallest distances
  // within its start bound, the same for identical rows with the same bound; a group of
  // the other side counts once per member. Taken when the groups, the representatives'
  // rows and their key lists fit in the slack (the reservoirs then shrink too).
  Groups ga, gb;
  const bool ca = cross_groups(a, a_start, ctx, ga);
  const bool cb = cross_groups(b, b_start, ctx, gb);
  if (ca || cb) {
    const idx_t na = ca ? ga.count : a.rows, nb = cb ? gb.count : b.rows;
    const double d4 = 4.0 * a.cols;
    double extra = 8.0 * static_cast<double>(k) * (na + nb) + 4.0 * (a.rows + b.rows);
    if (ca) extra += static_cast<double>(ga.count) * (d4 + 16.0) + 8.0 * a.rows;
    if (cb) extra += static_cast<double>(gb.count) * (d4 + 16.0) + 8.0 * b.rows;
    const double saved = reservoir_bytes_per_row(k) * ((a.rows - na) + (b.rows - nb));
    if (extra <= saved + kDedupSlackBytes) {
      const CrossSide sa(a, a_start, ca ? &ga : nullptr), sb(b, b_start, cb ? &gb : nullptr);
      Buffer<uint64_t> la(static_cast<size_t>(sa.rows.rows) * k);
      Buffer<uint64_t> lb(static_cast<size_t>(sb.rows.rows) * k);
      {
        TopK ra, rb;
        cross_pass(sa, sb, k, ra, rb, ctx);
        finish_keys(ra, sa.rows.rows, k, la.data(), ctx);
        finish_keys(rb, sb.rows.rows, k, lb.data(), ctx);
      }
      const ListSink oa{out_a, nullptr, k}, ob{out_b, nullptr, k};
      expand_lists(ca ? &ga : nullptr, cb ? &gb : nullptr, sa.rows.rows, la.data(), k, k, oa,
                   ctx);
      expand_lists(cb ? &gb : nullptr, ca ? &ga : nullptr, sb.rows.rows, lb.data(), k, k, ob,
                   ctx);
      return;
    }
    ga = Groups();  // the uncollapsed pass below was sized without the groups
    gb = Groups();
  }
  TopK ra, rb;
  cross_pass(CrossSide(a, a_start, nullptr), CrossSide(b, b_start, nullptr), k, ra, rb, ctx);
  finish_distances(ra, a.rows, k, out_a, ctx);
  finish_distances(rb, b.rows, k, out_b, ctx);
}

void knn_density(const View& x, int k, double min_mean, float* out_density, const Context& ctx,
                 const KnnOptions& opt) {
  require(k >= 1 && k <= x.rows, "knn_density: 1 <= k <= rows");
  require(x.rows <= kMaxRows, "knn_density: rows fit in int32");
  self_topk_groups(x, k, DensitySink{out_density, min_mean}, ctx, opt);
}

namespace {

// Arg-min epilogue (top-1 without reservoirs): per row and tile, U = the smallest filter
// upper bound, then only the columns whose lower bound is <= min(U, best so far) are
// evaluated exactly (usually one). The best exact key per row wins across tiles.
template <class Sink>
struct ArgMin {
  const Sink& sink;
  struct Local {
    ArgMin& e;
    std::vector<uint64_t> best;
    std::vector<int32_t> need;
    std::vector<float> vals;
    explicit Local(ArgMin& epi) : e(epi), best(kTile), need(kTile), vals(kTile) {}
    void begin(idx_t, idx_t) { std::fill(best.begin(), best.end(), ~uint64_t(0)); }
    void tile(const Tile& t) {
      for (idx_t r = 0; r < t.mi; ++r) {
        const float b = best[r] == ~uint64_t(0)
                            ? std::numeric_limits<float>::infinity()
                            : round_up(static_cast<double>(key_dist(best[r])) + t.abs);
        idx_t n = 0;
        argmin_candidates(t, r, b, need.data(), n);
        exact_gather(t.rows.row(t.i0 + r), t.cols, need.data(), n, vals.data());
        for (idx_t u = 0; u < n; ++u) {
          const uint64_t key = pack_key(vals[u], need[u]);
          if (key < best[r]) best[r] = key;
        }
      }
    }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) e.sink(i0 + r, &best[r], 1);
    }
  };
};

template <class Sink>
void rect_argmin(const View& x, const float* xn, const View& y, const float* yn, const Sink& sink,
                 const Context& ctx) {
  ArgMin<Sink> epi{sink};
  for_each_tile(x, xn, y, yn, epi, ctx);
}

}  // namespace

// k-means assignment: arg-min by exact distance (ties to the lower centroid).
void assign(const View& x, const float* x_norms, const View& cent, int32_t* out_label,
            float* out_dist, const Context& ctx) {
  require(cent.cols == x.cols && cent.rows >= 1, "assign: centroids");
  require(cent.rows <= kMaxRows, "assign: centroids fit in int32");
  // Identical rows get the same centroid: one assignment per group (dedup.hpp).
  Groups g;
  Buffer<float> gx, gn;
  View xv = x;
  if (find_groups_rect(x, nullptr, cent.rows, 12.0, ctx, g)) {
    gx = gather_first(x, g);
    xv = View{gx.data(), g.count, x.cols, x.cols};
    if (x_norms) {
      gn.reset(g.count);
      for (idx_t c = 0; c < g.count; ++c) gn[c] = x_norms[g.first[c]];
      x_norms = gn.data();
    }
  }
  Buffer<float> xn;
  if (!x_norms) {
    xn = norms(xv, ctx);
    x_norms = xn.data();
  }
  const Buffer<float> cn = norms(cent, ctx);
  ctx.set_total(num_tiles(xv.rows));
  auto sink = [&](idx_t i, const uint64_t* keys, int) {
    if (g.count == 0) {
      out_label[i] = key_index(keys[0]);
      if (out_dist) out_dist[i] = key_dist(keys[0]);
      return;
    }
    for (int64_t u = g.start[i]; u < g.start[i + 1]; ++u) {
      out_label[g.member[u]] = key_index(keys[0]);
      if (out_dist) out_dist[g.member[u]] = key_dist(keys[0]);
    }
  };
  rect_argmin(xv, x_norms, cent, cn.data(), sink, ctx);
}

// Running nearest-center distance (k-center greedy, k-means++): the same top-1, then a
// min with what the row had (ties keep the earlier center, i.e. the lower arg).
void min_update(const View& x, const View& centers, int64_t arg_offset, float* inout_min,
                int64_t* inout_arg, const Context& ctx) {
  require(centers.cols == x.cols && centers.rows >= 1, "min_update: centers");
  const Buffer<float> xn = norms(x, ctx), cn = norms(centers, ctx);
  ctx.set_total(num_tiles(x.rows));
  auto sink = [&](idx_t i, const uint64_t* keys, int) {
    const float dv = key_dist(keys[0]);
    const int64_t a = arg_offset + key_index(keys[0]);
    if (dv < inout_min[i] || (dv == inout_min[i] && inout_arg && inout_arg[i] > a)) {
      inout_min[i] = dv;
      if (inout_arg) inout_arg[i] = a;
    }
  };
  rect_argmin(x, xn.data(), centers, cn.data(), sink, ctx);
}

}  // namespace cpu
}  // namespace usl_fast
