// Internal to the CPU back end: the per-ISA tile GEMM kernels that gemm_tile (gemm.cpp)
// dispatches to, one file each (gemm_avx512.cpp, gemm_amx.cpp, gemm_lowp.cpp, gemm_avx2.cpp),
// and what they share. A new kernel adds its declaration here, a kGemm* constant (tile.hpp),
// and a branch in gemm_kind and gemm_tile.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.hpp"

namespace usl_fast {
namespace cpu {

// The rel of a low-precision tile (AMX and AVX-512 bf16, AVX-512 and AVX2 int16) from the
// measured roundings of its rows and columns (gemm.cpp; docs/engine.md, "AMX").
float lowp_rel(double ka2, double kb2, idx_t d);

// Largest kappa^2 bound over rows, kappa = ||x - x'|| / ||x|| for a row x and its
// low-precision image x': the ratio of the float32 sums of squares that the converters
// accumulate (res2, norm2), with a relative margin of (4 d + 8) 2^-24 for their roundings;
// 1 (always valid: each coordinate of x' is a rounding of x's or 0) when the ratio is not
// usable.
struct KappaMax {
  double k2 = 0.0;
  void add(double res2, double norm2, idx_t d) {
    double v = 0.0;
    if (res2 > 0.0)
      v = norm2 > 0.0 ? std::min(1.0, res2 / norm2 * (1.0 + (4.0 * d + 8.0) * 0x1p-24)) : 1.0;
    if (!(v >= 0.0)) v = 1.0;
    k2 = std::max(k2, v);
  }
};

#ifdef USL_FAST_X86
// In-register transpose of 16 rows of 16 floats (or any 32-bit words); column c goes to
// out[16 c .. 16 c + 15] for c < ncols.
__attribute__((target("avx512f"))) inline void transpose16(const __m512* r, float* out,
                                                           int ncols) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4 g + j], 128-bit lane L: rows 4 g .. 4 g + 3 of coordinate 4 L + j.
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), e = _mm512_castps_pd(t[4 * g + 3]);
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 x01 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);
    const __m512 y01 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);
    const __m512 x23 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
    const __m512 y23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
    const __m512 o[4] = {_mm512_shuffle_f32x4(x01, y01, 0x88), _mm512_shuffle_f32x4(x01, y01, 0xDD),
                         _mm512_shuffle_f32x4(x23, y23, 0x88), _mm512_shuffle_f32x4(x23, y23, 0xDD)};
    for (int L = 0; L < 4; ++L)
      if (4 * L + j < ncols) _mm512_storeu_ps(out + (4 * L + j) * 16, o[L]);
  }
}

// C = A B^T into the tile (ld ldc), float32 FMA; n <= kTile (gemm_avx512.cpp, gemm_avx2.cpp).
void gemm_nt_avx2(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                  idx_t d, float* c, idx_t ldc);
// int16 products of the (centred) rows with exact int32 sums; kappa^2 bounds of the rows and
// columns out. False (tile not written) where a row's scale is out of range or d too large:
// the caller then runs float32 (gemm_avx2.cpp).
bool gemm_tile_avx2i16(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                       idx_t d, const float* center, float* tile, double& ka2, double& kb2);
// The same from the rows' images (tile.hpp, I16Image): row tile i0 / kTile of ia against
// j0 / kTile of ib, the same bits and kappas; false where either tile has a row out of range.
bool gemm_tile_avx2i16_image(const I16Image& ia, idx_t i0, idx_t m, const I16Image& ib, idx_t j0,
                             idx_t n, idx_t d, float* tile, double& ka2, double& kb2);
void gemm_nt_avx512(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                    idx_t d, float* c, idx_t ldc);

#ifdef USL_FAST_LOWP
// Coordinates per packed pass of the low-precision GEMMs: A (256 x 512 16-bit words) and B
// stay in L2, two 16-column panels of B (32 KiB) in L1.
constexpr idx_t kKcLowp = 512;

