"""TypiClust and ProbCover, usl_fast against scikit-activeml 1.0.1 (skactiveml.pool), m = 40
picks on clustered unit vectors: time in this process (pytest-benchmark) and peak RSS growth
of each library in a fresh process (bench_memory.py's method), with the ratios
scikit-activeml / usl_fast from the same run. At --scale=full also written to
results/methods.{json,md}. tests/test_skactiveml.py shows the picks agree where the
definitions can be made to; here each library runs as a user would call it:

- TypiClust: ours configured to their rule (k = 5 plain-L2 neighbours, no small-cluster
  drop) so the work differs only in the clustering: ours the engine's k-means (k-means++,
  <= 300 Lloyd iterations), theirs scikit-learn KMeans (k-means++, n_init="auto" = 1,
  <= 300 iterations, tol 1e-4), both with K = 40.
- ProbCover: the same fixed delta for both (theirs: ``deltas=[delta]``, which skips the
  purity search), so both times are the delta-ball graph plus the greedy: ours a CSR graph
  of the edges, theirs a dense n x n ``pairwise_distances`` matrix (float32 for float32
  input, float64 for float64) and an n x n boolean edge matrix.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
METHODS = ["typiclust", "probcover"]
IMPLS = ["usl_fast", "skactiveml"]

#: Sizes per --scale (conftest's SCALES is not ours to edit). "full" is the issue's size.
#: separate: one child process per (library, method), run one at a time; tiny runs one per
#: library, both at once (importing skactiveml loads torch: seconds per process).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"n": 2_000, "d": 16, "m": 40, "delta": 0.6, "separate": False},
    "full": {"n": 20_000, "d": 64, "m": 40, "delta": 0.6, "separate": True},
}
DATA = "clustered unit vectors (conftest.clustered_vectors: 100 centres, spread 0.5), seed 0"


# ----------------------------------------------------------------------------- the calls


def run_usl_fast(method: str, x: np.ndarray, m: int, delta: float, threads: int):
    import usl_fast

    if method == "typiclust":
        est = usl_fast.TypiClust(
            seed=0, k=5, metric="euclidean", min_cluster_size=0, normalize=False, threads=threads
        )
    else:
        est = usl_fast.ProbCover(delta=delta, normalize=False, seed=0, threads=threads)
    return est.fit(x, m)


def run_skactiveml(method: str, x: np.ndarray, m: int, delta: float):
    from skactiveml.pool import ProbCover, TypiClust

    y = np.full(x.shape[0], np.nan)  # nothing labeled (missing_label=np.nan)
    if method == "typiclust":
        est = TypiClust(random_state=0)
        return est, est.query(x, y, batch_size=m)
    est = ProbCover(deltas=[delta], random_state=0)
    with warnings.catch_warnings():
        # One delta: the purity search is skipped and reported as "maximum purity -1".
        warnings.filterwarnings("ignore", message="The maximum purity was")
        return est, est.query(x, y, batch_size=m)


# ----------------------------------------------------------------------------- the child

CHILD = r"""
import json, os, sys, time
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
sys.path.append(os.getcwd())  # bench_methods itself, last: never shadows an installed package
import numpy as np
from _rss import reset_peak, rss, status

path, impl, methods, m, delta, threads = sys.argv[1:7]
methods, m, delta, threads = methods.split(","), int(m), float(delta), int(threads)

rss_start = rss()
from bench_methods import run_skactiveml, run_usl_fast
if impl == "usl_fast":
    import usl_fast
    call = lambda meth, x: run_usl_fast(meth, x, m, delta, threads)
else:
    import skactiveml.pool
    call = lambda meth, x: run_skactiveml(meth, x, m, delta)
rss_import = rss() - rss_start
x = np.load(path)
out = {"rss_import": rss_import}
for meth in methods:
    call(meth, np.ascontiguousarray(x[:500]))  # warm-up: code, BLAS and OpenMP pools loaded
    was_reset = reset_peak()
    peak0, rss0 = status("VmHWM"), rss()
    t0 = time.perf_counter()
    res = call(meth, x)
    seconds = time.perf_counter() - t0
    peak1 = status("VmHWM")
    picks = res.indices_ if impl == "usl_fast" else res[1]
    extra = {}
    if impl == "skactiveml" and meth == "probcover":
        extra["dense_matrix_bytes"] = int(res[0].distances_.nbytes)
        extra["dense_matrix_dtype"] = str(res[0].distances_.dtype)
    if impl == "usl_fast" and meth == "probcover":
        extra["n_edges"] = int(res.n_edges_)
    del res
    out[meth] = dict(picks=[int(i) for i in picks], seconds=seconds, peak_before=peak0,
                     rss_before=rss0, peak_after=peak1, peak_was_reset=was_reset, **extra)
