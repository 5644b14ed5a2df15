// The 16-bit filter GEMMs of AVX-512 CPUs without AMX (AMD Zen 4, Intel Cooper Lake; Ice
// Lake and Cascade Lake have VNNI only), and the conversion they share with AMX (gemm_amx.cpp):
// - gemm_tile_bf16: vdpbf16ps (AVX512-BF16), pairs of bf16 products added to float32 lanes;
// - gemm_tile_i16: vpdpwssd (AVX512-VNNI), pairs of int16 products added EXACTLY to int32
//   lanes, the rows scaled by powers of two.
// Both convert each tile's rows while measuring every row's rounding kappa, and return the
// same rigorous bound as AMX (lowp_rel, docs/engine.md "AMX" and "AVX-512 without AMX").
// Compiled only for x86-64, outside USL_FAST_ISA=portable builds, with a compiler that has
// the intrinsics (simd.hpp).
#include <cmath>
#include <cstring>

#include "gemm.hpp"

namespace usl_fast {
namespace cpu {

#ifdef USL_FAST_LOWP
#define USL_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define USL_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define USL_Z_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))

void LowpBuffers::reserve(idx_t kp, idx_t d) {
  if (a.size() < static_cast<size_t>(kTile * kp)) {
    a.resize(kTile * kp);
    b.resize(kTile * kp);
    rows.resize(16 * kp);
  }
  if (zero.size() < static_cast<size_t>(d)) zero.assign(d, 0.0f);
}

LowpBuffers& lowp_buffers() {
  thread_local LowpBuffers buf;
  return buf;
}

namespace {
inline __mmask16 first_mask(idx_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}
}  // namespace

// The residual and norm sums are float32 (fast), good to a relative (d + 1) 2^-24 plus one
// smallest normal a term when squares underflow (KappaMax adds both); a pass whose norm is
// tiny (< 2^-60) is summed again in float64 from the bf16 values just written, so tiny and
// all-zero rows get their true ratio.
USL_BF16_TARGET void to_bf16(const float* x, const float* c, idx_t kc, idx_t kp, uint16_t* out,
                             double& res2, double& norm2) {
  __m512 r2 = _mm512_setzero_ps(), n2 = _mm512_setzero_ps();
  const __m256i expo = _mm256_set1_epi16(0x7F80);
  for (idx_t t = 0; t < kc; t += 16) {
    const __mmask16 m = first_mask(kc - t);
    const __m512 v =
        _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_maskz_loadu_ps(m, c + t));
    __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
    h = _mm256_maskz_mov_epi16(_mm256_test_epi16_mask(h, expo), h);  // subnormal -> 0
    const __m512 back = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    const __m512 e = _mm512_sub_ps(v, back);
    r2 = _mm512_add_ps(r2, _mm512_mul_ps(e, e));
    n2 = _mm512_add_ps(n2, _mm512_mul_ps(v, v));
    _mm256_mask_storeu_epi16(out + t, m, h);
  }
  for (idx_t t = kc; t < kp; ++t) out[t] = 0;
  const float fn2 = _mm512_reduce_add_ps(n2);
  if (fn2 >= 0x1p-60f) {
    res2 += static_cast<double>(_mm512_reduce_add_ps(r2)) + static_cast<double>(kc) * 0x1p-125;
    norm2 += fn2;
    return;
  }
  double rs = 0.0, ns = 0.0;
  for (idx_t t = 0; t < kc; ++t) {
    const uint32_t bits = static_cast<uint32_t>(out[t]) << 16;
    float back;
    std::memcpy(&back, &bits, sizeof back);
    const float v = x[t] - c[t];  // the same float32 subtraction as above
    const double e = static_cast<double>(v) - static_cast<double>(back);
    rs += e * e;
    ns += static_cast<double>(v) * static_cast<double>(v);
  }
  res2 += rs;
  norm2 += ns;
}

// The int16 image of one row's pass: q = round(x 2^e) (nearest even), e chosen so that
// ||q|| < 2^15: then every |q_t| < 2^15 fits int16 and every partial sum of a q_a . q_b is
// below 2^30 (Cauchy-Schwarz), so vpdpwssd's int32 sums are exact. The scale is a power of
// two so that z = x 2^e is exact (bar underflow, below), z - q is exact in float32
// (|z - q| <= 1/2 and z, q share z's binade or q = 0), and the epilogue's 2^-(ea + eb) is
// exact too; it costs at most one bit against a free scale. e is found in two steps so that
// nothing under- or overflows: e0 puts the largest |x_t| in [2^14, 2^15), then e1 <= 0
// brings sqrt(S) (1 + 2^-12), S the float32 sum of squares at e0 (relative error below
// kc 2^-24 <= 2^-15 for kc <= 512), down to 2^15 - 64 or less; with rounding
// ||q|| <= 2^15 - 64 + sqrt(512) / 2 < 2^15 - 1.
// kappa is measured in the scaled space (the ratio is scale-free): the float32 sums of
// (z - q)^2 and z^2, plus one smallest normal a term for squares that underflow and, for
// coordinates that x 2^e takes below float32's normal range (rows with huge dynamic range),
// a 2^-126 a coordinate of z's own rounding, through the triangle inequality.
USL_Z_TARGET void to_i16(const float* x, const float* c, idx_t kc, idx_t kp, uint16_t* out,
                         double& res2, double& norm2, int& scale_exp) {
  __m512 mx = _mm512_setzero_ps();
  for (idx_t t = 0; t < kc; t += 16) {
    const __mmask16 m = first_mask(kc - t);
    const __m512 v =
        _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_maskz_loadu_ps(m, c + t));
    mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
  }
  const float big = _mm512_reduce_max_ps(mx);
  if (!(big > 0.0f)) {  // an all-zero pass: q = 0, exact
    std::memset(out, 0, sizeof(uint16_t) * kp);
    scale_exp = 0;
    return;
  }
  const int e0 = 14 - std::ilogb(big);
  __m512 s2 = _mm512_setzero_ps();
  const __m512 f0 = _mm512_set1_ps(static_cast<float>(e0));
  for (idx_t t = 0; t < kc; t += 16) {
    const __mmask16 m = first_mask(kc - t);
    const __m512 v =
        _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_maskz_loadu_ps(m, c + t));
    const __m512 z = _mm512_scalef_ps(v, f0);
    s2 = _mm512_fmadd_ps(z, z, s2);
  }
  double nz = std::sqrt(static_cast<double>(_mm512_reduce_add_ps(s2))) * (1.0 + 0x1p-12);
  int e = e0;
  while (nz > 32704.0) {
    nz *= 0.5;
    --e;
  }
  const __m512 fe = _mm512_set1_ps(static_cast<float>(e));
  __m512 r2 = _mm512_setzero_ps(), n2 = _mm512_setzero_ps();
  for (idx_t t = 0; t < kc; t += 16) {
    const __mmask16 m = first_mask(kc - t);
    const __m512 v =
        _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_maskz_loadu_ps(m, c + t));
    const __m512 z = _mm512_scalef_ps(v, fe);
    const __m512i q =
        _mm512_cvt_roundps_epi32(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 err = _mm512_sub_ps(z, _mm512_cvtepi32_ps(q));
    r2 = _mm512_add_ps(r2, _mm512_mul_ps(err, err));
    n2 = _mm512_add_ps(n2, _mm512_mul_ps(z, z));
    _mm256_mask_storeu_epi16(out + t, m, _mm512_cvtepi32_epi16(q));
  }
  for (idx_t t = kc; t < kp; ++t) out[t] = 0;
  const double under = static_cast<double>(kc) * 0x1p-125;
  const double r = std::sqrt(static_cast<double>(_mm512_reduce_add_ps(r2)) + under) +
                   std::sqrt(static_cast<double>(kc)) * 0x1p-126;
  res2 += std::ldexp(r * r * (1.0 + 0x1p-50), -2 * e);
  norm2 += std::ldexp(static_cast<double>(_mm512_reduce_add_ps(n2)), -2 * e);
  scale_exp = e;
}

