// The CUDA back end's launchers (csrc/cuda/kernels.cu), declared in plain C++ so that the
// pybind11 module (csrc/cuda/bindings.cpp) needs no CUDA headers. Pointers are device
// pointers; `stream` is the caller's cudaStream_t (torch's current stream), and every
// launcher only enqueues work on it. Errors (a bad launch) throw std::runtime_error.
//
// Each kernel evaluates the engine's exact_l2 (usl_fast/l2.hpp, host and device code, the
// function the CPU back end and its tests use) or adds float32 values into float64 sums in
// the engine's order; no kernel has logic of its own beyond indexing.
#pragma once

#include <cstdint>

namespace usl_fast {
namespace cuda {

// out[i * ldo + j] = exact_l2(a_i, b_j) for i < na, j < nb.
void exact_grid(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb,
                int64_t d, float* out, int64_t ldo, void* stream);

// out[i * c + t] = exact_l2(a_i, b_{cols[i * c + t]}), +inf where that column is < 0.
void exact_gather(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb,
                  int64_t nb, int64_t d, const int64_t* cols, int64_t c, float* out,
                  void* stream);

// sums[k * d + u] = the float64 sum over t in [first[k], first[k + 1]) of x[rows[t], u], in
// ascending t (rows: the row indices sorted by cluster, then row: the engine's order).
void segment_sum(const float* x, int64_t ldx, int64_t d, const int64_t* rows,
                 const int64_t* first, int64_t K, double* sums, void* stream);

// Number of CUDA devices this process sees (0 without a driver or a GPU).
int device_count();

}  // namespace cuda
}  // namespace usl_fast
