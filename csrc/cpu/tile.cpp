// CPU back-end primitives under the tile driver: the one call into BLAS, per-thread tiles,
// the allocation budget, SIMD versions of the exact kernel (bit-identical to l2.hpp) and
// the top-k filter scan. SIMD code is compiled only where the compiler targets x86-64 and
// the build is not USL_FAST_ISA=portable; which path runs is chosen once, at run time.
#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tile.hpp"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(USL_FAST_PORTABLE)
#define USL_FAST_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
// AMX intrinsics need GCC 11 / clang 12 or newer; older compilers build without the AMX GEMM.
#if (defined(__clang__) && __clang_major__ >= 12) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define USL_FAST_AMX 1
#endif
#endif

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

#ifdef USL_FAST_X86
// ----------------------------------------------------------------------------- AVX-512 tile GEMM
// The tile products are small (at most 256 x 256 x d) and there are n^2 / 2^17 of them, so
// what OpenBLAS spends around its kernel on each call (packing both operands, zeroing C
// for beta = 0) is a large share: measured 35 % of its kernel time at 256 x 256 x 128.
// This kernel packs only B, reads A in place (one broadcast per row and coordinate), and
// writes C once: 1.13-1.23 x OpenBLAS's speed on the engine's tile shapes (d = 7 .. 512),
// 0.97 x at d = 2,048. Any float32 evaluation order satisfies the filter bound (l2.hpp), so
// which GEMM runs never changes a result, only the time.
namespace {

constexpr idx_t kKc = 256;  // coordinates per packed pass (B panels of 32 x kKc stay in L1)

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

// Rows b[0, n), coordinates [t0, t0 + kc) as panels of 16 rows, coordinate-major:
// out[p kc 16 + 16 t + q] = b[(16 p + q) ldb + t0 + t], zeros for rows >= n.
__attribute__((target("avx512f"))) void pack_panels(const float* b, idx_t ldb, idx_t n, idx_t t0,
                                                    idx_t kc, float* out) {
  for (idx_t p = 0; p < (n + 15) / 16; ++p) {
    float* po = out + p * kc * 16;
    for (idx_t t = 0; t < kc; t += 16) {
      const int nc = static_cast<int>(std::min<idx_t>(16, kc - t));
      const __mmask16 cm = static_cast<__mmask16>((1u << nc) - 1);
      __m512 r[16];
      for (int q = 0; q < 16; ++q) {
        const idx_t row = p * 16 + q;
        r[q] = row < n ? _mm512_maskz_loadu_ps(cm, b + row * ldb + t0 + t) : _mm512_setzero_ps();
      }
      transpose16(r, po + t * 16, nc);
    }
  }
}

// C[MR x 16 NP] (+)= A[MR x kc] B^T for NP packed panels: 2 NP accumulators per row, one
// broadcast of A per row and coordinate. `last`: the valid columns of the last panel.
template <int MR, int NP>
__attribute__((target("avx512f"))) inline void gemm_micro(const float* a, idx_t lda,
                                                          const float* bp, idx_t kc, float* c,
                                                          idx_t ldc, __mmask16 last,
                                                          bool accumulate) {
  __m512 acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_setzero_ps();
  const float* ar[MR];
  for (int r = 0; r < MR; ++r) ar[r] = a + r * lda;
  for (idx_t t = 0; t < kc; ++t) {
    __m512 bv[NP];
    for (int p = 0; p < NP; ++p) bv[p] = _mm512_load_ps(bp + p * kc * 16 + t * 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(ar[r][t]);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(av, bv[p], acc[r][p]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) {
      const __mmask16 mask = p == NP - 1 ? last : static_cast<__mmask16>(0xFFFF);
      float* cp = c + r * ldc + p * 16;
      __m512 v = acc[r][p];
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, cp));
      _mm512_mask_storeu_ps(cp, mask, v);
    }
}

template <int NP>
__attribute__((target("avx512f"))) void gemm_rows(const float* a, idx_t lda, idx_t m,
                                                  const float* bp, idx_t kc, float* c, idx_t ldc,
                                                  __mmask16 last, bool accumulate) {
  idx_t i = 0;
  for (; i + 8 <= m; i += 8) gemm_micro<8, NP>(a + i * lda, lda, bp, kc, c + i * ldc, ldc, last, accumulate);
  const float* ai = a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 7: return gemm_micro<7, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 6: return gemm_micro<6, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 5: return gemm_micro<5, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 4: return gemm_micro<4, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 3: return gemm_micro<3, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 2: return gemm_micro<2, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    case 1: return gemm_micro<1, NP>(ai, lda, bp, kc, ci, ldc, last, accumulate);
    default: return;
  }
}

float* thread_panels() {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<float, Free> panels;
  if (!panels) {
    panels.reset(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kTile * kKc)));
    if (!panels) throw std::bad_alloc();
  }
  return panels.get();
}

// n <= kTile. Columns 32 at a time (two panels, in L1), all rows of A for each.
__attribute__((target("avx512f"))) void gemm_nt_avx512(const float* a, idx_t lda, idx_t m,
                                                       const float* b, idx_t ldb, idx_t n,
                                                       idx_t d, float* c, idx_t ldc) {
  float* panels = thread_panels();
  for (idx_t t0 = 0; t0 < d; t0 += kKc) {
    const idx_t kc = std::min(kKc, d - t0);
    pack_panels(b, ldb, n, t0, kc, panels);
    for (idx_t j = 0; j < n; j += 32) {
      const idx_t w = std::min<idx_t>(32, n - j);
      const float* bp = panels + (j / 16) * kc * 16;
      if (w > 16)
        gemm_rows<2>(a + t0, lda, m, bp, kc, c + j, ldc,
                     static_cast<__mmask16>((1u << (w - 16)) - 1), t0 > 0);
      else
        gemm_rows<1>(a + t0, lda, m, bp, kc, c + j, ldc, static_cast<__mmask16>((1u << w) - 1),
                     t0 > 0);
    }
  }
}

}  // namespace

