"""The engine's internal fast paths give the same answers as its plain ones: every SIMD
scan (AVX-512, AVX2, portable), every tile GEMM (AMX bf16, the engine's own AVX-512 and AVX2
float32 ones, AVX2 int16, OpenBLAS's), and the sampled early-rejection threshold of the self
kNN graph, including rows where the sampled threshold fails and the row is redone."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import usl_fast
from test_cli import subprocess_env

_SCRIPT = r"""
import sys, numpy as np, usl_fast
from usl_fast._backend import _cpu
rng = np.random.default_rng(1)
x = rng.standard_normal((1300, 19)).astype('f4')
x = np.vstack([x, x[:50]])          # exact duplicates: ties must break the same way
q = rng.standard_normal((70, 19)).astype('f4')
arrays = [np.array([_cpu.active_isa(), _cpu.gemm_kind()])]
for k in (1, 5, 40, 300):
    arrays += list(usl_fast.knn(x, k))
arrays += list(usl_fast.knn(x, 17, queries=q))
arrays.append(usl_fast.density(x, 30))
km = usl_fast.kmeans(x, 25, n_iter=20)
arrays += [km.labels, km.centroids]
lab = km.labels
for kw in (dict(horizon_dist=40.0), dict(horizon_num=7),
           dict(horizon_dist=30.0, alpha=1.0, mask_zero=True), dict(alpha=1.5)):
    arrays.append(usl_fast.regularizer(x, lab, np.arange(0, 1300, 60), **kw))
arrays.append(usl_fast.range_count(x, 30.0))
arrays.append(usl_fast.select(x, 12, k=20, kmeans_iter=10))
w = rng.standard_normal((605, 300)).astype('f4')   # d > 256: the own GEMM's two passes
arrays += list(usl_fast.knn(w, 7))
arrays.append(usl_fast.kmeans(w, 9, n_iter=5).labels)
np.savez(sys.argv[1], *arrays)
"""

#: USL_FAST_ISA value -> the path number the engine reports (0 portable, 1 AVX2, 2 AVX-512)
_ISAS = {"portable": 0, "avx2": 1, "avx512": 2}

#: (USL_FAST_ISA, USL_FAST_GEMM, the GEMM kind it must report) for every non-portable path:
#: 0 OpenBLAS, 1 own AVX-512 float32, 2 AMX bf16, 3 own AVX2 float32, 4 AVX2 int16 (the AVX2
#: path's default), 5 AVX-512 bf16 (vdpbf16ps), 6 AVX-512 int16 (vpdpwssd). The AVX2 kernels
#: need only AVX2 and FMA, so the AVX-512 path runs them too.
_PATHS = (
    ("avx2", "", 4),
    ("avx2", "blas", 0),
    ("avx2", "avx2", 3),
    ("avx512", "blas", 0),
    ("avx512", "avx512", 1),
    ("avx512", "amx", 2),
    ("avx512", "avx512bf16", 5),
    ("avx512", "avx512vnni", 6),
    ("avx512", "avx2", 3),
    ("avx512", "avx2i16", 4),
)
#: the AVX-512 16-bit GEMM kinds, which fall back to the float32 kernel (1) where the CPU
#: lacks them
_LOWP = (2, 5, 6)


def _run_with_isa(isa: str, path: str, gemm: str = "", script: str = _SCRIPT) -> dict:
    # the child imports this process's usl_fast (the tree under test), not another install
    env = subprocess_env()
    env["USL_FAST_ISA"] = isa
    env["USL_FAST_GEMM"] = gemm
    # cwd away from the source tree, which has no compiled module to import
    subprocess.run(
        [sys.executable, "-c", script, path], check=True, env=env, cwd=os.path.dirname(path)
    )
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_every_isa_path_gives_identical_results(tmp_path):
    # Each path that this CPU can run is compared with the portable one, bit for bit; a
    # path the CPU lacks is reported as skipped rather than compared with itself.
    # Each path runs with each tile GEMM it offers (_PATHS): OpenBLAS's (USL_FAST_GEMM=blas),
    # the own float32 kernels (avx512, avx2), AMX bf16 (amx, where the CPU has it), the AVX-512
    # bf16 and int16 ones (avx512bf16, avx512vnni, where it has AVX512-BF16 / VNNI) and the
    # AVX2 int16 one (avx2i16); the filter bounds each one's error, so the answers must not
    # move.
    ref = _run_with_isa("portable", str(tmp_path / "portable.npz"))
    assert list(ref["arr_0"]) == [0, 0]
    missing = []
    for isa, gemm, kind in _PATHS:
        other = _run_with_isa(isa, str(tmp_path / f"{isa}{gemm}.npz"), gemm)
        if other["arr_0"][0] != _ISAS[isa]:
            missing.append(isa)
            continue
        if other["arr_0"][1] != kind:
            # a 16-bit GEMM the CPU lacks: the float32 kernel runs
            assert kind in _LOWP and other["arr_0"][1] == 1
            missing.append(gemm)
            continue
        for key in ref:
            if key == "arr_0":
                continue
            a, b = ref[key], other[key]
            assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
                isa,
                gemm,
                key,
            )
    if missing:
        pytest.skip(
            f"this build or CPU cannot run the {', '.join(sorted(set(missing)))} path(s); "
            "compared the others"
        )

# Cases aimed at the 16-bit filters' bounds (their rounding is measured per row, their bound
# is relative to the centred norms): rows whose largest coordinate dominates the others by
# 10^6, rows of very different norms side by side, near-ties (rows one float32 ulp apart and
# exact duplicates), squared norms near both ends of the allowed range, data far from the
# origin, d = 1 .. 7 and around the vector widths and passes, n not a multiple of the tile,
# k as large as n allows and k beyond a tile.
_ADVERSARIAL_LOWP = r"""
import sys, numpy as np, usl_fast
from usl_fast._backend import _cpu
rng = np.random.default_rng(7)
arrays = [np.array([_cpu.active_isa(), _cpu.gemm_kind()])]
def add(x, ks):
    for k in ks:
        arrays.extend(usl_fast.knn(x, k))
    r = float(np.median(((x[:50, None] - x[None, :50]) ** 2).sum(-1)))
    arrays.append(usl_fast.range_count(x, r))
    arrays.append(usl_fast.kmeans(x, 7, n_iter=4).labels)