print(json.dumps(out))
"""


def start_child(path: Path, impl: str, methods: list[str], m: int, delta: float, threads: int):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)  # the parent's thread limit, for scikit-learn and NumPy
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), impl, ",".join(methods), str(m), str(delta)]
        + [str(threads)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE,
    )


def finish_child(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, f"child failed:\n{stdout}\n{stderr}"
    return json.loads(stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def size(scale: str) -> dict[str, Any]:
    if scale not in SIZES:
        pytest.skip(f"no methods benchmark at --scale={scale}")
    pytest.importorskip("skactiveml.pool")
    return SIZES[scale]


@pytest.fixture(scope="module")
def features(size, data) -> np.ndarray:
    return np.ascontiguousarray(data(size["n"], size["d"], "clustered"))


@pytest.fixture(scope="module")
def memory(size, features, threads, tmp_path_factory):
    """memory(method, impl) -> the child's measurement (each child runs once)."""
    path = tmp_path_factory.mktemp("methods") / "x.npy"
    np.save(path, features)
    cache: dict[tuple[str, str], dict] = {}

    def run(jobs: list[tuple[str, list[str]]]) -> None:
        # Children started together run side by side (tiny: import-bound, seconds saved);
        # peak RSS is per process, and the reported times come from this process.
        procs = [
            (impl, todo, start_child(path, impl, todo, size["m"], size["delta"], threads))
            for impl, todo in jobs
        ]
        for impl, todo, proc in procs:
            out = finish_child(proc)
            for meth in todo:
                cache[(meth, impl)] = dict(out[meth], rss_import=out["rss_import"])

    def get(method: str, impl: str) -> dict:
        if (method, impl) not in cache:
            if size["separate"]:  # full: one at a time, nothing else running beside it
                run([(impl, [method])])
            else:
                run([(name, METHODS) for name in IMPLS])
        return cache[(method, impl)]

    return get


@pytest.fixture(scope="module")
def records(request, size, scale):
    """Finished cases; at module end the ratios are printed (and written at full scale)."""
    rows: list[dict[str, Any]] = []
    yield rows
    if rows:
        _summary(request.config, scale, size, rows)


# ----------------------------------------------------------------------------- checks


def _check_typiclust(x, picks, threads) -> dict[str, Any]:
    """Both: m distinct valid indices. Theirs given our clusters picks our set (the order
    can differ only between clusters of equal size, which skactiveml orders at random)."""
    from skactiveml.pool import TypiClust

    m = len(picks["usl_fast"])
    for name, p in picks.items():
        assert len(p) == m and np.unique(p).size == m, f"{name}: not {m} distinct picks"
        assert min(p) >= 0 and max(p) < x.shape[0]
    ours = run_usl_fast("typiclust", x, m, 0.0, threads)
    labels = np.asarray(ours.labels_)
    counts = np.bincount(labels, minlength=ours.n_clusters_)
    out: dict[str, Any] = {
        "picks_shared_with_peer": int(np.intersect1d(picks["usl_fast"], picks["skactiveml"]).size)
    }
    if counts.min() < 10:  # both use k = 5 only in clusters of >= 10 points
        out["same_clusters_check"] = f"skipped: a cluster of {counts.min()} points"
        return out

    class Given:
        def __init__(self, n_clusters):
            assert n_clusters == ours.n_clusters_

        def fit_predict(self, X):
            return labels

    theirs = TypiClust(random_state=0, cluster_algo=Given).query(
        x, np.full(x.shape[0], np.nan), batch_size=m
    )
    assert set(theirs.tolist()) == set(np.asarray(ours.indices_).tolist())
    out["same_clusters_check"] = "skactiveml given usl_fast's clusters picks the same set"
    return out


def _coverage(x, picks, delta) -> float:
    p = x[np.asarray(picks)].astype(np.float64)
    xx = x.astype(np.float64)
    d2 = (xx * xx).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2.0 * xx @ p.T
    return float((d2 < delta * delta).any(axis=1).mean())