#ifdef USL_FAST_AMX
// ----------------------------------------------------------------------------- AMX bf16 filter GEMM
// On CPUs with AMX (Sapphire Rapids and later) the tile products run as bfloat16 tile
// multiplies with float32 accumulation, at several times the float32 FMA rate of a core. A
// bfloat16 keeps 8 significant bits, so the products are far from float32 accuracy; the
// filter stays rigorous because each side's rounding is MEASURED while it is converted:
// for a row a and its bf16 image a', kappa(a) = ||a - a'|| / ||a|| (<= 2^-8, ~2^-9.5 on
// typical data), and
//     |a'.b' - a.b| <= (kappa_a + kappa_b + kappa_a kappa_b) ||a|| ||b||
// (Cauchy-Schwarz on a.(b' - b) + (a' - a).b + (a' - a).(b' - b)); the float32
// accumulation of the exact bf16 products adds the usual gamma_d sum|a'_t b'_t|. The tile
// gets the relative bound of its worst row and worst column (amx_rel below). bf16
// subnormals are zeroed by the conversion itself (so the hardware's denormals-are-zero
// changes nothing the residual did not see); products and sums that underflow are flushed
// by AMX, at most 2 d smallest-normals per inner product, inside filter_abs.
namespace {

#define USL_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

struct alignas(64) AmxConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

bool amx_supported() {
  // CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE; CPUID.(7,1):EAX bit 5 AVX512-BF16.
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 22) & 1) || !((d >> 24) & 1)) return false;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1)) return false;
  if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) return false;
  // Linux hands out the AMX register state per process, on request (ARCH_REQ_XCOMP_PERM
  // for XFEATURE_XTILEDATA); refused (old kernel, a VM without it): no AMX.
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

// Coordinates per packed pass: A (256 x 512 bf16) and B stay in L2.
constexpr idx_t kKcAmx = 512;

// One row's coordinates [0, kc) as bf16 in out[0, kp) (zero padded); adds this pass's
// ||x - x'||^2 and ||x||^2 to res2 and norm2. They are summed in float32 (fast), which is
// good to a relative (d + 1) 2^-24 plus one smallest normal a term when squares underflow
// (KappaMax adds both); a pass whose norm is tiny (< 2^-60) is summed again in float64
// from the bf16 values just written, so tiny and all-zero rows get their true ratio.
USL_AMX_TARGET inline void to_bf16(const float* x, const float* c, idx_t kc, idx_t kp, uint16_t* out,
                                   double& res2, double& norm2) {
  __m512 r2 = _mm512_setzero_ps(), n2 = _mm512_setzero_ps();
  const __m256i expo = _mm256_set1_epi16(0x7F80);
  for (idx_t t = 0; t < kc; t += 16) {
    const idx_t left = kc - t;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                   : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 v = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + t), _mm512_maskz_loadu_ps(m, c + t));
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

// Largest kappa^2 bound over rows: the ratio of the sums above, with a relative margin of
// (4 d + 8) 2^-24 for their roundings; 1 (always valid: each coordinate of x' is a rounding
// of x's or 0) when the ratio is not usable.
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

// 16 rows x 16 32-bit words, transposed: the VNNI layout of a B tile is the transpose of
// 16 rows of coordinate PAIRS.
USL_AMX_TARGET inline void transpose16_words(const uint16_t* in, idx_t ld, uint16_t* out) {
  __m512 r[16];
  for (int q = 0; q < 16; ++q) r[q] = _mm512_loadu_ps(reinterpret_cast<const float*>(in + q * ld));
  transpose16(r, reinterpret_cast<float*>(out), 16);
}

struct AmxBuffers {
  std::vector<uint16_t> a, b, rows;  // A rows (mp x kp), B tiles, 16 B rows (16 x kp)
  std::vector<float> zero;           // the center when there is none
};

// Palette 1, tiles 0-7 all 16 rows x 64 bytes. A constant object: GCC's _tile_loadconfig
// tells the compiler it reads only 8 bytes of it, so a local filled just before the call
// could legally be left unwritten.
alignas(64) const AmxConfig kAmxConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

AmxBuffers& amx_buffers() {
  thread_local AmxBuffers buf;
  return buf;
}

