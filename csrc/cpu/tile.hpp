// The CPU tile engine: ONE driver that walks (row tile, column tile) pairs, computes the
// tile's inner products with a single-threaded SGEMM while the operands sit in L2, and hands
// the tile to an epilogue. The inner products only FILTER (usl_fast/l2.hpp): whatever an
// epilogue keeps, it keeps by exact_l2 values. Epilogues: top-k (kNN, density, arg-min,
// min-update), masked power-sum / top-h (regularizer), range count.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "usl_fast/common.hpp"
#include "usl_fast/l2.hpp"

namespace usl_fast {
namespace cpu {

// Rows per tile side. 256 x 256 floats = 256 KiB: the tile and both operand panels
// (256 x d each) stay in a 1-2 MiB L2 for d up to ~512, and OpenBLAS runs at full speed on
// a 256 x 256 x d product (measured: benchmarks/bench_knn.py).
constexpr idx_t kTile = 256;

inline idx_t num_tiles(idx_t n) { return (n + kTile - 1) / kTile; }

// ---------------------------------------------------------------------------------------
// Memory: every buffer whose size grows with the input goes through checked_alloc, which
// honours a test-only budget (set_alloc_limit) so tests can inject an allocation failure
// anywhere, inside OpenMP regions included.
void* checked_alloc(size_t bytes);  // throws OutOfMemory

// A failed engine allocation, naming its size; pybind11 turns any std::bad_alloc into
// MemoryError with what() as its message. The text is formatted into the object itself
// because there may be no memory left to allocate a string.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(size_t bytes);
  const char* what() const noexcept override { return msg_; }

