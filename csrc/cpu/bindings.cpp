// The pybind11 module usl_fast._cpu. Python (usl_fast/_dispatch.py) validates and allocates;
// this layer converts nothing: every array must already have the exact dtype, layout and
// size, outputs must be C-contiguous and writeable, or the call raises TypeError/ValueError.
// Arrays are borrowed for the duration of the call (the caller's references keep them
// alive); views are built with the GIL held and the work runs without it.
#include <omp.h>
#include <pthread.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "dedup.hpp"
#include "simd.hpp"
#include "tile.hpp"
#include "usl_fast/ops.hpp"

namespace py = pybind11;
using namespace usl_fast;

namespace {

template <class T>
const char* type_name();
template <>
const char* type_name<float>() { return "float32"; }
template <>
const char* type_name<double>() { return "float64"; }
template <>
const char* type_name<int32_t>() { return "int32"; }
template <>
const char* type_name<int64_t>() { return "int64"; }
template <>
const char* type_name<uint8_t>() { return "uint8"; }

template <class T>
bool aligned(const py::array& a) {
  return reinterpret_cast<uintptr_t>(a.data()) % alignof(T) == 0;
}

template <class T>
py::array as_array(py::handle h, const char* name) {
  if (!py::isinstance<py::array_t<T>>(h))
    throw py::type_error(std::string("usl_fast._cpu: `") + name + "` must be a numpy " +
                         type_name<T>() + " array (no conversion is done here)");
  return py::reinterpret_borrow<py::array>(h);
}

// A 2-D float32 input whose rows are contiguous and evenly spaced (row stride >= cols).
View in_mat(py::handle h, const char* name) {
  py::array a = as_array<float>(h, name);
  if (a.ndim() != 2) throw py::value_error(std::string("`") + name + "` must be 2-D");
  const auto rows = a.shape(0), cols = a.shape(1);
  const auto s0 = a.strides(0), s1 = a.strides(1);
  if (cols > 1 && s1 != static_cast<py::ssize_t>(sizeof(float)))
    throw py::value_error(std::string("`") + name + "` must have contiguous rows");
  if (rows > 1 && (s0 <= 0 || s0 % static_cast<py::ssize_t>(sizeof(float)) != 0 ||
                   s0 / static_cast<py::ssize_t>(sizeof(float)) < cols))
    throw py::value_error(std::string("`") + name + "` must have evenly spaced, non-overlapping rows");
  if (rows > kMaxRows) throw py::value_error(std::string("`") + name + "` has too many rows");
  const idx_t ld = rows > 1 ? s0 / static_cast<py::ssize_t>(sizeof(float)) : cols;
  // BLAS takes 32-bit leading dimensions; scalar float access needs 4-byte alignment.
  if (ld > 2147483647 || cols > 2147483647)
    throw py::value_error(std::string("`") + name + "`: row stride beyond 2^31 - 1 elements");
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(float) != 0)
    throw py::value_error(std::string("`") + name + "` must be aligned to 4 bytes");
  return View{static_cast<const float*>(a.data()), rows, cols, ld};
}

template <class T>
const T* in_vec(py::handle h, const char* name, py::ssize_t size) {
  py::array a = as_array<T>(h, name);
  if (!(a.flags() & py::array::c_style) || !aligned<T>(a) || a.size() != size)
    throw py::value_error(std::string("`") + name + "` must be aligned and C-contiguous with " +
                          std::to_string(size) + " elements");
  return static_cast<const T*>(a.data());
}

template <class T>
T* out_vec(py::handle h, const char* name, py::ssize_t size) {
  py::array a = as_array<T>(h, name);
  if (!(a.flags() & py::array::c_style) || !aligned<T>(a) || a.size() != size)
    throw py::value_error(std::string("`") + name + "` must be aligned and C-contiguous with " +
                          std::to_string(size) + " elements");
  if (!a.writeable()) throw py::value_error(std::string("`") + name + "` must be writeable");
  return static_cast<T*>(a.mutable_data());
}

Context context(int threads, py::handle ctl) {
  if (threads < 1) throw py::value_error("`threads` must be >= 1 (resolved by the caller)");
  Context c;
  c.threads = threads;
  if (!ctl.is_none()) c.slots = out_vec<int64_t>(ctl, "control", 4);
  return c;
}

