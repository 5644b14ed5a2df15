// The tile GEMM dispatcher: which kernel fills the tiles (gemm_kind), the one call into BLAS,
// the filter's norms and centring (filter_norms) and the per-thread tile. The SIMD kernels
// live one per file behind gemm.hpp (gemm_avx512.cpp, gemm_amx.cpp, gemm_lowp.cpp); which
// runs is chosen once, at run time.
#include <cblas.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "gemm.hpp"

namespace usl_fast {
namespace cpu {

// ----------------------------------------------------------------------------- BLAS
namespace {
// Every caller already runs inside its own OpenMP thread on a private tile, so OpenBLAS's
// own thread pool would only compete with ours.
struct BlasSingleThread {
  BlasSingleThread() { scipy_openblas_set_num_threads(1); }
};
const BlasSingleThread blas_single_thread_once;
}  // namespace

// Which GEMM fills the tiles: AMX where the CPU and OS have it; else, on the AVX-512 path,
// the AVX-512 bf16 kernel where the CPU has AVX512-BF16, else the AVX-512 int16 one where it
// has AVX512-VNNI, else the engine's own float32 AVX-512 kernel (the order measured on the
// self kNN graph, whole pass, extra exact evaluations included: docs/engine.md); on the AVX2
// path the AVX2 int16 filter (its float32 kernel below kI16MinCols coordinates); else
// OpenBLAS. USL_FAST_GEMM=amx|avx512bf16|avx512vnni|avx512|avx2i16|avx2|blas narrows it
// (tests compare all of them bit for bit; benchmarks compare their speed); an AVX-512 16-bit
// GEMM the CPU cannot run falls back to the float32 AVX-512 kernel, and a kernel the path
// cannot run (any AVX-512 one on the AVX2 path, anything but blas on the portable one) gives
// that path's default.
int gemm_kind() {
  static const int kind = [] {
#ifdef USL_FAST_X86
    const char* env = std::getenv("USL_FAST_GEMM");
    const std::string want = env ? env : "";
    const int isa = active_isa();
    if (isa == 0 || want == "blas") return kGemmBlas;
    // Both AVX2 kernels need only AVX2 and FMA, which either SIMD path implies.
    if (want == "avx2") return kGemmAvx2;
    if (want == "avx2i16") return kGemmAvx2I16;
    if (isa == 1) return kGemmAvx2I16;
    if (want == "avx512") return kGemmAvx512;
#ifdef USL_FAST_LOWP
    if (want == "avx512bf16") return avx512bf16_supported() ? kGemmBf16 : kGemmAvx512;
    if (want == "avx512vnni") return avx512vnni_supported() ? kGemmI16 : kGemmAvx512;
#endif
#ifdef USL_FAST_AMX
    if (amx_supported()) return kGemmAmx;
    if (want == "amx") return kGemmAvx512;
#endif
#ifdef USL_FAST_LOWP
    if (avx512bf16_supported()) return kGemmBf16;
    if (avx512vnni_supported()) return kGemmI16;
#endif
    return kGemmAvx512;
#else
    return kGemmBlas;
#endif
  }();
  return kind;
}

bool gemm_centred(idx_t d) {
  const int kind = gemm_kind();
  return kind == kGemmAmx || kind == kGemmBf16 || kind == kGemmI16 ||
         (kind == kGemmAvx2I16 && avx2i16_cols(d));
}

// The tile's rel for the 16-bit products (docs/engine.md, "AMX", "AVX-512 without AMX" and
// "AVX2: the filter in int16"): the float32 bound scaled by (1 + kA)(1 + kB), plus the
// rounding measured on the worst row and column, plus 2^-21 for the float32 centring (a - c,
// b - c each within u of exact, so the centred squared distance is within (4 u + 10 u^2) s
// of the true one). The same for AMX, vdpbf16ps, vpdpwssd and vpmaddwd: each adds exact
// products with at most d float32 roundings an entry (the int16 ones: none but the
// int32-to-float32 conversion and, for vpdpwssd, the passes' sums) and flushes at most 2 d
// smallest normals (filter_abs).
float lowp_rel(double ka2, double kb2, idx_t d) {
  const double ka = std::sqrt(ka2), kb = std::sqrt(kb2);
  const double rel = static_cast<double>(filter_rel(d)) * (1.0 + ka) * (1.0 + kb) +
                     (ka + kb + ka * kb) * (1.0 + 0x1p-20) + 0x1p-21;
  return round_up(rel);
}

#ifdef USL_FAST_X86
namespace {
// A 16-bit tile whose measured rounding made its bound useless, redone in float32 on the
// same centred rows (so its norms and the 2^-21 centring term still apply), with the
// float32 kernel of the same SIMD path.
using GemmNt = void (*)(const float*, idx_t, idx_t, const float*, idx_t, idx_t, idx_t, float*,
                        idx_t);
float redo_float32_centred(GemmNt gemm, const float* a, idx_t lda, idx_t m, const float* b,
                           idx_t ldb, idx_t n, idx_t d, const float* center, float* tile) {
  Buffer<float> ca(static_cast<size_t>(m) * d), cb(static_cast<size_t>(n) * d);
  for (idx_t r = 0; r < m; ++r)
    for (idx_t t = 0; t < d; ++t) ca[r * d + t] = a[r * lda + t] - (center ? center[t] : 0.0f);
  for (idx_t j = 0; j < n; ++j)
    for (idx_t t = 0; t < d; ++t) cb[j * d + t] = b[j * ldb + t] - (center ? center[t] : 0.0f);
  gemm(ca.data(), d, m, cb.data(), d, n, d, tile, kTile);
  return round_up(static_cast<double>(filter_rel(d)) + 0x1p-21);
}
}  // namespace
#endif

float gemm_tile(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n, idx_t d,
                const float* center, float* tile) {
  require(m >= 1 && m <= kTile && n >= 1 && n <= kTile && d >= 1, "gemm_tile: tile shape");
  require(!center || gemm_centred(d), "gemm_tile: a center only for the 16-bit GEMMs");
#ifdef USL_FAST_X86
  const int kind = gemm_kind();
#ifdef USL_FAST_LOWP
  if (kind == kGemmAmx || kind == kGemmBf16 || kind == kGemmI16) {
    double ka2 = 0.0, kb2 = 0.0;
#ifdef USL_FAST_AMX
    if (kind == kGemmAmx) gemm_tile_amx(a, lda, m, b, ldb, n, d, center, tile, ka2, kb2);
#endif
    if (kind == kGemmBf16) gemm_tile_bf16(a, lda, m, b, ldb, n, d, center, tile, ka2, kb2);
    if (kind == kGemmI16) gemm_tile_i16(a, lda, m, b, ldb, n, d, center, tile, ka2, kb2);
    // A row that bf16 represents worse than its nominal 2^-8 has (near-)subnormal
    // coordinates that bf16 flushes (int16: a row whose few large coordinates leave the
    // others below its resolution, or a very long pass); its kappa (up to 1) would make the
    // whole tile's bound useless, so this tile is redone in float32, on the same centred rows.
    if (ka2 <= 0x1p-15 && kb2 <= 0x1p-15) return lowp_rel(ka2, kb2, d);
    return redo_float32_centred(gemm_nt_avx512, a, lda, m, b, ldb, n, d, center, tile);
  }
#endif  // USL_FAST_LOWP
  if (kind == kGemmAvx2I16 && avx2i16_cols(d)) {
    double ka2 = 0.0, kb2 = 0.0;
    // The same fallback as AMX's: a row the int16 image represents badly (centred squared
    // norm below ~2^-93, or d past kI16MaxCols) would make the tile's bound useless.
    if (gemm_tile_avx2i16(a, lda, m, b, ldb, n, d, center, tile, ka2, kb2) && ka2 <= 0x1p-15 &&
        kb2 <= 0x1p-15)
      return lowp_rel(ka2, kb2, d);
    return redo_float32_centred(gemm_nt_avx2, a, lda, m, b, ldb, n, d, center, tile);
  }
  if (kind == kGemmAvx2 || kind == kGemmAvx2I16) {
    gemm_nt_avx2(a, lda, m, b, ldb, n, d, tile, kTile);
    return filter_rel(d);
  }
  if (kind == kGemmAvx512) {
    gemm_nt_avx512(a, lda, m, b, ldb, n, d, tile, kTile);
    return filter_rel(d);
  }
#endif
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                    static_cast<blasint>(n), static_cast<blasint>(d), 1.0f, a,
                    static_cast<blasint>(lda), b, static_cast<blasint>(ldb), 0.0f, tile,
                    static_cast<blasint>(kTile));
  return filter_rel(d);
}

namespace {
// Whole tiles of both images only: they keep one kappa bound per tile.
void require_image_tiles(idx_t m, idx_t i0, idx_t rows_a, idx_t n, idx_t j0, idx_t rows_b,
                         idx_t d) {
  require(m >= 1 && n >= 1 && i0 % kTile == 0 && j0 % kTile == 0 && i0 < rows_a &&
              j0 < rows_b && m == std::min(kTile, rows_a - i0) &&
              n == std::min(kTile, rows_b - j0) && filter_images(d),
          "gemm_tile_images: tile shape");
}
}  // namespace

float gemm_tile_images(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                       idx_t d, const float* center, const I16Image& ia, idx_t i0,
                       const I16Image& ib, idx_t j0, float* tile) {
  require_image_tiles(m, i0, ia.rows, n, j0, ib.rows, d);
#ifdef USL_FAST_X86
  double ka2 = 0.0, kb2 = 0.0;
  // The same test and fallback as gemm_tile's int16 branch, on the same measured kappas.
  if (gemm_tile_avx2i16_image(ia, i0, m, ib, j0, n, d, tile, ka2, kb2) && ka2 <= 0x1p-15 &&
      kb2 <= 0x1p-15)
    return lowp_rel(ka2, kb2, d);
  return redo_float32_centred(gemm_nt_avx2, a, lda, m, b, ldb, n, d, center, tile);
#else
  (void)a, (void)lda, (void)b, (void)ldb, (void)center, (void)tile;
  return 0.0f;  // unreachable: filter_images is false without the AVX2 kernels
#endif
}

float gemm_tile_images(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n,
                       idx_t d, const float* center, const LowpImage& ia, idx_t i0,
                       const LowpImage& ib, idx_t j0, float* tile) {
  require_image_tiles(m, i0, ia.rows, n, j0, ib.rows, d);
#ifdef USL_FAST_LOWP
  double ka2 = 0.0, kb2 = 0.0;
  gemm_tile_lowp_image(ia, i0, m, ib, j0, n, d, tile, ka2, kb2);
  // The same test and fallback as gemm_tile's 16-bit branch, on the same measured kappas.
  if (ka2 <= 0x1p-15 && kb2 <= 0x1p-15) return lowp_rel(ka2, kb2, d);
  return redo_float32_centred(gemm_nt_avx512, a, lda, m, b, ldb, n, d, center, tile);
#else
  (void)a, (void)lda, (void)b, (void)ldb, (void)center, (void)tile, (void)ia, (void)ib;
  return 0.0f;  // unreachable: filter_images is false without the bf16 kernel
#endif
}

bool filter_images(idx_t d) {
  const int kind = gemm_kind();
  return (kind == kGemmAvx2I16 && avx2i16_cols(d)) ||
         ((kind == kGemmBf16 || kind == kGemmI16) && d >= 1);
}

double filter_image_bytes(idx_t rows, idx_t d) {
  if (!filter_images(d) || rows == 0) return 0.0;
#ifdef USL_FAST_LOWP
  const int kind = gemm_kind();
  if (kind == kGemmBf16 || kind == kGemmI16) {
    // build_lowp_image's buffers: the words of 16-row panels and their alignment, k2, and
    // for int16 a float32 exponent a row and pass
    const LowpShape shape = lowp_shape(d);
    const double slots = 16.0 * static_cast<double>((rows + 15) / 16);
    return 2.0 * (slots * static_cast<double>(shape.words) + 32.0) +
           (kind == kGemmI16 ? 4.0 * slots * static_cast<double>(shape.passes) : 0.0) +
           8.0 * static_cast<double>(num_tiles(rows));
  }
#endif
  const double slots = 8.0 * static_cast<double>((rows + 7) / 8);
  return 4.0 * (slots * static_cast<double>((d + 1) / 2) + 8.0)  // words, alignment
         + 4.0 * (slots + 16.0)                                  // inv
         + 8.0 * static_cast<double>(num_tiles(rows));           // k2
}

FilterNorms filter_norms(const View& x, const float* xn, const View& y, const float* yn,
                         bool same, const Context& ctx, bool images) {
  FilterNorms f;
  f.xn = xn;
  f.yn = yn;
  if (!gemm_centred(y.cols) || y.rows == 0) return f;
  const idx_t d = y.cols;
  // The column set's mean, summed in float64 in row order (any common point would do).
  std::vector<double> sum(d, 0.0);
  for (idx_t j = 0; j < y.rows; ++j)
    for (idx_t t = 0; t < d; ++t) sum[t] += y.row(j)[t];
  f.center.resize(d);
  for (idx_t t = 0; t < d; ++t) f.center[t] = static_cast<float>(sum[t] / static_cast<double>(y.rows));
  auto centred = [&](const View& v, Buffer<float>& out) {
    out.reset(v.rows);
    row_distances(v, f.center.data(), out.data(), ctx);
  };
  centred(x, f.xc);
  f.xn = f.xc.data();
  if (same) {
    f.yn = f.xn;
  } else {
    centred(y, f.yc);
    f.yn = f.yc.data();
  }
  if (images && filter_images(d) && x.rows > 0) {
    const int kind = gemm_kind();
    f.lowp = kind == kGemmBf16 || kind == kGemmI16;
    if (f.lowp) {
      build_lowp_image(x, f.center.data(), kind == kGemmI16, f.xl, ctx);
      if (!same) build_lowp_image(y, f.center.data(), kind == kGemmI16, f.yl, ctx);
    } else {
      build_i16_image(x, f.center.data(), f.xi, ctx);
      if (!same) build_i16_image(y, f.center.data(), f.yi, ctx);
    }
    f.images = true;
    f.same = same;
  }
  return f;
}

float* thread_tile() {
  // Allocated once per OpenMP thread (OpenMP keeps its pool between regions): a fresh
  // 256 KiB buffer per call costs page faults on every k-means iteration.
  thread_local std::unique_ptr<float[]> tile;
  if (!tile) tile.reset(new float[static_cast<size_t>(kTile) * kTile]);
  return tile.get();
}

}  // namespace cpu
}  // namespace usl_fast
