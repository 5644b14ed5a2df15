"""Shared machinery of the usl_fast benchmarks: the --scale/--threads/--rounds options, the
data fixtures, one thread setting for usl_fast and every peer, and the session summary
(usl_fast / peer ratios per group) printed at the end and written to results/<scale>.{json,md}.
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"

# Benchmark the INSTALLED package: `python -m pytest` puts the repository root on sys.path,
# where usl_fast/ has no compiled _cpu module unless it was built in place.
if not (any((ROOT / "usl_fast").glob("_cpu*.so")) or any((ROOT / "usl_fast").glob("_cpu*.pyd"))):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

# Problem sizes per scale. "full" is what README numbers come from; "tiny" exercises every
# benchmark (checks included) in a few seconds each for CI.
SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "knn": {"n": 3_000, "d": 32, "ks": (20, 400)},
        "gemm": {"m": 2048, "n": 2048, "k": 512},
        "kmeans": {"n": 3_000, "d": 32, "K": 50, "n_iter": 10},
        "select": {"n": 3_000, "d": 32, "ms": (40, 250), "kmeans_iter": 20},
        "memory": {"n": 20_000, "d": 32, "k": 20, "m": 40, "kmeans_iter": 10},
        "uslt": {"n": 2_000, "d": 32, "m": 40, "epochs": 10},
        "dedup": {"n": 3_000, "d": 16, "k": 100, "knn_d": 32, "knn_k": 20, "pairs": 3},
        "rounds": 3,
    },
    # select() at ImageNet-1k size (not in CI: about an hour on 2 cores); only
    # bench_imagenet.py runs at this scale, every other benchmark skips.
    "imagenet": {
        "imagenet": {"n": 1_281_167, "d": 128, "m": 2_911, "n_centers": 1_000},
        "rounds": 1,
    },
    "full": {
        "knn": {"n": 50_000, "d": 128, "ks": (20, 400)},
        "gemm": {"m": 4096, "n": 4096, "k": 512},
        "kmeans": {"n": 50_000, "d": 128, "K": 2_500, "n_iter": 100},
        "select": {"n": 50_000, "d": 128, "ms": (40, 2_500), "kmeans_iter": 200},
        "memory": {"n": 200_000, "d": 128, "k": 20, "m": 40, "kmeans_iter": 10},
        "uslt": {"n": 50_000, "d": 128, "m": 40, "epochs": None},
        "dedup": {"n": 50_000, "d": 16, "k": 100, "knn_d": 128, "knn_k": 20, "pairs": 5},
        "rounds": 1,
    },
}

#: Key of the list of finished benchmark records in config.stash.
RECORDS = pytest.StashKey[list[dict[str, Any]]]()
#: BLAS pools as configured while the benchmarks ran (read inside the threads fixture).
BLAS = pytest.StashKey[list[str]]()
LOAD_AT_START = pytest.StashKey["float | None"]()


# ----------------------------------------------------------------------------- options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("usl_fast benchmarks")
    group.addoption(
        "--scale",
        choices=sorted(SCALES),
        default="tiny",
        help="problem sizes: tiny (CI, seconds), full (the sizes README quotes, minutes) or "
        "imagenet (select() on 1,281,167 x 128, about an hour on 2 cores)",
    )
    group.addoption(
        "--threads",
        type=int,
        default=None,
        help="threads for usl_fast and every peer (default: os.cpu_count())",
    )
    group.addoption(
        "--rounds",
        type=int,
        default=None,
        help="timed rounds per case (default: 3 at tiny scale, 1 at full scale)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RECORDS] = []
    config.stash[LOAD_AT_START] = _loadavg()


def _loadavg() -> float | None:
    # 1-minute load average: on a small shared machine, anything else running shows here
    # and in the timings.
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parameters whose values depend on the scale.
    c = SCALES[metafunc.config.getoption("--scale")]
    if "knn_k" in metafunc.fixturenames:
        metafunc.parametrize("knn_k", c["knn"]["ks"], ids=lambda k: f"k={k}")
    if "select_m" in metafunc.fixturenames:
        metafunc.parametrize("select_m", c["select"]["ms"], ids=lambda m: f"m={m}")


def _benchmarks_named(config: pytest.Config) -> bool:
    """Whether the command line named this directory or a file or test in it."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return False  # no paths given: testpaths (or the current directory)
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def _marker_expression_given(config: pytest.Config) -> bool:
    """Whether the user chose a -m expression (the command line or PYTEST_ADDOPTS), rather
    than running under pyproject.toml's default -m 'not slow'."""
    import shlex

    args = list(config.invocation_params.args)
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    return any(a == "-m" or (a.startswith("-m") and not a.startswith("--")) for a in args)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    # Every benchmark at its tiny size takes minutes in all: they are `slow`, so the fast
    # default run (`pytest`, whose addopts deselect that marker) leaves them out, and
    # `pytest -m slow` or `-m "slow or not slow"` (CI) runs them. Asked for by path with no
    # -m of one's own (`pytest benchmarks --scale=full`, as the docs show) they run as asked.
    if _benchmarks_named(config) and not _marker_expression_given(config):
        return
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.slow)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # pyproject.toml's python_files names bench_*.py; should a run use another ini (or
    # none), still collect the benchmark files whenever this directory is collected. Files
    # pytest collects anyway (matching python_files, or named on the command line) are left
    # to it.
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    patterns = parent.config.getini("python_files") or []
    if any(
        fnmatch.fnmatch(file_path.name, pat) or fnmatch.fnmatch(str(file_path), pat)
        for pat in patterns
    ):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


