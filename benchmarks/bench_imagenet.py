"""select() at ImageNet-1k size on this machine: 1,281,167 x 128 unit vectors from a
1,000-component mixture, defaults="imagenet", m = 2,911. Runs only with --scale=imagenet
(about an hour on 2 cores); reports each phase, the GEMM limit of the kNN pass measured in
the same session, and the peak RSS growth beside README's formula."""

from __future__ import annotations

import numpy as np
from conftest import GEMM_NAMES, SgemmProbe, clustered_vectors


def _gemm_gflops(d: int) -> float:
    # The same product as bench_knn.py's "gemm limit" (4096 x 4096 x 512): a d = 128 probe
    # runs far below the machine's sgemm rate and would flatter the kNN.
    del d
    return SgemmProbe(4096, 4096, 512).rate(3)


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # VmHWM := current RSS (Linux >= 4.0)
        f.write("5")


def test_select_imagenet_scale(bench, cfg, threads):
    c = cfg["imagenet"]
    n, d, m = c["n"], c["d"], c["m"]
    import usl_fast

    x = clustered_vectors(n, d, n_centers=c["n_centers"])
    bench.group = f"select imagenet n={n} d={d} m={m}"
    gflops = _gemm_gflops(d)
    _reset_peak()
    rss0 = _vm("VmRSS")
    info: dict = {}

    def once():
        info["res"] = usl_fast.select(x, m, defaults="imagenet", return_info=True, progress=True)

    bench.time(once)
    res = info["res"]
    assert np.unique(np.asarray(res.indices)).size == m
    t = res.timings
    limit = n * n * d / (gflops * 1e9)  # symmetric pass: n^2 d multiply-adds = n^2 d flops x2 / 2
    peak = _vm("VmHWM")
    from usl_fast._backend import _cpu

    formula = n * (8 * (2 * 20 + 16) + 8 + 12)
    images = _cpu.filter_image_bytes(n, d)  # the 16-bit filters' row images, 0 elsewhere
    bench.extra_info.update(
        impl="usl_fast",
        n=n,
        d=d,
        m=m,
        phases=t,
        numpy_sgemm_gflops=gflops,
        knn_gemm_limit_seconds=limit,
        peak_rss_growth_bytes=peak - rss0,
        formula_bytes=formula,
        image_bytes=images,
    )
    gemm = GEMM_NAMES[_cpu.gemm_kind()]
    bench.extra_info.update(tile_gemm=gemm)
    bench.extra_info["summary"] = {
        "tile GEMM (filter)": gemm,
        "phases": ", ".join(f"{k} {v:.0f} s" for k, v in t.items())
        + f"; total {sum(t.values()):.0f} s",
        "kNN density vs GEMM limit": f"{t['density'] / limit:.2f} x (limit {limit:.0f} s at "
        f"{gflops:.0f} GFLOP/s NumPy sgemm)",
        "peak RSS growth": f"{(peak - rss0) / 2**20:.0f} MiB (formula n (16k + 148) B = "
        f"{formula / 2**20:.0f} MiB, plus the filter's row images {images / 2**20:.0f} MiB; "
        f"features {n * d * 4 / 2**20:.0f} MiB, read in place)",
    }
