"""The self kNN graph with each filter GEMM this CPU can run (USL_FAST_GEMM), each in a fresh
process (the GEMM is chosen once per process), on clustered unit vectors: its time against
the float32 GEMM limit (NumPy's sgemm rate, probed right before each run) and against faiss
IndexFlatL2, and how many pairs its filter lets through to the exact kernel (a looser
bound sends more). Every path's neighbour lists must be identical, bit for bit, before
anything is timed."""

from __future__ import annotations

import pytest
from conftest import SgemmProbe, run_child

#: USL_FAST_GEMM value -> (the kind the engine reports when it runs, its name)
_GEMMS = {
    "avx512": (1, "own AVX-512 float32"),
    "avx512bf16": (5, "AVX-512 bfloat16 (vdpbf16ps)"),
    "avx512vnni": (6, "AVX-512 int16 (vpdpwssd)"),
    "amx": (2, "AMX bfloat16"),
    "blas": (0, "OpenBLAS float32"),
    # the AVX2 kernels need only AVX2 and FMA, so the AVX-512 path runs them too
    "avx2": (3, "own AVX2 float32"),
    "avx2i16": (4, "AVX2 int16 (vpmaddwd)"),
}

# usl_fast.knn on conftest.clustered_vectors(n, d) in a fresh interpreter: the GEMM kind that
# ran, the best of `rounds` times, the exact evaluations of the last run (counted only with
# USL_FAST_COUNT_EXACT=1) and a digest of the lists.
_CHILD = r"""
import hashlib, sys, time, numpy as np, usl_fast
from conftest import clustered_vectors
from usl_fast._backend import _cpu
n, d, k, threads, rounds = map(int, sys.argv[1:6])
x = clustered_vectors(n, d)
best = np.inf
for _ in range(rounds):
    before = _cpu.exact_evaluations()
    t0 = time.perf_counter()
    dist, idx = usl_fast.knn(x, k, threads=threads)
    best = min(best, time.perf_counter() - t0)
digest = hashlib.sha256(dist.tobytes() + idx.tobytes()).hexdigest()
print(_cpu.gemm_kind(), best, _cpu.exact_evaluations() - before, digest)
"""


def _child(gemm: str, n: int, d: int, k: int, threads: int, rounds: int, count: bool):
    env = {"USL_FAST_GEMM": gemm, "USL_FAST_COUNT_EXACT": "1" if count else "0"}
    out = run_child(_CHILD, [n, d, k, threads, rounds], env)
    return int(out[0]), float(out[1]), int(out[2]), out[3]


def _sgemm_gflops(m: int, n: int, kk: int) -> float:
    return SgemmProbe(m, n, kk).rate(3)


@pytest.mark.parametrize("gemm", list(_GEMMS) + ["faiss"])
def test_knn_filter_gemm(bench, data, cfg, threads, results_cache, knn_k, gemm):
    n, d, k = cfg["knn"]["n"], cfg["knn"]["d"], knn_k
    g = cfg["gemm"]
    bench.group = f"knn self per filter GEMM, clustered n={n} d={d} k={k}"
    # The reference: the float32 filter's lists and exact evaluations (counted in a run of
    # their own, so that counting costs no timed run anything).
    if ("float32", k) not in results_cache:
        results_cache[("float32", k)] = _child("avx512", n, d, k, threads, 1, True)
    ref_kind, _, ref_evals, ref_digest = results_cache[("float32", k)]
    if ref_kind != 1:
        pytest.skip("no AVX-512 path: the filter GEMMs here are AVX-512 ones")
    if gemm == "faiss":
        import faiss

        x = data(n, d, "clustered")
        faiss.omp_set_num_threads(threads)

        def run():
            index = faiss.IndexFlatL2(d)
            index.add(x)
            return index.search(x, k)  # both list the row itself first

        bench.extra_info.update(impl="faiss IndexFlatL2", n=n, d=d, k=k)
        bench.time(run)
        return
    want, name = _GEMMS[gemm]
    kind, _, evals, digest = _child(gemm, n, d, k, threads, 1, True)
    if kind != want:
        pytest.skip(f"USL_FAST_GEMM={gemm}: this CPU or build runs GEMM kind {kind} instead")
    assert digest == ref_digest, f"USL_FAST_GEMM={gemm}: neighbour lists differ from float32's"
    # (sgemm probe, kNN) pairs back to back; the best of each, measured seconds apart.
    pairs = []
    for _ in range(3):
        rate = _sgemm_gflops(g["m"], g["n"], g["k"])
        pairs.append((_child(gemm, n, d, k, threads, 1, False)[1], rate))
    t = min(p[0] for p in pairs)
    rate = max(p[1] for p in pairs)
    limit = n * n * d / (rate * 1e9)
    bench.extra_info.update(
        impl=f"usl_fast USL_FAST_GEMM={gemm}",
        tile_gemm=name,
        n=n,
        d=d,
        k=k,
        knn_seconds=[p[0] for p in pairs],
        sgemm_gflops=[p[1] for p in pairs],
        time_over_gemm_limit=t / limit,
        exact_evaluations=evals,
        exact_evaluations_per_row=evals / n,
        exact_evaluations_over_float32=evals / ref_evals,
    )
    # The timed rounds (process start and data generation included: the pairs above hold
    # the kNN's own time).
    bench.time(lambda: _child(gemm, n, d, k, threads, 1, False))
    bench.extra_info["summary"] = {
        f"USL_FAST_GEMM={gemm} ({name})": (
            f"kNN {t:.2f} s = {t / limit:.2f} x the float32 GEMM limit ({limit:.2f} s at "
            f"{rate:.0f} GFLOP/s); {evals / n:.0f} exact evaluations a row "
            f"({evals / ref_evals:.2f} x float32's)"
        ),
    }