namespace {
// 16 rows x 16 32-bit words, transposed: a panel of 16 columns of coordinate pairs.
USL_Z_TARGET inline void transpose16_words(const uint16_t* in, idx_t ld, uint16_t* out) {
  __m512 r[16];
  for (int q = 0; q < 16; ++q) r[q] = _mm512_loadu_ps(reinterpret_cast<const float*>(in + q * ld));
  transpose16(r, reinterpret_cast<float*>(out), 16);
}
}  // namespace

USL_Z_TARGET void pack_lowp_pass(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb,
                                 idx_t n, const float* cen, idx_t t0, idx_t kc, idx_t kp, bool i16,
                                 double* res_a, double* nrm_a, double* res_b, double* nrm_b,
                                 int* ea, int* eb) {
  LowpBuffers& buf = lowp_buffers();
  const idx_t mb = (m + 15) / 16, nb = (n + 15) / 16;
  uint16_t* ab = buf.a.data();
  for (idx_t r = 0; r < m; ++r) {
    if (i16)
      to_i16(a + r * lda + t0, cen + t0, kc, kp, ab + r * kp, res_a[r], nrm_a[r], ea[r]);
    else
      to_bf16(a + r * lda + t0, cen + t0, kc, kp, ab + r * kp, res_a[r], nrm_a[r]);
  }
  std::memset(ab + m * kp, 0, sizeof(uint16_t) * (mb * 16 - m) * kp);
  uint16_t* bt = buf.b.data();
  uint16_t* rows = buf.rows.data();
  for (idx_t jb = 0; jb < nb; ++jb) {
    for (idx_t q = 0; q < 16; ++q) {
      const idx_t j = jb * 16 + q;
      if (j >= n) {
        std::memset(rows + q * kp, 0, sizeof(uint16_t) * kp);
      } else if (i16) {
        to_i16(b + j * ldb + t0, cen + t0, kc, kp, rows + q * kp, res_b[j], nrm_b[j], eb[j]);
      } else {
        to_bf16(b + j * ldb + t0, cen + t0, kc, kp, rows + q * kp, res_b[j], nrm_b[j]);
      }
    }
    for (idx_t kk = 0; kk < kp / 32; ++kk)
      transpose16_words(rows + kk * 32, kp, bt + (jb * (kp / 32) + kk) * 512);
  }
}

