// Range count and range search: for every query row, how many base rows lie within a
// squared radius, and which (ProbCover's delta-ball graph). The filter settles most pairs
// from its bounds alone (lower > radius: out; upper <= radius: in); only the pairs in
// between are evaluated. Range search writes each row's neighbours in ascending index
// order into a CSR slot the caller sized with range_count, so memory is exactly the edges.
#include "dedup.hpp"
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
  const int64_t* offsets;  // row i's slot: [offsets[i], ends[i])
  const int64_t* ends;
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
        const int64_t end = e.ends[gi];
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
        if (pos[r] != e.ends[i0 + r]) {
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
  // Identical queries have the same list: each group's list is searched once, into its
  // lowest member's slot, and copied to the others' (dedup.hpp).
  Groups g;
  if (find_groups_rect(q, nullptr, base.rows, 16.0, ctx, g)) {
    const Buffer<float> gq = gather_first(q, g);
    const View gv{gq.data(), g.count, q.cols, q.cols};
    Buffer<int64_t> gb(g.count), ge(g.count);
    for (idx_t c = 0; c < g.count; ++c) {
      gb[c] = offsets[g.first[c]];
      ge[c] = offsets[g.first[c] + 1];
    }
    const Buffer<float> qn = norms(gv, ctx), bn = norms(base, ctx);
    ctx.set_total(num_tiles(gv.rows));
    RangeList epi{radius, gb.data(), ge.data(), out_index};
    for_each_tile(gv, qn.data(), base, bn.data(), epi, ctx);
    parallel_rows(q.rows, ctx, [&](idx_t i) {
      const idx_t c = g.of[i];
      if (g.first[c] == i) return;
      require(offsets[i + 1] - offsets[i] == ge[c] - gb[c],
              "range_search: identical rows with different counts");
      std::copy(out_index + gb[c], out_index + ge[c], out_index + offsets[i]);
    });
    return;
  }
  const Buffer<float> qn = norms(q, ctx), bn = norms(base, ctx);
  ctx.set_total(num_tiles(q.rows));
  RangeList epi{radius, offsets, offsets + 1, out_index};
  for_each_tile(q, qn.data(), base, bn.data(), epi, ctx);
}

void range_count(const View& q, const View& base, float radius, int64_t* out_count,
                 const Context& ctx) {
  require(q.cols == base.cols, "range_count: same dimension");
  require(base.rows <= kMaxRows, "range_count: rows fit in int32");
  // Identical queries have the same count: one per group (dedup.hpp), copied. (Base rows
  // stay as they are: each one counts.)
  Groups g;
  if (find_groups_rect(q, nullptr, base.rows, 8.0, ctx, g)) {
    const Buffer<float> gq = gather_first(q, g);
    Buffer<int64_t> gc(g.count);
    range_count(View{gq.data(), g.count, q.cols, q.cols}, base, radius, gc.data(), ctx);
    for (idx_t i = 0; i < q.rows; ++i) out_count[i] = gc[g.of[i]];
    return;
  }
  const Buffer<float> qn = norms(q, ctx), bn = norms(base, ctx);
  ctx.set_total(num_tiles(q.rows));
  RangeCount epi{radius, out_count};
  for_each_tile(q, qn.data(), base, bn.data(), epi, ctx);
}

}  // namespace cpu
}  // namespace usl_fast
