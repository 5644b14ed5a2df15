"""Self kNN graph (the USL density step): usl_fast.knn(x, k) against faiss IndexFlatL2
(add x, search x, k) on the same unit vectors, and the GEMM limit: NumPy's sgemm rate
turned into the least time any exact kNN graph of that size can take on this machine."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import GEMM_NAMES, SgemmProbe, run_child

#: low-precision filter kind -> (the float32 GEMM of the same path, its kind)
_FLOAT32_OF = {2: ("avx512", 1), 4: ("avx2", 3), 5: ("avx512", 1), 6: ("avx512", 1)}

# usl_fast.knn on conftest.unit_vectors(n, d) in a fresh interpreter (the tile GEMM is chosen
# once per process; it runs in benchmarks/, so conftest is importable): best of 3 seconds,
# and the GEMM kind that ran.
_FLOAT32_FILTER_RUN = r"""
import sys, time, numpy as np, usl_fast
from conftest import unit_vectors
from usl_fast._backend import _cpu
n, d, k, threads = map(int, sys.argv[1:5])
x = unit_vectors(n, d)
best = np.inf
for _ in range(3):
    t0 = time.perf_counter()
    usl_fast.knn(x, k, threads=threads)
    best = min(best, time.perf_counter() - t0)
print(_cpu.gemm_kind(), best)
"""


def _knn_with_gemm(gemm: str, n: int, d: int, k: int, threads: int) -> tuple[int, float]:
    out = run_child(_FLOAT32_FILTER_RUN, [n, d, k, threads], {"USL_FAST_GEMM": gemm})
    return int(out[0]), float(out[1])


IMPLS = ["usl_fast", "faiss"]


def knn_usl_fast(usl, x: np.ndarray, k: int, threads: int):
    return usl.knn(x, k, threads=threads)


def knn_faiss(x: np.ndarray, k: int):
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    return index.search(x, k)


def neighbour_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of |row_a & row_b| / k (rows hold distinct indices)."""
    both = np.sort(np.concatenate([a, b], axis=1), axis=1)
    return float((both[:, 1:] == both[:, :-1]).sum() / a.size)


@pytest.fixture(scope="module")
def sgemm(cfg, threads):
    """NumPy float32 GEMM rate on the configured product: best of 5 after a warm-up."""
    g = cfg["gemm"]
    probe = SgemmProbe(g["m"], g["n"], g["k"])
    best = probe.seconds(5)
    return {
        "probe": probe,
        "a": probe.a,
        "b": probe.b,
        "out": probe.out,
        "m": probe.m,
        "n": probe.n,
        "k": probe.k,
        "seconds": best,
        "gflops": 2.0 * probe.m * probe.n * probe.k / best / 1e9,
    }


def test_gemm_limit(bench, sgemm, threads):
    """The roofline of the kNN graph: an n x n x d product at NumPy's sgemm rate."""
    m, n, kk = sgemm["m"], sgemm["n"], sgemm["k"]
    bench.group = f"gemm limit {m}x{n}x{kk} float32"
    a, b, out = sgemm["a"], sgemm["b"], sgemm["out"]
    bench.extra_info.update(impl="numpy sgemm", m=m, n=n, k=kk, gflops_best_of_5=sgemm["gflops"])
    bench.time(lambda: np.matmul(a, b, out=out))
    t = float(bench.stats.stats.min)
    bench.extra_info["gflops"] = 2.0 * m * n * kk / t / 1e9
    bench.extra_info["summary"] = {
        "NumPy sgemm GFLOP/s (best of 5, used for the kNN limit)": f"{sgemm['gflops']:.1f}",
    }