bool avx512bf16_supported() {
  // CPUID.(7,1):EAX bit 5 AVX512-BF16; the AVX-512 state (XCR0 opmask and zmm bits) is
  // what __builtin_cpu_supports checks for avx512f/bw/vl.
  unsigned a, b, c, d;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl"))
    return false;
  // Subleaf 1 exists only where leaf 7's subleaf 0 says so (EAX = the highest subleaf).
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || a < 1) return false;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1);
}

bool avx512vnni_supported() {
  // CPUID.(7,0):ECX bit 11 AVX512-VNNI.
  unsigned a, b, c, d;
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl"))
    return false;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((c >> 11) & 1);
}

namespace {

// C[8 x 16 NP] (+)= A[8 x kp] B^T over np pairs of coordinates: 8 NP accumulators, one
// 32-bit broadcast (a coordinate pair) of A per row and pair, one load per panel and pair.
// Panels are 16 kp words apart. Rows and columns past m and n are zeros' products and land
// inside the tile (its rows and columns rounded up to 16). A's rows are kp words apart (the
// per-tile buffer) or, with Panel, 8 rows of one of B's panels (an image: rows 1 word apart,
// pairs 16 words apart).
template <int NP, bool Panel = false>
USL_BF16_TARGET inline void bf16_micro(const uint16_t* a, idx_t kp, const uint16_t* bp, float* c,
                                       bool accumulate) {
  const idx_t ra = Panel ? 2 : kp, ta = Panel ? 32 : 2;
  __m512 acc[8][NP];
  for (int r = 0; r < 8; ++r)
    for (int p = 0; p < NP; ++p)
      acc[r][p] = accumulate ? _mm512_loadu_ps(c + r * kTile + 16 * p) : _mm512_setzero_ps();
  for (idx_t t = 0; t < kp / 2; ++t) {
    __m512bh bv[NP];
    for (int p = 0; p < NP; ++p)
      bv[p] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(bp + p * 16 * kp + 32 * t));
    for (int r = 0; r < 8; ++r) {
      int32_t w;
      std::memcpy(&w, a + r * ra + ta * t, sizeof w);
      const __m512bh av = reinterpret_cast<__m512bh>(_mm512_set1_epi32(w));
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], av, bv[p]);
    }
  }
  for (int r = 0; r < 8; ++r)
    for (int p = 0; p < NP; ++p) _mm512_storeu_ps(c + r * kTile + 16 * p, acc[r][p]);
}

