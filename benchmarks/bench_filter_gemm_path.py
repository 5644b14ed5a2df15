"""The filter's tile GEMMs on the self kNN graph of clustered unit vectors (k = 20): the path
this process runs (set USL_FAST_ISA / USL_FAST_GEMM before pytest to pick it, e.g.
`USL_FAST_ISA=avx2` for the AVX2 int16 filter) against faiss IndexFlatL2 and against the
float32 GEMM limit, with NumPy's sgemm rate probed twice: natively and, in a fresh process,
with OpenBLAS's Haswell (AVX2) kernels, the honest limit of the AVX2 path on a CPU that has
AVX-512. Every other tile GEMM this CPU runs on the same SIMD path is timed in a fresh
process too (the GEMM is chosen once per process), and must return the same bits."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import GEMM_NAMES, run_child

#: USL_FAST_GEMM values worth timing on each SIMD path (active_isa: 1 AVX2, 2 AVX-512)
PATH_GEMMS = {
    1: ("avx2i16", "avx2", "blas"),
    2: ("amx", "avx512bf16", "avx512vnni", "avx512", "avx2i16", "avx2", "blas"),
}
K = 20

# usl_fast.knn in a fresh interpreter with the GEMM named in the environment; runs in
# benchmarks/ so conftest is importable. Prints the kind that ran, the best of `rounds`
# seconds, and where it saved the indices.
_CHILD = r"""
import sys, time, numpy as np, usl_fast
from conftest import clustered_vectors
from usl_fast._backend import _cpu
n, d, k, threads, rounds = map(int, sys.argv[1:6])
x = clustered_vectors(n, d)
best = np.inf
for _ in range(rounds):
    t0 = time.perf_counter()
    _, idx = usl_fast.knn(x, k, threads=threads)
    best = min(best, time.perf_counter() - t0)
np.save(sys.argv[6], idx)
print(_cpu.active_isa(), _cpu.gemm_kind(), best)
"""

# NumPy's sgemm rate (GFLOP/s, best of 5 on 4096 x 4096 x 512) in a fresh interpreter, so that
# OPENBLAS_CORETYPE takes effect.
_SGEMM = r"""
import sys
from threadpoolctl import threadpool_limits
from conftest import SgemmProbe
m, n, k, threads = map(int, sys.argv[1:5])
threadpool_limits(threads)
print(SgemmProbe(m, n, k).rate(5))
"""


def _sgemm_rate(cfg, threads: int, coretype: str | None) -> float:
    g = cfg["gemm"]
    extra = {"OPENBLAS_CORETYPE": coretype} if coretype else {}
    return float(run_child(_SGEMM, [g["m"], g["n"], g["k"], threads], extra)[0])


@pytest.fixture(scope="module")
def clustered(cfg, data):
    n, d = cfg["knn"]["n"], cfg["knn"]["d"]
    return data(n, d, "clustered")


@pytest.mark.parametrize("impl", ["usl_fast", "faiss"])
def test_knn_clustered(bench, usl, clustered, cfg, threads, results_cache, impl, tmp_path):
    x = clustered
    n, d = x.shape
    bench.group = f"knn self clustered n={n} d={d} k={K}"
    runs = {
        "usl_fast": lambda: usl.knn(x, K, threads=threads),
        "faiss": lambda: _faiss(x, K),
    }
    key = ("clustered", K)
    if key not in results_cache:
        results_cache[key] = {name: run() for name, run in runs.items()}
    (du, iu), (df, if_) = results_cache[key]["usl_fast"], results_cache[key]["faiss"]
    max_diff = float(np.abs(du.astype(np.float64) - df).max())
    both = np.sort(np.concatenate([iu, if_], axis=1), axis=1)
    agreement = float((both[:, 1:] == both[:, :-1]).sum() / iu.size)
    assert max_diff <= 1e-4 and agreement > 0.99, (max_diff, agreement)
    bench.extra_info.update(
        impl=impl, n=n, d=d, k=K, max_abs_dist_diff_vs_peer=max_diff,
        neighbour_agreement_vs_peer=agreement,
    )
    bench.time(runs[impl])
    t = float(bench.stats.stats.min)
    if impl != "usl_fast":
        return
    from usl_fast._backend import _cpu

    isa, kind = int(_cpu.active_isa()), int(_cpu.gemm_kind())
    native = _sgemm_rate(cfg, threads, None)
    haswell = _sgemm_rate(cfg, threads, "Haswell")
    t0 = time.perf_counter()
    _faiss(x, K)  # the ratio's peer, timed in this process right after
    faiss_t = time.perf_counter() - t0

    def limit(rate: float) -> float:
        return n * n * d / (rate * 1e9)

    summary = {
        "SIMD path / tile GEMM (this process)": (
            f"{['portable', 'AVX2', 'AVX-512'][isa]} / {GEMM_NAMES[kind]}"
        ),
        "usl_fast kNN / float32 GEMM limit (NumPy sgemm, native kernels)": (
            f"{t / limit(native):.2f} (limit {limit(native):.2f} s at {native:.0f} GFLOP/s)"
        ),
        "the same, OPENBLAS_CORETYPE=Haswell (AVX2 kernels), fresh process": (
            f"{t / limit(haswell):.2f} (limit {limit(haswell):.2f} s at {haswell:.0f} GFLOP/s)"
        ),
        "usl_fast / faiss IndexFlatL2 (issue target on AVX2: <= 0.3)": (
            f"{t / faiss_t:.2f} ({t:.2f} s / {faiss_t:.2f} s)"
        ),
    }
    # Every other GEMM on this SIMD path, each in a fresh process: time and identical bits.
    env_isa = {1: "avx2", 2: "avx512"}.get(isa)
    others = {}
    for gemm in PATH_GEMMS.get(isa, ()):
        out = run_child(
            _CHILD,
            [n, d, K, threads, 1, tmp_path / f"{gemm}.npy"],
            {"USL_FAST_ISA": env_isa, "USL_FAST_GEMM": gemm},
        )
        ran = int(out[1])
        if ran in others:
            continue  # not on this CPU: the path's default ran, already timed
        idx = np.load(tmp_path / f"{gemm}.npy")
        assert np.array_equal(idx, iu), f"USL_FAST_GEMM={gemm} changed the neighbours"
        others[ran] = float(out[2])
        summary[f"USL_FAST_GEMM={gemm} ({GEMM_NAMES[ran]}), fresh process"] = (
            f"{others[ran]:.2f} s = {others[ran] / limit(native):.2f} x native limit, "
            f"{others[ran] / limit(haswell):.2f} x Haswell limit, "
            f"{others[ran] / faiss_t:.2f} x faiss"
        )
    bench.extra_info.update(
        simd_path=isa,
        tile_gemm=GEMM_NAMES[kind],
        sgemm_gflops_native=native,
        sgemm_gflops_haswell=haswell,
        time_over_gemm_limit_native=t / limit(native),
        time_over_gemm_limit_haswell=t / limit(haswell),
        faiss_seconds=faiss_t,
        other_gemm_seconds={GEMM_NAMES[k]: v for k, v in others.items()},
    )
    bench.extra_info["summary"] = summary


def _faiss(x: np.ndarray, k: int):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index.search(x, k)
