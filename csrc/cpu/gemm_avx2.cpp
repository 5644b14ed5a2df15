// The engine's own AVX2 tile GEMMs, used by gemm_tile (gemm.cpp): gemm_nt_avx2, float32 FMA
// (the AVX-512 kernel's design at 8 lanes), and gemm_tile_avx2i16, the filter's products
// in int16 with exact int32 sums and a measured rounding bound (docs/engine.md, "AVX2: the
// filter in int16"). Compiled only where the compiler targets x86-64 and the build is not
// USL_FAST_ISA=portable.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "gemm.hpp"
#include "quant_i16.hpp"

namespace usl_fast {
namespace cpu {

#ifdef USL_FAST_X86
namespace {

#define USL_AVX2_TARGET __attribute__((target("avx2,fma")))

constexpr idx_t kKc = 256;     // float32 coordinates per packed pass (16 x kKc of B in L1)
constexpr idx_t kKcI16 = 512;  // int16 coordinates per pass (the same bytes)

// Lanes [0, w) of an 8-lane mask (w <= 8).
USL_AVX2_TARGET inline __m256i lane_mask(idx_t w) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(w)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// In-register transpose of 8 rows of 8 32-bit words.
USL_AVX2_TARGET inline void transpose8(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Rows b[0, n) (32-bit words), words [t0, t0 + kc) as panels of 8 rows, word-major:
// out[p kc 8 + 8 t + q] = b[(8 p + q) ldb + t0 + t], zeros for rows >= n. The float32 GEMM
// packs floats; the int16 one packs coordinate pairs as words.
USL_AVX2_TARGET void pack_panels8(const float* b, idx_t ldb, idx_t n, idx_t t0, idx_t kc,
                                  float* out) {
  for (idx_t p = 0; p < (n + 7) / 8; ++p) {
    float* po = out + p * kc * 8;
    for (idx_t t = 0; t < kc; t += 8) {
      const idx_t nc = std::min<idx_t>(8, kc - t);
      const __m256i cm = lane_mask(nc);
      __m256 r[8];
      for (int q = 0; q < 8; ++q) {
        const idx_t row = p * 8 + q;
        r[q] = row >= n   ? _mm256_setzero_ps()
               : nc == 8 ? _mm256_loadu_ps(b + row * ldb + t0 + t)
                         : _mm256_maskload_ps(b + row * ldb + t0 + t, cm);
      }
      transpose8(r);
      for (idx_t q = 0; q < nc; ++q) _mm256_store_ps(po + (t + q) * 8, r[q]);
    }
  }
}

template <class T>
struct AlignedFree {
  void operator()(T* p) const { std::free(p); }
};

template <class T>
T* thread_buffer(std::unique_ptr<T, AlignedFree<T>>& buf, size_t count) {
  if (!buf) {
    buf.reset(static_cast<T*>(std::aligned_alloc(64, sizeof(T) * count)));
    if (!buf) throw std::bad_alloc();
  }
  return buf.get();
}

// ----------------------------------------------------------------------------- float32
// C[MR x 8 NP] (+)= A[MR x kc] B^T for NP packed panels: MR NP accumulators (6 x 2 = 12 of
// the 16 registers), one broadcast of A per row and coordinate. `last`: valid columns of
// the last panel (1..8).
template <int MR, int NP>
USL_AVX2_TARGET inline void micro_f32(const float* a, idx_t lda, const float* bp, idx_t kc,
                                      float* c, idx_t ldc, idx_t last, bool accumulate) {
  __m256 acc[MR][NP];
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm256_setzero_ps();
  const float* ar[MR];
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  for (idx_t t = 0; t < kc; ++t) {
    __m256 bv[NP];
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p) bv[p] = _mm256_load_ps(bp + p * kc * 8 + t * 8);
    _Pragma("GCC unroll 8")
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(ar[r] + t);
      _Pragma("GCC unroll 8")
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm256_fmadd_ps(av, bv[p], acc[r][p]);
    }
  }
  const __m256i lm = lane_mask(last);
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p) {
      float* cp = c + r * ldc + p * 8;
      __m256 v = acc[r][p];
      if (p < NP - 1 || last == 8) {
        if (accumulate) v = _mm256_add_ps(v, _mm256_loadu_ps(cp));
        _mm256_storeu_ps(cp, v);
      } else {
        if (accumulate) v = _mm256_add_ps(v, _mm256_maskload_ps(cp, lm));
        _mm256_maskstore_ps(cp, lm, v);
      }
    }
}

template <int NP>
USL_AVX2_TARGET void rows_f32(const float* a, idx_t lda, idx_t m, const float* bp, idx_t kc,
                              float* c, idx_t ldc, idx_t last, bool acc) {
  idx_t i = 0;
  for (; i + 6 <= m; i += 6)
    micro_f32<6, NP>(a + i * lda, lda, bp, kc, c + i * ldc, ldc, last, acc);
  const float* ai = a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: return micro_f32<5, NP>(ai, lda, bp, kc, ci, ldc, last, acc);
    case 4: return micro_f32<4, NP>(ai, lda, bp, kc, ci, ldc, last, acc);
    case 3: return micro_f32<3, NP>(ai, lda, bp, kc, ci, ldc, last, acc);
    case 2: return micro_f32<2, NP>(ai, lda, bp, kc, ci, ldc, last, acc);
    case 1: return micro_f32<1, NP>(ai, lda, bp, kc, ci, ldc, last, acc);
    default: return;
  }
}