// The same with int16 pairs and exact int32 sums; the epilogue converts each sum to float32
// (nearest even, whatever MXCSR says) and scales it by 2^-(ea + eb), exact bar underflow
// (nea, neb: the rows' and columns' -ea, -eb as float32).
template <int NP, bool Panel = false>
USL_VNNI_TARGET inline void i16_micro(const uint16_t* a, idx_t kp, const uint16_t* bp, float* c,
                                      const float* nea, const float* neb, bool accumulate) {
  const idx_t ra = Panel ? 2 : kp, ta = Panel ? 32 : 2;
  __m512i acc[8][NP];
  for (int r = 0; r < 8; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_si512();
  for (idx_t t = 0; t < kp / 2; ++t) {
    __m512i bv[NP];
    for (int p = 0; p < NP; ++p) bv[p] = _mm512_loadu_si512(bp + p * 16 * kp + 32 * t);
    for (int r = 0; r < 8; ++r) {
      int32_t w;
      std::memcpy(&w, a + r * ra + ta * t, sizeof w);
      const __m512i av = _mm512_set1_epi32(w);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_dpwssd_epi32(acc[r][p], av, bv[p]);
    }
  }
  for (int r = 0; r < 8; ++r) {
    const __m512 er = _mm512_set1_ps(nea[r]);
    for (int p = 0; p < NP; ++p) {
      const __m512 f =
          _mm512_cvt_roundepi32_ps(acc[r][p], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m512 v = _mm512_scalef_ps(f, _mm512_add_ps(er, _mm512_loadu_ps(neb + 16 * p)));
      float* cp = c + r * kTile + 16 * p;
      if (accumulate) v = _mm512_add_ps(v, _mm512_loadu_ps(cp));
      _mm512_storeu_ps(cp, v);
    }
  }
}

}  // namespace

// The tile (ld kTile) gets rows [0, round16(m)) x columns [0, round16(n)); rows and columns
// past m and n hold zeros' products. Passes of kKcLowp coordinates; within one, two panels
// of B (32 KiB) stay in L1 while all of A's rows stream past them from L2.
USL_BF16_TARGET void gemm_tile_bf16(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb,
                                    idx_t n, idx_t d, const float* center, float* tile,
                                    double& ka2, double& kb2) {
  LowpBuffers& buf = lowp_buffers();
  buf.reserve((std::min(d, kKcLowp) + 31) / 32 * 32, d);
  const float* cen = center ? center : buf.zero.data();
  const idx_t mr = (m + 15) / 16 * 16, nb = (n + 15) / 16;
  double res_a[kTile] = {}, nrm_a[kTile] = {}, res_b[kTile] = {}, nrm_b[kTile] = {};
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    pack_lowp_pass(a, lda, m, b, ldb, n, cen, t0, kc, kp, false, res_a, nrm_a, res_b, nrm_b,
                   nullptr, nullptr);
    const uint16_t* ab = buf.a.data();
    const uint16_t* bt = buf.b.data();
    for (idx_t jb = 0; jb < nb; jb += 2)
      for (idx_t i = 0; i < mr; i += 8) {
        float* c = tile + i * kTile + jb * 16;
        if (jb + 1 < nb)
          bf16_micro<2>(ab + i * kp, kp, bt + jb * 16 * kp, c, t0 > 0);
        else
          bf16_micro<1>(ab + i * kp, kp, bt + jb * 16 * kp, c, t0 > 0);
      }
  }
  KappaMax ka, kb;
  for (idx_t r = 0; r < m; ++r) ka.add(res_a[r], nrm_a[r], d);
  for (idx_t j = 0; j < n; ++j) kb.add(res_b[j], nrm_b[j], d);
  ka2 = ka.k2;
  kb2 = kb.k2;
}

// The passes' blocks of an image one after another (every pass but the last kKcLowp wide).
inline uint16_t* lowp_pass(const LowpImage& img, idx_t t0, idx_t kp, idx_t panel) {
  return img.words + 16 * (img.panels * t0 + panel * kp);
}