// C tiles 0..3, A tiles 4, 5, B tiles 6, 7: a 32 x 32 block of the tile per call.
USL_AMX_TARGET inline void amx_block22(const uint16_t* a0, idx_t kp, const uint16_t* b0, float* c,
                                       bool acc) {
  const idx_t sa = kp * 2, sc = kTile * 4;
  const uint16_t* a1 = a0 + 16 * kp;
  const uint16_t* b1 = b0 + 16 * kp;
  if (acc) {
    _tile_loadd(0, c, sc);
    _tile_loadd(1, c + 16, sc);
    _tile_loadd(2, c + 16 * kTile, sc);
    _tile_loadd(3, c + 16 * kTile + 16, sc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (idx_t kk = 0; kk < kp / 32; ++kk) {
    _tile_loadd(4, a0 + kk * 32, sa);
    _tile_loadd(5, a1 + kk * 32, sa);
    _tile_loadd(6, b0 + kk * 512, 64);
    _tile_loadd(7, b1 + kk * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, sc);
  _tile_stored(1, c + 16, sc);
  _tile_stored(2, c + 16 * kTile, sc);
  _tile_stored(3, c + 16 * kTile + 16, sc);
}

USL_AMX_TARGET inline void amx_block11(const uint16_t* a0, idx_t kp, const uint16_t* b0, float* c,
                                       bool acc) {
  if (acc)
    _tile_loadd(0, c, kTile * 4);
  else
    _tile_zero(0);
  for (idx_t kk = 0; kk < kp / 32; ++kk) {
    _tile_loadd(4, a0 + kk * 32, kp * 2);
    _tile_loadd(6, b0 + kk * 512, 64);
    _tile_dpbf16ps(0, 4, 6);
  }
  _tile_stored(0, c, kTile * 4);
}

// The tile (ld kTile) gets rows [0, round16(m)) x columns [0, round16(n)); rows and columns
// past m and n hold zeros' products. Returns kappa^2 bounds of the rows and the columns.
USL_AMX_TARGET void gemm_tile_amx(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb,
                                  idx_t n, idx_t d, const float* center, float* tile, double& ka2,
                                  double& kb2) {
  AmxBuffers& buf = amx_buffers();
  // The tile configuration is loaded on every call and released at the end: tile state is
  // not preserved across calls (x86-64 ABI), and other code on this thread (oneDNN, a BLAS)
  // may configure the tiles differently or release them.
  const idx_t kpmax = (std::min(d, kKcAmx) + 31) / 32 * 32;
  const idx_t mb = (m + 15) / 16, nb = (n + 15) / 16;
  if (buf.a.size() < static_cast<size_t>(kTile * kpmax)) {
    buf.a.resize(kTile * kpmax);
    buf.b.resize(kTile * kpmax);
    buf.rows.resize(16 * kpmax);
  }
  if (buf.zero.size() < static_cast<size_t>(d)) buf.zero.assign(d, 0.0f);
  const float* cen = center ? center : buf.zero.data();
  _tile_loadconfig(&kAmxConfig);
  double res_a[kTile] = {}, nrm_a[kTile] = {}, res_b[kTile] = {}, nrm_b[kTile] = {};
  for (idx_t t0 = 0; t0 < d; t0 += kKcAmx) {
    const idx_t kc = std::min(kKcAmx, d - t0), kp = (kc + 31) / 32 * 32;
    uint16_t* ab = buf.a.data();
    for (idx_t r = 0; r < m; ++r)
      to_bf16(a + r * lda + t0, cen + t0, kc, kp, ab + r * kp, res_a[r], nrm_a[r]);
    std::memset(ab + m * kp, 0, sizeof(uint16_t) * (mb * 16 - m) * kp);
    uint16_t* bt = buf.b.data();
    uint16_t* rows = buf.rows.data();
    for (idx_t jb = 0; jb < nb; ++jb) {
      for (idx_t q = 0; q < 16; ++q) {
        const idx_t j = jb * 16 + q;
        if (j < n) {
          to_bf16(b + j * ldb + t0, cen + t0, kc, kp, rows + q * kp, res_b[j], nrm_b[j]);
        } else {
          std::memset(rows + q * kp, 0, sizeof(uint16_t) * kp);
        }
      }
      for (idx_t kk = 0; kk < kp / 32; ++kk)
        transpose16_words(rows + kk * 32, kp, bt + (jb * (kp / 32) + kk) * 512);
    }
    // GCC's tile loads and stores declare no memory operands: keep the packing stores
    // above the tile loads, and the tile stores above whatever reads the tile next.
    asm volatile("" ::: "memory");
    const bool acc = t0 > 0;
    for (idx_t jb = 0; jb < nb; jb += 2)
      for (idx_t ib = 0; ib < mb; ib += 2) {
        const uint16_t* a0 = ab + ib * 16 * kp;
        const uint16_t* b0 = bt + jb * 16 * kp;
        float* c = tile + ib * 16 * kTile + jb * 16;
        if (ib + 1 < mb && jb + 1 < nb) {
          amx_block22(a0, kp, b0, c, acc);
        } else {
          for (idx_t x = 0; x < 2 && ib + x < mb; ++x)
            for (idx_t y = 0; y < 2 && jb + y < nb; ++y)
              amx_block11(a0 + x * 16 * kp, kp, b0 + y * 16 * kp, c + x * 16 * kTile + y * 16, acc);
        }
      }
  }
  _tile_release();
  asm volatile("" ::: "memory");
  KappaMax ka, kb;
  for (idx_t r = 0; r < m; ++r) ka.add(res_a[r], nrm_a[r], d);
  for (idx_t j = 0; j < n; ++j) kb.add(res_b[j], nrm_b[j], d);
  ka2 = ka.k2;
  kb2 = kb.k2;
}

}  // namespace
#endif  // USL_FAST_AMX
#endif

// Which GEMM fills the tiles: AMX where the CPU and OS have it, else the engine's own
// AVX-512 kernel, else OpenBLAS. USL_FAST_GEMM=amx|avx512|blas narrows it (tests compare all
// three bit for bit; benchmarks compare their speed).
int gemm_kind() {
  static const int kind = [] {
#ifdef USL_FAST_X86
    const char* env = std::getenv("USL_FAST_GEMM");
    const std::string want = env ? env : "";
    if (active_isa() != 2 || want == "blas") return kGemmBlas;
    if (want == "avx512") return kGemmAvx512;
#ifdef USL_FAST_AMX
    return amx_supported() ? kGemmAmx : kGemmAvx512;
#else
    return kGemmAvx512;
#endif
#else
    return kGemmBlas;
#endif
  }();
  return kind;
}

// The tile's rel for the bf16 product (docs/engine.md, "AMX"): the float32 bound scaled by
// (1 + kA)(1 + kB), plus the bf16 rounding measured on the worst row and column, plus
// 2^-21 for the float32 centring (a - c, b - c each within u of exact, so the centred
// squared distance is within (4 u + 10 u^2) s of the true one).
float amx_rel(double ka2, double kb2, idx_t d) {
  const double ka = std::sqrt(ka2), kb = std::sqrt(kb2);
  const double rel = static_cast<double>(filter_rel(d)) * (1.0 + ka) * (1.0 + kb) +
                     (ka + kb + ka * kb) * (1.0 + 0x1p-20) + 0x1p-21;
  return round_up(rel);
}

float gemm_tile(const float* a, idx_t lda, idx_t m, const float* b, idx_t ldb, idx_t n, idx_t d,
                const float* center, float* tile) {
  require(m >= 1 && m <= kTile && n >= 1 && n <= kTile && d >= 1, "gemm_tile: tile shape");
  require(!center || gemm_kind() == kGemmAmx, "gemm_tile: a center only for the AMX GEMM");
#ifdef USL_FAST_X86
  const int kind = gemm_kind();
#ifdef USL_FAST_AMX
  if (kind == kGemmAmx) {
    double ka2 = 0.0, kb2 = 0.0;
    gemm_tile_amx(a, lda, m, b, ldb, n, d, center, tile, ka2, kb2);
    // A row that bf16 represents worse than its nominal 2^-8 has (near-)subnormal
    // coordinates that bf16 flushes; its kappa (up to 1) would make the whole tile's bound
    // useless, so this tile is redone in float32, on the same centred rows.
    if (ka2 <= 0x1p-15 && kb2 <= 0x1p-15) return amx_rel(ka2, kb2, d);
    Buffer<float> ca(static_cast<size_t>(m) * d), cb(static_cast<size_t>(n) * d);
    for (idx_t r = 0; r < m; ++r)
      for (idx_t t = 0; t < d; ++t) ca[r * d + t] = a[r * lda + t] - (center ? center[t] : 0.0f);
    for (idx_t j = 0; j < n; ++j)
      for (idx_t t = 0; t < d; ++t) cb[j * d + t] = b[j * ldb + t] - (center ? center[t] : 0.0f);
    gemm_nt_avx512(ca.data(), d, m, cb.data(), d, n, d, tile, kTile);
    return round_up(static_cast<double>(filter_rel(d)) + 0x1p-21);
  }
#endif
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

FilterNorms filter_norms(const View& x, const float* xn, const View& y, const float* yn,
                         bool same, const Context& ctx) {
  FilterNorms f;
  f.xn = xn;
  f.yn = yn;
  if (gemm_kind() != kGemmAmx || y.rows == 0) return f;
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
  return f;
}

float* thread_tile() {
  // Allocated once per OpenMP thread (OpenMP keeps its pool between regions): a fresh
  // 256 KiB buffer per call costs page faults on every k-means iteration.
  thread_local std::unique_ptr<float[]> tile;
  if (!tile) tile.reset(new float[static_cast<size_t>(kTile) * kTile]);
  return tile.get();
}

// ----------------------------------------------------------------------------- memory
namespace {
std::atomic<int64_t> g_limit{-1};
std::atomic<int64_t> g_used{0};
}  // namespace

void set_alloc_limit(int64_t bytes) {
  g_limit.store(bytes);
  g_used.store(0);
}

OutOfMemory::OutOfMemory(size_t bytes) {
  std::snprintf(msg_, sizeof msg_,
                "the engine could not allocate %.3g GiB (%zu bytes) more: the process is at "
                "the memory it may use (RAM, RLIMIT_AS or its cgroup's memory.max)",
                static_cast<double>(bytes) / 1073741824.0, bytes);
}

void* checked_alloc(size_t bytes) {
  const int64_t limit = g_limit.load(std::memory_order_relaxed);
  if (limit >= 0) {
    const int64_t now = g_used.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
    if (now > limit) {
      g_used.fetch_sub(static_cast<int64_t>(bytes));
      throw OutOfMemory(bytes);
    }
  }
  void* p = std::malloc(bytes ? bytes : 1);
  if (!p) {
    if (limit >= 0) g_used.fetch_sub(static_cast<int64_t>(bytes));
    throw OutOfMemory(bytes);
  }
  return p;
}

void checked_free(void* p, size_t bytes) noexcept {
  std::free(p);
  if (g_limit.load(std::memory_order_relaxed) >= 0) g_used.fetch_sub(static_cast<int64_t>(bytes));
}

// ----------------------------------------------------------------------------- ISA
int active_isa() {
  static const int isa = [] {
#ifdef USL_FAST_X86
    // The exact kernels use FMA (harmless: the square they add is exact), so both SIMD
    // paths need it too.
    const bool fma = __builtin_cpu_supports("fma");
    const bool avx512 = __builtin_cpu_supports("avx512f") && fma;
    const bool avx2 = __builtin_cpu_supports("avx2") && fma;
    const char* env = std::getenv("USL_FAST_ISA");
    const std::string want = env ? env : "";
    if (want == "portable" || want == "scalar") return 0;
    if (want == "avx2") return avx2 ? 1 : 0;
    return avx512 ? 2 : avx2 ? 1 : 0;
#else
    return 0;
#endif
  }();
  return isa;
}

// ----------------------------------------------------------------------------- exact
namespace {

#ifdef USL_FAST_X86
// Four pairs at once (a against b[0..3]): four independent add chains keep the FP units
// busy where one pair alone would wait on its adds' latency. The float32 differences of 16
// coordinates are split into two float64 halves, which go to lanes 0-7 in order, so lane l
// still sums t % 8 == l in ascending t.
__attribute__((target("avx512f,fma"))) void exact4_avx512(const float* a, const float* const* b,
                                                      idx_t d, float* out) {
  __m512d acc[4];
  for (int p = 0; p < 4; ++p) acc[p] = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 16 <= d; t += 16) {
    const __m512 va = _mm512_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m512 df = _mm512_sub_ps(va, _mm512_loadu_ps(b[p] + t));
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(df));
      const __m512d hi =
          _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(df), 1)));
      // lo * lo is exact in float64, so the fused multiply-add rounds like mul + add.
      acc[p] = _mm512_fmadd_pd(lo, lo, acc[p]);
      acc[p] = _mm512_fmadd_pd(hi, hi, acc[p]);
    }
  }
  if (t + 8 <= d) {
    const __m256 va = _mm256_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(va, _mm256_loadu_ps(b[p] + t)));
      acc[p] = _mm512_fmadd_pd(df, df, acc[p]);
    }
    t += 8;
  }
  for (int p = 0; p < 4; ++p) {
    alignas(64) double s[8];
    _mm512_store_pd(s, acc[p]);
    for (int l = 0; t + l < d; ++l) {
      const double df = static_cast<double>(a[t + l] - b[p][t + l]);
      s[l] += df * df;
    }
    out[p] = static_cast<float>(exact_lanes_combine(s));
  }
}

