"""Peak memory of usl_fast.select (ImageNet flavour, k = 20) in a fresh process: how far
the peak resident set grows during the call, against the formula README states (the kNN
candidate buffers plus a few per-point vectors; the features are read in place and no
(n, k) lists exist), and against the n x n / n x m matrices USL never forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: Allowed peak growth during select(): C_INPUT * expected_bytes(n, k) + SLACK_BYTES, where
#: expected = the self kNN pass's candidate buffers, 8 (2k + 16) + 8 bytes per row, plus
#: PER_POINT bytes per row of per-point vectors alive at the same time (norms 4, density 4,
#: and with the AMX filter the norms of the centred rows, 4).
#: SLACK covers allocator, OpenMP / BLAS per-thread tiles and the row-block validation pass.
C_INPUT = 1.25
SLACK_BYTES = 32 * 2**20
PER_POINT = 12


def expected_bytes(n: int, k: int) -> int:
    return n * (8 * (2 * k + 16) + 8 + PER_POINT)


CHILD = r"""
import json, os, resource, sys, time
import numpy as np
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.path.append(os.getcwd())  # benchmarks/, last: never shadows an installed package
import usl_fast
from _rss import reset_peak, rss, status

n, d, k, m, iters, threads = (int(v) for v in sys.argv[1:7])

def unit(n, d, seed):  # no (n, d) temporaries besides the result
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x

# Warm-up on a small problem: loads the engine, BLAS and OpenMP pools, so what follows
# measures only memory that grows with the problem.
usl_fast.select(unit(2000, d, 1), m, defaults="imagenet", k=k, kmeans_iter=2, threads=threads)
x = unit(n, d, 0)
was_reset = reset_peak()
peak0, rss0 = status("VmHWM"), rss()
t0 = time.perf_counter()
picks = usl_fast.select(x, m, defaults="imagenet", k=k, kmeans_iter=iters, threads=threads)
seconds = time.perf_counter() - t0
assert np.unique(np.asarray(picks)).size == m
print(json.dumps(dict(peak_before=peak0, rss_before=rss0, peak_after=status("VmHWM"),
                      rss_after=rss(), peak_was_reset=was_reset, select_seconds=seconds,
                      ru_maxrss_after=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def run_child(n, d, k, m, iters, threads) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *(str(v) for v in (n, d, k, m, iters, threads))],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_select_peak_memory(bench, cfg, threads):
    c = cfg["memory"]
    n, d, k, m, iters = c["n"], c["d"], c["k"], c["m"], c["kmeans_iter"]
    bench.group = f"memory select imagenet n={n} d={d} k={k} m={m}"
    bench.extra_info.update(impl="usl_fast", n=n, d=d, k=k, m=m, kmeans_iter=iters)

    out: dict = {}

    def once():
        out.update(run_child(n, d, k, m, iters, threads))

    bench.time(once)  # times the whole child: start-up, data, warm-up and select()

    # Peak RSS after the call minus the resident size before it. The peak is VmHWM, reset
    # to the current RSS just before the call (clear_refs): ru_maxrss cannot be used in a
    # child of a large parent, since Linux folds the forked copy's RSS (the parent's, e.g.
    # 150 MiB with faiss loaded) into it at exec. Without the reset, a higher peak from
    # before the call would overstate the growth by at most pre_call_peak_gap_bytes.
    growth = out["peak_after"] - out["rss_before"]
    input_bytes = n * d * 4
    knn_bytes = expected_bytes(n, k)  # candidate buffers + per-point vectors
    bound = C_INPUT * knn_bytes + SLACK_BYTES
    MiB = 2**20
    bench.extra_info.update(
        measured=(
            "fresh process; peak RSS (VmHWM, reset by /proc/self/clear_refs just before the "
            "call) after select() minus the RSS (/proc/self/statm) after a small warm-up "
            "select() and loading the data; select() wall time inside it. Benchmark time = "
            "the whole child process."
        ),
        peak_growth_bytes=growth,
        rss_before_bytes=out["rss_before"],
        peak_before_bytes=out["peak_before"],
        pre_call_peak_gap_bytes=max(0, out["peak_before"] - out["rss_before"]),
        peak_was_reset=out["peak_was_reset"],
        ru_maxrss_after_bytes=out["ru_maxrss_after"],
        select_seconds=out["select_seconds"],
        input_bytes=input_bytes,
        knn_bytes=knn_bytes,
        bound_bytes=bound,
        growth_over_formula=growth / knn_bytes,
        n_by_n_float32_bytes=n * n * 4,
        n_by_m_float64_bytes=n * m * 8,
    )
    bench.extra_info["summary"] = {
        "peak RSS growth in select()": (
            f"{growth / MiB:.1f} MiB = {growth / knn_bytes:.2f} x the formula "
            f"n (16k + 148) B = {knn_bytes / MiB:.1f} MiB (features {input_bytes / MiB:.1f} MiB, "
            "read in place); "
            f"n x n float32 would be {n * n * 4 / MiB:.0f} MiB, n x m float64 "
            f"{n * m * 8 / MiB:.1f} MiB; select() {out['select_seconds']:.2f} s"
        )
    }
    assert growth <= bound, (
        f"select() grew the peak RSS by {growth / MiB:.1f} MiB, more than "
        f"{C_INPUT} x n (16k + 148) B + {SLACK_BYTES / MiB:.0f} MiB = {bound / MiB:.1f} MiB"
    )
    assert growth < n * n * 4 / 10, "peak growth is within 10x of an n x n float32 matrix"
