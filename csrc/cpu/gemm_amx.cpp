// The AMX bf16 filter GEMM (gemm_tile_amx) and its run-time check (amx_supported), used by
// gemm_tile (gemm.cpp) on CPUs with AMX. Compiled only for x86-64, outside
// USL_FAST_ISA=portable builds, with a compiler that has the AMX intrinsics (simd.hpp).
#include <algorithm>
#include <cstdint>

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
// gets the relative bound of its worst row and worst column (lowp_rel, gemm.cpp). bf16
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

// Palette 1, tiles 0-7 all 16 rows x 64 bytes. A constant object: GCC's _tile_loadconfig
// tells the compiler it reads only 8 bytes of it, so a local filled just before the call
// could legally be left unwritten.
alignas(64) const AmxConfig kAmxConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

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
  LowpBuffers& buf = lowp_buffers();
  buf.reserve((std::min(d, kKcLowp) + 31) / 32 * 32, d);
  const idx_t mb = (m + 15) / 16, nb = (n + 15) / 16;
  const float* cen = center ? center : buf.zero.data();
  // The tile configuration is loaded on every call and released at the end: tile state is
  // not preserved across calls (x86-64 ABI), and other code on this thread (oneDNN, a BLAS)
  // may configure the tiles differently or release them.
  _tile_loadconfig(&kAmxConfig);
  double res_a[kTile] = {}, nrm_a[kTile] = {}, res_b[kTile] = {}, nrm_b[kTile] = {};
  for (idx_t t0 = 0; t0 < d; t0 += kKcLowp) {
    const idx_t kc = std::min(kKcLowp, d - t0), kp = (kc + 31) / 32 * 32;
    // The rows converted to bf16 and B's rearranged into the pair-interleaved layout the
    // tile multiply reads (shared with the AVX-512 bf16 kernel, gemm_lowp.cpp).
    pack_lowp_pass(a, lda, m, b, ldb, n, cen, t0, kc, kp, false, res_a, nrm_a, res_b, nrm_b,
                   nullptr, nullptr);
    const uint16_t* ab = buf.a.data();
    const uint16_t* bt = buf.b.data();
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
