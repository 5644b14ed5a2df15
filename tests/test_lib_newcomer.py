"""Library defects a cold new-user test found: each silent outcome gets a warning and each
refused argument a message that names the argument, what was given and what is allowed. Subprocess cases run with their
cwd outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from test_cli import subprocess_env  # noqa: E402

import usl_fast
from usl_fast import _backend


def _duplicated(seed: int = 0) -> np.ndarray:
    # 6 distinct unit rows, each 20 times: the random initial centroids coincide, their
    # clusters die, fewer than m = 10 clusters survive (as in test_select's top-up test).
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((6, 4))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return np.repeat(base.astype(np.float32), 20, axis=0)[rng.permutation(120)]


# ------------------------------------------------------------------ USL's fill warns


def test_usl_fill_warns_how_many_why_and_what_to_do():
    x = _duplicated()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = usl_fast.select(x, 10, k=5, kmeans_iter=10, return_info=True)
    assert quiet.n_filled > 0
    with pytest.warns(RuntimeWarning) as rec:
        res = usl_fast.select(x, 10, k=5, kmeans_iter=10, return_info=True)
    msg = str(rec[0].message)
    assert rec[0].filename == __file__  # points at the caller's line
    kept = 10 - res.n_filled
    assert f"only {kept} of the " in msg and f"last {res.n_filled} of 10 picks" in msg
    assert "duplicate" in msg and "kmeans_init='k-means++'" in msg
    # the warning only reports: the picks are those of the published rule, unchanged
    assert np.array_equal(res.indices, quiet.indices) and res.n_filled == quiet.n_filled
    # the estimator warns too
    with pytest.warns(RuntimeWarning, match="filled with the best-scoring points"):
        usl_fast.USL(k=5, kmeans_iter=10).fit(x, 10)


def test_usl_fill_warning_for_zero_rows_and_later_rounds(make_unit):
    z = np.zeros((50, 4), np.float32)
    with pytest.warns(RuntimeWarning, match=r"last 2 of 3 picks"):
        usl_fast.select(z, 3, k=3, weight=0.0)
    x = make_unit(80, 6, seed=2)
    first = usl_fast.select(x, 30, k=5)
    with pytest.warns(RuntimeWarning, match="hold no labeled point.*larger n_clusters"):
        r = usl_fast.select(x, 20, k=5, n_clusters=20, labeled=first, return_info=True)
    assert r.n_filled > 0


def test_usl_no_fill_no_warning(make_unit):
    x = make_unit(300, 8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = usl_fast.select(x, 10, k=10, return_info=True)
    assert res.n_filled == 0


# ------------------------------------------- zero rows, not a missing normalize=True


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the fill warning
@pytest.mark.parametrize("normalize", [True, False])
def test_unit_norm_warning_names_zero_rows_instead_of_normalize(make_unit, normalize):
    x = make_unit(200, 8, seed=1)
    x[:120] = 0  # the median row is zero; the others are unit already
    with pytest.warns(UserWarning, match="median row norm") as rec:
        usl_fast.select(x, 5, k=10, normalize=normalize)
    (msg,) = [str(w.message) for w in rec if "median row norm" in str(w.message)]
    assert "120 of 200 rows are all zero" in msg and "leaves them zero" in msg
    assert "pass normalize=True" not in msg and "\n" not in msg and len(msg) <= 200
    with pytest.warns(UserWarning, match="50 of 50 rows are all zero"):
        usl_fast.select(np.zeros((50, 4), np.float32), 5, k=10, normalize=True)


def test_unit_norm_warning_still_advises_normalize_for_scaled_rows(make_unit):
    x = make_unit(200, 8, seed=1) * 0.01
    x[:10] = 0  # a few zero rows do not explain the scale
    with pytest.warns(UserWarning, match=r"pass normalize=True \(CLI: --normalize\)"):
        usl_fast.select(x, 5, k=10)


# ------------------------------------------------------ return_info must be a bool


@pytest.mark.parametrize("method", ["usl", "kcenter", "random"])
@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_return_info_must_be_a_bool(make_unit, method, bad):
    x = make_unit(60, 4, seed=0)
    kw = {"k": 5} if method == "usl" else {}
    with pytest.raises(
        TypeError, match=rf"`return_info` must be True or False \(got return_info={bad!r}\)"
    ):
        usl_fast.select(x, 5, method=method, return_info=bad, **kw)
    assert isinstance(
        usl_fast.select(x, 5, method=method, return_info=np.bool_(True), **kw),
        usl_fast.SelectResult,
    )


# --------------------------------------- a set or a number for `labeled` is named


@pytest.mark.parametrize(
    "labeled, got, fix",
    [
        ({1, 2}, "a set {1, 2}", "sorted(labeled)"),
        (frozenset({4}), "a set frozenset({4})", "sorted(labeled)"),
        (5, "the single index 5", "[5]"),
        (np.int64(5), "the single index 5", "[5]"),
        (np.array(7), "the 0-d array array(7)", "[7]"),
        ({1: 0}, "a dict", "list(labeled) for its keys"),
        ((i for i in range(3)), "a generator", "list(labeled)"),
        (2.5, "a float (2.5)", "the indices in a list"),
    ],
)
@pytest.mark.parametrize("method", ["usl", "kcenter"])
def test_labeled_that_is_no_sequence_says_what_it_is(make_unit, labeled, got, fix, method):
    x = make_unit(60, 4, seed=0)
    kw = {"k": 5} if method == "usl" else {}
    with pytest.raises(TypeError) as err:
        usl_fast.select(x, 5, method=method, labeled=labeled, **kw)
    msg = str(err.value)
    assert msg.startswith("`labeled` must be a list or 1-D array of integer indices (got ")
    assert got in msg and f"pass {fix}" in msg and "shape ()" not in msg
    # what the message says to pass works
    ok = sorted(labeled) if isinstance(labeled, (set, frozenset)) else None
    if ok is not None:
        assert not set(usl_fast.select(x, 5, method=method, labeled=ok, **kw).tolist()) & set(ok)


def test_labeled_sequences_still_accepted(make_unit):
    x = make_unit(60, 4, seed=0)
    a = usl_fast.select(x, 5, k=5, labeled=[1, 2])
    for same in ((1, 2), range(1, 3), np.array([1, 2])):
        assert np.array_equal(usl_fast.select(x, 5, k=5, labeled=same), a)


# ------------------------------------------ usl_fast.uslt as an attribute


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # as if torch were not installed: `import torch` fails
import usl_fast
try:
    usl_fast.uslt.USLT()
except ImportError as exc:
    print("ImportError:", exc)
try:
    usl_fast.not_there
except AttributeError as exc:
    print("AttributeError:", exc)
"""