// ----------------------------------------------------------------------------- int16
// C[MR x 8 NP] for NP panels of coordinate pairs: vpmaddwd multiplies 16 int16 pairs and
// adds each pair into an int32 (8 columns x 2 coordinates an instruction, twice the float32
// FMA's 8 products), vpaddd accumulates; every sum is exact (quant_i16.hpp). Earlier passes
// leave int32 sums in the tile; the last one converts to float32 and scales by
// 2^-(ka + kb) (sa[r] * sb[c], exact), the only rounding of the product. A's coordinate
// pairs are 32-bit words: row r's word w at a[r * ars + w * AW] (rows: ars = kw, AW = 1;
// a panel of an I16Image: ars = 1, AW = 8).
template <int MR, int NP, int AW>
USL_AVX2_TARGET inline void micro_i16(const int32_t* a, idx_t ars, const int32_t* bp, idx_t kw,
                                      float* c, idx_t ldc, idx_t last, bool accumulate,
                                      bool final, const float* sa, const float* sb) {
  __m256i acc[MR][NP];
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm256_setzero_si256();
  const int32_t* ar[MR];
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r) ar[r] = a + r * ars;
  // Unrolled: a step is 8 products and 8 adds, so the loop's own counter and branch were a
  // tenth of the instructions (measured alone, one thread, a 256 x 256 x 128 tile in cache:
  // 74 -> 86-91 GMAC/s; the whole AVX2 kNN gains 1-2 %, inside its run-to-run spread).
  _Pragma("GCC unroll 4")
  for (idx_t w = 0; w < kw; ++w) {
    __m256i bv[NP];
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p)
      bv[p] = _mm256_load_si256(reinterpret_cast<const __m256i*>(bp + p * kw * 8 + w * 8));
    _Pragma("GCC unroll 8")
    for (int r = 0; r < MR; ++r) {
      int32_t pair;  // (memcpy: the words were stored as int16 or as vectors)
      std::memcpy(&pair, ar[r] + w * AW, sizeof pair);
      const __m256i av = _mm256_set1_epi32(pair);
      _Pragma("GCC unroll 8")
      for (int p = 0; p < NP; ++p)
        acc[r][p] = _mm256_add_epi32(acc[r][p], _mm256_madd_epi16(av, bv[p]));
    }
  }
  const __m256i lm = lane_mask(last);
  _Pragma("GCC unroll 8")
  for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 8")
    for (int p = 0; p < NP; ++p) {
      float* cp = c + r * ldc + p * 8;
      const bool full = p < NP - 1 || last == 8;
      __m256i v = acc[r][p];
      if (accumulate)
        v = _mm256_add_epi32(v, full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cp))
                                     : _mm256_maskload_epi32(reinterpret_cast<const int*>(cp), lm));
      __m256 out = _mm256_castsi256_ps(v);
      if (final) {
        const __m256 scale =
            _mm256_mul_ps(_mm256_broadcast_ss(sa + r), _mm256_loadu_ps(sb + p * 8));
        out = _mm256_mul_ps(_mm256_cvtepi32_ps(v), scale);
      }
      if (full)
        _mm256_storeu_ps(cp, out);
      else
        _mm256_maskstore_ps(cp, lm, out);
    }
}

