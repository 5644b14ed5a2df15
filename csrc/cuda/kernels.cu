// CUDA kernels of the portable back end's hot steps (see usl_fast/cuda_ops.hpp). Built only
// when a CUDA compiler is found (CMake USL_FAST_CUDA=AUTO/ON), with --fmad=false (no FMA
// contraction, as the CPU build's -ffp-contract=off) and ptxas spill warnings as errors.
#include <cuda_runtime.h>

#include <limits>
#include <stdexcept>
#include <string>

#include "usl_fast/common.hpp"
#include "usl_fast/cuda_ops.hpp"
#include "usl_fast/l2.hpp"

namespace usl_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

void check(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("usl_fast CUDA ") + what + ": " + cudaGetErrorString(e));
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

// Rows over gridDim.y (strided), columns over x blocks (strided).
__global__ void exact_grid_kernel(const float* a, int64_t lda, int64_t na, const float* b,
                                  int64_t ldb, int64_t nb, int64_t d, float* out, int64_t ldo) {
  for (int64_t i = blockIdx.y; i < na; i += gridDim.y)
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < nb;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      out[i * ldo + j] = exact_l2(a + i * lda, b + j * ldb, d);
}

__global__ void exact_gather_kernel(const float* a, int64_t lda, int64_t na, const float* b,
                                    int64_t ldb, int64_t nb, int64_t d, const int64_t* cols,
                                    int64_t c, float* out) {
  const int64_t total = na * c;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p / c, j = cols[p];
    out[p] = (j < 0 || j >= nb) ? __int_as_float(0x7f800000)  // +inf: no candidate
                                : exact_l2(a + i * lda, b + j * ldb, d);
  }
}

// One thread per (cluster, coordinate): the members in order, one float64 sum each.
__global__ void segment_sum_kernel(const float* x, int64_t ldx, int64_t d, const int64_t* rows,
                                   const int64_t* first, int64_t K, double* sums) {
  const int64_t total = K * d;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = p / d, u = p % d;
    double s = 0.0;
    for (int64_t t = first[k]; t < first[k + 1]; ++t)
      s += static_cast<double>(x[rows[t] * ldx + u]);
    sums[p] = s;
  }
}

}  // namespace

void exact_grid(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb, int64_t nb,
                int64_t d, float* out, int64_t ldo, void* stream) {
  if (na <= 0 || nb <= 0) return;
  const dim3 grid(blocks_for(nb), static_cast<unsigned>(na < 65535 ? na : 65535));
  exact_grid_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a, lda, na, b, ldb,
                                                                           nb, d, out, ldo);
  check("exact_grid");
}

void exact_gather(const float* a, int64_t lda, int64_t na, const float* b, int64_t ldb,
                  int64_t nb, int64_t d, const int64_t* cols, int64_t c, float* out,
                  void* stream) {
  if (na <= 0 || c <= 0) return;
  exact_gather_kernel<<<blocks_for(na * c), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      a, lda, na, b, ldb, nb, d, cols, c, out);
  check("exact_gather");
}

void segment_sum(const float* x, int64_t ldx, int64_t d, const int64_t* rows,
                 const int64_t* first, int64_t K, double* sums, void* stream) {
  if (K <= 0 || d <= 0) return;
  segment_sum_kernel<<<blocks_for(K * d), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, ldx, d, rows, first, K, sums);
  check("segment_sum");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace usl_fast