def test_uslt_attribute_without_torch_says_it_needs_pytorch(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", _NO_TORCH],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ImportError: usl_fast.uslt (USL-T) needs PyTorch"), r.stdout
    assert "pip install usl_fast[torch]" in lines[0]
    assert lines[1] == "AttributeError: module 'usl_fast' has no attribute 'not_there'"


def test_uslt_attribute_with_torch_is_the_subpackage():
    pytest.importorskip("torch")
    import importlib

    assert usl_fast.uslt is importlib.import_module("usl_fast.uslt")
    assert usl_fast.uslt.USLT.method == "uslt"
    assert "uslt" not in usl_fast.__all__  # the front door's list is unchanged
    assert not hasattr(usl_fast, "no_such_name")


# ---------------------------------- a given USL parameter is refused, whatever its value


@pytest.mark.parametrize("method", ["typiclust", "probcover", "kcenter", "random"])
@pytest.mark.parametrize(
    "name, value",
    [
        ("defaults", "cifar10"),
        ("defaults", "imagenet"),
        ("kmeans_init", "random"),
        ("rounds", None),
    ],
)
def test_usl_parameters_refused_for_other_methods_even_at_their_default(
    make_unit, method, name, value
):
    x = make_unit(60, 4, seed=0)
    if value is None:
        value = usl_fast.PRESET  # the declared default of the preset parameters
    with pytest.raises(
        TypeError, match=rf"`{name}` is a USL parameter; method='{method}' does not take it"
    ):
        usl_fast.select(x, 5, method=method, **{name: value})


