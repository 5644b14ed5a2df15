"""What each selection method costs at CIFAR size: usl_fast.select(x, m, method=...) on
50,000 x 128 clustered unit vectors (conftest.clustered_vectors), m = 40 and 400, every
method with its defaults (USL: the CIFAR-10 preset; ProbCover: the authors' delta 0.6),
plus a second round (m more with labeled= the first m). Wall time in this process and the
result's own phase timings. At --scale=full writes results/methods_cost.{json,md}.

    python -m pytest benchmarks/bench_methods_cost.py --scale=full
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from conftest import clustered_vectors

HERE = Path(__file__).resolve().parent
METHODS = ["usl", "typiclust", "probcover", "kcenter", "random"]
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(n=2_000, d=16, budgets=[10]),
    "full": dict(n=50_000, d=128, budgets=[40, 400]),
}
_ROWS: List[Dict[str, Any]] = []


@pytest.fixture(scope="module")
def size(scale):
    if scale not in SIZES:
        pytest.skip(f"no method-cost benchmark at --scale={scale}")
    return SIZES[scale]


@pytest.fixture(scope="module")
def x(size):
    return clustered_vectors(size["n"], size["d"], seed=0)


@pytest.fixture(scope="module", autouse=True)
def _write(request, scale):
    yield
    if scale != "full" or not _ROWS:
        return
    doc = dict(
        command="python -m pytest benchmarks/bench_methods_cost.py --scale=full",
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        date=time.strftime("%Y-%m-%dT%H:%M:%S"),
        rows=_ROWS,
    )
    (HERE / "results" / "methods_cost.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# Cost of each selection method, 50,000 x 128 (usl_fast.select, method=...)",
        "",
        f"`{doc['command']}`, {doc['date']}, {doc['machine']}; load average at start "
        f"{_ROWS[0]['load']:.1f}. Wall seconds of one call (the first round), and of the "
        "second round (m more with labeled= the first m).",
        "",
        "| m | method | first round (s) | second round (s) | phases of the first round (s) |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for r in _ROWS:
        ph = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items() if v >= 0.005)
        lines.append(
            f"| {r['m']} | {r['method']} | {r['first_s']:.2f} | {r['second_s']:.2f} | {ph} |"
        )
    (HERE / "results" / "methods_cost.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("method", METHODS)
def test_method_cost(x, size, method, threads):
    import usl_fast

    kw: Dict[str, Any] = dict(method=method, seed=0)
    if method != "random":
        kw["threads"] = threads
    if method == "usl" and x.shape[0] < 500:
        kw["k"] = 20
    for m in size["budgets"]:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        r = usl_fast.select(x, m, return_info=True, **kw)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        r2 = usl_fast.select(x, m, labeled=r.indices, return_info=True, **kw)
        second = time.perf_counter() - t0
        assert np.unique(r.indices).size == m and not np.isin(r2.indices, r.indices).any()
        _ROWS.append(
            dict(
                method=method,
                m=m,
                first_s=first,
                second_s=second,
                timings=dict(r.timings),
                load=load,
            )
        )
