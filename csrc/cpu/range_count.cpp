// Range count: for every query row, how many base rows lie within a squared radius
// (ProbCover's delta-ball degrees). The filter settles most pairs from its bounds alone
// (lower > radius: out; upper <= radius: in); only the pairs in between are evaluated.
#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {
struct RangeCount {
  float radius;
  int64_t* out;
  struct Local {
    RangeCount& e;
    std::vector<int64_t> cnt;
    std::vector<int32_t> need;
    std::vector<float> vals;
    explicit Local(RangeCount& epi) : e(epi), cnt(kTile), need(kTile), vals(kTile) {}
    void begin(idx_t, idx_t) { std::fill(cnt.begin(), cnt.end(), 0); }
    void tile(const Tile& t) {
      // Surely out: lower - abs > radius.
      const float out_above = round_up(static_cast<double>(e.radius) + t.abs);
      for (idx_t r = 0; r < t.mi; ++r) {
        idx_t nneed = 0;
        int64_t c_in = 0;
        for (idx_t c = 0; c < t.nj; ++c) {
          if (t.lower(r, c) > out_above) continue;
          if (t.upper(r, c) <= e.radius) {
            ++c_in;
            continue;
          }
          need[nneed++] = static_cast<int32_t>(t.j0 + c);
        }
        if (nneed) {
          exact_gather(t.rows.row(t.i0 + r), t.cols, need.data(), nneed, vals.data());
        }
        for (idx_t u = 0; u < nneed; ++u) c_in += vals[u] <= e.radius;
        cnt[r] += c_in;
      }
    }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) e.out[i0 + r] = cnt[r];
    }
  };
};
}  // namespace

void range_count(const View& q, const View& base, float radius, int64_t* out_count,
                 const Context& ctx) {
  require(q.cols == base.cols, "range_count: same dimension");
  require(base.rows <= kMaxRows, "range_count: rows fit in int32");
  const Buffer<float> qn = norms(q, ctx), bn = norms(base, ctx);
  ctx.set_total(num_tiles(q.rows));
  RangeCount epi{radius, out_count};
  for_each_tile(q, qn.data(), base, bn.data(), epi, ctx);
}

}  // namespace cpu
}  // namespace usl_fast