// Rows 4 at a time: 8 accumulators, the two B vectors, the broadcast and two products fit
// the 16 registers (6 rows spill). kPanels: A is a block of I16Image panels (4 rows never
// straddle two panels: the block starts a panel), else rows of kw words.
template <int NP, bool kPanels>
USL_AVX2_TARGET void rows_i16(const int32_t* a, idx_t m, const int32_t* bp, idx_t kw, float* c,
                              idx_t ldc, idx_t last, bool acc, bool fin, const float* sa,
                              const float* sb) {
  constexpr int AW = kPanels ? 8 : 1;
  const idx_t ars = kPanels ? 1 : kw;
  auto row = [&](idx_t i) { return kPanels ? a + (i / 8) * kw * 8 + i % 8 : a + i * kw; };
  idx_t i = 0;
  for (; i + 4 <= m; i += 4)
    micro_i16<4, NP, AW>(row(i), ars, bp, kw, c + i * ldc, ldc, last, acc, fin, sa + i, sb);
  const int32_t* ai = row(i);
  float* ci = c + i * ldc;
  switch (m - i) {
    case 3: return micro_i16<3, NP, AW>(ai, ars, bp, kw, ci, ldc, last, acc, fin, sa + i, sb);
    case 2: return micro_i16<2, NP, AW>(ai, ars, bp, kw, ci, ldc, last, acc, fin, sa + i, sb);
    case 1: return micro_i16<1, NP, AW>(ai, ars, bp, kw, ci, ldc, last, acc, fin, sa + i, sb);
    default: return;
  }
}

// One tile's int16 product from packed operands (the per-tile conversion's buffers, or the
// images'): for each pass, pa(t0, kw) gives A's words, pb(t0, kw) B's panels.
template <bool kPanels, class PA, class PB>
USL_AVX2_TARGET void product_i16(PA pa, PB pb, idx_t m, idx_t n, idx_t d, float* tile,
                                 const float* sa, const float* sb) {
  for (idx_t t0 = 0; t0 < d; t0 += kKcI16) {
    const idx_t kc = std::min(kKcI16, d - t0), kw = (kc + 1) / 2;
    const int32_t* qa = pa(t0, kw);
    const int32_t* words = pb(t0, kw);
    const bool acc = t0 > 0, fin = t0 + kc >= d;
    for (idx_t j = 0; j < n; j += 16) {
      const idx_t w = std::min<idx_t>(16, n - j);
      const int32_t* bp = words + (j / 8) * kw * 8;
      if (w > 8)
        rows_i16<2, kPanels>(qa, m, bp, kw, tile + j, kTile, w - 8, acc, fin, sa, sb + j);
      else
        rows_i16<1, kPanels>(qa, m, bp, kw, tile + j, kTile, w, acc, fin, sa, sb + j);
    }
  }
}

struct I16Buffers {
  std::unique_ptr<float, AlignedFree<float>> panels;      // packed B (kTile x kKcI16 int16)
  std::unique_ptr<int16_t, AlignedFree<int16_t>> a, rows;  // A (kTile x kKcI16), 8 B rows
  std::vector<float> zero;                                 // the center when there is none
};

}  // namespace

// n <= kTile. Columns 16 at a time (two panels, in L1), all rows of A for each.
USL_AVX2_TARGET void gemm_nt_avx2(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb,
                                  idx_t n, idx_t d, float* c, idx_t ldc) {
  thread_local std::unique_ptr<float, AlignedFree<float>> buf;
  float* panels = thread_buffer(buf, static_cast<size_t>(kTile) * kKc);
  for (idx_t t0 = 0; t0 < d; t0 += kKc) {
    const idx_t kc = std::min(kKc, d - t0);
    pack_panels8(b, ldb, n, t0, kc, panels);
    for (idx_t j = 0; j < n; j += 16) {
      const idx_t w = std::min<idx_t>(16, n - j);
      const float* bp = panels + (j / 8) * kc * 8;
      if (w > 8)
        rows_f32<2>(a + t0, lda, m, bp, kc, c + j, ldc, w - 8, t0 > 0);
      else
        rows_f32<1>(a + t0, lda, m, bp, kc, c + j, ldc, w, t0 > 0);
    }
  }
}

