// Internal to the CPU back end: which SIMD code this build compiles, and the exact kernel
// that several files share. SIMD code is compiled only where the compiler targets x86-64 and
// the build is not USL_FAST_ISA=portable; which path runs is chosen once, at run time
// (active_isa, runtime.cpp).
#pragma once

#include "tile.hpp"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(USL_FAST_PORTABLE)
#define USL_FAST_X86 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
// AMX intrinsics need GCC 11 / clang 12 or newer; older compilers build without the AMX GEMM
// and the AVX-512 bf16 / int16 ones.
#if (defined(__clang__) && __clang_major__ >= 12) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define USL_FAST_AMX 1
#define USL_FAST_LOWP 1
#endif
#endif

namespace usl_fast {
namespace cpu {

// exact_l2 of a against n rows given by pointers, on SIMD path `isa` (active_isa's
// numbering; exact.cpp).
void exact_many(int isa, const float* a, const float* const* b, idx_t n, idx_t d, float* out);

// out[t] = exact_l2 of a[t] and b[t], t < n: independent pairs, four at a time on SIMD paths.
void exact_pairs(int isa, const float* const* a, const float* const* b, idx_t n, idx_t d,
                 float* out);

}  // namespace cpu
}  // namespace usl_fast
