// Exact-duplicate groups (dedup.hpp): a 64-bit hash of every row's bytes, a linear-probing
// table that confirms each hash match byte for byte, and the merge that turns a list over
// groups back into a list over rows.
#include "dedup.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>

namespace usl_fast {
namespace cpu {

bool dedup_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("USL_FAST_DEDUP");
    return !(env && std::string(env) == "0");
  }();
  return on;
}

namespace {

inline uint64_t rotl(uint64_t v, int r) { return (v << r) | (v >> (64 - r)); }

// Final avalanche (the splitmix64 output function): every input bit reaches every output bit.
inline uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Four independent lanes over 8-byte words: the loop runs at memory speed (two multiplies a
// word), and the rotation carries the high bits of a word (a float's sign and exponent) into
// the low ones before the next multiply, so sign flips in two words cannot cancel.
// Equal bytes give equal hashes; unequal rows that collide are told apart by memcmp.
uint64_t row_hash(const float* row, idx_t d, int32_t tag) {
  const auto* p = reinterpret_cast<const unsigned char*>(row);
  const size_t bytes = static_cast<size_t>(d) * sizeof(float);
  constexpr uint64_t kM1 = 0x9E3779B185EBCA87ull, kM2 = 0xC2B2AE3D27D4EB4Full;
  uint64_t a[4] = {kM1, kM2, ~kM1, ~kM2};
  size_t o = 0;
  for (; o + 32 <= bytes; o += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + o + 8 * l, 8);
      a[l] = rotl(a[l] + w * kM2, 31) * kM1;
    }
  uint64_t h = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18);
  for (; o + 4 <= bytes; o += 4) {
    uint32_t w;
    std::memcpy(&w, p + o, 4);
    h = rotl(h ^ (w * kM1), 23) * kM2;
  }
  h ^= static_cast<uint64_t>(static_cast<uint32_t>(tag)) * kM2 + bytes;
  return mix(h);
}

}  // namespace

bool find_groups(const View& x, const int32_t* tag, const Context& ctx, Groups& g) {
  const idx_t n = x.rows, d = x.cols;
  if (!dedup_enabled() || n < 2) return false;
  Buffer<uint64_t> hash(n);
  parallel_rows(n, ctx, [&](idx_t i) { hash[i] = row_hash(x.row(i), d, tag ? tag[i] : 0); });

  // Rows in ascending order into a table of (high 32 hash bits, row); a row whose hash and
  // bytes match an earlier row joins that row's group, so every group's head is its lowest
  // member. Load factor <= 1/2.
  size_t cap = 16;
  while (cap < 2 * static_cast<size_t>(n)) cap <<= 1;
  const size_t mask = cap - 1;
  Buffer<int32_t> table(cap);
  table.fill(-1);
  Buffer<int32_t> head(n);
  const size_t row_bytes = static_cast<size_t>(d) * sizeof(float);
  bool any = false;
  for (idx_t i = 0; i < n; ++i) {
    const uint64_t h = hash[i];
    size_t s = h & mask;
    for (;;) {
      const int32_t j = table[s];
      if (j < 0) {
        table[s] = static_cast<int32_t>(i);
        head[i] = static_cast<int32_t>(i);
        break;
      }
      if (hash[j] == h && (!tag || tag[j] == tag[i]) &&
          std::memcmp(x.row(j), x.row(i), row_bytes) == 0) {
        head[i] = static_cast<int32_t>(j);
        any = true;
        break;
      }
      s = (s + 1) & mask;
    }
    if ((i & 0xFFFF) == 0xFFFF && ctx.cancelled()) throw Cancelled();
  }
  if (!any) return false;
  table.reset(0);
  hash.reset(0);

  // Number the groups by their heads (ascending), then list the members (ascending).
  g.of.reset(n);
  idx_t count = 0;
  for (idx_t i = 0; i < n; ++i)
    g.of[i] = head[i] == i ? static_cast<int32_t>(count++) : g.of[head[i]];
  head.reset(0);
  g.count = count;
  g.first.reset(count);
  g.start.reset(count + 1);
  g.start.fill(0);
  for (idx_t i = 0; i < n; ++i) g.start[g.of[i] + 1] += 1;
  for (idx_t c = 0; c < count; ++c) g.start[c + 1] += g.start[c];
  g.member.reset(n);
  {
    Buffer<int64_t> pos(count);
    for (idx_t c = 0; c < count; ++c) pos[c] = g.start[c];
    for (idx_t i = 0; i < n; ++i) g.member[pos[g.of[i]]++] = static_cast<int32_t>(i);
  }
  for (idx_t c = 0; c < count; ++c) g.first[c] = g.member[g.start[c]];
  return true;
}