# ----------------------------------------------------------------------------- environment


def import_usl_fast(retries: int = 30, wait: float = 1.0):
    """Import usl_fast, retrying for a while: a concurrent reinstall removes it briefly."""
    for attempt in range(retries):
        try:
            return importlib.import_module("usl_fast")
        except ImportError:
            if attempt == retries - 1:
                raise
            for name in [m for m in sys.modules if m == "usl_fast" or m.startswith("usl_fast.")]:
                del sys.modules[name]
            time.sleep(wait)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--scale")


@pytest.fixture(scope="session")
def cfg(scale: str) -> dict[str, Any]:
    return _ScaleConfig(scale, SCALES[scale])


class _ScaleConfig(dict):
    """The sizes of one scale; a benchmark with no entry at this scale is skipped."""

    def __init__(self, scale: str, values: dict[str, Any]):
        super().__init__(values)
        self.scale = scale

    def __missing__(self, key: str) -> Any:
        pytest.skip(f"no {key!r} benchmark at --scale={self.scale}")


@pytest.fixture(scope="session")
def rounds(request: pytest.FixtureRequest, cfg: dict[str, Any]) -> int:
    r = request.config.getoption("--rounds")
    return int(r) if r else int(cfg["rounds"])


@pytest.fixture(scope="session")
def threads(request: pytest.FixtureRequest) -> int:
    """The thread count every implementation uses (set once for the whole session)."""
    t = request.config.getoption("--threads") or os.cpu_count() or 1
    import faiss

    # Load every library whose pools are limited below before limiting them.
    import_usl_fast()
    try:
        import sklearn.cluster  # noqa: F401  (scipy's OpenBLAS, scikit-learn's OpenMP)
    except ImportError:
        pass

    faiss.omp_set_num_threads(t)
    limiter = None
    if t != (os.cpu_count() or 1):
        # NumPy's and scikit-learn's BLAS/OpenMP pools; usl_fast's own OpenBLAS is left
        # alone (the engine keeps it single-threaded inside its OpenMP tiles) and usl_fast
        # receives threads=t explicitly.
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        others = [
            lib.filepath for lib in ctl.lib_controllers if "scipy_openblas32" not in lib.filepath
        ]
        limiter = ctl.select(filepath=others).limit(limits=t)
    request.config.stash[BLAS] = _blas_info()
    yield t
    if limiter is not None:
        limiter.restore_original_limits()


@pytest.fixture(scope="session")
def usl(threads: int):
    return import_usl_fast()


# ----------------------------------------------------------------------------- data