for d in (1, 2, 3, 4, 5, 6, 7, 17, 33, 520):
    x = rng.standard_normal((300, d)).astype('f4')
    add(x, (1, 20, 299))
x = rng.standard_normal((513, 24)).astype('f4')
x[::3, 0] *= np.float32(1e6)                      # one coordinate dominates
x[1::7] *= np.float32(1e-4)                       # and rows of very different norms
add(x, (5, 300))
x = rng.standard_normal((300, 40)).astype('f4')
y = x[:100].copy()
y[:, 5] = np.nextafter(y[:, 5], np.float32(np.inf))   # near-ties: one ulp apart
x = np.vstack([x, y, x[:40]])                          # and exact duplicates
add(x, (3, 60))
for scale in (2.0**-29, 2.0**58):                     # squared norms near 2^-60 and 2^120
    add((rng.standard_normal((400, 9)) * scale).astype('f4'), (4, 50))
add((1e4 + rng.standard_normal((450, 33))).astype('f4'), (6, 100))   # far from the origin
arrays.append(usl_fast.density((1e4 + rng.standard_normal((450, 33))).astype('f4'), 30))
np.savez(sys.argv[1], *arrays)
"""


def test_every_gemm_gives_identical_results_on_adversarial_data(tmp_path):
    ref = _run_with_isa("portable", str(tmp_path / "portable.npz"), script=_ADVERSARIAL_LOWP)
    missing = []
    for isa, gemm, kind in _PATHS:
        other = _run_with_isa(isa, str(tmp_path / f"{isa}{gemm}.npz"), gemm, _ADVERSARIAL_LOWP)
        if other["arr_0"][0] != _ISAS[isa] or other["arr_0"][1] != kind:
            missing.append(gemm or isa)
            continue
        for key in ref:
            if key != "arr_0":
                a, b = ref[key], other[key]
                assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
                    isa,
                    gemm,
                    key,
                )
    if missing:
        pytest.skip(f"this build or CPU cannot run {', '.join(missing)}; compared the others")


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("hits", [1.0, 4.0, 24.0])
def test_sampled_threshold_is_exact(hits):
    # hits = 1 makes the sampled threshold fail on many rows, which are then redone
    # exhaustively: indices must still equal the unsampled run.
    x = _unit(6000, 24, 3)
    d0, i0 = usl_fast.knn(x, 200, _sample_hits=0.0)
    d1, i1 = usl_fast.knn(x, 200, _sample_hits=hits)
    assert np.array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=0, atol=2e-6)
    # and against float64 brute force
    g = x.astype(np.float64)
    nn = (g * g).sum(1)
    dd = nn[:, None] + nn[None, :] - 2 * g @ g.T
    np.fill_diagonal(dd, 0.0)
    ref = np.sort(dd, axis=1)[:, :200]
    np.testing.assert_allclose(d1, ref, rtol=0, atol=1e-5)


def test_sampled_threshold_with_clustered_order():
    # Data sorted by cluster: the strided sample sees every cluster only in a few rows,
    # which is the adversarial case for a sampled bound. The answer must not change.
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((30, 12)) * 5
    x = np.repeat(centers, 200, axis=0) + rng.standard_normal((6000, 12))
    x = x.astype(np.float32)
    d0, i0 = usl_fast.knn(x, 150, _sample_hits=0.0)
    d1, i1 = usl_fast.knn(x, 150)
    assert np.array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=0, atol=1e-5)


def _control(cancel: bool) -> np.ndarray:
    return np.array([0, 0, 1 if cancel else 0, 0], dtype=np.int64)


def test_engine_ops_stop_when_cancelled():
    # The cancel slot is what Ctrl-C sets (usl_fast._progress): every long op must return
    # early with KeyboardInterrupt instead of running to the end.
    from usl_fast._backend import _cpu

    x = _unit(3000, 16, 7)
    n = x.shape[0]
    calls = {
        "knn self": lambda c: _cpu.knn(
            x, None, 10, np.empty((n, 10), np.float32), np.empty((n, 10), np.int64), 2, c, 0.0, 1e18
        ),
        "knn query": lambda c: _cpu.knn(
            x, x, 10, np.empty((n, 10), np.float32), np.empty((n, 10), np.int64), 2, c, 0.0, 1e18
        ),
        "density": lambda c: _cpu.knn_density(
            x, 10, 1e-12, np.empty(n, np.float32), 2, c, 0.0, 1e18
        ),
        "assign": lambda c: _cpu.assign(
            x, None, x[:8].copy(), np.empty(n, np.int32), np.empty(n, np.float32), 2, c
        ),
        "regularizer": lambda c: _cpu.regularizer(
            x,
            x[:5].copy(),
            np.zeros(n, np.int32),
            np.arange(5, dtype=np.int32),
            0.5,
            np.inf,
            0,
            False,
            1e10,
            np.empty(n),
            2,
            c,
        ),
        "range count": lambda c: _cpu.range_count(x, x, 0.5, np.empty(n, np.int64), 2, c),
        "k-means++": lambda c: _cpu.kmeanspp_init(x, 5, 0, np.empty(5, np.int64), 2, c),
    }
    for name, call in calls.items():
        with pytest.raises(KeyboardInterrupt):
            call(_control(True))
            pytest.fail(f"{name}: not cancelled")
        call(_control(False))  # and the same call runs to the end without the flag


def test_progress_counts_every_unit():
    # The engine reports its work units into the control array the progress bar reads;
    # the count ends exactly at the total (no overshoot), sampled pass included.
    from usl_fast._backend import _cpu

    x = _unit(1000, 8, 8)
    tiles = -(-1000 // 256)
    ctl = _control(False)
    _cpu.knn(
        x,
        None,
        5,
        np.empty((1000, 5), np.float32),
        np.empty((1000, 5), np.int64),
        2,
        ctl,
        0.0,
        1e18,
    )
    assert ctl[1] == tiles * (tiles + 1) // 2 and ctl[0] == ctl[1]
    for hits in (24.0, 1.0):  # with the sampled pass (hits=1: rows redone, counted too)
        y = _unit(6000, 8, 9)
        t = -(-6000 // 256)
        ctl = _control(False)
        _cpu.knn(
            y,
            None,
            200,
            np.empty((6000, 200), np.float32),
            np.empty((6000, 200), np.int64),
            2,
            ctl,
            hits,
            1e18,
        )
        assert ctl[0] == ctl[1] >= t * (t + 1) // 2 + t


def test_progress_bar_in_library_call(capsys):
    x = _unit(600, 8, 9)
    usl_fast.select(x, 5, k=10, kmeans_iter=3, rounds=2, progress=True)
    err = capsys.readouterr().err
    assert "kNN" in err and "k-means" in err and "regularized selection" in err


def test_over_memory_budget_falls_back_to_query_search():
    # Past the reservoir budget the self graph is searched row tile by row tile (no
    # all-rows buffers): same neighbours, self first at exactly 0, duplicates by index.
    x = _unit(1500, 12, 11)
    x = np.vstack([x, x[:40]])
    d0, i0 = usl_fast.knn(x, 30)
    d1, i1 = usl_fast.knn(x, 30, _max_reservoir_bytes=0)
    assert np.array_equal(i0, i1)
    np.testing.assert_allclose(d0, d1, rtol=0, atol=2e-6)
    assert np.all(d1[:, 0] == 0.0)


# Inputs built to stress the filters' bounds (the int16 one above all, which runs from 64
# coordinates): d = 1 .. 7, d off the vector widths and around 64, n off the tile, rows whose
# coordinates span 12 decades or that one coordinate dominates, exact duplicates and one-ulp
# neighbours, tiny and huge norms, data far from the origin, tiny rows among normal ones, rows
# that stay tiny after centring (the int16 kernel's float32 fallback), and queries with
# k = n - 1.
_ADVERSARIAL_I16 = r"""
import sys, numpy as np, usl_fast
from usl_fast._backend import _cpu
rng = np.random.default_rng(2)
arrays = [np.array([_cpu.active_isa(), _cpu.gemm_kind()])]
def unit(n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype('f4')
for d in (1, 2, 3, 4, 5, 6, 7, 9, 17, 33, 63, 64, 65, 127):
    arrays += list(usl_fast.knn(rng.standard_normal((300 + 7 * d, d)).astype('f4'), 9))
x = rng.standard_normal((700, 70)).astype('f4') * np.logspace(-6, 6, 70).astype('f4')
x[::5, 3] = 1e7
arrays += list(usl_fast.knn(x, 15))
arrays.append(usl_fast.kmeans(x, 7, n_iter=5).labels)
base = unit(400, 72)
x = np.vstack([base, base[:100], np.nextafter(base[:100], np.float32(2))])
arrays += list(usl_fast.knn(x, 12))
arrays.append(usl_fast.density(x, 12))
arrays.append(usl_fast.range_count(x, 0.5))
for s in (1e-8, 1e15):
    arrays += list(usl_fast.knn(unit(600, 66) * np.float32(s), 10))
far = unit(900, 96) + np.float32(1000.0)
arrays += list(usl_fast.knn(far, 10))
arrays.append(usl_fast.kmeans(far, 9, n_iter=5).labels)
x = unit(520, 80)
x[::50] *= np.float32(1e-30)
arrays += list(usl_fast.knn(x, 8))
arrays += list(usl_fast.knn(base[:60], 59, queries=unit(37, 72)))
# rows +-x interleaved, so the centre (the mean) is exactly 0 and the tiny rows stay tiny
# after centring: their int16 scale is out of range and their tiles run in float32
x = np.concatenate([unit(262, 80), unit(3, 80) * np.float32(1e-30)])
x = np.stack([x, -x], 1).reshape(-1, 80)
arrays += list(usl_fast.knn(x, 6))
arrays.append(usl_fast.density(x, 6))
np.savez(sys.argv[1], *arrays)
"""


def test_every_gemm_gives_identical_results_on_adversarial_inputs(tmp_path):
    ref = _run_with_isa("portable", str(tmp_path / "portable.npz"), script=_ADVERSARIAL_I16)
    assert list(ref["arr_0"]) == [0, 0]
    missing = []
    for isa, gemm, kind in _PATHS:
        other = _run_with_isa(isa, str(tmp_path / f"{isa}{gemm}.npz"), gemm, _ADVERSARIAL_I16)
        if other["arr_0"][0] != _ISAS[isa] or other["arr_0"][1] != kind:
            missing.append(f"{isa}/{gemm or 'default'}")
            continue
        for key in ref:
            a, b = ref[key], other[key]
            if key != "arr_0":
                assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
                    isa,
                    gemm,
                    key,
                )
    if missing:
        pytest.skip(f"this build or CPU cannot run {', '.join(missing)}; compared the others")


_REPORT = r"""
import sys
from usl_fast._backend import _cpu
print(_cpu.active_isa(), _cpu.gemm_kind())
"""


@pytest.mark.parametrize(
    "isa, gemm, want",
    [
        # AVX-512 and AMX kernels are not offered on the AVX2 path: its default runs
        ("avx2", "avx512", (1, 4)),
        ("avx2", "amx", (1, 4)),
        ("avx2", "avx512bf16", (1, 4)),
        ("avx2", "avx512vnni", (1, 4)),
        ("avx2", "no-such-gemm", (1, 4)),
        # the portable path has OpenBLAS only
        ("portable", "avx2", (0, 0)),
        ("portable", "avx2i16", (0, 0)),
        ("portable", "avx512bf16", (0, 0)),
    ],
)
def test_a_gemm_the_path_cannot_run_falls_back(isa, gemm, want, tmp_path):
    env = subprocess_env()
    env["USL_FAST_ISA"] = isa
    env["USL_FAST_GEMM"] = gemm
    out = subprocess.run(
        [sys.executable, "-c", _REPORT], check=True, env=env, cwd=tmp_path, capture_output=True,
        text=True,
    ).stdout.split()
    got = (int(out[0]), int(out[1]))
    if got[0] != _ISAS[isa]:
        pytest.skip(f"this build or CPU cannot run the {isa} path")
    assert got == want