def _check_probcover(x, picks, delta, threads) -> dict[str, Any]:
    """Both: m distinct valid indices; their first pick has the maximal degree (ours is
    the first index of maximal degree; theirs a random one); coverage of each pick set."""
    m = len(picks["usl_fast"])
    for name, p in picks.items():
        assert len(p) == m and np.unique(p).size == m, f"{name}: not {m} distinct picks"
        assert min(p) >= 0 and max(p) < x.shape[0]
    import usl_fast

    deg = np.asarray(usl_fast.range_count(x, delta * delta, threads=threads))
    first = [picks["usl_fast"][0], picks["skactiveml"][0]]
    assert deg[first[0]] == deg.max() and abs(int(deg[first[1]]) - int(deg.max())) <= 1, (
        f"first picks' degrees {deg[first].tolist()}, max {deg.max()}"
    )
    cov = {name: _coverage(x, p, delta) for name, p in picks.items()}
    # Different tie-breaking (random vs first index) can change later picks, not the gain.
    assert abs(cov["usl_fast"] - cov["skactiveml"]) <= 0.05, cov
    return {
        "picks_shared_with_peer": int(np.intersect1d(picks["usl_fast"], picks["skactiveml"]).size),
        "coverage_usl_fast": round(cov["usl_fast"], 4),
        "coverage_skactiveml": round(cov["skactiveml"], 4),
        "max_degree": int(deg.max()),
        "mean_degree": round(float(deg.mean()), 2),
    }


# ----------------------------------------------------------------------------- benchmark


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", METHODS)
def test_method(
    benchmark, size, features, memory, records, results_cache, threads, rounds, method, impl
):
    x = features
    n, d, m, delta = x.shape[0], x.shape[1], size["m"], size["delta"]

    # Check first, on the children's picks (the memory runs double as the check runs).
    if (method, "check") not in results_cache:
        picks = {name: memory(method, name)["picks"] for name in IMPLS}
        if method == "typiclust":
            results_cache[(method, "check")] = _check_typiclust(x, picks, threads)
        else:
            results_cache[(method, "check")] = _check_probcover(x, picks, delta, threads)
    mem = memory(method, impl)

    if impl == "usl_fast":
        fn = lambda: run_usl_fast(method, x, m, delta, threads)  # noqa: E731
    else:
        fn = lambda: run_skactiveml(method, x, m, delta)  # noqa: E731
    benchmark.group = f"{method} n={n} d={d} m={m}"
    growth = mem["peak_after"] - mem["rss_before"]
    benchmark.extra_info.update(
        impl=impl,
        n=n,
        d=d,
        m=m,
        threads=threads,
        device="cpu",
        data=DATA,
        peak_rss_growth_bytes=growth,
        child_seconds=mem["seconds"],
        import_rss_bytes=mem["rss_import"],
        **({"delta": delta} if method == "probcover" else {"K": m}),
        **{k: v for k, v in mem.items() if k in ("n_edges", "dense_matrix_bytes")},
        **results_cache[(method, "check")],
    )
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.stats is None:  # --benchmark-disable
        return
    records.append(
        {
            "method": method,
            "impl": impl,
            "n": n,
            "d": d,
            "m": m,
            "min_s": float(benchmark.stats.stats.min),
            "rounds": int(benchmark.stats.stats.rounds),
            "peak_rss_growth_bytes": int(growth),
            "extra_info": {k: v for k, v in benchmark.extra_info.items() if k != "impl"},
        }
    )


# ----------------------------------------------------------------------------- summary


def _ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for meth in METHODS:
        by = {r["impl"]: r for r in rows if r["method"] == meth}
        if set(by) != set(IMPLS):
            continue
        o, t = by["usl_fast"], by["skactiveml"]
        out[meth] = {
            "time_s": {"usl_fast": o["min_s"], "skactiveml": t["min_s"]},
            "peak_rss_growth_bytes": {
                "usl_fast": o["peak_rss_growth_bytes"],
                "skactiveml": t["peak_rss_growth_bytes"],
            },
            "time_ratio_skactiveml_over_usl_fast": t["min_s"] / o["min_s"],
            # Under 1 MiB the growth is allocator noise (pages reused from the warm-up).
            "memory_ratio_skactiveml_over_usl_fast": (
                t["peak_rss_growth_bytes"] / o["peak_rss_growth_bytes"]
                if o["peak_rss_growth_bytes"] >= 2**20
                else None
            ),
        }
    return out