// fork(): libgomp keeps each master thread's pool of worker threads in that thread's
// thread-local state. A child forked after the engine ran on the forking thread inherits the
// pool's bookkeeping but none of its threads, so its next parallel region waits forever at a
// barrier for workers that do not exist (or frees memory those threads owned). Before every
// fork, release the forking thread's pool (OpenMP 5.0's omp_pause_resource_all, which
// libgomp implements for the host from GCC 9 on, touching only the calling thread's pool);
// the parent rebuilds it on its next parallel region, at the cost of starting its threads
// again. Pools of other threads are unreachable in the child (their threads are gone with
// them), so they need nothing. LLVM's libomp has fork handlers of its own, and a hard pause
// there shuts down runtime state another thread may be using: libgomp only.
#if defined(_LIBGOMP_OMP_LOCK_DEFINED)
void release_openmp_pool_before_fork() { omp_pause_resource_all(omp_pause_hard); }
#endif

}  // namespace

PYBIND11_MODULE(_cpu, m) {
#if defined(_LIBGOMP_OMP_LOCK_DEFINED)
  // Registered once per process (module initialisation runs once).
  if (pthread_atfork(release_openmp_pool_before_fork, nullptr, nullptr) != 0)
    throw std::runtime_error("usl_fast._cpu: pthread_atfork failed");
#endif
  m.doc() = "usl_fast CPU engine: one tiled distance driver, exact distances, epilogues";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Cancelled&) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
  });

  // The OpenMP thread count of the CALLING thread (threadpoolctl / omp_set_num_threads).
  m.def("max_threads", [] { return omp_get_max_threads(); });
  m.def("active_isa", [] { return cpu::active_isa(); });
  m.def("gemm_kind", [] { return cpu::gemm_kind(); });
  // Benchmark hook: the pairs evaluated exactly so far (USL_FAST_COUNT_EXACT=1, else 0).
  m.def("exact_evaluations", [] { return cpu::exact_evaluations(); });
  m.def("set_alloc_limit", [](int64_t bytes) { cpu::set_alloc_limit(bytes); },
        "Test hook: engine allocations beyond `bytes` raise MemoryError (< 0: no limit).");
  m.def("reservoir_bytes_per_row", &cpu::reservoir_bytes_per_row);
  m.def("dedup_enabled", [] { return cpu::dedup_enabled(); });
  // Test hook: the duplicate groups the ops collapse, as each row's group number (groups
  // in ascending order of their lowest row) into out (int32, rows); returns the number of
  // groups, or 0 when no two rows are identical or USL_FAST_DEDUP=0.
  m.def("duplicate_groups", [](py::handle x, py::handle out) {
    const View xv = in_mat(x, "x");
    int32_t* po = out_vec<int32_t>(out, "out", xv.rows);
    py::gil_scoped_release nogil;
    cpu::Groups g;
    Context c;
    c.threads = omp_get_max_threads();  // as the ops run it
    if (!cpu::find_groups(xv, nullptr, c, g)) return int64_t(0);
    std::copy(g.of.data(), g.of.data() + xv.rows, po);
    return static_cast<int64_t>(g.count);
  });
  m.def("filter_rel", [](int64_t d) { return filter_rel(d); });
  m.def("filter_abs", [](int64_t d) { return filter_abs(d); });
  m.attr("MAX_SQUARED_NORM") = kMaxSquaredNorm;
  m.attr("MAX_ROWS") = kMaxRows;
  m.attr("DEFAULT_SAMPLE_HITS") = cpu::KnnOptions{}.sample_hits;
  m.attr("DEFAULT_MAX_RESERVOIR_BYTES") = cpu::KnnOptions{}.max_reservoir_bytes;

  // Test hook: out (m, n) = a (m, d) b (n, d)^T through the tile GEMM that runs (AMX, AVX-512
  // bf16 or int16, AVX2 int16, the own AVX-512 or AVX2 float32 kernel or OpenBLAS;
  // gemm_kind()), m and n at most 256; returns the filter's relative bound for that tile.
  // `center` (a (1, d) array, 16-bit GEMMs only, AVX2 int16 for 64 <= d <= 16384): the products of the
  // centred rows, as the drivers run them.
  m.def("gemm_tile", [](py::handle a, py::handle b, py::handle out, py::handle center) {
    const View av = in_mat(a, "a"), bv = in_mat(b, "b");
    if (av.cols != bv.cols) throw py::value_error("a and b: same number of columns");
    if (av.rows < 1 || av.rows > cpu::kTile) throw py::value_error("a: 1 to 256 rows");
    if (bv.rows < 1 || bv.rows > cpu::kTile) throw py::value_error("b: 1 to 256 rows");
    const float* pc = nullptr;
    if (!center.is_none()) {
      const View cv = in_mat(center, "center");
      if (cv.rows != 1 || cv.cols != av.cols) throw py::value_error("center: shape (1, d)");
      if (!cpu::gemm_centred(av.cols))
        throw py::value_error("center: 16-bit GEMMs only (AVX2 int16: 64 <= d <= 16384)");
      pc = cv.data;
    }
    float* po = out_vec<float>(out, "out", av.rows * bv.rows);
    py::gil_scoped_release nogil;
    float* tile = cpu::thread_tile();
    const float rel =
        cpu::gemm_tile(av.data, av.ld, av.rows, bv.data, bv.ld, bv.rows, av.cols, pc, tile);
    for (idx_t r = 0; r < av.rows; ++r)
      std::copy(tile + r * cpu::kTile, tile + r * cpu::kTile + bv.rows, po + r * bv.rows);
    return rel;
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("center") = py::none());

  // The bytes the drivers' images of `rows` rows at d coordinates take (0 where the GEMM
  // converts per tile): _dispatch counts them in its memory checks.
  m.def("filter_image_bytes",
        [](int64_t rows, int64_t d) { return cpu::filter_image_bytes(rows, d); });
  // Test hook: gemm_tile through the rows' images (gemm_tile_images: on the AVX2 int16 GEMM
  // and the AVX-512 bf16 and int16 ones), as the drivers run it: a and b are converted
  // whole (centred on `center`), then row tile ti of a against row tile tj of b (out: that
  // tile's rows x columns). Only where filter_images(d). repeat > 1 (a benchmark hook): the
  // product is run that many times on the same images.
  m.def("gemm_tile_images", [](py::handle a, py::handle b, py::handle out, py::handle center,
                               int64_t repeat, int64_t ti, int64_t tj) {
    const View av = in_mat(a, "a"), bv = in_mat(b, "b");
    if (av.cols != bv.cols) throw py::value_error("a and b: same number of columns");
    if (av.rows < 1 || bv.rows < 1) throw py::value_error("a and b: at least one row");
    if (ti < 0 || ti * cpu::kTile >= av.rows) throw py::value_error("ti: a row tile of a");
    if (tj < 0 || tj * cpu::kTile >= bv.rows) throw py::value_error("tj: a row tile of b");
    const idx_t i0 = ti * cpu::kTile, j0 = tj * cpu::kTile;
    const idx_t mi = std::min(cpu::kTile, av.rows - i0), nj = std::min(cpu::kTile, bv.rows - j0);
    if (!cpu::filter_images(av.cols))
      throw py::value_error("the AVX2 int16 GEMM with 64 <= d <= 16384 or an AVX-512 16-bit GEMM only");
    const View cv = in_mat(center, "center");
    if (cv.rows != 1 || cv.cols != av.cols) throw py::value_error("center: shape (1, d)");
    float* po = out_vec<float>(out, "out", mi * nj);
    py::gil_scoped_release nogil;
    Context c;
    c.threads = 1;
    const int kind = cpu::gemm_kind();
    const bool lowp = kind == cpu::kGemmBf16 || kind == cpu::kGemmI16;
    cpu::I16Image ia, ib;
    cpu::LowpImage ha, hb;
    if (lowp) {
      cpu::build_lowp_image(av, cv.data, kind == cpu::kGemmI16, ha, c);
      cpu::build_lowp_image(bv, cv.data, kind == cpu::kGemmI16, hb, c);
    } else {
      cpu::build_i16_image(av, cv.data, ia, c);
      cpu::build_i16_image(bv, cv.data, ib, c);
    }
    float* tile = cpu::thread_tile();
    float rel = 0.0f;
    for (int64_t t = 0; t < std::max<int64_t>(repeat, 1); ++t)
      rel = lowp ? cpu::gemm_tile_images(av.row(i0), av.ld, mi, bv.row(j0), bv.ld, nj, av.cols,
                                         cv.data, ha, i0, hb, j0, tile)
                 : cpu::gemm_tile_images(av.row(i0), av.ld, mi, bv.row(j0), bv.ld, nj, av.cols,
                                         cv.data, ia, i0, ib, j0, tile);
    for (idx_t r = 0; r < mi; ++r)
      std::copy(tile + r * cpu::kTile, tile + r * cpu::kTile + nj, po + r * nj);
    return rel;
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("center"), py::arg("repeat") = 1,
     py::arg("ti") = 0, py::arg("tj") = 0);

  m.def("exact_l2_pairs", [](py::handle a, py::handle b, py::handle out) {
    const View av = in_mat(a, "a"), bv = in_mat(b, "b");
    if (av.rows != bv.rows || av.cols != bv.cols) throw py::value_error("a and b: same shape");
    float* po = out_vec<float>(out, "out", av.rows);
    py::gil_scoped_release nogil;
    // exact_pairs, the scan's kernel: four independent pairs a step on SIMD paths
    const int isa = cpu::active_isa();
    const float* pa[64];
    const float* pb[64];
    for (idx_t i0 = 0; i0 < av.rows; i0 += 64) {
      const idx_t m = std::min<idx_t>(64, av.rows - i0);
      for (idx_t t = 0; t < m; ++t) {
        pa[t] = av.row(i0 + t);
        pb[t] = bv.row(i0 + t);
      }
      cpu::exact_pairs(isa, pa, pb, m, av.cols, po + i0);
    }
  });

  // Every pair of a and b through the register-blocked kernel the regularizer uses
  // (tests compare it with the transcription on every path); skip: optional (na, nb) uint8
  // flags of pairs it may leave unwritten. Returns how many pairs it evaluated.
  m.def("exact_l2_block", [](py::handle a, py::handle b, py::handle out, py::handle skip) {
    const View av = in_mat(a, "a"), bv = in_mat(b, "b");
    if (av.cols != bv.cols) throw py::value_error("a and b: same number of columns");
    float* po = out_vec<float>(out, "out", av.rows * bv.rows);
    const uint8_t* ps =
        skip.is_none() ? nullptr : in_vec<uint8_t>(skip, "skip", av.rows * bv.rows);
    py::gil_scoped_release nogil;
    std::vector<const float*> ra(static_cast<size_t>(av.rows)), rb(static_cast<size_t>(bv.rows));
    for (idx_t i = 0; i < av.rows; ++i) ra[i] = av.row(i);
    for (idx_t j = 0; j < bv.rows; ++j) rb[j] = bv.row(j);
    return cpu::exact_block(ra.data(), av.rows, rb.data(), bv.rows, av.cols, ps, bv.rows, po,
                            bv.rows);
  }, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("skip") = py::none());

  m.def("row_norms", [](py::handle x, py::handle out, int threads, py::handle ctl) {
    const View xv = in_mat(x, "x");
    float* po = out_vec<float>(out, "out", xv.rows);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::row_norms(xv, po, c);
  });

  m.def("knn", [](py::handle x, py::handle queries, int k, py::handle od, py::handle oi,
                  int threads, py::handle ctl, double sample_hits, double max_reservoir_bytes) {
    const View xv = in_mat(x, "x");
    View qv;
    const bool self = queries.is_none();
    if (!self) qv = in_mat(queries, "queries");
    const idx_t rows = self ? xv.rows : qv.rows;
    if (k < 1 || k > xv.rows) throw py::value_error("`k` must be in [1, rows of x]");
    float* pd = out_vec<float>(od, "out_dist", rows * k);
    int64_t* pi = oi.is_none() ? nullptr : out_vec<int64_t>(oi, "out_idx", rows * k);
    const Context c = context(threads, ctl);
    cpu::KnnOptions opt;
    opt.sample_hits = sample_hits;
    opt.max_reservoir_bytes = max_reservoir_bytes;
    py::gil_scoped_release nogil;
    cpu::knn(xv, self ? nullptr : &qv, k, pd, pi, c, opt);
  });

  m.def("knn_cross", [](py::handle a, py::handle b, int k, py::handle a_start,
                        py::handle b_start, py::handle out_a, py::handle out_b, int threads,
                        py::handle ctl) {
    const View av = in_mat(a, "a"), bv = in_mat(b, "b");
    if (av.cols != bv.cols) throw py::value_error("`a` and `b`: same dimension");
    if (k < 1) throw py::value_error("`k` must be >= 1");
    const float* ps = a_start.is_none() ? nullptr : in_vec<float>(a_start, "a_start", av.rows);
    const float* pt = b_start.is_none() ? nullptr : in_vec<float>(b_start, "b_start", bv.rows);
    float* pa = out_vec<float>(out_a, "out_a", av.rows * k);
    float* pb = out_vec<float>(out_b, "out_b", bv.rows * k);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::knn_cross(av, bv, k, ps, pt, pa, pb, c);
  });

  m.def("knn_density", [](py::handle x, int k, double min_mean, py::handle out, int threads,
                          py::handle ctl, double sample_hits, double max_reservoir_bytes) {
    const View xv = in_mat(x, "x");
    if (k < 1 || k > xv.rows) throw py::value_error("`k` must be in [1, rows of x]");
    float* po = out_vec<float>(out, "out", xv.rows);
    const Context c = context(threads, ctl);
    cpu::KnnOptions opt;
    opt.sample_hits = sample_hits;
    opt.max_reservoir_bytes = max_reservoir_bytes;
    py::gil_scoped_release nogil;
    cpu::knn_density(xv, k, min_mean, po, c, opt);
  });

  m.def("assign", [](py::handle x, py::handle xn, py::handle cent, py::handle ol, py::handle od,
                     int threads, py::handle ctl) {
    const View xv = in_mat(x, "x"), cv = in_mat(cent, "centroids");
    const float* pxn = xn.is_none() ? nullptr : in_vec<float>(xn, "x_norms", xv.rows);
    if (cv.cols != xv.cols || cv.rows < 1) throw py::value_error("`centroids`: (K >= 1, d)");
    int32_t* pl = out_vec<int32_t>(ol, "out_label", xv.rows);
    float* pd = od.is_none() ? nullptr : out_vec<float>(od, "out_dist", xv.rows);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::assign(xv, pxn, cv, pl, pd, c);
  });

  m.def("segment_sum", [](py::handle x, py::handle labels, int K, py::handle sums,
                          py::handle counts, int threads, int c_lo, int c_hi, bool accumulate,
                          py::handle rows) {
    const View xv = in_mat(x, "x");
    if (K < 1) throw py::value_error("`K` must be >= 1");
    if (c_lo < 0 || c_lo > c_hi || c_hi > K)
      throw py::value_error("`c_lo`, `c_hi`: 0 <= c_lo <= c_hi <= K");
    const int32_t* pl = in_vec<int32_t>(labels, "labels", xv.rows);
    double* ps = out_vec<double>(sums, "out_sums", static_cast<py::ssize_t>(K) * xv.cols);
    int64_t* pc = out_vec<int64_t>(counts, "out_counts", K);
    const Context c = context(threads, py::none());
    const int64_t* pr = nullptr;
    idx_t nr = 0;
    if (!rows.is_none()) {
      py::array ra = as_array<int64_t>(rows, "rows");
      nr = ra.size();
      pr = in_vec<int64_t>(rows, "rows", nr);
      for (idx_t t = 0; t < nr; ++t)
        if (pr[t] < 0 || pr[t] >= xv.rows) throw py::value_error("`rows`: indices in [0, rows of x)");
    }
    py::gil_scoped_release nogil;
    cpu::segment_sum(xv, pl, K, ps, pc, c, c_lo, c_hi, accumulate, pr, nr);
  });

  m.def("min_update", [](py::handle x, py::handle centers, int64_t arg_offset, py::handle mind,
                         py::handle arg, int threads, py::handle ctl) {
    const View xv = in_mat(x, "x"), cv = in_mat(centers, "centers");
    if (cv.cols != xv.cols || cv.rows < 1) throw py::value_error("`centers`: (>= 1, d)");
    float* pm = out_vec<float>(mind, "inout_min", xv.rows);
    int64_t* pa = arg.is_none() ? nullptr : out_vec<int64_t>(arg, "inout_arg", xv.rows);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::min_update(xv, cv, arg_offset, pm, pa, c);
  });

  m.def("range_count", [](py::handle q, py::handle base, float radius, py::handle out,
                          int threads, py::handle ctl) {
    const View qv = in_mat(q, "queries"), bv = in_mat(base, "base");
    if (qv.cols != bv.cols) throw py::value_error("`queries` and `base`: same dimension");
    int64_t* po = out_vec<int64_t>(out, "out", qv.rows);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::range_count(qv, bv, radius, po, c);
  });

  m.def("range_search", [](py::handle q, py::handle base, float radius, py::handle offsets,
                           py::handle out, int threads, py::handle ctl) {
    const View qv = in_mat(q, "queries"), bv = in_mat(base, "base");
    if (qv.cols != bv.cols) throw py::value_error("`queries` and `base`: same dimension");
    const int64_t* po = in_vec<int64_t>(offsets, "offsets", qv.rows + 1);
    if (po[0] != 0) throw py::value_error("`offsets` must start at 0");
    for (py::ssize_t i = 0; i < qv.rows; ++i) {
      if (po[i + 1] < po[i]) throw py::value_error("`offsets` must be non-decreasing");
    }
    int32_t* pi = out_vec<int32_t>(out, "out", static_cast<py::ssize_t>(po[qv.rows]));
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::range_search(qv, bv, radius, po, pi, c);
  });

  m.def("regularizer", [](py::handle x, py::handle picks, py::handle labels, py::handle tag,
                          double alpha, float horizon_dist, int horizon_num, bool mask_zero,
                          double far, py::handle out, int threads, py::handle ctl,
                          py::handle memo, py::handle fresh) {
    const View xv = in_mat(x, "x"), pv = in_mat(picks, "picks");
    if (pv.cols != xv.cols || pv.rows < 1) throw py::value_error("`picks`: (>= 1, d)");
    const int32_t* pl = in_vec<int32_t>(labels, "labels", xv.rows);
    const int32_t* pt = in_vec<int32_t>(tag, "pick_tag", pv.rows);
    double* po = out_vec<double>(out, "out", xv.rows);
    float* pm = memo.is_none() ? nullptr : out_vec<float>(memo, "memo", xv.rows * pv.rows);
    const uint8_t* pf = fresh.is_none() ? nullptr : in_vec<uint8_t>(fresh, "fresh", pv.rows);
    if ((pm == nullptr) != (pf == nullptr))
      throw py::value_error("`memo` and `fresh` come together");
    if (pm && horizon_num > 0 && horizon_num < pv.rows)
      throw py::value_error("`memo` serves the power-sum only (horizon_num 0 or >= picks)");
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::regularizer(xv, pv, pl, pt, alpha, horizon_dist, horizon_num, mask_zero, far, po, c, pm,
                     pf);
  }, py::arg("x"), py::arg("picks"), py::arg("labels"), py::arg("tag"), py::arg("alpha"),
     py::arg("horizon_dist"), py::arg("horizon_num"), py::arg("mask_zero"), py::arg("far"),
     py::arg("out"), py::arg("threads"), py::arg("ctl"), py::arg("memo") = py::none(),
     py::arg("fresh") = py::none());

  m.def("segment_argmax", [](py::handle density, py::handle reg, double weight,
                             py::handle labels, int K, py::handle out) {
    py::array da = as_array<float>(density, "density");
    const py::ssize_t n = da.size();
    const float* pd = in_vec<float>(density, "density", n);
    const int32_t* pl = in_vec<int32_t>(labels, "labels", n);
    const double* pr = reg.is_none() ? nullptr : in_vec<double>(reg, "reg", n);
    if (K < 1) throw py::value_error("`K` must be >= 1");
    int64_t* po = out_vec<int64_t>(out, "out", K);
    py::gil_scoped_release nogil;
    cpu::segment_argmax(pd, pr, weight, pl, n, K, po);
  });

  m.def("kmeanspp_init", [](py::handle x, int K, uint64_t seed, py::handle out, int threads,
                            py::handle ctl) {
    const View xv = in_mat(x, "x");
    if (K < 1 || K > xv.rows) throw py::value_error("`K` must be in [1, rows of x]");
    int64_t* po = out_vec<int64_t>(out, "out_index", K);
    const Context c = context(threads, ctl);
    py::gil_scoped_release nogil;
    cpu::kmeanspp_init(xv, K, seed, po, c);
  });
}