@pytest.mark.parametrize("impl", IMPLS)
def test_knn(bench, usl, data, cfg, threads, results_cache, sgemm, knn_k, impl):
    n, d = cfg["knn"]["n"], cfg["knn"]["d"]
    k = knn_k
    x = data(n, d, "unit")
    bench.group = f"knn self n={n} d={d} k={k}"
    runs = {
        "usl_fast": lambda: knn_usl_fast(usl, x, k, threads),
        "faiss": lambda: knn_faiss(x, k),
    }

    # Check first: both implementations on the same data, compared with each other.
    for name in IMPLS:
        if (name, k) not in results_cache:
            results_cache[(name, k)] = runs[name]()
    (du, iu), (df, if_) = results_cache[("usl_fast", k)], results_cache[("faiss", k)]
    assert du.shape == df.shape == (n, k) and iu.shape == if_.shape == (n, k)
    max_dist_diff = float(np.abs(du.astype(np.float64) - df).max())
    agreement = neighbour_agreement(np.asarray(iu), np.asarray(if_))
    assert max_dist_diff <= 1e-4, f"kNN distances differ from faiss by {max_dist_diff}"
    assert agreement > 0.99, f"kNN neighbour sets agree with faiss on only {agreement:.4f}"

    # Then time.
    bench.extra_info.update(
        impl=impl,
        n=n,
        d=d,
        k=k,
        max_abs_dist_diff_vs_peer=max_dist_diff,
        neighbour_agreement_vs_peer=agreement,
    )
    bench.time(runs[impl])
    t = float(bench.stats.stats.min)
    # A self kNN graph needs x @ x.T: 2 n^2 d flops dense, n^2 d using its symmetry.
    limit = n * n * d / (sgemm["gflops"] * 1e9)
    bench.extra_info.update(
        gflops_dense_equivalent=2.0 * n * n * d / t / 1e9,
        sgemm_gflops=sgemm["gflops"],
        gemm_limit_seconds=limit,
        time_over_gemm_limit=t / limit,
    )
    if impl == "usl_fast":
        # This machine's speed drifts between the probe at the start of the module and this
        # run; so also time three (sgemm probe, kNN) pairs back to back and compare the best
        # of each, measured within seconds of each other.
        pairs = []
        for _ in range(3):
            rate = _sgemm_rate(sgemm)
            t0 = time.perf_counter()
            runs[impl]()
            pairs.append((time.perf_counter() - t0, rate))
        t_pair = min(p[0] for p in pairs)
        rate_pair = max(p[1] for p in pairs)
        limit_pair = n * n * d / (rate_pair * 1e9)
        bench.extra_info.update(
            interleaved_knn_seconds=[p[0] for p in pairs],
            interleaved_sgemm_gflops=[p[1] for p in pairs],
            interleaved_time_over_gemm_limit=t_pair / limit_pair,
        )
        from usl_fast._backend import _cpu

        kind = _cpu.gemm_kind()
        bench.extra_info.update(tile_gemm=GEMM_NAMES[kind])
        summary = {}
        if kind in _FLOAT32_OF:
            # The limit is a float32 one; the 16-bit filters (AMX, AVX-512 bf16 / int16, AVX2
            # int16) multiply in bfloat16 or int16. Time the float32 filter too (the own kernel
            # of the same path, same data, a fresh process) so the table shows what the low
            # precision buys and where the float32 engine stands against the limit.
            gemm32, want32 = _FLOAT32_OF[kind]
            k32, t32 = _knn_with_gemm(gemm32, n, d, k, threads)
            assert k32 == want32
            rate32 = _sgemm_rate(sgemm)
            bench.extra_info.update(
                float32_filter_seconds=t32,
                float32_filter_over_gemm_limit=t32 / (n * n * d / (rate32 * 1e9)),
            )
            summary[f"float32 filter (USL_FAST_GEMM={gemm32}), fresh process"] = (
                f"{t32:.2f} s = {t32 / (n * n * d / (rate32 * 1e9)):.2f} x the limit at "
                f"{rate32:.0f} GFLOP/s measured right after; {GEMM_NAMES[kind]} is "
                f"{t32 / t:.2f} x faster"
            )
        bench.extra_info["summary"] = {
            "tile GEMM (filter)": GEMM_NAMES[kind],
            **summary,
            "usl_fast kNN time / GEMM-limit time (issue target <= 1.2)": (
                f"{t / limit:.2f} (limit n^2 d / sgemm rate = {limit:.3f} s "
                f"at {sgemm['gflops']:.1f} GFLOP/s)"
            ),
            "the same, three (sgemm, kNN) pairs back to back, best of each": (
                f"{t_pair / limit_pair:.2f} (kNN {t_pair:.2f} s, sgemm {rate_pair:.0f} GFLOP/s; "
                "pairs: " + ", ".join(f"{a:.2f} s / {r:.0f}" for a, r in pairs) + ")"
            ),
        }


def _sgemm_rate(sgemm) -> float:
    """The module's sgemm product again, best of 3, GFLOP/s."""
    return sgemm["probe"].rate(3)