 private:
  char msg_[200];
};
void checked_free(void* p, size_t bytes) noexcept;
void set_alloc_limit(int64_t bytes);  // < 0: no limit

template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t n) { reset(n); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      std::swap(p_, o.p_);
      std::swap(n_, o.n_);
    }
    return *this;
  }
  ~Buffer() { release(); }
  void reset(size_t n) {
    release();
    if (n) p_ = static_cast<T*>(checked_alloc(n * sizeof(T)));
    n_ = n;
  }
  void fill(const T& v) { std::fill(p_, p_ + n_, v); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  size_t size() const { return n_; }

 private:
  void release() {
    if (p_) checked_free(p_, n_ * sizeof(T));
    p_ = nullptr;
    n_ = 0;
  }
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---------------------------------------------------------------------------------------
// Exceptions never leave an OpenMP region: each task runs through Guard::run, the first
// exception is kept, every thread then skips its remaining tasks, and the caller rethrows
// after the region (std::bad_alloc reaches Python as MemoryError).
class Guard {
 public:
  template <class F>
  void run(F&& f) {
    if (stop_.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
#pragma omp critical(usl_fast_guard)
      {
        if (!error_) error_ = std::current_exception();
      }
      stop_.store(true, std::memory_order_relaxed);
    }
  }
  void check_cancel(const Context& ctx) {
    if (ctx.cancelled()) throw Cancelled();
  }
  void rethrow() {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;
};

// ---------------------------------------------------------------------------------------
// Back-end primitives of the CPU: the tile GEMM and the filter's norms in gemm.cpp (its
// per-ISA kernels behind gemm.hpp: gemm_avx512.cpp, gemm_amx.cpp, gemm_lowp.cpp,
// gemm_avx2.cpp), the allocation budget and active_isa in runtime.cpp, the exact kernels in
// exact.cpp, the scans in scan.cpp.

// The tile's inner products: tile[r * kTile + c] = a_r . b_c for r < m, c < n (m, n <=
// kTile; a row-major tile buffer of kTile x kTile, which the 16-bit paths also fill up to
// the next multiples of 16), one thread. They only feed the filter, so any evaluation whose
// error the filter bounds will do. Returns the relative bound `rel` of Tile for this tile:
// filter_rel(d) for the float32 GEMMs, the measured 16-bit bound for AMX, AVX-512 bf16 and
// int16, AVX2 int16 (lowp_rel). `center` (only where gemm_centred(d), else nullptr): the
// products are of the centred rows, fl(a - c) . fl(b - c), and the bound includes the
// centring; the filter must then use the centred squared norms exact_l2(a, c) (filter_norms).
float gemm_tile(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n, idx_t d,
                const float* center, float* tile);

// Which GEMM gemm_tile runs: OpenBLAS, the own AVX-512 float32 kernel, AMX bf16; 3, 4: the
// own AVX2 kernels, float32 and int16 (vpmaddwd) (gemm_avx2.cpp); 5, 6: AVX-512 without AMX,
// bf16 (vdpbf16ps) and int16 (vpdpwssd) (gemm_lowp.cpp).
constexpr int kGemmBlas = 0, kGemmAvx512 = 1, kGemmAmx = 2;
constexpr int kGemmAvx2 = 3, kGemmAvx2I16 = 4;
constexpr int kGemmBf16 = 5, kGemmI16 = 6;
int gemm_kind();
// Whether gemm_tile multiplies centred rows at d coordinates (its bound is then relative to
// the centred norms): the 16-bit GEMMs (2, 5, 6), and AVX2 int16 from kI16MinCols
// coordinates (below, converting the rows costs more than int16 saves, and its float32
// kernel runs) up to kI16MaxColsAvx2: with one scale a row, the measured rounding grows
// as sqrt(d) (kappa^2 ~ d / (12 ||w||^2), ||w|| ~ 2^14.5), so far above that every tile
// would fail the 2^-15 test and be redone in float32 from full centred copies.
constexpr idx_t kI16MinCols = 64;
constexpr idx_t kI16MaxColsAvx2 = 16384;
inline bool avx2i16_cols(idx_t d) { return d >= kI16MinCols && d <= kI16MaxColsAvx2; }
bool gemm_centred(idx_t d);

// One side's rows as the AVX2 int16 GEMM's operands, converted once per driver call
// (build_i16_image, gemm_avx2.cpp) instead of once per tile: a row's image depends only on
// the row and the centre (one power-of-two scale a row, quant_i16.hpp), and in the symmetric
// pass every row tile meets every other, so the per-tile conversion redid each row ~n / 256
// times. Coordinate pairs as 32-bit words in panels of 8 rows, word-major within a panel,
// one block of panels per 512-coordinate pass: the layout gemm_tile_avx2i16's B panels
// have, which its A side also reads (8 words apart). Per row tile: the largest kappa^2
// bound of its rows, or -1 where a row's scale is out of range (that tile then runs in
// float32, as before). About 2 d + 4 bytes a row (filter_image_bytes).
struct I16Image {
  Buffer<int32_t> store;          // words, plus room to align them to 32 bytes
  int32_t* words = nullptr;        // (n + 7) / 8 panels x 8 x ceil(d / 2) words
  Buffer<float> inv;               // 2^-k a row, zeros to the next multiple of 8 rows + 16
  Buffer<double> k2;               // per row tile
  idx_t rows = 0, panels = 0;
};
// The same for the AVX-512 16-bit GEMMs (gemm_lowp.cpp: gemm_tile_bf16, gemm_tile_i16):
// each row's 16-bit image of x - centre, pass by pass exactly as the per-tile conversion
// makes it (to_bf16, to_i16), stored as the kernels' B panels (16 rows, word-major: word
// 16 p + q holds coordinates 2 p, 2 p + 1 of row q), which their A side reads as well (2
// words apart). Pass t0's block holds `panels` panels of 16 x kp(pass) words (kp: the pass's
// coordinates rounded up to 32; every pass but the last is kKcLowp wide, so the block
// starts at panels x 16 x t0). Rows past `rows` are zeros. int16 also keeps each row's
// power-of-two exponent per pass, negated, as float32 (nexp: one block of panels x 16 per
// pass). Per row tile: the largest kappa^2 bound of its rows (the per-tile kernel's ka2).
struct LowpImage {
  Buffer<uint16_t> store;  // words, plus room to align them to 64 bytes
  uint16_t* words = nullptr;
  Buffer<float> nexp;  // int16 only
  Buffer<double> k2;   // per row tile
  idx_t rows = 0, panels = 0;
  bool i16 = false;
};
// Whether the drivers' pair rounds (for_each_round) and rectangular passes (for_each_tile)
// convert rows once per call at d coordinates (the AVX2 int16 GEMM within its columns, the
// AVX-512 bf16 and int16 GEMMs at any d), and the bytes an image of `rows` rows then takes (0 where
// not): usl_fast/_dispatch.py counts them in its memory checks.
bool filter_images(idx_t d);
double filter_image_bytes(idx_t rows, idx_t d);
// Fills img with the int16 images of x's rows, centred on `center` (threads over row tiles).
void build_i16_image(const View& x, const float* center, I16Image& img, const Context& ctx);
// Fills img with the bf16 (i16: int16) images of x's rows, centred on `center` (threads over
// row tiles); only where the CPU has AVX512-BF16 (AVX512-VNNI) (gemm_lowp.cpp).
void build_lowp_image(const View& x, const float* center, bool i16, LowpImage& img,
                      const Context& ctx);

// What one driver call filters with. A bf16 bound is relative to ||a||^2 + ||b||^2, so on
// data far from the origin (all-positive features, say) it would let every pair through;
// with a 16-bit GEMM (gemm_centred) the driver therefore centres both sides on the column
// set's mean (distances do not change; only the filter's products and norms do). The float32
// GEMMs use the plain rows and norms (xn, yn as given).
struct FilterNorms {
  std::vector<float> center;  // empty: not centred
  Buffer<float> xc, yc;       // centred squared norms, when centred
  const float* xn = nullptr;  // the norms the tiles use
  const float* yn = nullptr;
  // The rows' images (asked for and filter_images(d)): xi, yi on the AVX2 int16 GEMM, xl, yl
  // (lowp) on the AVX-512 bf16 and int16 ones; the y side unused when same.
  I16Image xi, yi;
  LowpImage xl, yl;
  bool images = false, same = false, lowp = false;
  const float* c() const { return center.empty() ? nullptr : center.data(); }
};
FilterNorms filter_norms(const View& x, const float* xn, const View& y, const float* yn,
                         bool same, const Context& ctx, bool images = false);

// gemm_tile of row tile i0 / kTile of the rows behind ia against row tile j0 / kTile of those
// behind ib (a, b: the same tiles' float rows, for the float32 fallback), from the images:
// the same bits and the same rel as gemm_tile on those rows.
float gemm_tile_images(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                       idx_t d, const float* center, const I16Image& ia, idx_t i0,
                       const I16Image& ib, idx_t j0, float* tile);
float gemm_tile_images(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                       idx_t d, const float* center, const LowpImage& ia, idx_t i0,
                       const LowpImage& ib, idx_t j0, float* tile);

// The tile product of x's row tile at i0 (mi rows) and y's at j0 (nj rows) as a driver runs
// it: from fn's images where it holds them, else gemm_tile (fn centred or not).
inline float driver_tile(const FilterNorms& fn, const View& x, idx_t i0, idx_t mi, const View& y,
                         idx_t j0, idx_t nj, float* tile) {
  const idx_t d = x.cols;
  if (!fn.images) return gemm_tile(x.row(i0), x.ld, mi, y.row(j0), y.ld, nj, d, fn.c(), tile);
  if (fn.lowp)
    return gemm_tile_images(x.row(i0), x.ld, mi, y.row(j0), y.ld, nj, d, fn.c(), fn.xl, i0,
                            fn.same ? fn.xl : fn.yl, j0, tile);
  return gemm_tile_images(x.row(i0), x.ld, mi, y.row(j0), y.ld, nj, d, fn.c(), fn.xi, i0,
                          fn.same ? fn.xi : fn.yi, j0, tile);
}

// The calling thread's kTile x kTile scratch tile (allocated once per OpenMP thread).
float* thread_tile();

// Which SIMD path runs: 0 portable, 1 AVX2, 2 AVX-512. USL_FAST_ISA=portable|avx2|avx512
// narrows it (tests compare every path); a build with USL_FAST_ISA=portable has only 0.
int active_isa();

// Pairs exact_many and exact_pairs evaluated in this process, counted only with
// USL_FAST_COUNT_EXACT=1
// (exact.cpp; a benchmark hook: how many pairs a filter lets through).
int64_t exact_evaluations();

// exact_l2 of row a against base rows idx[0..n) and against rows j0..j0+n (SIMD versions of
// l2.hpp's kernel, identical bits).
void exact_gather(const float* a, const View& base, const int32_t* idx, idx_t n, float* out);
void exact_range(const float* a, const View& base, idx_t j0, idx_t n, float* out);

// out[u * ldo + c] = exact_l2(a[u], b[c]) for u < na, c < nb: register-blocked for the
// epilogues that need almost every pair of a tile (exact.cpp). skip (or nullptr): flags,
// skip[u * lds + c]; a pair whose flag is set may be left unwritten (it is written when a
// neighbour in its block of columns needs evaluating). Returns how many pairs it evaluated.
idx_t exact_block(const float* const* a, idx_t na, const float* const* b, idx_t nb, idx_t d,
                 const uint8_t* skip, idx_t lds, float* out, idx_t ldo);

// The regularizer's terms: out[c] = far_term where masked, else dv[c]^-alpha in float64,
// with masked = far[c] || dv[c] >= horizon || (mask_zero && dv[c] == 0). alpha 0.5 and 1
// are one IEEE square root and/or division (SIMD where the path has it, identical bits);
// any other alpha is std::pow.
void power_terms(const float* dv, const uint8_t* far, idx_t n, double alpha, float horizon,
                 bool mask_zero, double far_term, double* out);

// Squared norm of every row (exact_l2 against the zero vector), threads over rows.
void row_norms(const View& x, float* out, const Context& ctx);

// out[i] = exact_l2(a, x_i) for every row (a: d floats), threads over rows; row_norms is
// this with a = 0.
void row_distances(const View& x, const float* a, float* out, const Context& ctx);

// The same, into a new buffer (the filter needs the norms of both sides of every op).
inline Buffer<float> norms(const View& x, const Context& ctx) {
  Buffer<float> out(x.rows);
  row_norms(x, out.data(), ctx);
  return out;
}

// ---------------------------------------------------------------------------------------
// One tile handed to an epilogue: rows [0, mi) are global rows i0 + r of the row set,
// columns [0, nj) are global rows j0 + c of the column set; ip[r * ldt + c] their inner
// product. The exact distance E of a pair satisfies lower(r, c) - abs <= E <= upper(r, c):
// `lower` leaves abs out so that callers fold it into their threshold (once per tile, not
// once per pair); every comparison against `lower` must therefore use threshold + abs.
struct Tile {
  const float* ip;  // nullptr where the epilogue declined the filter (wants_filter)
  idx_t ldt, i0, mi, j0, nj;
  const float* rn;  // the tile rows' squared norms (mi)
  const float* cn;  // the tile columns' squared norms (nj)
  float rel, abs;   // this tile's relative bound (gemm_tile's result), filter_abs(d)
  bool diagonal;    // symmetric pass, I == J
  View rows, cols;  // the whole row and column sets (global indices)

  // e = fl(fl(rn + cn) - 2 ip) is the estimate; e - rel s its lower bound (abs is added to
  // the thresholds instead, see TopK) and e + rel s + abs its upper bound.
  float lower(idx_t r, idx_t c) const {
    const float s = rn[r] + cn[c];
    return (s - 2.0f * ip[r * ldt + c]) - rel * s;
  }
  float upper(idx_t r, idx_t c) const {
    const float s = rn[r] + cn[c];
    return (s - 2.0f * ip[r * ldt + c]) + rel * s + abs;
  }
};

inline float round_up(double v) {
  const float f = static_cast<float>(v);
  return static_cast<double>(f) >= v ? f : std::nextafter(f, std::numeric_limits<float>::infinity());
}

// ---------------------------------------------------------------------------------------
// Top-k by exact distance. Per row: a buffer of packed (exact distance, index) keys and an
// acceptance threshold thr = (k-th best exact distance so far) + filter_abs, +inf until k
// were kept. The scan offers a pair only when the filter's lower bound passes thr; such a
// pair is evaluated with exact_l2 right then, while both rows are still in cache (measured:
// 4-8x cheaper than evaluating the survivors at the end, whose rows are scattered), and
// kept when its exact value passes too. Compaction keeps the k smallest keys, so the final
// k are the k smallest (distance, index) pairs of everything that could be among them,
// whatever order the pairs came in.
class TopK {
 public:
  void init(idx_t rows, int k, float abs) {
    k_ = k;
    cap_ = 2 * k + 16;
    abs_ = abs;
    keys_.reset(static_cast<size_t>(rows) * cap_);
    count_.reset(rows);
    thr_.reset(rows);
    reset();
  }
  // Every row starts empty (a per-thread reservoir is reused for the next row tile).
  void reset() {
    count_.fill(0);
    thr_.fill(std::numeric_limits<float>::infinity());
  }
  int k() const { return k_; }
  float* thresholds() { return thr_.data(); }
  const float* thresholds() const { return thr_.data(); }

  // Start row r with a known upper bound tau of its k-th exact distance (sampled pass).
  void start_below(idx_t r, float tau) { thr_[r] = round_up(static_cast<double>(tau) + abs_); }

  // Asks for the cache line row r's next push writes (the scan usually offers a pair some
  // hundred cycles before it pushes it; a column's reservoir is usually out of cache).
  void prefetch_slot(idx_t r) const {
    __builtin_prefetch(keys_.data() + static_cast<size_t>(r) * cap_ + count_[r], 1, 3);
  }

  // Keep candidate j at exact distance v (the caller checked v <= thr).
  void push(idx_t r, float v, int32_t j) {
    const int c = count_[r];
    keys_[static_cast<size_t>(r) * cap_ + c] = pack_key(v, j);
    count_[r] = c + 1;
    if (c + 1 == cap_) compact(r);
  }

  // The k nearest of row r, ascending keys (fewer if fewer were kept); returns how many.
  int finish(idx_t r, uint64_t* keys_out) {
    uint64_t* kr = keys_.data() + static_cast<size_t>(r) * cap_;
    const int n = count_[r];
    const int kk = std::min(k_, n);
    if (n > kk) std::nth_element(kr, kr + (kk - 1), kr + n);
    std::sort(kr, kr + kk);
    std::copy(kr, kr + kk, keys_out);
    return kk;
  }

 private:
  void compact(idx_t r) {
    uint64_t* kr = keys_.data() + static_cast<size_t>(r) * cap_;
    std::nth_element(kr, kr + (k_ - 1), kr + count_[r]);
    count_[r] = k_;
    thr_[r] = std::min(thr_[r], round_up(static_cast<double>(key_dist(kr[k_ - 1])) + abs_));
  }

  int k_ = 0, cap_ = 0;
  float abs_ = 0.0f;
  Buffer<uint64_t> keys_;  // rows * cap; only [0, count) of a row is meaningful
  Buffer<int32_t> count_;
  Buffer<float> thr_;
};

// Offers every pair of a tile whose lower bound passes the row's threshold (and, in the
// symmetric pass, the column's) to the reservoirs (scan.cpp; SIMD per active_isa()).
// rows: reservoir of the tile's rows, local row of tile row r = row_off + r;
// cols (symmetric off-diagonal tiles only): reservoir of the columns, row = j0 + c.
void scan_topk(const Tile& t, TopK* rows, idx_t row_off, TopK* cols);

// Arg-min candidates of tile row r: the columns whose filter lower bound is <= min(the
// tile row's smallest upper bound + abs, best), appended to out (global column indices).
// `best` is the row's best exact distance so far + abs (+inf if none).
void argmin_candidates(const Tile& t, idx_t r, float best, int32_t* out, idx_t& n);

// ---------------------------------------------------------------------------------------
// The drivers.

// Whether an epilogue wants the filter's products for column tile J: Local::wants_filter(J)
// where it has one (false: the GEMM is skipped and the Tile has ip == nullptr), else always.
template <class L>
auto wants_filter(L& loc, idx_t J, int) -> decltype(loc.wants_filter(J)) {
  return loc.wants_filter(J);
}
template <class L>
bool wants_filter(L&, idx_t, long) {
  return true;
}

// Rectangular: every row tile of x against every column tile of y, row tiles spread over
// threads (dynamic), column tiles in ascending order within a row tile. Epi::Local is
// constructed once per thread from the Epi; it gets begin(i0, mi), tile(const Tile&) per
// column tile, end(i0, mi). One progress unit per row tile. With `images`, where both sides
// have more than one tile (each row then meets several tiles of the other side), the rows
// are converted once into images (filter_images; usl_fast/_dispatch.py's
// _rect_image_bytes counts them); the self kNN's sample and redo passes, whose memory
// the symmetric pass's estimate covers without them, and regularizer rounds whose filter
// cannot run, go without.
template <class Epi>
void for_each_tile(const View& x, const float* xn, const View& y, const float* yn, Epi& epi,
                   const Context& ctx, bool images = true) {
  const idx_t n = x.rows, m = y.rows, d = x.cols;
  const idx_t TR = num_tiles(n), TC = num_tiles(m);
  const float abs = filter_abs(d);
  const bool same = x.data == y.data && x.rows == y.rows && x.ld == y.ld;
  const FilterNorms fn = filter_norms(x, xn, y, yn, same, ctx, images && TR > 1 && TC > 1);
  xn = fn.xn;
  yn = fn.yn;
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
#pragma omp single nowait
    ctx.ran_with(omp_get_num_threads());  // what really ran (tests assert it)
    std::unique_ptr<typename Epi::Local> loc;
    float* tile = nullptr;
    guard.run([&] {
      loc.reset(new typename Epi::Local(epi));
      tile = thread_tile();
    });
#pragma omp for schedule(dynamic, 1)
    for (idx_t I = 0; I < TR; ++I) {
      guard.run([&] {
        guard.check_cancel(ctx);
        const idx_t i0 = I * kTile, mi = std::min(kTile, n - i0);
        loc->begin(i0, mi);
        for (idx_t J = 0; J < TC; ++J) {
          const idx_t j0 = J * kTile, nj = std::min(kTile, m - j0);
          const bool f = wants_filter(*loc, J, 0);
          const float rel = f ? driver_tile(fn, x, i0, mi, y, j0, nj, tile) : 0.0f;
          loc->tile(Tile{f ? tile : nullptr, kTile, i0, mi, j0, nj, xn + i0, yn + j0, rel, abs,
                         false, x, y});
        }
        loc->end(i0, mi);
        ctx.add(1);
      });
    }
  }
  guard.rethrow();
}

// Rounds of tile pairs of a against b, each pair handed to an epilogue that updates both
// sides (Epi::Local::pair(const Tile&)); the pairs of one round share no tile, so threads
// touch disjoint rows without locks. Round r has slots(r) slots; pair_of(r, s, I, J) gives
// slot s's row tiles, or false for an empty slot. The schedule is computed, never stored
// (a list of the n^2 / 2^17 pairs would be 200 MB at 1.28M rows). `same`: a and b are one
// set, so a pair with I == J is a diagonal tile. One progress unit per tile pair.
template <class Epi, class Slots, class PairOf>
void for_each_round(const View& a, const float* an, const View& b, const float* bn, bool same,
                    idx_t rounds, Slots slots, PairOf pair_of, Epi& epi, const Context& ctx) {
  const idx_t d = a.cols;
  const float abs = filter_abs(d);
  // Each row tile meets every tile of the other side here: convert the rows once.
  const FilterNorms fn = filter_norms(a, an, b, bn, same, ctx, true);
  an = fn.xn;
  bn = fn.yn;
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
#pragma omp single nowait
    ctx.ran_with(omp_get_num_threads());
    std::unique_ptr<typename Epi::Local> loc;
    float* tile = nullptr;
    guard.run([&] {
      loc.reset(new typename Epi::Local(epi));
      tile = thread_tile();
    });
    for (idx_t r = 0; r < rounds; ++r) {
      const idx_t ns = slots(r);
#pragma omp for schedule(dynamic, 1)
      for (idx_t s = 0; s < ns; ++s) {
        idx_t I = 0, J = 0;
        if (!pair_of(r, s, I, J)) continue;
        guard.run([&] {
          guard.check_cancel(ctx);
          const idx_t i0 = I * kTile, j0 = J * kTile;
          const idx_t mi = std::min(kTile, a.rows - i0), nj = std::min(kTile, b.rows - j0);
          const float rel = driver_tile(fn, a, i0, mi, b, j0, nj, tile);
          loc->pair(
              Tile{tile, kTile, i0, mi, j0, nj, an + i0, bn + j0, rel, abs, same && I == J, a, b});
          ctx.add(1);
        });
      }
    }
  }
  guard.rethrow();
}