namespace {
USL_BF16_TARGET void bf16_image_product(const LowpImage& ia, idx_t i0, idx_t m,
                                        const LowpImage& ib, idx_t j0, idx_t n, idx_t d,
                                        float* tile) {
  const idx_t mr = (m + 15) / 16 * 16, nb = (n + 15) / 16;
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    const uint16_t* ab = lowp_pass(ia, t0, kp, i0 / 16);
    const uint16_t* bt = lowp_pass(ib, t0, kp, j0 / 16);
    for (idx_t jb = 0; jb < nb; jb += 2)
      for (idx_t i = 0; i < mr; i += 8) {
        const uint16_t* a = ab + (i / 16) * 16 * kp + 2 * (i % 16);
        float* c = tile + i * kTile + jb * 16;
        if (jb + 1 < nb)
          bf16_micro<2, true>(a, kp, bt + jb * 16 * kp, c, t0 > 0);
        else
          bf16_micro<1, true>(a, kp, bt + jb * 16 * kp, c, t0 > 0);
      }
  }
}

USL_VNNI_TARGET void i16_image_product(const LowpImage& ia, idx_t i0, idx_t m,
                                       const LowpImage& ib, idx_t j0, idx_t n, idx_t d,
                                       float* tile) {
  const idx_t mr = (m + 15) / 16 * 16, nb = (n + 15) / 16;
  idx_t pass = 0;
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp, ++pass) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    const uint16_t* ab = lowp_pass(ia, t0, kp, i0 / 16);
    const uint16_t* bt = lowp_pass(ib, t0, kp, j0 / 16);
    const float* nea = ia.nexp.data() + pass * ia.panels * 16 + i0;
    const float* neb = ib.nexp.data() + pass * ib.panels * 16 + j0;
    for (idx_t jb = 0; jb < nb; jb += 2)
      for (idx_t i = 0; i < mr; i += 8) {
        const uint16_t* a = ab + (i / 16) * 16 * kp + 2 * (i % 16);
        float* c = tile + i * kTile + jb * 16;
        if (jb + 1 < nb)
          i16_micro<2, true>(a, kp, bt + jb * 16 * kp, c, nea + i, neb + jb * 16, t0 > 0);
        else
          i16_micro<1, true>(a, kp, bt + jb * 16 * kp, c, nea + i, neb + jb * 16, t0 > 0);
      }
  }
}

// Row tile T of the image: its panels' rows converted pass by pass by to_bf16 / to_i16 (the
// per-tile kernel's roundings and sums in the same order: the same words, exponents and
// kappas), transposed into panels as pack_lowp_pass does B's.
USL_Z_TARGET void lowp_image_tile(const View& x, const float* cen, idx_t T, LowpImage& img) {
  const idx_t d = x.cols, r0 = T * kTile, r1 = std::min(x.rows, r0 + kTile);
  alignas(64) uint16_t rows[16 * kKcLowp];
  double res[kTile] = {}, nrm[kTile] = {};
  idx_t pass = 0;
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp, ++pass) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    float* nexp = img.i16 ? img.nexp.data() + pass * img.panels * 16 : nullptr;
    for (idx_t p = r0 / 16; p < (r1 + 15) / 16; ++p) {
      for (idx_t q = 0; q < 16; ++q) {
        const idx_t r = p * 16 + q;
        int e = 0;
        if (r >= r1)
          std::memset(rows + q * kp, 0, sizeof(uint16_t) * kp);
        else if (img.i16)
          to_i16(x.row(r) + t0, cen + t0, kc, kp, rows + q * kp, res[r - r0], nrm[r - r0], e);
        else
          to_bf16(x.row(r) + t0, cen + t0, kc, kp, rows + q * kp, res[r - r0], nrm[r - r0]);
        if (nexp) nexp[r] = static_cast<float>(-e);
      }
      uint16_t* out = lowp_pass(img, t0, kp, p);
      for (idx_t kk = 0; kk < kp / 32; ++kk) transpose16_words(rows + kk * 32, kp, out + kk * 512);
    }
  }
  KappaMax km;
  for (idx_t r = r0; r < r1; ++r) km.add(res[r - r0], nrm[r - r0], d);
  img.k2[T] = km.k2;
}
}  // namespace