// One pair (the last n % 4 of a batch).
__attribute__((target("avx512f,fma"))) float exact1_avx512(const float* a, const float* b,
                                                           idx_t d) {
  __m512d acc = _mm512_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m512d df = _mm512_cvtps_pd(_mm256_sub_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t)));
    acc = _mm512_fmadd_pd(df, df, acc);
  }
  alignas(64) double s[8];
  _mm512_store_pd(s, acc);
  for (int l = 0; t + l < d; ++l) {
    const double df = static_cast<double>(a[t + l] - b[t + l]);
    s[l] += df * df;
  }
  return static_cast<float>(exact_lanes_combine(s));
}

__attribute__((target("avx2,fma"))) float exact1_avx2(const float* a, const float* b, idx_t d) {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 df = _mm256_sub_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t));
    const __m256d dl = _mm256_cvtps_pd(_mm256_castps256_ps128(df));
    const __m256d dh = _mm256_cvtps_pd(_mm256_extractf128_ps(df, 1));
    lo = _mm256_fmadd_pd(dl, dl, lo);
    hi = _mm256_fmadd_pd(dh, dh, hi);
  }
  alignas(32) double s[8];
  _mm256_store_pd(s, lo);
  _mm256_store_pd(s + 4, hi);
  for (int l = 0; t + l < d; ++l) {
    const double df = static_cast<double>(a[t + l] - b[t + l]);
    s[l] += df * df;
  }
  return static_cast<float>(exact_lanes_combine(s));
}