def _ratio(v: float | None) -> str:
    return "n/a (usl_fast < 1 MiB)" if v is None else f"x{v:.1f}"


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def _summary(config, scale: str, size: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    ratios = _ratios(rows)
    lines = []
    for meth, r in ratios.items():
        lines.append(
            f"{meth:<10} time usl_fast {r['time_s']['usl_fast']:.3f} s, skactiveml "
            f"{r['time_s']['skactiveml']:.3f} s ({_ratio(r['time_ratio_skactiveml_over_usl_fast'])}); "
            f"peak RSS growth usl_fast {_mib(r['peak_rss_growth_bytes']['usl_fast'])} MiB, "
            f"skactiveml {_mib(r['peak_rss_growth_bytes']['skactiveml'])} MiB "
            f"({_ratio(r['memory_ratio_skactiveml_over_usl_fast'])})"
        )
    tr = config.pluginmanager.get_plugin("terminalreporter")
    cap = config.pluginmanager.get_plugin("capturemanager")
    if tr is not None:
        # Module teardown runs under output capture: lift it, as pytest's live logging does.
        with cap.global_and_fixture_disabled() if cap is not None else contextlib.nullcontext():
            tr.write_line("")
            tr.write_line(f"methods vs scikit-activeml (scale={scale}, skactiveml / usl_fast):")
            for ln in lines:
                tr.write_line("    " + ln)
    if scale != "full":
        return
    # benchmarks/conftest.py as pytest loaded it ("import conftest" may name tests/conftest.py
    # when both directories are collected).
    here = [
        p
        for p in config.pluginmanager.get_plugins()
        if getattr(p, "__file__", None) and Path(p.__file__).resolve() == HERE / "conftest.py"
    ]
    machine = here[0].machine_facts(config)
    try:
        import skactiveml
        import sklearn

        machine["versions"].update(skactiveml=skactiveml.__version__, sklearn=sklearn.__version__)
    except ImportError:
        pass
    doc = {
        "scale": scale,
        "sizes": size,
        "data": DATA,
        "command": "python -m pytest benchmarks/bench_methods.py --scale=full"
        + (f" --threads={config.getoption('--threads')}" if config.getoption("--threads") else "")
        + (f" --rounds={config.getoption('--rounds')}" if config.getoption("--rounds") else ""),
        "run_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "ratios": ratios,
        "cases": rows,
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "methods.json").write_text(json.dumps(doc, indent=2, default=_plain) + "\n")
    (out / "methods.md").write_text(_markdown(doc))
    if tr is not None:
        with cap.global_and_fixture_disabled() if cap is not None else contextlib.nullcontext():
            tr.write_line(f"    written: {out / 'methods.json'} and {out / 'methods.md'}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(type(obj))


def _markdown(doc: dict[str, Any]) -> str:
    s, mach = doc["sizes"], doc["machine"]
    lines = [
        "# TypiClust and ProbCover: usl_fast vs scikit-activeml",
        "",
        f"`{doc['command']}`, {doc['run_at']}. Data: {s['n']:,} x {s['d']} {doc['data']}; "
        f"m = {s['m']} picks; ProbCover delta = {s['delta']} for both. Machine: "
        f"{mach.get('cpu')}, {mach.get('threads_used')} threads, {mach.get('memory_gib')} GiB; "
        f"1-min load average {mach.get('load_avg_1m_at_start')} at start, "
        f"{mach.get('load_avg_1m_at_end')} at end. Versions: "
        + ", ".join(f"{k} {v}" for k, v in mach.get("versions", {}).items())
        + ".",
        "",
        "Time: minimum over the timed rounds in one process. Memory: peak RSS growth during "
        "the call in a fresh process per library and method (VmHWM reset just before the "
        "call, minus the RSS then, after imports, a warm-up call and loading the data).",
        "",
        "| method | usl_fast (s) | scikit-activeml (s) | time ratio | usl_fast peak (MiB) "
        "| scikit-activeml peak (MiB) | memory ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for meth, r in doc["ratios"].items():
        lines.append(
            f"| {meth} | {r['time_s']['usl_fast']:.3f} | {r['time_s']['skactiveml']:.3f} | "
            f"{_ratio(r['time_ratio_skactiveml_over_usl_fast'])} | "
            f"{_mib(r['peak_rss_growth_bytes']['usl_fast'])} | "
            f"{_mib(r['peak_rss_growth_bytes']['skactiveml'])} | "
            f"{_ratio(r['memory_ratio_skactiveml_over_usl_fast'])} |"
        )
    lines += ["", "Ratios are scikit-activeml / usl_fast (> 1: usl_fast is faster / smaller).", ""]
    for case in doc["cases"]:
        keep = {
            k: v
            for k, v in case["extra_info"].items()
            if k not in ("n", "d", "m", "threads", "device", "data")
        }
        lines.append(f"- {case['method']} / {case['impl']}: " + json.dumps(keep, default=_plain))
    return "\n".join(lines) + "\n"