def test_usl_parameters_a_method_takes_still_pass(make_unit):
    x = make_unit(60, 4, seed=0)
    # TypiClust takes k; USL's default (PRESET) leaves TypiClust's own default
    a = usl_fast.select(x, 5, method="typiclust")
    assert np.array_equal(usl_fast.select(x, 5, method="typiclust", k=usl_fast.PRESET), a)
    assert np.array_equal(
        usl_fast.select(x, 5, method="usl", defaults="cifar10", k=5), usl_fast.select(x, 5, k=5)
    )


# ------------------- ProbCover's delta and coverage in the info; singleton balls warn


def test_probcover_info_has_the_delta_used_and_the_coverage(make_unit):
    x = make_unit(400, 3, seed=0)  # 3-d unit rows: delta 0.6 balls hold many points
    r = usl_fast.select(x, 8, method="probcover", return_info=True)
    est = usl_fast.ProbCover().fit(x, 8)
    assert r.params["delta"] == est.delta_ == 0.6
    assert r.coverage == est.coverage_
    # the oracle: the fraction of points within delta (strict) of a pick
    d2 = ((x[:, None, :].astype(np.float64) - x[r.indices][None]) ** 2).sum(-1)
    assert r.coverage == pytest.approx(float((d2 < 0.36).any(1).mean()))
    r = usl_fast.select(x, 8, method="probcover", n_classes=5, return_info=True)
    assert (
        r.params["n_classes"] == 5
        and r.params["delta"] == usl_fast.ProbCover(n_classes=5).fit(x, 8).delta_
    )
    assert 0 < r.params["delta"] and 0 < r.coverage <= 1
    for method in ("usl", "kcenter"):
        kw = {"k": 5} if method == "usl" else {}
        assert usl_fast.select(x, 8, method=method, return_info=True, **kw).coverage is None


def test_probcover_warns_when_every_ball_is_a_singleton(make_unit):
    x = make_unit(300, 64, seed=0)  # random unit rows in 64-d: pairwise distances near 1.4
    with pytest.warns(UserWarning, match=r"no point has a neighbour within delta=0\.6") as rec:
        r = usl_fast.select(x, 5, method="probcover", return_info=True)
    msg = str(rec[0].message)
    assert "larger `delta`" in msg and "n_classes" in msg and rec[0].filename == __file__
    assert r.indices.tolist() == [0, 1, 2, 3, 4]  # what the warning says: arbitrary picks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usl_fast.select(x, 5, method="probcover", delta=1.5)  # balls with neighbours: quiet


# ---------------------------------- misspelt run-time switches are named, not ignored


def _child_env(**env):
    """subprocess_env() without the engine switches this process was started with, plus
    ``env``: the children below compare against the defaults, which USL_FAST_DEDUP=0 or
    USL_FAST_COUNT_EXACT=1 exported for the whole suite would change."""
    base = {k: v for k, v in subprocess_env().items() if k not in _backend.SWITCHES}
    return dict(base, **env)


def _python(tmp_path, program: str, *flags: str, **env) -> subprocess.CompletedProcess:
    """``python FLAGS -c PROGRAM`` in a fresh process (the switches are read once per
    process), in tmp_path, with _child_env(**env)."""
    return subprocess.run(
        [sys.executable, *flags, "-c", program],
        cwd=tmp_path,
        env=_child_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_warning(r) -> str:
    """The one UserWarning line a child that exited 0 wrote to stderr."""
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "UserWarning" in line]
    assert len(warned) == 1, r.stderr
    return warned[0]


def _import_in_child(tmp_path, **env):
    return _python(
        tmp_path, "import usl_fast; print(usl_fast._cpu.gemm_kind())", "-W", "always", **env
    )