bool find_groups_rect(const View& x, const int32_t* tag, idx_t cols, double per_group,
                      const Context& ctx, Groups& g) {
  if (cols < kDedupMinCols || dedup_detect_bytes(x.rows) > kDedupSlackBytes) return false;
  if (!find_groups(x, tag, ctx, g)) return false;
  if (gather_fits(x.rows, g.count, x.cols, per_group, 0.0)) return true;
  g = Groups();
  return false;
}

Buffer<float> gather_first(const View& x, const Groups& g) {
  const idx_t d = x.cols;
  Buffer<float> out(static_cast<size_t>(g.count) * d);
  for (idx_t c = 0; c < g.count; ++c)
    std::memcpy(out.data() + c * d, x.row(g.first[c]), d * sizeof(float));
  return out;
}

int expand_keys(const Groups& cols, const uint64_t* in, int n_in, int k, uint64_t* out,
                std::vector<int64_t>& scratch) {
  int o = 0;
  for (int t = 0; t < n_in && o < k && in[t] != ~uint64_t(0);) {
    // The run of groups at this distance (equal keys' high halves: equal float bits).
    const uint64_t dist_bits = in[t] >> 32;
    int u = t + 1;
    while (u < n_in && in[u] != ~uint64_t(0) && (in[u] >> 32) == dist_bits) ++u;
    const uint64_t hi = dist_bits << 32;
    if (u == t + 1) {
      // One group: its members in order.
      const int32_t c = key_index(in[t]);
      const int64_t b = cols.start[c], e = std::min<int64_t>(cols.start[c + 1], b + (k - o));
      for (int64_t v = b; v < e; ++v) out[o++] = hi | static_cast<uint32_t>(cols.member[v]);
    } else {
      // Several groups at one distance: merge their members by row, a min-heap of
      // (row << 32 | slot) with each slot's next position behind it.
      const int runs = u - t;
      scratch.resize(2 * static_cast<size_t>(runs));
      int64_t* heap = scratch.data();
      int64_t* next = scratch.data() + runs;
      for (int s = 0; s < runs; ++s) {
        const int32_t c = key_index(in[t + s]);
        next[s] = cols.start[c] + 1;
        heap[s] = (static_cast<int64_t>(cols.member[cols.start[c]]) << 32) | s;
      }
      int hn = runs;
      std::make_heap(heap, heap + hn, std::greater<int64_t>());
      while (hn > 0 && o < k) {
        std::pop_heap(heap, heap + hn, std::greater<int64_t>());
        const int64_t top = heap[hn - 1];
        const int s = static_cast<int>(top & 0xFFFFFFFF);
        out[o++] = hi | static_cast<uint32_t>(top >> 32);
        const int32_t c = key_index(in[t + s]);
        if (next[s] < cols.start[c + 1]) {
          heap[hn - 1] = (static_cast<int64_t>(cols.member[next[s]++]) << 32) | s;
          std::push_heap(heap, heap + hn, std::greater<int64_t>());
        } else {
          --hn;
        }
      }
    }
    t = u;
  }
  return o;
}

}  // namespace cpu
}  // namespace usl_fast
