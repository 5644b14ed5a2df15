// Process-wide state of the CPU back end: the allocation budget behind checked_alloc (a
// test-only limit that injects allocation failures) and the SIMD path chosen once at run
// time (active_isa, with the USL_FAST_ISA override).
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "simd.hpp"

namespace usl_fast {
namespace cpu {

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

}  // namespace cpu
}  // namespace usl_fast
