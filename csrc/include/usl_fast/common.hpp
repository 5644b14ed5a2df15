// Shared by every back end: shapes, the one copy of the squared-L2 formula and its
// clamp, the "better" rule for (distance, index) pairs, progress/cancel control, and
// the memory-safety checks the C++ layer keeps (Python validates everything else).
#pragma once

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace usl_fast {

using idx_t = int64_t;

// Row-major float32 matrix view; rows are contiguous (ld == cols for our inputs).
struct MatView {
  const float* data;
  idx_t rows;
  idx_t cols;
  const float* row(idx_t i) const { return data + i * cols; }
};

// ||x||^2 + ||y||^2 - 2 x.y, clamped at 0: the cancellation of the expanded form can go
// slightly negative for near-identical rows, and a negative squared distance would sort
// ahead of the point itself.
inline float l2_from_ip(float xn, float yn, float ip) {
  float d = xn + yn - 2.0f * ip;
  return d > 0.0f ? d : 0.0f;
}

// Total order used by every top-k / arg-min: smaller distance wins, ties go to the lower
// index. Results therefore do not depend on tile or thread order.
inline bool better(float da, int64_t ia, float db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

// Progress and cancellation shared with Python through a small int64 array owned by the
// caller: [0] units done, [1] units total, [2] cancel flag (set by Python on Ctrl-C).
struct Control {
  int64_t* slots = nullptr;
  void set_total(int64_t t) const {
    if (slots) __atomic_store_n(&slots[1], t, __ATOMIC_RELAXED);
  }
  void add(int64_t n) const {
    if (slots) __atomic_fetch_add(&slots[0], n, __ATOMIC_RELAXED);
  }
  bool cancelled() const { return slots && __atomic_load_n(&slots[2], __ATOMIC_RELAXED) != 0; }
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
