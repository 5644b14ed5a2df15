// Range count and range search: for every query row, how many base rows lie within a
// squared radius, and which (ProbCover's delta-ball graph). The filter settles most pairs
// from its bounds alone (lower > radius: out; upper <= radius: in); only the pairs in
// between are evaluated. Range search writes each row's neighbours in ascending index
// order into a CSR slot the caller sized with range_count, so memory is exactly the edges.
#include "dedup.hpp"
#include "simd.hpp"
#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {

// The filter's verdict on the columns of tile row r, 16 columns a group (bit b of group g
// is column 16 g + b): `in` where the upper bound is within the radius (in without
// evaluation), `need` where neither bound decides (evaluate). Every other column is surely
// out (lower - abs > radius). The same roundings as Tile::lower / Tile::upper on every path;
// the SIMD ones compute 16 (AVX-512) or 8 (AVX2) columns with one compare per bound.
struct RowBits {
  static constexpr int kGroups = kTile / 16;
  uint16_t in[kGroups], need[kGroups];
};

void range_bits_portable(const Tile& t, idx_t r, float radius, float out_above, idx_t c0,
                         RowBits& b) {
  for (idx_t g0 = c0; g0 < t.nj; g0 += 16) {
    const int w = static_cast<int>(std::min<idx_t>(16, t.nj - g0));
    unsigned in = 0, need = 0;
    for (int k = 0; k < w; ++k) {
      if (t.lower(r, g0 + k) > out_above) continue;  // most pairs: one bound, one branch
      if (t.upper(r, g0 + k) <= radius) {
        in |= 1u << k;
      } else {
        need |= 1u << k;
      }
    }
    b.in[g0 / 16] = static_cast<uint16_t>(in);
    b.need[g0 / 16] = static_cast<uint16_t>(need);
  }
}

#ifdef USL_FAST_X86
__attribute__((target("avx512f"))) void range_bits_avx512(const Tile& t, idx_t r, float radius,
                                                          float out_above, RowBits& b) {
  const float* ip = t.ip + r * t.ldt;
  const __m512 xn = _mm512_set1_ps(t.rn[r]), two = _mm512_set1_ps(2.0f);
  const __m512 rel = _mm512_set1_ps(t.rel), abs = _mm512_set1_ps(t.abs);
  const __m512 rad = _mm512_set1_ps(radius), oa = _mm512_set1_ps(out_above);
  for (idx_t c = 0; c < t.nj; c += 16) {
    const idx_t left = t.nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
    const __m512 e = _mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, ip + c)));
    const __m512 rs = _mm512_mul_ps(rel, s);
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(live, _mm512_sub_ps(e, rs), oa, _CMP_LE_OQ);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(keep, _mm512_add_ps(_mm512_add_ps(e, rs), abs), rad, _CMP_LE_OQ);
    b.in[c / 16] = in;
    b.need[c / 16] = static_cast<uint16_t>(keep & ~in);
  }
}

__attribute__((target("avx2"))) void range_bits_avx2(const Tile& t, idx_t r, float radius,
                                                     float out_above, RowBits& b) {
  const float* ip = t.ip + r * t.ldt;
  const __m256 xn = _mm256_set1_ps(t.rn[r]), two = _mm256_set1_ps(2.0f);
  const __m256 rel = _mm256_set1_ps(t.rel), abs = _mm256_set1_ps(t.abs);
  const __m256 rad = _mm256_set1_ps(radius), oa = _mm256_set1_ps(out_above);
  const idx_t n16 = t.nj - t.nj % 16;
  for (idx_t c = 0; c < n16; c += 8) {
    const __m256 s = _mm256_add_ps(xn, _mm256_loadu_ps(t.cn + c));
    const __m256 e = _mm256_sub_ps(s, _mm256_mul_ps(two, _mm256_loadu_ps(ip + c)));
    const __m256 rs = _mm256_mul_ps(rel, s);
    const unsigned keep = static_cast<unsigned>(
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(e, rs), oa, _CMP_LE_OQ)));
    const unsigned in = keep & static_cast<unsigned>(_mm256_movemask_ps(
                                   _mm256_cmp_ps(_mm256_add_ps(_mm256_add_ps(e, rs), abs), rad,
                                                 _CMP_LE_OQ)));
    const int shift = static_cast<int>(c % 16);  // the two halves of a group
    uint16_t& gi = b.in[c / 16];
    uint16_t& gn = b.need[c / 16];
    if (shift == 0) gi = gn = 0;
    gi = static_cast<uint16_t>(gi | (in << shift));
    gn = static_cast<uint16_t>(gn | ((keep & ~in) << shift));
  }
  if (n16 < t.nj) range_bits_portable(t, r, radius, out_above, n16, b);
}
#endif