// Symmetric: each unordered pair of row tiles of x once (diagonal tiles included), as a
// round-robin tournament of P = T rounded up to even players: in round r < P - 1, slot 0
// pairs r with P - 1 and slot s pairs r + s with r - s (mod P - 1), no player twice; a
// player >= T is a bye. A last round holds the T diagonal tiles.
template <class Epi>
void for_each_tile_pair(const View& x, const float* xn, Epi& epi, const Context& ctx) {
  const idx_t T = num_tiles(x.rows);
  if (T == 0) return;
  const idx_t P = (T % 2 == 0) ? T : T + 1;
  auto slots = [=](idx_t r) { return r < P - 1 ? P / 2 : T; };
  auto pair_of = [=](idx_t r, idx_t s, idx_t& I, idx_t& J) {
    if (r == P - 1) {
      I = J = s;
      return true;
    }
    const idx_t u = s == 0 ? r : (r + s) % (P - 1);
    const idx_t v = s == 0 ? P - 1 : (r - s + (P - 1)) % (P - 1);
    if (u >= T || v >= T) return false;
    I = std::min(u, v);
    J = std::max(u, v);
    return true;
  };
  for_each_round(x, xn, x, xn, true, P, slots, pair_of, epi, ctx);
}

// Bipartite: every row tile of a against every row tile of b once. Round r holds the pairs
// (I, J) with (I - J) mod max(TA, TB) == r, so no tile of either side twice.
template <class Epi>
void for_each_tile_cross(const View& a, const float* an, const View& b, const float* bn,
                         Epi& epi, const Context& ctx) {
  const idx_t TA = num_tiles(a.rows), TB = num_tiles(b.rows), M = std::max(TA, TB);
  auto slots = [=](idx_t) { return TA; };
  auto pair_of = [=](idx_t r, idx_t s, idx_t& I, idx_t& J) {
    I = s;
    J = (s - r + M) % M;
    return J < TB;
  };
  for_each_round(a, an, b, bn, false, M, slots, pair_of, epi, ctx);
}

// Rows [0, n) split over threads (static), for the per-row passes after a driver.
template <class F>
void parallel_rows(idx_t n, const Context& ctx, F&& f) {
  Guard guard;
#pragma omp parallel num_threads(ctx.threads)
  {
#pragma omp for schedule(dynamic, 256)
    for (idx_t i = 0; i < n; ++i) guard.run([&] { f(i); });
  }
  guard.rethrow();
}

}  // namespace cpu
}  // namespace usl_fast