void gemm_tile_lowp_image(const LowpImage& ia, idx_t i0, idx_t m, const LowpImage& ib, idx_t j0,
                          idx_t n, idx_t d, float* tile, double& ka2, double& kb2) {
  if (ia.i16)
    i16_image_product(ia, i0, m, ib, j0, n, d, tile);
  else
    bf16_image_product(ia, i0, m, ib, j0, n, d, tile);
  ka2 = ia.k2[i0 / kTile];
  kb2 = ib.k2[j0 / kTile];
}

void build_lowp_image(const View& x, const float* center, bool i16, LowpImage& img,
                      const Context& ctx) {
  const idx_t n = x.rows, d = x.cols, T = num_tiles(n);
  require(i16 ? avx512vnni_supported() : avx512bf16_supported(),
          "build_lowp_image: no AVX512-BF16 / VNNI on this CPU");
  const LowpShape shape = lowp_shape(d);
  img.rows = n;
  img.panels = (n + 15) / 16;
  img.i16 = i16;
  img.store.reset(static_cast<size_t>(img.panels) * 16 * shape.words + 32);
  const uintptr_t at = reinterpret_cast<uintptr_t>(img.store.data());
  img.words = img.store.data() + ((64 - at % 64) % 64) / sizeof(uint16_t);  // aligned loads
  if (i16) {
    img.nexp.reset(static_cast<size_t>(img.panels) * 16 * shape.passes);
    img.nexp.fill(0.0f);  // rows past n: exponent 0, as the per-tile kernel's padding
  }
  img.k2.reset(T);
  Guard guard;
#pragma omp parallel for num_threads(ctx.threads) schedule(dynamic, 1)
  for (idx_t t = 0; t < T; ++t) guard.run([&] { lowp_image_tile(x, center, t, img); });
  guard.rethrow();
}

USL_VNNI_TARGET void gemm_tile_i16(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb,
                                   idx_t n, idx_t d, const float* center, float* tile,
                                   double& ka2, double& kb2) {
  LowpBuffers& buf = lowp_buffers();
  buf.reserve((std::min(d, kKcLowp) + 31) / 32 * 32, d);
  const float* cen = center ? center : buf.zero.data();
  const idx_t mr = (m + 15) / 16 * 16, nb = (n + 15) / 16;
  double res_a[kTile] = {}, nrm_a[kTile] = {}, res_b[kTile] = {}, nrm_b[kTile] = {};
  int ea[kTile] = {}, eb[kTile] = {};
  alignas(64) float nea[kTile] = {}, neb[kTile] = {};
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    pack_lowp_pass(a, lda, m, b, ldb, n, cen, t0, kc, kp, true, res_a, nrm_a, res_b, nrm_b, ea,
                   eb);
    for (idx_t r = 0; r < m; ++r) nea[r] = static_cast<float>(-ea[r]);
    for (idx_t j = 0; j < n; ++j) neb[j] = static_cast<float>(-eb[j]);
    const uint16_t* ab = buf.a.data();
    const uint16_t* bt = buf.b.data();
    for (idx_t jb = 0; jb < nb; jb += 2)
      for (idx_t i = 0; i < mr; i += 8) {
        float* c = tile + i * kTile + jb * 16;
        if (jb + 1 < nb)
          i16_micro<2>(ab + i * kp, kp, bt + jb * 16 * kp, c, nea + i, neb + jb * 16, t0 > 0);
        else
          i16_micro<1>(ab + i * kp, kp, bt + jb * 16 * kp, c, nea + i, neb + jb * 16, t0 > 0);
      }
  }
  KappaMax ka, kb;
  for (idx_t r = 0; r < m; ++r) ka.add(res_a[r], nrm_a[r], d);
  for (idx_t j = 0; j < n; ++j) kb.add(res_b[j], nrm_b[j], d);
  ka2 = ka.k2;
  kb2 = kb.k2;
}

#else
void build_lowp_image(const View&, const float*, bool, LowpImage&, const Context&) {
  require(false, "build_lowp_image: no AVX-512 16-bit kernels in this build");
}
#endif  // USL_FAST_LOWP

}  // namespace cpu
}  // namespace usl_fast