// A LowpImage row's 16-bit words over all passes (each pass's coordinates rounded up to 32)
// and the number of passes, at d coordinates.
struct LowpShape {
  idx_t words = 0, passes = 0;
};
inline LowpShape lowp_shape(idx_t d) {
  LowpShape s;
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp, ++s.passes)
    s.words += (std::min(kKcLowp, d - t0) + 31) / 32 * 32;
  return s;
}

// The 16-bit operands of one pass, per thread (gemm_lowp.cpp): A rows (256 x kp), B as
// panels of 16 columns of coordinate pairs (256 x kp), 16 B rows before their transpose.
struct LowpBuffers {
  std::vector<uint16_t> a, b, rows;
  std::vector<float> zero;  // the center when there is none
  void reserve(idx_t kp, idx_t d);
};
LowpBuffers& lowp_buffers();

// Row converters (gemm_lowp.cpp): one row's coordinates [0, kc) of x - c as 16-bit words in
// out[0, kp) (zero padded); add this pass's ||x - x'||^2 and ||x||^2 (true units) to res2
// and norm2. to_bf16: round to nearest even bf16, subnormals to 0. to_i16: the integer image
// q of x 2^e, e the power of two in `scale_exp` chosen so that ||q|| < 2^15 (x' = q 2^-e),
// one e per row and pass. (The AVX2 int16 kernel quantizes with quant_i16.hpp instead: one
// scale per whole row; the two are separate, both rigorous, not yet unified.)
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void to_bf16(
    const float* x, const float* c, idx_t kc, idx_t kp, uint16_t* out, double& res2,
    double& norm2);
__attribute__((target("avx512f,avx512bw,avx512vl"))) void to_i16(const float* x, const float* c,
                                                                 idx_t kc, idx_t kp, uint16_t* out,
                                                                 double& res2, double& norm2,
                                                                 int& scale_exp);

// One pass [t0, t0 + kc) of a tile's rows: A rows into buf.a (m rows of kp words, zeros to
// the next multiple of 16 rows), B rows transposed into buf.b as panels of 16 columns whose
// 32-bit words are coordinate pairs: word (16 p + q) of panel jb holds coordinates 2 p and
// 2 p + 1 of column 16 jb + q (zeros past n). That is the layout AMX's B tiles, vdpbf16ps and
// vpdpwssd read. `i16`: int16 images (their exponents into ea, eb), else bf16.
void pack_lowp_pass(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                    const float* cen, idx_t t0, idx_t kc, idx_t kp, bool i16, double* res_a,
                    double* nrm_a, double* res_b, double* nrm_b, int* ea, int* eb);

// Whether the CPU and the OS run AVX512-BF16 / AVX512-VNNI on zmm registers (gemm_lowp.cpp).
bool avx512bf16_supported();
bool avx512vnni_supported();
// The zmm bf16 (vdpbf16ps) and int16 (vpdpwssd) tile products of the (centred) rows;
// kappa^2 bounds of the rows and columns out (gemm_lowp.cpp).
void gemm_tile_bf16(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                    idx_t d, const float* center, float* tile, double& ka2, double& kb2);
void gemm_tile_i16(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                   idx_t d, const float* center, float* tile, double& ka2, double& kb2);
// gemm_tile_bf16 (gemm_tile_i16 for int16 images) of row tile i0 / kTile of ia against
// j0 / kTile of ib (tile.hpp, LowpImage): the same products in the same order, the same
// kappas.
void gemm_tile_lowp_image(const LowpImage& ia, idx_t i0, idx_t m, const LowpImage& ib, idx_t j0,
                          idx_t n, idx_t d, float* tile, double& ka2, double& kb2);
#endif  // USL_FAST_LOWP

#ifdef USL_FAST_AMX
// Whether the CPU and the OS let this process run AMX bf16 (gemm_amx.cpp).
bool amx_supported();
// bf16 products of the (centred) rows; kappa^2 bounds of the rows and columns out
// (gemm_amx.cpp).
void gemm_tile_amx(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                   idx_t d, const float* center, float* tile, double& ka2, double& kb2);
#endif  // USL_FAST_AMX
#endif  // USL_FAST_X86

}  // namespace cpu
}  // namespace usl_fast
