// The AMX bf16 filter GEMM (gemm_tile_amx) and its run-time check (amx_supported), used by
// gemm_tile (gemm.cpp) on CPUs with AMX. Compiled only for x86-64, outside
// USL_FAST_ISA=portable builds, with a compiler that has the AMX intrinsics (simd.hpp).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm.hpp"

namespace usl_fast {
namespace cpu {

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

}  // namespace

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

namespace {

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

}  // namespace

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

#endif  // USL_FAST_AMX

}  // namespace cpu
}  // namespace usl_fast
