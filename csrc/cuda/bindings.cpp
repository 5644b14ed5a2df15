// The pybind11 module usl_fast._cuda: the CUDA launchers on raw device pointers (Python
// passes tensor.data_ptr() and torch's current stream; usl_fast/portable.py checks shapes,
// dtypes, devices and contiguity before any call).
#include <pybind11/pybind11.h>

#include "usl_fast/cuda_ops.hpp"

namespace py = pybind11;
using namespace usl_fast;

namespace {
template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
void* stream(uintptr_t s) { return reinterpret_cast<void*>(s); }
}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "usl_fast CUDA kernels (exact distances, row-ordered segment sums)";
  m.def("device_count", &cuda::device_count);
  m.def("exact_grid", [](uintptr_t a, int64_t lda, int64_t na, uintptr_t b, int64_t ldb,
                         int64_t nb, int64_t d, uintptr_t out, int64_t ldo, uintptr_t s) {
    py::gil_scoped_release nogil;
    cuda::exact_grid(ptr<const float>(a), lda, na, ptr<const float>(b), ldb, nb, d,
                     ptr<float>(out), ldo, stream(s));
  });
  m.def("exact_gather", [](uintptr_t a, int64_t lda, int64_t na, uintptr_t b, int64_t ldb,
                           int64_t nb, int64_t d, uintptr_t cols, int64_t c, uintptr_t out,
                           uintptr_t s) {
    py::gil_scoped_release nogil;
    cuda::exact_gather(ptr<const float>(a), lda, na, ptr<const float>(b), ldb, nb, d,
                       ptr<const int64_t>(cols), c, ptr<float>(out), stream(s));
  });
  m.def("segment_sum", [](uintptr_t x, int64_t ldx, int64_t d, uintptr_t rows, uintptr_t first,
                          int64_t K, uintptr_t sums, uintptr_t s) {
    py::gil_scoped_release nogil;
    cuda::segment_sum(ptr<const float>(x), ldx, d, ptr<const int64_t>(rows),
                      ptr<const int64_t>(first), K, ptr<double>(sums), stream(s));
  });
}