@pytest.mark.parametrize(
    "var, value, allowed",
    [
        ("USL_FAST_GEMM", "avx512bf6", "amx, avx512bf16, avx512vnni, avx512, avx2i16, avx2, blas"),
        ("USL_FAST_ISA", "AVX2", "portable, avx2, avx512"),
    ],
)
def test_unknown_engine_switch_warns_at_import(tmp_path, var, value, allowed):
    r = _import_in_child(tmp_path, **{var: value})
    warned = _one_warning(r)
    assert f"{var}={value!r} is not one of {allowed} (or unset)" in warned
    assert "the engine ignores it and runs " in warned
    # and the kind it names is the default's: the same as with the variable unset
    unset = _import_in_child(tmp_path, **{var: ""})
    assert r.stdout == unset.stdout and "Warning" not in unset.stderr, unset.stderr


def test_known_engine_switches_import_quietly(tmp_path):
    r = _import_in_child(tmp_path, USL_FAST_GEMM="blas", USL_FAST_ISA="avx2")
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert r.stdout.strip() == "0"  # OpenBLAS, as asked


#: A child that reports what the engine does: duplicate collapse on, and the pairs it
#: counted in one small kNN (0 unless counting is on).
_SWITCH_CHILD = (
    "import numpy as np, usl_fast; from usl_fast import _cpu; "
    "x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32); "
    "usl_fast.knn(x, 5); print(_cpu.dedup_enabled(), _cpu.exact_evaluations() > 0)"
)


def test_switch_warning_points_at_the_import(tmp_path):
    # The warning names the line that imported usl_fast (here the -c program's line 1), not
    # a line inside the package, which a user cannot act on (and under `usl-fast` the
    # console script, not the library).
    r = _import_in_child(tmp_path, USL_FAST_ISA="bogus")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("<string>:1: UserWarning: USL_FAST_ISA='bogus'"), r.stderr
    assert "_backend" not in r.stderr and "usl_fast" + os.sep not in r.stderr, r.stderr


def test_forced_gemm_that_cannot_run_warns(tmp_path):
    # A known GEMM the chosen SIMD path cannot run falls back (documented); the warning says
    # which one runs, so that a benchmark does not time the fallback under the asked name.
    # The portable path runs no SIMD GEMM on any CPU, so this holds everywhere.
    r = _import_in_child(tmp_path, USL_FAST_ISA="portable", USL_FAST_GEMM="avx2i16")
    warned = _one_warning(r)
    assert "USL_FAST_GEMM='avx2i16': that tile GEMM cannot run on the portable SIMD" in warned
    assert "the engine runs blas instead" in warned
    assert r.stdout.split() == ["0"]  # gemm_kind 0: blas, as the warning says
    # and a GEMM that runs is not warned about
    r = _import_in_child(tmp_path, USL_FAST_ISA="portable", USL_FAST_GEMM="blas")
    assert r.returncode == 0 and "UserWarning" not in r.stderr, r.stderr


def _switch_child(tmp_path, **env):
    return _python(tmp_path, _SWITCH_CHILD, "-W", "always", **env)


@pytest.mark.parametrize(
    "var, value, instead",
    [
        ("USL_FAST_DEDUP", "false", "collapses duplicate rows (as with 1)"),
        ("USL_FAST_DEDUP", "off", "collapses duplicate rows (as with 1)"),
        ("USL_FAST_DEDUP", " 0", "collapses duplicate rows (as with 1)"),
        ("USL_FAST_COUNT_EXACT", "true", "counts no exact evaluations (as with 0)"),
        ("USL_FAST_COUNT_EXACT", "yes", "counts no exact evaluations (as with 0)"),
    ],
)
def test_unknown_on_off_switch_warns_at_import(tmp_path, var, value, instead):
    # The engine takes only "0" to turn the collapse off and only "1" to count: any other
    # value was the default in silence.
    r = _switch_child(tmp_path, **{var: value})
    warned = _one_warning(r)
    assert f"{var}={value!r} is not one of 0, 1 (or unset)" in warned
    assert f"the engine ignores it and {instead}, its default here" in warned
    unset = _switch_child(tmp_path, **{var: ""})
    assert r.stdout == unset.stdout == "True False\n" and "Warning" not in unset.stderr