void range_bits(int isa, const Tile& t, idx_t r, float radius, float out_above, RowBits& b) {
#ifdef USL_FAST_X86
  if (isa == 2) return range_bits_avx512(t, r, radius, out_above, b);
  if (isa == 1) return range_bits_avx2(t, r, radius, out_above, b);
#endif
  (void)isa;
  range_bits_portable(t, r, radius, out_above, 0, b);
}

// The columns to evaluate, ascending, as global indices; returns how many.
idx_t need_list(const Tile& t, const RowBits& b, int32_t* need) {
  idx_t n = 0;
  for (idx_t g = 0; g * 16 < t.nj; ++g) {
    unsigned bits = b.need[g];
    while (bits) {
      need[n++] = static_cast<int32_t>(t.j0 + g * 16 + __builtin_ctz(bits));
      bits &= bits - 1;
    }
  }
  return n;
}

struct RangeCount {
  float radius;
  int64_t* out;
  struct Local {
    RangeCount& e;
    std::vector<int64_t> cnt;
    std::vector<int32_t> need;
    std::vector<float> vals;
    const int isa = active_isa();
    explicit Local(RangeCount& epi) : e(epi), cnt(kTile), need(kTile), vals(kTile) {}
    void begin(idx_t, idx_t) { std::fill(cnt.begin(), cnt.end(), 0); }
    void tile(const Tile& t) {
      // Surely out: lower - abs > radius.
      const float out_above = round_up(static_cast<double>(e.radius) + t.abs);
      RowBits b;
      for (idx_t r = 0; r < t.mi; ++r) {
        range_bits(isa, t, r, e.radius, out_above, b);
        int64_t c_in = 0;
        for (idx_t g = 0; g * 16 < t.nj; ++g) c_in += __builtin_popcount(b.in[g]);
        const idx_t nneed = need_list(t, b, need.data());
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
    std::vector<int32_t> need;
    std::vector<float> vals;
    const int isa = active_isa();
    explicit Local(RangeList& epi) : e(epi), pos(kTile), need(kTile), vals(kTile) {}
    void begin(idx_t i0, idx_t mi) {
      for (idx_t r = 0; r < mi; ++r) pos[r] = e.offsets[i0 + r];
    }
    void tile(const Tile& t) {
      const float out_above = round_up(static_cast<double>(e.radius) + t.abs);
      RowBits b;
      for (idx_t r = 0; r < t.mi; ++r) {
        range_bits(isa, t, r, e.radius, out_above, b);
        const idx_t nneed = need_list(t, b, need.data());
        if (nneed) {
          exact_gather(t.rows.row(t.i0 + r), t.cols, need.data(), nneed, vals.data());
        }
        // Write in column order: the row's list ends up ascending, whatever the threads.
        const idx_t gi = t.i0 + r;
        const int64_t end = e.ends[gi];
        int64_t p = pos[r];
        idx_t u = 0;
        for (idx_t g = 0; g * 16 < t.nj; ++g) {
          unsigned bits = static_cast<unsigned>(b.in[g] | b.need[g]);
          while (bits) {
            const int c = __builtin_ctz(bits);
            bits &= bits - 1;
            const bool in = (b.in[g] >> c) & 1u ? true : vals[u++] <= e.radius;
            if (!in) continue;
            // The slot was sized by range_count with the same exact rule; a mismatch would
            // be an engine bug, never a write out of bounds.
            if (p >= end) require(false, "range_search: more neighbours than counted");
            e.out[p++] = static_cast<int32_t>(t.j0 + g * 16 + c);
          }
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

// The range count of every query row, rows taken as they are (no duplicate collapse).
void count_rows(const View& q, const View& base, float radius, int64_t* out_count,
                const Context& ctx) {
  const Buffer<float> qn = norms(q, ctx), bn = norms(base, ctx);
  ctx.set_total(num_tiles(q.rows));
  RangeCount epi{radius, out_count};
  for_each_tile(q, qn.data(), base, bn.data(), epi, ctx);
}

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
  // The representatives go straight to the body (looking for groups among them again
  // would find none and cost a hash pass).
  Groups g;
  if (find_groups_rect(q, nullptr, base.rows, 8.0, ctx, g)) {
    const Buffer<float> gq = gather_first(q, g);
    Buffer<int64_t> gc(g.count);
    count_rows(View{gq.data(), g.count, q.cols, q.cols}, base, radius, gc.data(), ctx);
    for (idx_t i = 0; i < q.rows; ++i) out_count[i] = gc[g.of[i]];
    return;
  }
  count_rows(q, base, radius, out_count, ctx);
}

}  // namespace cpu
}  // namespace usl_fast
