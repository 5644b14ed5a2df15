"""Exact-duplicate collapse (csrc/cpu/dedup.hpp): kNN density on rows with one duplicate
group of half the rows, and on all-zero rows, against the same size without duplicates
(without the collapse every pair of a group ties at 0 and the cost grows with the square of
the group); and what the detection costs on data without duplicates: the self kNN with and
without USL_FAST_DEDUP=0, in fresh processes (the switch is read once per process) run as
interleaved pairs, plus the detection pass alone against one kNN."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
from conftest import GEMM_NAMES, run_child

CASES = ["no duplicates", "usl_fast", "all zero"]  # usl_fast: one group of n / 2 rows


def _rows(case: str, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case == "all zero":
        return np.zeros((n, d), np.float32)
    x = rng.standard_normal((n, d), dtype=np.float32)
    if case == "usl_fast":
        x[rng.choice(n, n // 2, replace=False)] = x[0]
    return x


@pytest.mark.parametrize("case", CASES)
def test_density_with_duplicates(bench, usl, cfg, threads, case):
    c = cfg["dedup"]
    n, d, k = c["n"], c["d"], c["k"]
    x = _rows(case, n, d)
    bench.group = f"dedup density {n} {d} k={k}"
    out = usl.density(x, k, threads=threads)  # check (and warm-up): finite, positive
    assert out.shape == (n,) and np.isfinite(out).all() and (out > 0).all()
    from usl_fast._backend import _cpu

    groups = _cpu.duplicate_groups(x, np.empty(n, np.int32))
    bench.extra_info.update(
        impl=case,
        n=n,
        d=d,
        k=k,
        groups=int(groups) or n,
        dedup=bool(_cpu.dedup_enabled()),
        gemm=GEMM_NAMES[int(_cpu.gemm_kind())],
    )
    bench.time(lambda: usl.density(x, k, threads=threads))


# One self kNN in a fresh interpreter (cwd benchmarks/, so conftest imports): its seconds.
_KNN_RUN = r"""
import sys, time, numpy as np, usl_fast
from conftest import unit_vectors
from usl_fast._backend import _cpu
n, d, k, threads = map(int, sys.argv[1:5])
x = unit_vectors(n, d)
t0 = time.perf_counter()
usl_fast.knn(x, k, threads=threads)
print(int(_cpu.dedup_enabled()), _cpu.gemm_kind(), time.perf_counter() - t0)
"""


def _knn_seconds(switch: str, n: int, d: int, k: int, threads: int) -> tuple[int, int, float]:
    out = run_child(_KNN_RUN, [n, d, k, threads], {"USL_FAST_DEDUP": switch})
    return int(out[0]), int(out[1]), float(out[2])


def test_detection_overhead_without_duplicates(benchmark, usl, cfg, threads, data, request):
    """Median over interleaved (off, on) pairs of fresh-process self kNN times, and the
    detection pass alone (median of 5) against the median kNN: the cost the collapse adds
    where there is nothing to collapse. Recorded, not asserted (the machine may be shared)."""
    from usl_fast._backend import _cpu

    c = cfg["dedup"]
    n, d, k, pairs = c["n"], c["knn_d"], c["knn_k"], c["pairs"]
    benchmark.group = f"dedup overhead knn {n} {d} k={k}"
    off, on, ratios = [], [], []
    gemm = None
    for _ in range(pairs):
        f0, gemm, t0 = _knn_seconds("0", n, d, k, threads)
        f1, _, t1 = _knn_seconds("1", n, d, k, threads)
        assert (f0, f1) == (0, 1)
        off.append(t0)
        on.append(t1)
        ratios.append(t1 / t0)
    x = data(n, d)
    groups = np.empty(n, np.int32)
    det = []
    for _ in range(5):
        t = time.perf_counter()
        assert _cpu.duplicate_groups(x, groups) == 0
        det.append(time.perf_counter() - t)
    knn_med = statistics.median(off)
    info = dict(
        n=n, d=d, k=k, threads=threads, pairs=pairs, gemm=GEMM_NAMES[gemm],
        knn_off_s=off, knn_on_s=on, median_ratio_on_over_off=statistics.median(ratios),
        detection_s=statistics.median(det), detection_over_knn=statistics.median(det) / knn_med,
    )
    benchmark.extra_info.update(info)
    print(f"\n[dedup overhead] {info}")
    # the detection pass itself as the timed figure
    benchmark.pedantic(lambda: _cpu.duplicate_groups(x, groups), rounds=5, iterations=1)
