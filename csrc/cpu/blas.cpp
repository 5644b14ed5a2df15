// The one place that talks to BLAS: OpenBLAS from the scipy-openblas32 wheel, kept
// single-threaded because every caller already runs it inside its own OpenMP thread on
// a private tile (parallelism over tiles keeps each tile hot in that core's L2).
#include <cblas.h>
#include <omp.h>

#include "engine.hpp"
#include "usl_fast/ops.hpp"

namespace usl_fast {
namespace cpu {

namespace {
struct BlasSingleThread {
  BlasSingleThread() { scipy_openblas_set_num_threads(1); }
};
const BlasSingleThread blas_single_thread_once;
}  // namespace

void gemm_nt(const float* a, idx_t m, const float* b, idx_t n, idx_t d, float* c, idx_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(m),
                    static_cast<blasint>(n), static_cast<blasint>(d), 1.0f, a,
                    static_cast<blasint>(d), b, static_cast<blasint>(d), 0.0f, c,
                    static_cast<blasint>(ldc));
}

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

void row_norms(const MatView& x, float* out, int threads) {
  const idx_t d = x.cols;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(threads))
  for (idx_t i = 0; i < x.rows; ++i) {
    const float* r = x.row(i);
    float s = 0.0f;
    for (idx_t t = 0; t < d; ++t) s += r[t] * r[t];
    out[i] = s;
  }
}

}  // namespace cpu
}  // namespace usl_fast
