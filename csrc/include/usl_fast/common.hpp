// Shared by every back end: index type, the strided matrix view, the run context
// (threads or stream, cancel flag, progress), and the memory-safety checks the C++ layer
// keeps. Python validates everything a user controls; these only guard the engine.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define USL_HD __host__ __device__ __forceinline__
#else
#define USL_HD inline
#endif

namespace usl_fast {

using idx_t = int64_t;

// Largest number of rows any view may have: candidate indices travel as int32 inside the
// packed (distance, index) keys, so every row index must fit in 31 bits.
constexpr idx_t kMaxRows = (idx_t(1) << 31) - 1;

enum class Device : int32_t { cpu = 0, cuda = 1 };

// A row-major float32 matrix: row i starts at data + i * ld (ld >= cols). A strided view
// (every other row, a column slice) needs no copy.
struct View {
  const float* data = nullptr;
  idx_t rows = 0;
  idx_t cols = 0;
  idx_t ld = 0;
  Device device = Device::cpu;
  USL_HD const float* row(idx_t i) const { return data + i * ld; }
};

// Where and how an op runs. `threads` is already resolved by the caller (> 0): Python reads
// the OpenMP setting of the calling thread, so threadpoolctl / OMP_NUM_THREADS apply.
// `slots` (optional, owned by the caller for the whole call) is shared with Python:
// [0] units done, [1] units total, [2] cancel flag, [3] threads that actually ran.
struct Context {
  int threads = 1;
  int64_t* slots = nullptr;
  void* stream = nullptr;  // CUDA back end: the caller's stream; unused on the CPU

  void set_total(int64_t t) const {
    if (slots) __atomic_store_n(&slots[1], t, __ATOMIC_RELAXED);
  }
  void add_total(int64_t t) const {
    if (slots) __atomic_fetch_add(&slots[1], t, __ATOMIC_RELAXED);
  }
  void add(int64_t n) const {
    if (slots) __atomic_fetch_add(&slots[0], n, __ATOMIC_RELAXED);
  }
  bool cancelled() const { return slots && __atomic_load_n(&slots[2], __ATOMIC_RELAXED) != 0; }
  void ran_with(int n) const {
    if (slots) __atomic_store_n(&slots[3], static_cast<int64_t>(n), __ATOMIC_RELAXED);
  }
};

// Thrown when the caller asked to stop; the binding turns it into KeyboardInterrupt.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("usl_fast: cancelled") {}
};

// Internal precondition (memory safety); user-facing checks live in Python.
inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("usl_fast internal check failed: " + what);
}

}  // namespace usl_fast