#: _cpu.gemm_kind() -> the filter's tile GEMM that ran (csrc/cpu/gemm.cpp, gemm_kind), for
#: every benchmark that names it.
GEMM_NAMES = {
    0: "OpenBLAS float32",
    1: "own AVX-512 float32",
    2: "AMX bfloat16",
    3: "own AVX2 float32",
    4: "AVX2 int16",
    5: "AVX-512 bfloat16 (vdpbf16ps)",
    6: "AVX-512 int16 (vpdpwssd)",
}


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) float32 rows drawn from N(0, I) and L2-normalised (no (n, d) temporaries)."""
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


def run_child(script: str, args: Sequence[Any], env: dict[str, str] | None = None) -> list[str]:
    """``script`` in a fresh interpreter (a switch read once per process, such as
    USL_FAST_GEMM, takes effect there) with ``args`` and ``env`` added to this environment;
    it runs from this folder, so it can import conftest, and imports the usl_fast this
    session benchmarks, wherever that is installed. Returns its stdout, split."""
    import subprocess

    import usl_fast

    site = os.path.dirname(os.path.dirname(os.path.abspath(usl_fast.__file__)))
    full = dict(os.environ, **(env or {}))
    full["PYTHONPATH"] = site + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=full,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


class SgemmProbe:
    """NumPy's float32 GEMM on an (m x k) @ (k x n) product: the rate the kNN benchmarks
    call the float32 GEMM limit. The operands are kept, so that ``rate`` can be measured
    again right beside a timed run; child scripts import it too."""

    def __init__(self, m: int, n: int, k: int) -> None:
        rng = np.random.default_rng(0)
        self.m, self.n, self.k = m, n, k
        self.a = rng.standard_normal((m, k), dtype=np.float32)
        self.b = rng.standard_normal((k, n), dtype=np.float32)
        self.out = np.empty((m, n), np.float32)
        np.matmul(self.a, self.b, out=self.out)  # warm-up: threads, pages

    def seconds(self, repeats: int = 5) -> float:
        """The best of ``repeats`` products, seconds."""
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(self.a, self.b, out=self.out)
            best = min(best, time.perf_counter() - t0)
        return best

    def rate(self, repeats: int = 5) -> float:
        """GFLOP/s of the best of ``repeats`` products."""
        return 2.0 * self.m * self.n * self.k / self.seconds(repeats) / 1e9


def clustered_vectors(n: int, d: int, n_centers: int = 100, spread: float = 0.5, seed: int = 0):
    """Unit vectors around n_centers random directions (a Gaussian blob each, spread
    relative to the unit centre, then normalised): closer to real self-supervised features
    than uniform noise, with dense cores for the kNN density to find."""
    rng = np.random.default_rng(seed)
    centers = unit_vectors(n_centers, d, seed + 1)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= np.float32(spread / np.sqrt(d))
    x += centers[rng.integers(0, n_centers, n)]
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return x


@pytest.fixture(scope="session")
def data() -> Callable[..., np.ndarray]:
    """data(n, d, kind="unit"|"clustered") -> cached read-only float32 array, seed 0."""
    cache: dict[tuple, np.ndarray] = {}

    def get(n: int, d: int, kind: str = "unit") -> np.ndarray:
        key = (n, d, kind)
        if key not in cache:
            arr = unit_vectors(n, d) if kind == "unit" else clustered_vectors(n, d)
            arr.setflags(write=False)
            cache.clear()  # one data set alive at a time keeps full-scale memory flat
            cache[key] = arr
        return cache[key]

    return get


@pytest.fixture(scope="module")
def results_cache() -> dict[Any, Any]:
    """Per-module memo of each implementation's output, so every peer runs once for the
    check whichever case comes first, and the check run doubles as the warm-up."""
    return {}


# ----------------------------------------------------------------------------- timing


@pytest.fixture
def bench(benchmark, request: pytest.FixtureRequest, rounds: int, threads: int, scale: str):
    """pytest-benchmark's fixture plus a record of the result for the session summary.

    Use ``bench.time(fn)`` (pedantic: ``rounds`` rounds, one call each, no warm-up; the
    correctness check has already run every implementation once)."""
    benchmark.extra_info.update(threads=threads, scale=scale, device="cpu")

    def run_timed(fn: Callable[[], Any]) -> Any:
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)

    benchmark.time = run_timed  # type: ignore[attr-defined]
    yield benchmark
    meta = benchmark.stats
    if meta is None or benchmark.disabled:
        return
    s = meta.stats
    request.config.stash[RECORDS].append(
        {
            "group": benchmark.group or benchmark.name,
            "impl": benchmark.extra_info.get("impl", benchmark.param or benchmark.name),
            "test": request.node.nodeid,
            "min": float(s.min),
            "median": float(s.median),
            "mean": float(s.mean),
            "rounds": int(s.rounds),
            "extra_info": _jsonable(dict(benchmark.extra_info)),
        }
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ----------------------------------------------------------------------------- summary


def machine_facts(config: pytest.Config) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "os_cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_used": config.getoption("--threads") or os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1m_at_start": config.stash.get(LOAD_AT_START, None),
        "load_avg_1m_at_end": _loadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        facts["cpu"] = names[0] if names else platform.processor()
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        facts["memory_gib"] = round(kb / 2**20, 1)
    except OSError:
        facts["cpu"] = platform.processor()
    versions = {}
    for mod in ("usl_fast", "numpy", "faiss", "sklearn"):
        try:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
        except ImportError:
            versions[mod] = None
    facts["versions"] = versions
    if "usl_fast" in sys.modules:
        facts["usl_fast_path"] = str(Path(sys.modules["usl_fast"].__file__).parent)
    facts["blas"] = config.stash.get(BLAS, None) or _blas_info()
    return facts


def _blas_info() -> list[str]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [
        f"{i.get('prefix')} {i.get('version')} ({i.get('architecture')}, "
        f"{i.get('num_threads')} threads): {os.path.basename(i.get('filepath', ''))}"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]


def _groups(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """group -> {"rows": [...], "notes": {...}} with usl_fast/peer ratios (minimum times)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        g = out.setdefault(r["group"], {"rows": [], "notes": {}})
        g["rows"].append(r)
        g["notes"].update(r["extra_info"].get("summary", {}))
    for g in out.values():
        ours = [r for r in g["rows"] if r["impl"] == "usl_fast"]
        t_ours = ours[0]["min"] if ours else None
        for r in g["rows"]:
            r["usl_fast_over_this"] = (
                t_ours / r["min"] if t_ours is not None and r["impl"] != "usl_fast" else None
            )
    return out