__attribute__((target("avx2,fma"))) void exact4_avx2(const float* a, const float* const* b, idx_t d,
                                                 float* out) {
  __m256d lo[4], hi[4];
  for (int p = 0; p < 4; ++p) lo[p] = hi[p] = _mm256_setzero_pd();
  idx_t t = 0;
  for (; t + 8 <= d; t += 8) {
    const __m256 va = _mm256_loadu_ps(a + t);
    for (int p = 0; p < 4; ++p) {
      const __m256 df = _mm256_sub_ps(va, _mm256_loadu_ps(b[p] + t));
      const __m256d dl = _mm256_cvtps_pd(_mm256_castps256_ps128(df));
      const __m256d dh = _mm256_cvtps_pd(_mm256_extractf128_ps(df, 1));
      lo[p] = _mm256_fmadd_pd(dl, dl, lo[p]);
      hi[p] = _mm256_fmadd_pd(dh, dh, hi[p]);
    }
  }
  for (int p = 0; p < 4; ++p) {
    alignas(32) double s[8];
    _mm256_store_pd(s, lo[p]);
    _mm256_store_pd(s + 4, hi[p]);
    for (int l = 0; t + l < d; ++l) {
      const double df = static_cast<double>(a[t + l] - b[p][t + l]);
      s[l] += df * df;
    }
    out[p] = static_cast<float>(exact_lanes_combine(s));
  }
}
#endif

// exact_l2 of a against n rows given by pointers: four at a time on SIMD paths, the
// portable header kernel otherwise (and for the last n % 4).
void exact_many(int isa, const float* a, const float* const* b, idx_t n, idx_t d, float* out) {
  idx_t t = 0;
#ifdef USL_FAST_X86
  if (isa == 2) {
    for (; t + 4 <= n; t += 4) exact4_avx512(a, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx512(a, b[t], d);
  } else if (isa == 1) {
    for (; t + 4 <= n; t += 4) exact4_avx2(a, b + t, d, out + t);
    for (; t < n; ++t) out[t] = exact1_avx2(a, b[t], d);
  }
#endif
  (void)isa;
  for (; t < n; ++t) out[t] = exact_l2(a, b[t], d);
}

}  // namespace

