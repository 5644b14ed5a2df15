// Range count and range search: for every query row, how many base rows lie within a
// squared radius, and which (ProbCover's delta-ball graph). The filter settles most pairs
// from its bounds alone (lower > radius: out; upper <= radius: in); only the pairs in
// between are evaluated. Range search writes each row's neighbours in ascending index
// order into a CSR slot the caller sized with range_count, so memory is exactly the edges.
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

struct RangeList {
  float radius;
  const int64_t* offsets;
  int32_t* out;
  struct Local {
    RangeList& e;
    std::vector<int64_t> pos;
    std::vector<int8_t> state;  // per column of a tile row: 0 out, 1 in, 2 evaluate
    std::vector<int32_t> need;
    std::vector<float> vals;
    explicit Local(RangeList& epi) : e(epi), pos(kTile), state(kTile), need(kTile), vals(kTile) {}
    void begin(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) pos[r] = e.offsets[i0 + r];
    }
    void tile(const Tile& t) {
      const float out_above = round_up(static_cast<double>(e.radius) + t.abs);
      for (idx_t r = 0; r < t.mi; ++r) {
        idx_t nneed = 0;
        for (idx_t c = 0; c < t.nj; ++c) {
          int8_t s = 0;
          if (t.lower(r, c) <= out_above) {
            s = t.upper(r, c) <= e.radius ? 1 : 2;
            if (s == 2) need[nneed++] = static_cast<int32_t>(t.j0 + c);
          }
          state[c] = s;
        }
        if (nneed) {
          exact_gather(t.rows.row(t.i0 + r), t.cols, need.data(), nneed, vals.data());
        }
        // Write in column order: the row's list ends up ascending, whatever the threads.
        const idx_t gi = t.i0 + r;
        const int64_t end = e.offsets[gi + 1];
        int64_t p = pos[r];
        idx_t u = 0;
        for (idx_t c = 0; c < t.nj; ++c) {
          bool in = state[c] == 1;
          if (state[c] == 2) in = vals[u++] <= e.radius;
          if (!in) continue;
          // The slot was sized by range_count with the same exact rule; a mismatch would be
          // an engine bug, never a write out of bounds.
          if (p >= end) require(false, "range_search: more neighbours than counted");
          e.out[p++] = static_cast<int32_t>(t.j0 + c);
        }
        pos[r] = p;
      }
    }
    void end(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) {
        if (pos[r] != e.offsets[i0 + r + 1]) {
          require(false, "range_search: fewer neighbours than counted");
        }
      }
    }
  };
};
}  // namespace

void range_search(const View& q, const View& base, float radius, const int64_t* offsets,
                  int32_t* out_index, const Context& ctx) {
  require(q.cols == base.cols, "range_search: same dimension");
  require(base.rows <= kMaxRows, "range_search: rows fit in int32");
  const Buffer<float> qn = norms(q, ctx), bn = norms(base, ctx);
  ctx.set_total(num_tiles(q.rows));
  RangeList epi{radius, offsets, out_index};
  for_each_tile(q, qn.data(), base, bn.data(), epi, ctx);
}

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