def _fmt_s(t: float) -> str:
    return f"{t:.4f}" if t < 1 else f"{t:.2f}"


def _markdown(scale: str, machine: dict[str, Any], groups: dict[str, Any]) -> str:
    lines = [
        f"# usl_fast benchmarks, scale={scale}",
        "",
        (
            f"Machine: {machine.get('cpu')}, os.cpu_count()={machine.get('os_cpu_count')}, "
            f"threads used={machine.get('threads_used')}, {machine.get('memory_gib')} GiB, "
            f"{machine.get('platform')}, Python {machine.get('python')}."
        ),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()) + ".",
        "",
        (
            "Times are the minimum over the timed rounds, seconds, every implementation run in the "
            "same process on the same data after a correctness check against the others. "
            "`usl_fast / this` < 1 means usl_fast is faster. `load 1m`: the 1-minute load "
            "average at the start / end of the session that measured the group (anything else "
            "running on the machine shows there, and in the times)."
        ),
        "",
        "| group | implementation | time (s) | rounds | usl_fast / this | run at | load 1m |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for name, g in groups.items():
        for r in g["rows"]:
            ratio = r.get("usl_fast_over_this")
            load = g.get("machine", {}).get("load_avg_1m") or ["?", "?"]
            lines.append(
                f"| {name} | {r['impl']} | {_fmt_s(r['min'])} | {r['rounds']} | "
                f"{'' if ratio is None else f'{ratio:.3f}'} | {g.get('run_at', '')} | "
                f"{load[0]} / {load[1]} |"
            )
    notes = [(name, k, v) for name, g in groups.items() for k, v in g["notes"].items()]
    if notes:
        lines += ["", "| group | derived figure | value |", "| --- | --- | --- |"]
        lines += [f"| {name} | {k} | {v} |" for name, k, v in notes]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    records = config.stash.get(RECORDS, [])
    if not records:
        return
    scale = config.getoption("--scale")
    machine = machine_facts(config)
    groups = _groups(records)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    for g in groups.values():
        g["run_at"] = now
        g["machine"] = {
            "cpu": machine.get("cpu"),
            "os_cpu_count": machine["os_cpu_count"],
            "threads_used": machine["threads_used"],
            "load_avg_1m": [machine["load_avg_1m_at_start"], machine["load_avg_1m_at_end"]],
        }

    tr = terminalreporter
    tr.write_sep("=", f"usl_fast benchmark summary (scale={scale})")
    tr.write_line(
        f"machine: {machine.get('cpu')}; os.cpu_count()={machine['os_cpu_count']}; "
        f"threads used={machine['threads_used']}; 1-min load average at start/end "
        f"{machine['load_avg_1m_at_start']}/{machine['load_avg_1m_at_end']}"
    )
    for name, g in groups.items():
        tr.write_line(f"[{name}]")
        for r in g["rows"]:
            ratio = r.get("usl_fast_over_this")
            rtxt = "" if ratio is None else f"   usl_fast/{r['impl']} = {ratio:.3f}"
            tr.write_line(
                f"    {r['impl']:<22} {_fmt_s(r['min']):>10} s  ({r['rounds']} rounds){rtxt}"
            )
        for k, v in g["notes"].items():
            tr.write_line(f"    {k}: {v}")

    # Merge into the stored results: groups run now replace their previous entries, the
    # others are kept (so the full-scale files can be filled one benchmark file at a time).
    RESULTS_DIR.mkdir(exist_ok=True)
    jpath = RESULTS_DIR / f"{scale}.json"
    stored: dict[str, Any] = {}
    if jpath.exists():
        try:
            stored = json.loads(jpath.read_text()).get("groups", {})
        except (ValueError, AttributeError):
            stored = {}
    stored.update(groups)
    jpath.write_text(
        json.dumps({"scale": scale, "machine": machine, "groups": stored}, indent=2) + "\n"
    )
    (RESULTS_DIR / f"{scale}.md").write_text(_markdown(scale, machine, stored))
    tr.write_line(f"written: {jpath} and {jpath.with_suffix('.md')}")