USL_AVX2_TARGET bool gemm_tile_avx2i16(const float* a, idx_t lda, idx_t m, const float* b,
                                       idx_t ldb, idx_t n, idx_t d, const float* center,
                                       float* tile, double& ka2, double& kb2) {
  if (d > kI16MaxCols) return false;
  thread_local I16Buffers buf;
  float* panels = thread_buffer(buf.panels, static_cast<size_t>(kTile) * kKcI16 / 2);
  int16_t* qa = thread_buffer(buf.a, static_cast<size_t>(kTile) * kKcI16);
  int16_t* qrows = thread_buffer(buf.rows, static_cast<size_t>(8) * kKcI16);
  if (buf.zero.size() < static_cast<size_t>(d)) buf.zero.assign(d, 0.0f);
  const float* cen = center ? center : buf.zero.data();
  // Per-row scales first (they need the whole row's norm): 2^k to quantize, 2^-k to undo.
  float qs_a[kTile], qs_b[kTile], sa[kTile], sb[kTile + 8];
  auto scales = [&](const float* x, idx_t ld, idx_t rows, float* q, float* s) {
    for (idx_t r = 0; r < rows; ++r) {
      const int k = i16_shift(x + r * ld, cen, d);
      if (k > kI16MaxShift || k < -kI16MaxShift) return false;
      q[r] = std::ldexp(1.0f, k);
      s[r] = std::ldexp(1.0f, -k);
    }
    return true;
  };
  if (!scales(a, lda, m, qs_a, sa) || !scales(b, ldb, n, qs_b, sb)) return false;
  for (idx_t j = n; j < kTile + 8; ++j) sb[j] = 0.0f;
  double res_a[kTile] = {}, nrm_a[kTile] = {}, res_b[kTile] = {}, nrm_b[kTile] = {};
  // Each pass converts its coordinates of both sides, then multiplies.
  auto pack_a = [&](idx_t t0, idx_t kw) {
    const idx_t kc = std::min(kKcI16, d - t0), kp = 2 * kw;
    for (idx_t r = 0; r < m; ++r)
      quantize_i16(a + r * lda + t0, cen + t0, kc, kp, qs_a[r], qa + r * kp, res_a[r], nrm_a[r]);
    return reinterpret_cast<const int32_t*>(qa);
  };
  auto pack_b = [&](idx_t t0, idx_t kw) {
    const idx_t kc = std::min(kKcI16, d - t0), kp = 2 * kw;
    for (idx_t p = 0; p < (n + 7) / 8; ++p) {
      for (idx_t q = 0; q < 8; ++q) {
        const idx_t j = p * 8 + q;
        if (j < n)
          quantize_i16(b + j * ldb + t0, cen + t0, kc, kp, qs_b[j], qrows + q * kp, res_b[j],
                       nrm_b[j]);
      }
      // The 8 rows' coordinate pairs as 32-bit words, panel-major like the float32 GEMM's.
      pack_panels8(reinterpret_cast<const float*>(qrows), kw, std::min<idx_t>(8, n - p * 8), 0, kw,
                   panels + p * kw * 8);
    }
    return reinterpret_cast<const int32_t*>(panels);
  };
  product_i16<false>(pack_a, pack_b, m, n, d, tile, sa, sb);
  KappaMax ka, kb;
  for (idx_t r = 0; r < m; ++r) ka.add(res_a[r], nrm_a[r], d);
  for (idx_t j = 0; j < n; ++j) kb.add(res_b[j], nrm_b[j], d);
  ka2 = ka.k2;
  kb2 = kb.k2;
  return true;
}

// Words of pass t0 of an image, panel p: the passes' blocks one after another, each of
// `panels` panels of kw(pass) x 8 words (every pass but the last has kKcI16 / 2 words a row).
inline int32_t* image_pass(const I16Image& img, idx_t t0, idx_t kw, idx_t p) {
  return img.words + 8 * (img.panels * (t0 / 2) + p * kw);
}