void exact_gather(const float* a, const View& base, const int32_t* idx, idx_t n, float* out) {
  const int isa = active_isa();
  const float* ptr[64];
  for (idx_t t0 = 0; t0 < n; t0 += 64) {
    const idx_t m = std::min<idx_t>(64, n - t0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = base.row(idx[t0 + t]);
    exact_many(isa, a, ptr, m, base.cols, out + t0);
  }
}

void exact_range(const float* a, const View& base, idx_t j0, idx_t n, float* out) {
  const int isa = active_isa();
  const float* ptr[64];
  for (idx_t t0 = 0; t0 < n; t0 += 64) {
    const idx_t m = std::min<idx_t>(64, n - t0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = base.row(j0 + t0 + t);
    exact_many(isa, a, ptr, m, base.cols, out + t0);
  }
}

namespace {

inline double power_term(float dv, bool far, double alpha, float horizon, bool mask_zero,
                         double far_term) {
  if (far || dv >= horizon || (mask_zero && dv == 0.0f)) return far_term;
  const double v = static_cast<double>(dv);
  if (alpha == 0.5) return 1.0 / std::sqrt(v);
  if (alpha == 1.0) return 1.0 / v;
  return std::pow(v, -alpha);
}

#ifdef USL_FAST_X86
__attribute__((target("avx512f"))) void power_terms_avx512(const float* dv, const uint8_t* far,
                                                           idx_t n, bool half, float horizon,
                                                           bool mask_zero, double far_term,
                                                           double* out) {
  const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
  const __m512d hz = _mm512_set1_pd(static_cast<double>(horizon)), ft = _mm512_set1_pd(far_term);
  for (idx_t c = 0; c < n; c += 8) {
    const idx_t left = n - c;
    const __mmask8 live = left >= 8 ? static_cast<__mmask8>(0xFF)
                                    : static_cast<__mmask8>((1u << left) - 1u);
    // masked-off lanes read 1.0: any finite positive value, discarded below
    const __m512d v = _mm512_cvtps_pd(_mm512_castps512_ps256(
        _mm512_mask_loadu_ps(_mm512_set1_ps(1.0f), static_cast<__mmask16>(live), dv + c)));
    uint64_t fb = 0;
    std::memcpy(&fb, far + c, static_cast<size_t>(left >= 8 ? 8 : left));
    __mmask8 m = _mm512_test_epi64_mask(_mm512_cvtepu8_epi64(_mm_cvtsi64_si128(static_cast<long long>(fb))),
                                        _mm512_set1_epi64(0xFF));
    m |= _mm512_cmp_pd_mask(v, hz, _CMP_GE_OQ);
    if (mask_zero) m |= _mm512_cmp_pd_mask(v, zero, _CMP_EQ_OQ);
    const __m512d t = _mm512_div_pd(one, half ? _mm512_sqrt_pd(v) : v);
    _mm512_mask_storeu_pd(out + c, live, _mm512_mask_blend_pd(m, t, ft));
  }
}
#endif

}  // namespace

void power_terms(const float* dv, const uint8_t* far, idx_t n, double alpha, float horizon,
                 bool mask_zero, double far_term, double* out) {
#ifdef USL_FAST_X86
  if (active_isa() == 2 && (alpha == 0.5 || alpha == 1.0))
    return power_terms_avx512(dv, far, n, alpha == 0.5, horizon, mask_zero, far_term, out);
#endif
  for (idx_t c = 0; c < n; ++c)
    out[c] = power_term(dv[c], far[c] != 0, alpha, horizon, mask_zero, far_term);
}

void row_norms(const View& x, float* out, const Context& ctx) {
  // exact_l2 against the zero vector: fl(0 - b_t) = -b_t, the same square.
  const std::vector<float> zero(static_cast<size_t>(x.cols), 0.0f);
  row_distances(x, zero.data(), out, ctx);
}

void row_distances(const View& x, const float* a, float* out, const Context& ctx) {
  const idx_t d = x.cols;
  const int isa = active_isa();
  const idx_t blocks = (x.rows + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(ctx.threads)
  for (idx_t b = 0; b < blocks; ++b) {
    const float* ptr[64];
    const idx_t i0 = b * 64, m = std::min<idx_t>(64, x.rows - i0);
    for (idx_t t = 0; t < m; ++t) ptr[t] = x.row(i0 + t);
    exact_many(isa, a, ptr, m, d, out + i0);
  }
}

// ----------------------------------------------------------------------------- top-k scan
namespace {

// Pairs of one tile row whose lower bound passed a threshold wait in `Pending` and are
// evaluated in batches (four pairs per SIMD call), then each is kept on every side whose
// threshold its exact value still passes. Thresholds seen while pairs wait are at most a
// few steps stale, which only adds evaluations, never changes the result.
struct Pending {
  static constexpr int kCap = 32;
  const float* ptr[kCap + 16];
  idx_t col[kCap + 16];
  float v[kCap + 16];
  int n = 0;
};

inline void flush(int isa, const Tile& t, idx_t r, TopK* rows, idx_t row_off, TopK* cols,
                  Pending& p) {
  if (!p.n) return;
  const idx_t i = t.i0 + r;
  exact_many(isa, t.rows.row(i), p.ptr, p.n, t.cols.cols, p.v);
  for (int u = 0; u < p.n; ++u) {
    const idx_t j = t.j0 + p.col[u];
    if (p.v[u] <= rows->thresholds()[row_off + r])
      rows->push(row_off + r, p.v[u], static_cast<int32_t>(j));
    if (cols && p.v[u] <= cols->thresholds()[j]) cols->push(j, p.v[u], static_cast<int32_t>(i));
  }
  p.n = 0;
}

inline void offer(int isa, const Tile& t, idx_t r, idx_t c, unsigned bits, TopK* rows,
                  idx_t row_off, TopK* cols, Pending& p) {
  while (bits) {
    const int b = __builtin_ctz(bits);
    bits &= bits - 1;
    p.col[p.n] = c + b;
    p.ptr[p.n++] = t.cols.row(t.j0 + c + b);
  }
  if (p.n >= Pending::kCap) flush(isa, t, r, rows, row_off, cols, p);
}

void scan_portable(const Tile& t, TopK* rows, idx_t row_off, TopK* cols, int isa,
                   idx_t c_begin, idx_t r_begin, idx_t r_end, Pending& p) {
  for (idx_t r = r_begin; r < r_end; ++r) {
    for (idx_t c = c_begin; c < t.nj; ++c) {
      const float l = t.lower(r, c);
      if (l <= rows->thresholds()[row_off + r] || (cols && l <= cols->thresholds()[t.j0 + c]))
        offer(isa, t, r, c, 1u, rows, row_off, cols, p);
    }
    flush(isa, t, r, rows, row_off, cols, p);
  }
}

#ifdef USL_FAST_X86
// 16 lanes a step: the same roundings as scan_portable, one compare against the row
// threshold and one against the 16 column thresholds; almost every step rejects all lanes.
// Lower bounds of 16 pairs of tile row r, columns c .. c + 15 (lanes in `live`): the same
// roundings as Tile::lower.
__attribute__((target("avx512f"))) inline __m512 lower16(const Tile& t, const float* ip, __m512 xn,
                                                        idx_t c, __mmask16 live) {
  const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
  const __m512 e =
      _mm512_sub_ps(s, _mm512_mul_ps(_mm512_set1_ps(2.0f), _mm512_maskz_loadu_ps(live, ip + c)));
  return _mm512_sub_ps(e, _mm512_mul_ps(_mm512_set1_ps(t.rel), s));
}

// Columns 64 at a time with one branch for all four groups of 16 (almost every step rejects
// every lane), then 16 at a time for the rest. A group offered after another in the same
// step used the row threshold from before that offer: a few extra evaluations at most.
template <bool kCols>
__attribute__((target("avx512f"))) void scan_avx512(const Tile& t, TopK* rows, idx_t row_off,
                                                    TopK* cols) {
  Pending p;
  float* const rthr = rows->thresholds() + row_off;
  const float* const cthr = kCols ? cols->thresholds() + t.j0 : nullptr;
  const __mmask16 all = static_cast<__mmask16>(0xFFFF);
  for (idx_t r = 0; r < t.mi; ++r) {
    const float* ip = t.ip + r * t.ldt;
    const __m512 xn = _mm512_set1_ps(t.rn[r]);
    __m512 tr = _mm512_set1_ps(rthr[r]);
    idx_t c = 0;
    for (; c + 64 <= t.nj; c += 64) {
      __mmask16 m[4];
      for (int g = 0; g < 4; ++g) {
        const __m512 l = lower16(t, ip, xn, c + 16 * g, all);
        m[g] = _mm512_cmp_ps_mask(l, tr, _CMP_LE_OQ);
        if (kCols) m[g] |= _mm512_cmp_ps_mask(l, _mm512_loadu_ps(cthr + c + 16 * g), _CMP_LE_OQ);
      }
      if (!(m[0] | m[1] | m[2] | m[3])) continue;
      for (int g = 0; g < 4; ++g)
        if (m[g]) offer(2, t, r, c + 16 * g, static_cast<unsigned>(m[g]), rows, row_off, cols, p);
      tr = _mm512_set1_ps(rthr[r]);
    }
    for (; c < t.nj; c += 16) {
      const idx_t left = t.nj - c;
      const __mmask16 live = left >= 16 ? all : static_cast<__mmask16>((1u << left) - 1u);
      const __m512 l = lower16(t, ip, xn, c, live);
      __mmask16 m = _mm512_mask_cmp_ps_mask(live, l, tr, _CMP_LE_OQ);
      if (kCols)
        m |= _mm512_mask_cmp_ps_mask(live, l, _mm512_maskz_loadu_ps(live, cthr + c), _CMP_LE_OQ);
      if (!m) continue;
      offer(2, t, r, c, static_cast<unsigned>(m), rows, row_off, cols, p);
      tr = _mm512_set1_ps(rthr[r]);
    }
    flush(2, t, r, rows, row_off, cols, p);
  }
}

__attribute__((target("avx2"))) void scan_avx2(const Tile& t, TopK* rows, idx_t row_off,
                                               TopK* cols) {
  Pending p;
  const __m256 two = _mm256_set1_ps(2.0f), rel = _mm256_set1_ps(t.rel);
  const idx_t nj8 = t.nj - t.nj % 8;
  for (idx_t r = 0; r < t.mi; ++r) {
    const float* ip = t.ip + r * t.ldt;
    const __m256 xn = _mm256_set1_ps(t.rn[r]);
    __m256 tr = _mm256_set1_ps(rows->thresholds()[row_off + r]);
    for (idx_t c = 0; c < nj8; c += 8) {
      const __m256 s = _mm256_add_ps(xn, _mm256_loadu_ps(t.cn + c));
      const __m256 e = _mm256_sub_ps(s, _mm256_mul_ps(two, _mm256_loadu_ps(ip + c)));
      const __m256 l = _mm256_sub_ps(e, _mm256_mul_ps(rel, s));
      unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(l, tr, _CMP_LE_OQ)));
      if (cols)
        bits |= static_cast<unsigned>(_mm256_movemask_ps(
            _mm256_cmp_ps(l, _mm256_loadu_ps(cols->thresholds() + t.j0 + c), _CMP_LE_OQ)));
      if (!bits) continue;
      offer(1, t, r, c, bits, rows, row_off, cols, p);
      tr = _mm256_set1_ps(rows->thresholds()[row_off + r]);
    }
    flush(1, t, r, rows, row_off, cols, p);
    if (nj8 < t.nj) scan_portable(t, rows, row_off, cols, 1, nj8, r, r + 1, p);
  }
}
#endif

}  // namespace

// ----------------------------------------------------------------------------- arg-min
namespace {

void argmin_portable(const Tile& t, idx_t r, float best, int32_t* out, idx_t& n) {
  const float* ip = t.ip + r * t.ldt;
  float U = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : U)
  for (idx_t c = 0; c < t.nj; ++c) {
    const float s = t.rn[r] + t.cn[c];
    const float u = (s - 2.0f * ip[c]) + t.rel * s;
    U = u < U ? u : U;
  }
  float thr = round_up(static_cast<double>(U) + 2.0 * t.abs);
  thr = best < thr ? best : thr;
  for (idx_t c = 0; c < t.nj; ++c)
    if (t.lower(r, c) <= thr) out[n++] = static_cast<int32_t>(t.j0 + c);
}

#ifdef USL_FAST_X86
__attribute__((target("avx512f"))) void argmin_avx512(const Tile& t, idx_t r, float best,
                                                      int32_t* out, idx_t& n) {
  const float* ip = t.ip + r * t.ldt;
  const __m512 two = _mm512_set1_ps(2.0f), rel = _mm512_set1_ps(t.rel);
  const __m512 xn = _mm512_set1_ps(t.rn[r]);
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 umin = inf;
  for (idx_t c = 0; c < t.nj; c += 16) {
    const idx_t left = t.nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
    const __m512 u = _mm512_add_ps(_mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, ip + c))),
                                   _mm512_mul_ps(rel, s));
    umin = _mm512_mask_min_ps(umin, live, umin, u);
  }
  float thr = round_up(static_cast<double>(_mm512_reduce_min_ps(umin)) + 2.0 * t.abs);
  thr = best < thr ? best : thr;
  const __m512 vt = _mm512_set1_ps(thr);
  for (idx_t c = 0; c < t.nj; c += 16) {
    const idx_t left = t.nj - c;
    const __mmask16 live = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 s = _mm512_add_ps(xn, _mm512_maskz_loadu_ps(live, t.cn + c));
    const __m512 l = _mm512_sub_ps(_mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_maskz_loadu_ps(live, ip + c))),
                                   _mm512_mul_ps(rel, s));
    unsigned bits = _mm512_mask_cmp_ps_mask(live, l, vt, _CMP_LE_OQ);
    while (bits) {
      const int b = __builtin_ctz(bits);
      bits &= bits - 1;
      out[n++] = static_cast<int32_t>(t.j0 + c + b);
    }
  }
}
#endif

}  // namespace

