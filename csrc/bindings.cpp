// The pybind11 module usl_fast._cpu: arrays arrive validated and allocated by Python
// (usl_fast/_core.py); this layer only builds views, releases the GIL and calls the op.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "usl_fast/ops.hpp"

namespace py = pybind11;
using namespace usl_fast;

namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style>;

MatView mat(const Arr<float>& a) {
  require(a.ndim() == 2, "2-D float32 array");
  return MatView{a.data(), static_cast<idx_t>(a.shape(0)), static_cast<idx_t>(a.shape(1))};
}

Control control(py::object ctl) {
  Control c;
  if (!ctl.is_none()) {
    auto a = ctl.cast<Arr<int64_t>>();
    require(a.size() >= 3, "control array of 3 int64");
    c.slots = a.mutable_data();
  }
  return c;
}

template <class T>
void need(const Arr<T>& a, py::ssize_t size, const char* what) {
  require(a.size() == size, std::string(what) + ": wrong size");
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "usl_fast CPU engine (tiled squared-L2 distances with epilogues)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Cancelled&) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
  });

  m.def("max_threads", [] { return cpu::resolve_threads(0); });
  m.attr("DEFAULT_SAMPLE_HITS") = cpu::kDefaultSampleHits;
  m.attr("DEFAULT_MAX_RESERVOIR_BYTES") = cpu::kDefaultMaxReservoirBytes;

  m.def("knn_self", [](Arr<float> x, int k, Arr<float> od, Arr<int64_t> oi, int threads,
                       py::object ctl, double sample_hits, double max_reservoir_bytes) {
    MatView xv = mat(x);
    need(od, xv.rows * k, "out_dist");
    need(oi, xv.rows * k, "out_idx");
    Control c = control(ctl);
    float* pd = od.mutable_data();
    int64_t* pi = oi.mutable_data();
    py::gil_scoped_release nogil;
    cpu::knn_self(xv, k, pd, pi, threads, c, sample_hits, max_reservoir_bytes);
  });

  m.def("knn_query", [](Arr<float> q, Arr<float> base, int k, Arr<float> od, Arr<int64_t> oi,
                        int threads, py::object ctl) {
    MatView qv = mat(q), bv = mat(base);
    need(od, qv.rows * k, "out_dist");
    need(oi, qv.rows * k, "out_idx");
    Control c = control(ctl);
    float* pd = od.mutable_data();
    int64_t* pi = oi.mutable_data();
    py::gil_scoped_release nogil;
    cpu::knn_query(qv, bv, k, pd, pi, threads, c);
  });

  m.def("assign_nearest", [](Arr<float> x, Arr<float> cent, Arr<int32_t> ol, Arr<float> od,
                             int threads) {
    MatView xv = mat(x), cv = mat(cent);
    need(ol, xv.rows, "out_label");
    need(od, xv.rows, "out_dist");
    int32_t* pl = ol.mutable_data();
    float* pd = od.mutable_data();
    py::gil_scoped_release nogil;
    std::vector<float> xn(xv.rows);
    cpu::row_norms(xv, xn.data(), threads);
    cpu::assign_nearest(xv, xn.data(), cv, nullptr, pl, pd, threads);
  });

  m.def("kmeans_lloyd", [](Arr<float> x, Arr<float> cent, int n_iter, Arr<int32_t> labels,
                           Arr<int64_t> counts, Arr<float> inertia, int threads, py::object ctl) {
    MatView xv = mat(x), cv = mat(cent);
    need(labels, xv.rows, "labels");
    need(counts, cv.rows, "counts");
    need(inertia, n_iter, "inertia");
    Control c = control(ctl);
    float* pc = cent.mutable_data();
    int32_t* pl = labels.mutable_data();
    int64_t* pn = counts.mutable_data();
    float* pi = inertia.mutable_data();
    int K = static_cast<int>(cv.rows);
    py::gil_scoped_release nogil;
    return cpu::kmeans_lloyd(xv, pc, K, n_iter, pl, pn, pi, threads, c);
  });

  m.def("kmeanspp_init", [](Arr<float> x, int K, uint64_t seed, Arr<int64_t> out, int threads,
                            py::object ctl) {
    MatView xv = mat(x);
    need(out, K, "out_index");
    Control c = control(ctl);
    int64_t* po = out.mutable_data();
    py::gil_scoped_release nogil;
    cpu::kmeanspp_init(xv, K, seed, po, threads, c);
  });

  m.def("regularizer", [](Arr<float> x, Arr<float> x_norms, Arr<float> picks,
                          Arr<int32_t> labels, Arr<int32_t> pick_tag, double alpha,
                          float horizon_dist, int horizon_num, bool mask_zero, double far,
                          Arr<double> out, int threads, py::object ctl) {
    MatView xv = mat(x), pv = mat(picks);
    need(x_norms, xv.rows, "x_norms");
    need(labels, xv.rows, "labels");
    need(pick_tag, pv.rows, "pick_tag");
    need(out, xv.rows, "out");
    Control c = control(ctl);
    double* po = out.mutable_data();
    py::gil_scoped_release nogil;
    cpu::regularizer(xv, x_norms.data(), pv, labels.data(), pick_tag.data(), alpha,
                     horizon_dist, horizon_num, mask_zero, far, po, threads, c);
  });

  m.def("row_norms", [](Arr<float> x, Arr<float> out, int threads) {
    MatView xv = mat(x);
    need(out, xv.rows, "out");
    float* po = out.mutable_data();
    py::gil_scoped_release nogil;
    cpu::row_norms(xv, po, threads);
  });

  m.def("segment_argmax", [](Arr<float> density, py::object reg, double weight,
                             Arr<int32_t> labels, int K, Arr<int64_t> out) {
    const py::ssize_t n = density.size();
    need(labels, n, "labels");
    need(out, K, "out");
    const double* pr = nullptr;
    Arr<double> reg_arr;
    if (!reg.is_none()) {
      reg_arr = reg.cast<Arr<double>>();
      need(reg_arr, n, "reg");
      pr = reg_arr.data();
    }
    int64_t* po = out.mutable_data();
    py::gil_scoped_release nogil;
    cpu::segment_argmax(density.data(), pr, weight, labels.data(), n, K, po);
  });
}
