// THE squared distance of the engine, and the error bound that lets a fast GEMM act as a
// filter in front of it. Every op, path, thread count, ISA and back end returns values of
// exact_l2 and nothing else; the expanded form ||x||^2 + ||y||^2 - 2 x.y only decides which
// pairs are worth evaluating. Host and device code.
#pragma once

#include <cstdint>
#include <cstring>

#include "usl_fast/common.hpp"

namespace usl_fast {

// exact_l2(a, b) = float32(  ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))  ), where
// lane s_l is the float64 sum, in ascending t, of double(a_t - b_t)^2 over the coordinates t
// with t % 8 == l; a_t - b_t is ONE float32 subtraction. Consequences:
//  - the value is the same on every machine and compiler: each step is one IEEE-754
//    operation, and since a float32 difference has 24 significant bits its float64 square is
//    exact, so an FMA contraction of "s + df * df" rounds exactly like the separate add;
//  - d(a, b) == d(b, a) bit for bit (fl(a - b) = -fl(b - a)), d(a, a) == 0, and equal rows
//    are at identical distances from every row;
//  - it is accurate: a difference of coordinates within a factor 2 of each other is exact
//    (Sterbenz), any other is within half a float32 ulp, so every term is within 2^-23 of
//    its true value (relative), and the result is within ~2 float32 ulp of the true distance.
// Eight lanes let one SIMD register (or one GPU thread with eight registers) run it at speed.
constexpr int kLanes = 8;

USL_HD double exact_lanes_combine(const double* s) {
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

USL_HD float exact_l2(const float* a, const float* b, idx_t d) {
  double s[kLanes] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  idx_t t = 0;
  for (; t + kLanes <= d; t += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double df = static_cast<double>(a[t + l] - b[t + l]);
      s[l] += df * df;
    }
  // The tail, lanes 0 .. d - t - 1 (a fixed trip count, so the lanes stay in registers on
  // a GPU instead of a stack array).
  for (int l = 0; l < kLanes; ++l) {
    if (t + l < d) {
      const double df = static_cast<double>(a[t + l] - b[t + l]);
      s[l] += df * df;
    }
  }
  return static_cast<float>(exact_lanes_combine(s));
}

// ---------------------------------------------------------------------------------------
// The filter's error bound. With u = 2^-24, norms na = exact_l2(a, 0), nb = exact_l2(b, 0)
// and ip any float32 evaluation of a.b (any summation order, with or without FMA: a BLAS
// GEMM, a tensor-core TF32 product once its own u is used), the estimate
//     e = fl(fl(na + nb) - 2 ip)
// and the exact value E = exact_l2(a, b) satisfy
//     |e - E| <= B(a, b) = kFilterRel(d) * (na + nb) + kFilterAbs(d).
// Why: |ip - a.b| <= gamma_d sum|a_t b_t| <= d u (na + nb) / 2 (1 + O(u)) (Higham, Thm 3.1,
// valid for every order); the norms, the two roundings of e, and E itself (<= 2^-22 E, see
// above) each add at most a few u (na + nb) (|e| and E are <= 2 (na + nb)); float32
// underflow, including in a - b, adds at most one
// smallest-normal per operation (counted in kFilterAbs even with flush-to-zero; 16 d
// leaves room for the 4 d that a bf16 product flushing its products and partial sums
// adds, see the AMX GEMM in the CPU back end). The relative bound below doubles the
// derived d + 8 for margin, which also covers evaluating e - kFilterRel * s itself in
// float32. A GEMM with larger errors (bf16) passes its own, larger rel with each tile.
USL_HD float filter_rel(idx_t d) { return static_cast<float>(d + 16) * 0x1p-23f; }
USL_HD float filter_abs(idx_t d) { return static_cast<float>(16 * d + 64) * 0x1p-126f; }

// Rows whose squared norm exceeds this are rejected by Python: then na + nb, 2 ip and every
// distance stay finite in float32 (2^124 ~ 2.1e37, i.e. |x| up to ~4.6e18); so do the
// centred norms of the AMX filter (||x - c||^2 <= 2^126 for a mean c of such rows).
constexpr double kMaxSquaredNorm = 0x1p124;

// ---------------------------------------------------------------------------------------
// Keys: one uint64 per (distance, index) pair, distance bits high, index low. Distances
// are >= 0 and the IEEE bits of non-negative floats sort like the floats, so integer order
// on keys IS the engine's total order: smaller distance first, ties to the lower index.
USL_HD uint64_t pack_key(float dist, int32_t index) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(dist);
#else
  std::memcpy(&bits, &dist, sizeof bits);
#endif
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(index);
}
USL_HD float key_dist(uint64_t key) {
  const uint32_t bits = static_cast<uint32_t>(key >> 32);
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
#endif
}
USL_HD int32_t key_index(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

// The same order on unpacked pairs.
USL_HD bool better(float da, int64_t ia, float db, int64_t ib) {
  return da < db || (da == db && ia < ib);
}

}  // namespace usl_fast
