// The engine's own AVX-512 float32 tile GEMM (gemm_nt_avx512), used by gemm_tile (gemm.cpp)
// where AVX-512 runs and AMX does not. Compiled only where the compiler targets x86-64 and
// the build is not USL_FAST_ISA=portable.
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <new>

#include "gemm.hpp"

namespace usl_fast {
namespace cpu {

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

}  // namespace

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
#endif  // USL_FAST_X86

}  // namespace cpu
}  // namespace usl_fast
