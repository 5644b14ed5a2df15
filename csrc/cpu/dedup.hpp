// Exact-duplicate groups. Rows with the same bytes are at the same exact_l2 from every row
// (l2.hpp), so an op may run on one representative per group (its lowest row) and expand
// the result after: a copy for what a row gets, the group's members for where a row is a
// candidate. Without it a group of g rows ties at distance 0 g^2 times and no top-k
// threshold ever tightens (docs/engine.md, "Duplicate rows").
#pragma once

#include <vector>

#include "tile.hpp"

namespace usl_fast {
namespace cpu {

// False when USL_FAST_DEDUP=0 (read once per process): every op then runs on all rows, as
// the tests' reference for the collapsed runs.
bool dedup_enabled();

// Rectangular ops (assign, regularizer, range count) collapse their rows only against at
// least this many columns: there a duplicate row costs one row's work, not a group's, and
// the detection must stay small next to the op (50,000 x 128: detection 1.4 ms on 2 cores,
// an assign against 64 centroids ~30 ms, against 256 ~100 ms). kNN and density always
// look: their cost grows with the square of a group.
constexpr idx_t kDedupMinCols = 256;

// Memory the collapse may add beyond what the op saves. Python checks each op's estimate
// (usl_fast/_memory.py) with 32 MiB for what it does not itemise; the collapse takes at most
// half of that, so a run that passed the check still fits: the detection's transient
// buffers (dedup_detect_bytes) and the groups, the representatives' rows and their lists.
constexpr double kDedupSlackBytes = 16.0 * (1 << 20);

// The detection's transient buffers: a hash (8 bytes) and a head (4) per row and the
// table (4 bytes a slot, 2 to 4 slots a row).
inline double dedup_detect_bytes(idx_t n) { return 28.0 * static_cast<double>(n); }

// Whether gathering the groups is worth its memory: the representatives' rows (4 d bytes
// each) plus per_group more bytes each (their results) plus the groups themselves (8 bytes
// a row, 12 a group), against `saved` (bytes the op no longer allocates) + the slack.
inline bool gather_fits(idx_t n, idx_t groups, idx_t d, double per_group, double saved) {
  const double extra = static_cast<double>(groups) * (4.0 * d + per_group + 12.0) + 8.0 * n;
  return extra <= saved + kDedupSlackBytes;
}

// Groups of bit-identical rows (and equal tag, when tags are given), numbered in ascending
// order of their lowest member, so group order IS the order of the representatives' rows
// and ties among groups break like ties among their lowest members.
struct Groups {
  idx_t count = 0;          // number of groups
  Buffer<int32_t> of;       // rows: the group of each row
  Buffer<int32_t> first;    // count: lowest member (ascending in the group number)
  Buffer<int64_t> start;    // count + 1: group g's members are member[start[g], start[g + 1])
  Buffer<int32_t> member;   // rows: each group's members, ascending
  idx_t size(idx_t g) const { return start[g + 1] - start[g]; }
};

// Finds the groups of x's rows (tag: per-row int32 that must also match, may be null).
// False when no two rows match (or the collapse is off): g is then left empty and the op
// runs unchanged. Cost: one hash pass over the rows (threads), one insertion pass into the
// table; memory: dedup_detect_bytes(rows), freed on return, then the groups' 8 bytes a row.
bool find_groups(const View& x, const int32_t* tag, const Context& ctx, Groups& g);

// find_groups for a rectangular op against `cols` columns, with the representatives'
// results taking per_group bytes each: false (run as is) below kDedupMinCols columns, when
// the detection's own buffers would not fit in the slack, or when gathering would not.
bool find_groups_rect(const View& x, const int32_t* tag, idx_t cols, double per_group,
                      const Context& ctx, Groups& g);

// The representatives' rows, contiguous (ld = cols), in group order.
Buffer<float> gather_first(const View& x, const Groups& g);

// One list over groups -> the list over rows: in holds n_in ascending keys (exact distance,
// group) (~0 past the end), the first k groups of the row's order; out gets the first k
// (distance, row) keys over their members, ascending; returns how many (< k only when the
// groups hold fewer rows). Every true member of the k nearest lies in those groups: a group
// ahead of one holding a member has its lowest member among the k nearest, and those are
// distinct rows. Ties of equal distance across groups merge by row (a heap over the tied
// groups), so a group of 25,000 rows is read no further than its first k members.
int expand_keys(const Groups& cols, const uint64_t* in, int n_in, int k, uint64_t* out,
                std::vector<int64_t>& scratch);

// Lists over groups of the columns (cols may be null: keys already name rows) for the
// groups of the rows (rows may be null: list r is row r's) -> sink(row, keys, kk) for every
// row, threads over lists.
template <class Sink>
void expand_lists(const Groups* rows, const Groups* cols, idx_t n_lists, const uint64_t* lists,
                  int kg, int k, const Sink& sink, const Context& ctx) {
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
    std::vector<uint64_t> out;
    std::vector<int64_t> scratch;
    guard.run([&] { out.resize(k); });
#pragma omp for schedule(dynamic, 64)
    for (idx_t r = 0; r < n_lists; ++r)
      guard.run([&] {
        const uint64_t* in = lists + static_cast<size_t>(r) * kg;
        int kk;
        if (cols) {
          kk = expand_keys(*cols, in, kg, k, out.data(), scratch);
        } else {
          kk = 0;
          while (kk < kg && in[kk] != ~uint64_t(0)) out[kk] = in[kk], ++kk;
        }
        if (!rows) return sink(r, out.data(), kk);
        for (int64_t u = rows->start[r]; u < rows->start[r + 1]; ++u)
          sink(rows->member[u], out.data(), kk);
      });
  }
  guard.rethrow();
}

// A sink that keeps each list's keys (list r at r * kg), ~0 past what was kept.
struct KeySink {
  uint64_t* keys;
  int kg;
  void operator()(idx_t r, const uint64_t* in, int kk) const {
    uint64_t* o = keys + static_cast<size_t>(r) * kg;
    for (int t = 0; t < kk; ++t) o[t] = in[t];
    for (int t = kk; t < kg; ++t) o[t] = ~uint64_t(0);
  }
};

}  // namespace cpu
}  // namespace usl_fast