USL_AVX2_TARGET bool gemm_tile_avx2i16_image(const I16Image& ia, idx_t i0, idx_t m,
                                             const I16Image& ib, idx_t j0, idx_t n, idx_t d,
                                             float* tile, double& ka2, double& kb2) {
  ka2 = ia.k2[i0 / kTile];
  kb2 = ib.k2[j0 / kTile];
  if (ka2 < 0.0 || kb2 < 0.0) return false;
  auto pa = [&](idx_t t0, idx_t kw) { return image_pass(ia, t0, kw, i0 / 8); };
  auto pb = [&](idx_t t0, idx_t kw) { return image_pass(ib, t0, kw, j0 / 8); };
  product_i16<true>(pa, pb, m, n, d, tile, ia.inv.data() + i0, ib.inv.data() + j0);
  return true;
}

namespace {
// Row tile T of the image: each panel's rows scaled, quantized pass by pass (the per-tile
// kernel's roundings and sums in the same order: the same words and kappas) and packed.
USL_AVX2_TARGET void image_tile(const View& x, const float* cen, idx_t T, I16Image& img) {
  const idx_t d = x.cols, r0 = T * kTile, r1 = std::min(x.rows, r0 + kTile);
  alignas(32) int16_t qrows[8 * kKcI16];
  KappaMax km;
  for (idx_t p = r0 / 8; p < (r1 + 7) / 8; ++p) {
    const idx_t rows = std::min<idx_t>(8, r1 - p * 8);
    float qs[8];
    double res[8] = {}, nrm[8] = {};
    for (idx_t q = 0; q < rows; ++q) {
      const int k = i16_shift(x.row(p * 8 + q), cen, d);
      if (k > kI16MaxShift || k < -kI16MaxShift) {
        img.k2[T] = -1.0;  // the tile runs in float32 (gemm_tile_images)
        return;
      }
      qs[q] = std::ldexp(1.0f, k);
      img.inv[p * 8 + q] = std::ldexp(1.0f, -k);
    }
    for (idx_t t0 = 0; t0 < d; t0 += kKcI16) {
      const idx_t kc = std::min(kKcI16, d - t0), kw = (kc + 1) / 2, kp = 2 * kw;
      for (idx_t q = 0; q < rows; ++q)
        quantize_i16(x.row(p * 8 + q) + t0, cen + t0, kc, kp, qs[q], qrows + q * kp, res[q],
                     nrm[q]);
      pack_panels8(reinterpret_cast<const float*>(qrows), kw, rows, 0, kw,
                   reinterpret_cast<float*>(image_pass(img, t0, kw, p)));
    }
    for (idx_t q = 0; q < rows; ++q) km.add(res[q], nrm[q], d);
  }
  img.k2[T] = km.k2;
}
}  // namespace
#endif  // USL_FAST_X86

void build_i16_image(const View& x, const float* center, I16Image& img, const Context& ctx) {
#ifdef USL_FAST_X86
  const idx_t n = x.rows, d = x.cols, T = num_tiles(n);
  require(d <= kI16MaxCols, "build_i16_image: columns");
  img.rows = n;
  img.panels = (n + 7) / 8;
  const size_t words = static_cast<size_t>(img.panels) * 8 * ((d + 1) / 2);
  img.store.reset(words + 8);
  const uintptr_t at = reinterpret_cast<uintptr_t>(img.store.data());
  img.words = img.store.data() + ((32 - at % 32) % 32) / sizeof(int32_t);  // aligned loads
  img.inv.reset(static_cast<size_t>(img.panels) * 8 + 16);
  img.inv.fill(0.0f);
  img.k2.reset(T);
  Guard guard;
#pragma omp parallel for num_threads(ctx.threads) schedule(dynamic, 1)
  for (idx_t t = 0; t < T; ++t) guard.run([&] { image_tile(x, center, t, img); });
  guard.rethrow();
#else
  (void)x, (void)center, (void)img, (void)ctx;
  require(false, "build_i16_image: no AVX2 kernels in this build");
#endif
}

}  // namespace cpu
}  // namespace usl_fast