void argmin_candidates(const Tile& t, idx_t r, float best, int32_t* out, idx_t& n) {
#ifdef USL_FAST_X86
  if (active_isa() == 2) return argmin_avx512(t, r, best, out, n);
#endif
  argmin_portable(t, r, best, out, n);
}

// A row (or column) that has no threshold yet (+inf: nothing kept so far) starts from the
// k-th smallest filter UPPER bound among this tile's pairs: at least k candidates are
// surely within it, so it bounds the k-th exact distance. Without it, the first 2k + 16
// pairs of every row would all be evaluated exactly before the first compaction.
void seed_thresholds(const Tile& t, TopK* rows, idx_t row_off, TopK* cols) {
  const int k = rows->k();
  float u[kTile];
  if (t.nj >= k)
    for (idx_t r = 0; r < t.mi; ++r) {
      float& thr = rows->thresholds()[row_off + r];
      if (thr != std::numeric_limits<float>::infinity()) continue;
      for (idx_t c = 0; c < t.nj; ++c) u[c] = t.upper(r, c);
      std::nth_element(u, u + (k - 1), u + t.nj);
      thr = round_up(static_cast<double>(u[k - 1]) + t.abs);
    }
  if (cols && t.mi >= k)
    for (idx_t c = 0; c < t.nj; ++c) {
      float& thr = cols->thresholds()[t.j0 + c];
      if (thr != std::numeric_limits<float>::infinity()) continue;
      for (idx_t r = 0; r < t.mi; ++r) u[r] = t.upper(r, c);
      std::nth_element(u, u + (k - 1), u + t.mi);
      thr = round_up(static_cast<double>(u[k - 1]) + t.abs);
    }
}

void scan_topk(const Tile& t, TopK* rows, idx_t row_off, TopK* cols) {
  const int isa = active_isa();
  seed_thresholds(t, rows, row_off, cols);
#ifdef USL_FAST_X86
  if (isa == 2)
    return cols ? scan_avx512<true>(t, rows, row_off, cols)
                : scan_avx512<false>(t, rows, row_off, cols);
  if (isa == 1) return scan_avx2(t, rows, row_off, cols);
#endif
  Pending p;
  scan_portable(t, rows, row_off, cols, isa, 0, 0, t.mi, p);
}

}  // namespace cpu
}  // namespace usl_fast