@pytest.mark.parametrize(
    "env, out",
    [
        (dict(USL_FAST_DEDUP="0"), "False False"),
        (dict(USL_FAST_DEDUP="1"), "True False"),
        (dict(USL_FAST_COUNT_EXACT="1"), "True True"),
        (dict(USL_FAST_COUNT_EXACT="0"), "True False"),
    ],
)
def test_known_on_off_switches_import_quietly(tmp_path, env, out):
    r = _switch_child(tmp_path, **env)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert r.stdout.strip() == out


@pytest.mark.parametrize(
    "var, value", [("USL_FAST_DEDUP", "0"), ("USL_FAST_COUNT_EXACT", "1"), ("USL_FAST_ISA", "x")]
)
def test_switch_children_ignore_the_suites_own_switches(tmp_path, monkeypatch, var, value):
    # A suite run with a switch exported still sees the defaults where a test sets none.
    monkeypatch.setenv(var, value)
    r = _switch_child(tmp_path)
    assert r.stdout == "True False\n" and "Warning" not in r.stderr, r.stderr
    assert _runtime_info(tmp_path)["dedup"] is True  # and no warning (checked there)


def _runtime_info(tmp_path, **env):
    """usl_fast.runtime_info() in a fresh process (the switches are read once per process)."""
    r = _python(
        tmp_path, "import json, usl_fast; print(json.dumps(usl_fast.runtime_info()))", **env
    )
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def test_runtime_info_reports_what_the_switches_force(tmp_path):
    unset = dict(USL_FAST_ISA="", USL_FAST_GEMM="", USL_FAST_DEDUP="")
    # The portable path has only OpenBLAS's GEMM, on any CPU and build.
    forced = _runtime_info(tmp_path, **dict(unset, USL_FAST_ISA="portable", USL_FAST_DEDUP="0"))
    assert forced["isa"] == "portable" and forced["gemm"] == "blas" and forced["dedup"] is False
    assert _runtime_info(tmp_path, OMP_NUM_THREADS="1", **unset)["max_threads"] == 1
    default = _runtime_info(tmp_path, **unset)
    assert set(default) == {"isa", "gemm", "dedup", "max_threads"} and default["dedup"] is True
    assert default["gemm"] in _backend.SWITCHES["USL_FAST_GEMM"]
    if default["isa"] == "portable":
        pytest.skip("no SIMD path in this build or on this CPU")
    # Any SIMD path implies AVX2 and FMA; its default GEMM there is the int16 one
    # (docs/engine.md), and USL_FAST_GEMM picks another.
    assert _runtime_info(tmp_path, **dict(unset, USL_FAST_ISA="avx2")) == dict(
        default, isa="avx2", gemm="avx2i16"
    )
    assert _runtime_info(tmp_path, **dict(unset, USL_FAST_ISA="avx2", USL_FAST_GEMM="blas")) == (
        dict(default, isa="avx2", gemm="blas")
    )


def test_unknown_backend_switch_warns_once(make_unit, monkeypatch):
    from usl_fast.backends import _resolve

    monkeypatch.setattr(_resolve, "_warned", set())
    x = make_unit(60, 4, seed=0)
    want = usl_fast.select(x, 5, k=5)
    monkeypatch.setenv(_resolve.ENV, "portble")
    with pytest.warns(
        UserWarning, match=r"USL_FAST_BACKEND='portble' is not one of portable, cuda"
    ) as rec:
        got = usl_fast.select(x, 5, k=5)
    assert rec[0].filename == __file__
    assert np.array_equal(got, want)  # ignored: the engine ran
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usl_fast.select(x, 5, k=5)  # once per value and process
