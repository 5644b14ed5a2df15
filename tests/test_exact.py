"""Engine v2: one exact distance everywhere.

Every distance the engine returns or uses is ``exact_l2`` (docs/engine.md); the GEMM only
filters. These tests hold the engine to a float64 NumPy transcription of that definition
(tests/oracles.py) bit for bit, and check what follows from it: symmetry, duplicates that
tie by index with no special code, and identical arrays from every path (symmetric pass,
query pass, sampled threshold, reservoir budget, 1 or 2 threads)."""

from __future__ import annotations

import inspect

import numpy as np
import oracles
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import usl_fast
from usl_fast import _dispatch, _progress
from usl_fast._backend import _cpu

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@st.composite
def point_sets(draw, max_n=70, max_d=20, scales=(1e-30, 1e-3, 1.0, 1e3, 1e15)):
    """Random float32 rows at one magnitude, with exact duplicates, -0.0 and zero rows."""
    n = draw(st.integers(2, max_n))
    d = draw(st.integers(1, max_d))
    scale = draw(st.sampled_from(scales))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    n_dup = draw(st.integers(0, n // 2))
    for _ in range(n_dup):
        x[rng.integers(n)] = x[rng.integers(n)]
    if draw(st.booleans()):
        x[rng.integers(n)] = -0.0
    return x


def below_public_scale(x) -> bool:
    """Rows the public functions refuse as too small (largest squared norm in (0, 2**-60):
    usl_fast._validate.MIN_SQUARED_NORM). The engine must still be exact on them: data at
    unit scale has near-duplicate pairs at such distances."""
    top = float(np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64)).max())
    return 0.0 < top < usl_fast._validate.MIN_SQUARED_NORM


def knn_any_scale(x, k, queries=None):
    """usl_fast.knn, or the engine's kNN directly where the public function refuses the
    scale."""
    if below_public_scale(x):
        return _dispatch.knn(np.ascontiguousarray(x), k, queries, None, False)
    return usl_fast.knn(x, k, queries=queries)


def range_count_any_scale(x, radius):
    if below_public_scale(x):
        x = np.ascontiguousarray(x)
        return _dispatch.range_count(x, x, float(radius), None, False)
    return usl_fast.range_count(x, radius)


# --------------------------------------------------------------------------- the kernel


@SETTINGS
@given(point_sets(max_n=40, max_d=70, scales=(1e-40, 1e-30, 1e-3, 1.0, 1e18)))
def test_kernel_is_the_documented_definition(x):
    # Every SIMD path of exact_l2 (the active one here; every path in a fresh process in
    # test_dense_paths.py's test_pair_kernel_is_the_transcription) gives the bits of the
    # transcription, subnormal and huge coordinates included.
    y = x[::-1].copy()
    got = _dispatch.exact_l2_pairs(x, y)
    want = np.diag(oracles.exact_l2(x, y))
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


# The tile GEMM's contract, checked for whichever GEMM this process runs (and, through the
# subprocess test below, for every GEMM this CPU has): each tile entry ip, combined with the
# engine's norms as e = fl(fl(na + nb) - 2 ip), is within rel * s + abs of exact_l2, with
# the rel the GEMM returned for that tile. That is all the filter assumes. Shapes cover the
# tile's edges (rows and columns around multiples of 8, 16 and 32, coordinates around the
# 256- and 512-wide passes) and strided inputs read in place; data cover the bf16 worst
# case (every coordinate just under a rounding midpoint, all errors the same sign), tiny
# magnitudes whose products underflow, subnormal coordinates and large ones.
_GEMM_BOUND_CHECK = r"""
import numpy as np
from usl_fast._backend import _cpu

def norms(a, center):
    if center is None:
        out = np.zeros(a.shape[0], np.float32)
        _cpu.row_norms(np.ascontiguousarray(a), out, 1, None)
        return out
    out = np.empty(a.shape[0], np.float32)
    _cpu.exact_l2_pairs(np.ascontiguousarray(a), np.repeat(center, a.shape[0], 0), out)
    return out

def check_tile(a, b, center=None):
    m, n = a.shape[0], b.shape[0]
    out = np.full(m * n + 16, 7.0, np.float32)
    rel = np.float32(_cpu.gemm_tile(a, b, out[: m * n], center))
    assert np.all(out[m * n :] == 7.0)
    ip = out[: m * n].reshape(m, n)
    na, nb = norms(a, center), norms(b, center)
    s = na[:, None] + nb[None, :]
    e = s - np.float32(2.0) * ip
    E = np.empty((m, n), np.float32)
    for i in range(m):
        _cpu.exact_l2_pairs(np.repeat(a[i : i + 1], n, 0), b, E[i])
    abs_ = np.float32(_cpu.filter_abs(a.shape[1]))
    bound = rel.astype(np.float64) * s + abs_
    err = np.abs(e.astype(np.float64) - E)
    assert np.all(err <= bound), (m, n, a.shape[1], float((err / bound).max()))
    assert rel >= _cpu.filter_rel(a.shape[1])
    assert rel <= _cpu.filter_rel(a.shape[1]) * 1.05 + 2.0**-7 * 1.05   # never vacuous
    return rel, bound, E

rng = np.random.default_rng(0)
rels = []
for d in (1, 15, 16, 17, 31, 33, 255, 256, 257, 511, 513, 1030):
    for m, n in ((1, 1), (7, 33), (16, 16), (17, 31), (33, 250), (256, 256), (255, 17)):
        if d > 300 and m * n > 5000:
            continue
        a = rng.standard_normal((m, d + 3)).astype(np.float32)[:, 1 : d + 1]
        b = rng.standard_normal((n, d + 5)).astype(np.float32)[:, 2 : d + 2]
        rels.append(check_tile(a, b)[0])
# bf16's worst case: every coordinate rounds by 2^-8 (1 - 2^-15) of its value, all errors
# the same sign, a == b; in one pass, in the second 512-coordinate pass only, and in a
# single row at the tile's last index.
v = np.float32(1.0 + 2.0**-8 - 2.0**-23)
w = np.full((40, 64), v, np.float32)
w[20:] *= np.float32(-1.5)
rels.append(check_tile(w, w[::-1].copy())[0])
w = rng.standard_normal((24, 1030)).astype(np.float32) * np.float32(1e-3)
w[:, 512:1024] = v
rels.append(check_tile(w, w.copy())[0])
w = rng.standard_normal((256, 80)).astype(np.float32)
w[255] = v
rels.append(check_tile(w, w[::-1].copy())[0])
for scale in (1e-30, 1e-20, 1e-3, 1e15, 1e18):
    a = (rng.standard_normal((48, 40)) * scale).astype(np.float32)
    rels.append(check_tile(a, a[::-1].copy())[0])
sub = rng.standard_normal((32, 24)).astype(np.float32)
sub[:, ::2] *= np.float32(1e-39)  # subnormal coordinates beside normal ones
sub[5] = np.float32(3e-39)        # and an all-subnormal row
rels.append(check_tile(sub, sub.copy())[0])
t = rng.standard_normal((16, 33)).astype(np.float32) * np.float32(2.0**-36)  # norm ~2^-60
rels.append(check_tile(t, t[::-1].copy())[0])
z = np.zeros((5, 9), np.float32); z[1, 3] = -0.0; z[2, 4] = 1.0
rels.append(check_tile(z, z.copy())[0])
# int16's worst case for a per-row scale (AVX2 int16): every coordinate of the scaled row
# (2^12 x, scale chosen from the norm) rounds by 1/2 - 2^-12, all the same way, a == b; and
# rows one coordinate dominates.
w = np.full((30, 64), np.float32((2895.5 - 2.0**-12) / 4096.0), np.float32)
w[15:] *= np.float32(-1.0)
rels.append(check_tile(w, w[::-1].copy())[0])
w = rng.standard_normal((40, 75)).astype(np.float32) * np.float32(1e-4)
w[:, 7] = np.float32(1e4)
w[::3, 7] *= np.float32(-1.0)
rels.append(check_tile(w, w[::-1].copy())[0])
w = rng.standard_normal((64, 81)).astype(np.float32) * np.logspace(-15, 15, 81).astype(np.float32)
rels.append(check_tile(w, w[::-1].copy())[0])
# int16's worst case for a per-pass scale (AVX-512 int16): one coordinate sets a row's scale
# and all the others round to 0 by just under half a step, against columns along those others
# (the error is then kappa_a ||a|| ||b||); in one pass and in the second of two.
for dd, lo in ((512, 0), (1000, 512)):
    a = np.zeros((8, dd), np.float32); a[:, lo] = 1.0; a[:, lo + 1 :] = np.float32(0.49 * 2.0**-14)
    b = np.zeros((24, dd), np.float32); b[:, lo + 1 :] = np.float32(1 / np.sqrt(dd - lo - 1))
    rels.append(check_tile(a, b)[0])
if _cpu.gemm_kind() in (2, 4, 5, 6):
    # Centred products (what the drivers run with a 16-bit GEMM): far from the origin the bound is
    # relative to the centred norms, so it stays far below the distances.
    for off, d in ((100.0, 64), (1e4, 300), (0.0, 17)):
        if _cpu.gemm_kind() == 4 and d < 64:
            continue  # int16 runs (and centres) from 64 coordinates; float32 below
        a = (off + rng.standard_normal((200, d))).astype(np.float32)
        b = (off + rng.standard_normal((150, d))).astype(np.float32)
        c = b.mean(0, dtype=np.float64).astype(np.float32)[None, :]
        rel, bound, E = check_tile(a, b, c)
        assert bound.max() < 0.05 * np.median(E), (off, d)
    w = np.full((40, 64), v, np.float32)
    w[20:] *= np.float32(-1.5)
    check_tile(w, w[::-1].copy(), np.zeros((1, 64), np.float32))
    check_tile(w, w[::-1].copy(), np.full((1, 64), np.float32(-2.0**-8)))
print(_cpu.gemm_kind(), repr(float(max(rels))))
"""


def test_tile_gemm_is_within_its_error_bound():
    exec(compile(_GEMM_BOUND_CHECK, "gemm_bound_check", "exec"), {})


@pytest.mark.parametrize(
    "gemm", ["blas", "avx512", "amx", "avx512bf16", "avx512vnni", "avx2", "avx2i16"]
)
def test_every_tile_gemm_is_within_its_error_bound(gemm, tmp_path):
    # USL_FAST_GEMM is read once per process: each GEMM gets its own interpreter.
    import os
    import subprocess
    import sys

    from test_cli import subprocess_env

    env = dict(subprocess_env(), USL_FAST_GEMM=gemm)
    out = subprocess.run(
        [sys.executable, "-c", _GEMM_BOUND_CHECK],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout.split()
    kind, worst_rel = int(out[0]), float(out[1])
    want = {
        "blas": 0,
        "avx512": 1,
        "amx": 2,
        "avx2": 3,
        "avx2i16": 4,
        "avx512bf16": 5,
        "avx512vnni": 6,
    }[gemm]
    if kind != want:
        pytest.skip(f"USL_FAST_GEMM={gemm}: this build or CPU runs GEMM kind {kind} instead")
    if gemm in ("amx", "avx512bf16"):
        # the measured bf16 bound, not the float32 one
        assert worst_rel > 2.0**-10
    elif gemm == "avx2i16":
        # the measured int16 bound: far tighter than bf16's, looser than float32's
        assert 2 * _cpu.filter_rel(1030) < worst_rel < 2.0**-8
    elif gemm == "avx512vnni":
        # the measured int16 bound: looser than float32's, far tighter than bf16's
        assert _cpu.filter_rel(1030) < worst_rel < 2.0**-9
    else:
        assert worst_rel == _cpu.filter_rel(1030)


def test_kernel_symmetry_and_zero():
    rng = np.random.default_rng(0)
    for d in (1, 7, 8, 9, 16, 17, 128, 131):
        a = rng.standard_normal((50, d)).astype(np.float32)
        b = rng.standard_normal((50, d)).astype(np.float32)
        ab = _dispatch.exact_l2_pairs(a, b)
        ba = _dispatch.exact_l2_pairs(b, a)
        assert np.array_equal(ab.view(np.int32), ba.view(np.int32))
        assert np.all(_dispatch.exact_l2_pairs(a, a.copy()) == 0.0)
        # and it is accurate: within 3 float32 ulp of the float64 distance
        ref = ((a.astype(np.float64) - b) ** 2).sum(1)
        assert np.all(np.abs(ab - ref) <= 3 * np.spacing(ref.astype(np.float32)))


# --------------------------------------------------------------------------- kNN


@SETTINGS
@given(point_sets(), st.data())
def test_knn_equals_exact_oracle(x, data):
    n = x.shape[0]
    k = data.draw(st.integers(1, n - 1))
    dist, idx = knn_any_scale(x, k)
    want_d, want_i = oracles.knn_exact(x, k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist.view(np.int32), want_d.view(np.int32))
    # d(i, j) == d(j, i) bit for bit: the oracle's full matrix is symmetric, and every
    # listed distance is that matrix's entry.
    D = oracles.exact_l2(x, x)
    assert np.array_equal(D, D.T)
    q = x[: max(1, n // 3)]
    qd, qi = knn_any_scale(x, k, queries=np.ascontiguousarray(q))
    wd, wi = oracles.knn_exact(x, k, queries=q)
    np.testing.assert_array_equal(qi, wi)
    np.testing.assert_array_equal(qd.view(np.int32), wd.view(np.int32))


def test_identical_rows_tie_by_index_without_repair():
    # Ten copies of one row scattered through the data (different tiles, different
    # positions inside a tile), and a third point within rounding of them.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((900, 12)).astype(np.float32)
    where = np.array([5, 77, 255, 256, 300, 511, 512, 640, 700, 899])
    x[where] = x[5]
    x[400] = x[5] + np.float32(1e-7)
    dist, idx = usl_fast.knn(x, 15)
    for i in where:
        row = idx[i]
        # the ten copies at distance 0, lowest index first, then the near point
        np.testing.assert_array_equal(row[:10], where)
        assert np.all(dist[i, :10] == 0.0) and row[10] == 400
    want_d, want_i = oracles.knn_exact(x, 15)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)


def _unit_with_dups(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    x[rng.integers(n, size=n // 20)] = x[rng.integers(n, size=n // 20)]
    return x


@pytest.mark.parametrize("k", [1, 20, 150])
def test_every_path_returns_identical_arrays(k):
    x = _unit_with_dups(3000, 24, k)
    ref_d, ref_i = usl_fast.knn(x, k, threads=2)
    assert _progress.last_control[3] == 2, "two threads must really run"
    variants = {
        "1 thread": dict(threads=1),
        "no sampled threshold": dict(_sample_hits=0.0),
        "sampled threshold failing on many rows": dict(_sample_hits=1.0),
        "query pass (over the reservoir budget)": dict(_max_reservoir_bytes=0),
    }
    for name, kw in variants.items():
        d, i = usl_fast.knn(x, k, **kw)
        assert np.array_equal(i, ref_i), name
        assert np.array_equal(d.view(np.int32), ref_d.view(np.int32)), name
    qd, qi = usl_fast.knn(x, k, queries=x)  # x as queries against itself
    assert np.array_equal(qi, ref_i) and np.array_equal(qd, ref_d)
    # The density epilogue (no lists) gives the mean of those very distances.
    s = np.zeros(x.shape[0])
    for t in range(k):  # ascending, as the engine sums
        s = s + ref_d[:, t].astype(np.float64)
    want = (1.0 / np.maximum(s / k, _dispatch.MIN_MEAN_DIST)).astype(np.float32)
    for kw in ({}, {"threads": 1}, {"_max_reservoir_bytes": 0}, {"_sample_hits": 1.0}):
        np.testing.assert_array_equal(usl_fast.density(x, k, **kw), want)


def test_threads_none_follows_the_callers_openmp_setting():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = _unit_with_dups(2000, 8, 1)
    usl_fast.knn(x, 5)
    assert _progress.last_control[3] == _cpu.max_threads()
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        usl_fast.knn(x, 5)
        assert _progress.last_control[3] == 1
    with threadpoolctl.threadpool_limits(2, user_api="openmp"):
        usl_fast.knn(x, 5)
        assert _progress.last_control[3] == 2


# --------------------------------------------------------------------------- k-means


def test_kmeans_identical_centroids_tie_to_the_lower_index():
    x = _unit_with_dups(1500, 10, 2)
    init = x[[3, 10, 3, 40]].copy()  # centroids 0 and 2 identical
    res = usl_fast.kmeans(x, 4, n_iter=1, init=init)
    assert not np.any(res.labels == 2) and res.counts[2] == 0
    # and the labels are the exact-distance arg-min
    D = oracles.exact_l2(x, init)
    np.testing.assert_array_equal(res.labels, np.argmin(D, axis=1))
    assert res.inertia[0] == np.min(D, axis=1).sum(dtype=np.float64)


def test_kmeans_same_for_any_thread_count():
    x = _unit_with_dups(4000, 16, 4)
    a = usl_fast.kmeans(x, 37, n_iter=30, threads=1)
    b = usl_fast.kmeans(x, 37, n_iter=30, threads=2)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)


def test_segment_sum_is_row_ordered_float64():
    x = _unit_with_dups(3001, 9, 5)
    lab = np.random.default_rng(0).integers(0, 13, 3001).astype(np.int32)
    for th in (1, 2):
        sums, counts = _dispatch.segment_sum(x, lab, 13, th)
        for c in range(13):
            s = np.zeros(9)
            for row in x[lab == c]:  # ascending rows, float64
                s = s + row.astype(np.float64)
            np.testing.assert_array_equal(sums[c], s)
        np.testing.assert_array_equal(counts, np.bincount(lab, minlength=13))


# --------------------------------------------------------------------------- regularizer


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "imagenet-moco", "imagenet-clip"])
def test_identical_rows_get_identical_regularizer(preset):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((43, 8)).astype(np.float32)
    x[37] = x[0]
    labels = rng.integers(0, 6, 43)
    labels[37] = labels[0]
    p = usl_fast.PRESETS[preset]
    kw = dict(alpha=p.alpha, own_cluster="none" if preset == "imagenet-moco" else "position")
    kw.update(mask_zero=p.mask_zero)
    if p.horizon_num is not None:
        kw["horizon_num"] = 3
    else:
        kw["horizon_dist"] = p.horizon_dist
    reg = usl_fast.regularizer(x, labels, np.array([1, 2, 5, 9, 20]), **kw)
    assert reg[0] == reg[37]


def test_regularized_select_picks_the_first_of_identical_rows():
    # The case found by running the paper's code beside v1: n = 43, d = 8, rows 0 and 37
    # identical, cifar100 preset, 2 rounds. The first copy must win whatever the seed.
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((43, 8)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[37] = x[0]
        dens = usl_fast.density(x, 5)
        assert dens[0] == dens[37]
        labels = rng.integers(0, 5, 43)
        labels[37] = labels[0]
        picks = usl_fast.regularized_select(x, dens, labels, 5, defaults="cifar100", rounds=2)
        assert 37 not in picks
        want, _, fragile = oracles.regularized_select_state(
            x, dens, labels, 5, 5, **oracles.reg_params("cifar100", rounds=2)
        )
        if not fragile:
            np.testing.assert_array_equal(picks, want)


@SETTINGS
@given(point_sets(max_n=60, max_d=10, scales=(1.0,)), st.data())
def test_regularized_select_equals_oracle_with_duplicates(x, data):
    n = x.shape[0]
    assume(n >= 6)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6).astype(np.float32)
    x = x.astype(np.float32)
    preset = data.draw(st.sampled_from(["cifar10", "cifar100", "imagenet-moco", "imagenet-clip"]))
    K = data.draw(st.integers(2, min(8, n - 1)))
    labels = data.draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n))
    labels = np.array(labels)
    dens = usl_fast.density(x, 3)
    m = data.draw(st.integers(1, K))
    kw = {} if preset.startswith("cifar") else {"horizon_num": data.draw(st.integers(1, 4))}
    params = oracles.reg_params(preset, rounds=3, **kw)
    want, _, fragile = oracles.regularized_select_state(x, dens, labels, K, m, **params)
    assume(not fragile and want.size == m)
    got = usl_fast.regularized_select(
        x, dens, labels, m, n_clusters=K, defaults=preset, rounds=3, **kw
    )
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- other epilogues


@SETTINGS
@given(point_sets(max_n=80, max_d=12, scales=(1e-30, 1e-21, 1e-3, 1.0, 1e15)), st.data())
def test_range_count_equals_exact_oracle(x, data):
    D = oracles.exact_l2(x, x)
    # radii at exact distance values (the boundary is inclusive) and in between
    r = float(data.draw(st.sampled_from(sorted(set(D.ravel().tolist())))))
    for radius in (r, float(np.nextafter(np.float32(r), np.float32(np.inf))), 0.0, r * (1 + 1e-9)):
        got = range_count_any_scale(x, radius)
        np.testing.assert_array_equal(got, (D.astype(np.float64) <= radius).sum(1))


@pytest.mark.parametrize("scale", [1e-21, 1e-19])
def test_subnormal_products_keep_every_pair_in_range_and_horizon(scale):
    # Squares below float32's normal range: the GEMM's underflow error exceeds its
    # relative bound, and only the absolute term keeps the filter honest.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 12)) * scale).astype(np.float32)
    x[10] = x[3]
    D = oracles.exact_l2(x, x)
    np.testing.assert_array_equal(range_count_any_scale(x, 0.0), (D <= 0).sum(1))
    labels = np.arange(64) % 4
    picks = np.array([3, 20, 41])
    h = float(np.sort(D[0])[5])
    # The engine directly: usl_fast.regularizer refuses rows this small (2**-60 bound).
    reg = _dispatch.regularizer(
        x,
        np.ascontiguousarray(x[picks]),
        labels.astype(np.int32),
        np.full(picks.size, -1, np.int32),
        1.0,
        h,
        0,
        False,
        None,
    )
    Dp = oracles.exact_l2(x, x[picks]).astype(np.float64)
    with np.errstate(divide="ignore"):
        terms = np.where(Dp >= h, 1.0 / oracles.FAR, 1.0 / Dp)
    want = np.zeros(64)
    for j in range(picks.size):  # ascending pick order, as the engine sums
        want = want + terms[:, j]
    np.testing.assert_array_equal(reg, want)
    assert np.isinf(reg[3]) and np.isinf(reg[10])  # their own pick at distance 0, unmasked


def test_min_update_equals_exact_oracle():
    x = _unit_with_dups(1200, 6, 9)
    centers = x[[4, 99, 4, 800]].copy()
    mind = np.full(1200, np.inf, np.float32)
    arg = np.full(1200, -1, np.int64)
    _dispatch.min_update(x, centers[:2], 0, mind, arg, 2)
    _dispatch.min_update(x, centers[2:], 2, mind, arg, 2)
    D = oracles.exact_l2(x, centers)
    np.testing.assert_array_equal(mind, D.min(1))
    np.testing.assert_array_equal(arg, np.argmin(D, axis=1))  # ties keep the earlier center
    assert not np.any(arg == 2)


# --------------------------------------------------------------------------- extremes and layouts


@pytest.mark.parametrize("value", [1e19, 1e30, -3e18 * 4])
def test_row_whose_squared_norm_would_overflow_is_named(value):
    x = np.ones((30, 4), np.float32)
    x[17, 2] = value
    with pytest.raises(ValueError, match=r"`features` row 17 has squared norm .* 2\*\*124"):
        usl_fast.knn(x, 3)
    with pytest.raises(ValueError, match="row 17"):
        usl_fast.select(x, 2, k=3)


def test_largest_accepted_magnitude_works():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((200, 4)) * 1e18).astype(np.float32)
    d, i = usl_fast.knn(x, 5)
    wd, wi = oracles.knn_exact(x, 5)
    np.testing.assert_array_equal(i, wi)
    np.testing.assert_array_equal(d, wd)
    assert np.all(np.isfinite(d))
    res = usl_fast.kmeans(x, 4, n_iter=5)
    assert np.all(np.isfinite(res.centroids)) and res.labels.min() >= 0


@pytest.mark.parametrize("scale", [1e-30, 1e-42, 0.0])
def test_tiny_subnormal_and_zero_magnitudes(scale):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((120, 5)) * scale).astype(np.float32)
    x[::7] = -0.0
    d, i = knn_any_scale(x, 10)
    wd, wi = oracles.knn_exact(x, 10)
    np.testing.assert_array_equal(i, wi)
    np.testing.assert_array_equal(d, wd)
    if scale == 0.0:  # every row zero: duplicates, a legitimate input
        picks = usl_fast.select(x, 6, k=10, kmeans_iter=5, rounds=2)
        assert len(np.unique(picks)) == 6
    else:  # squared distances below float32's normal range: refused, not silently tied
        with pytest.raises(ValueError, match="too small in magnitude"):
            usl_fast.select(x, 6, k=10, kmeans_iter=5, rounds=2)


def test_smallest_sizes():
    x1 = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="`k`"):
        usl_fast.knn(x1, 1)
    assert usl_fast.kmeans(x1, 1, n_iter=3).labels.tolist() == [0]
    x = _unit_with_dups(9, 3, 0)
    d, i = usl_fast.knn(x, 8)  # k = n - 1
    assert i.shape == (9, 8)
    picks = usl_fast.select(x, 9, k=8, kmeans_iter=3, rounds=2)  # m = n
    assert sorted(picks.tolist()) == list(range(9))


def test_layouts_give_the_same_answer_without_copies(tmp_path):
    x = _unit_with_dups(700, 16, 6)
    ref = usl_fast.knn(x, 7)
    fortran = np.asfortranarray(x)
    ro = x.copy()
    ro.flags.writeable = False
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    wide = np.zeros((700, 40), np.float32)
    wide[:, 3:19] = x
    strided = wide[:, 3:19]  # rows 160 bytes apart, 64 used
    every_other = np.repeat(x, 2, axis=0)[::2]
    for name, v in dict(
        fortran=fortran, readonly=ro, memmap=mm, strided=strided, every_other=every_other
    ).items():
        d, i = usl_fast.knn(v, 7)
        assert np.array_equal(i, ref[1]) and np.array_equal(d, ref[0]), name
    from usl_fast._validate import as_features

    for v in (ro, mm, strided, every_other):  # read in place
        assert np.shares_memory(as_features(v)[0], v)


def test_bindings_convert_nothing():
    x = _unit_with_dups(100, 4, 0)
    good_d = np.empty((100, 3), np.float32)
    good_i = np.empty((100, 3), np.int64)
    with pytest.raises(TypeError, match="out_idx.*int64"):
        _cpu.knn(x, None, 3, good_d, good_i.astype(np.int32), 1, None, 0.0, 1e18)
    with pytest.raises(TypeError, match="out_dist.*float32"):
        _cpu.knn(x, None, 3, np.empty((100, 3), np.float16), good_i, 1, None, 0.0, 1e18)
    with pytest.raises(TypeError, match="`x`"):
        _cpu.knn(x.astype(np.float64), None, 3, good_d, good_i, 1, None, 0.0, 1e18)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cpu.knn(x, None, 3, np.asfortranarray(good_d), good_i, 1, None, 0.0, 1e18)
    ro = good_d.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        _cpu.knn(x, None, 3, ro, good_i, 1, None, 0.0, 1e18)
    with pytest.raises(TypeError, match="control"):
        _cpu.knn(x, None, 3, good_d, good_i, 1, np.zeros(4, np.int32), 0.0, 1e18)
    with pytest.raises(ValueError, match="control"):
        _cpu.knn(x, None, 3, good_d, good_i, 1, np.zeros(3, np.int64), 0.0, 1e18)
    with pytest.raises(ValueError, match="threads"):
        _cpu.knn(x, None, 3, good_d, good_i, 0, None, 0.0, 1e18)
    with pytest.raises(ValueError, match="`x`"):
        _cpu.knn(np.asfortranarray(x), None, 3, good_d, good_i, 1, None, 0.0, 1e18)


@pytest.mark.parametrize("max_reservoir_bytes", [1e18, 0.0])
def test_allocation_failure_reaches_python_as_memoryerror(max_reservoir_bytes):
    # 0 bytes of budget: the query pass, whose buffers are allocated inside the OpenMP
    # region by every thread.
    x = _unit_with_dups(3000, 8, 1)
    ref = usl_fast.knn(x, 40, _max_reservoir_bytes=max_reservoir_bytes)
    _cpu.set_alloc_limit(50_000)
    try:
        with pytest.raises(MemoryError):
            usl_fast.knn(x, 40, _max_reservoir_bytes=max_reservoir_bytes)
        with pytest.raises(MemoryError):
            usl_fast.density(x, 40, _max_reservoir_bytes=max_reservoir_bytes)
    finally:
        _cpu.set_alloc_limit(-1)
    again = usl_fast.knn(x, 40, _max_reservoir_bytes=max_reservoir_bytes)
    assert np.array_equal(again[1], ref[1])


def test_reservoir_formula_matches_the_engine():
    for k in (1, 20, 400, 1024):
        assert _dispatch.reservoir_bytes_per_row(k) == _cpu.reservoir_bytes_per_row(k)


def test_memory_estimate_is_checked_before_allocating(monkeypatch, no_engine):
    from usl_fast import _memory

    x = _unit_with_dups(500, 8, 1)
    tight = [_memory.Limit("MemAvailable", 1000, "test", False)]
    monkeypatch.setattr(_memory, "rlimit_limits", lambda: [])
    monkeypatch.setattr(_memory, "touched_limits", lambda: tight)
    monkeypatch.setattr(_memory, "SMALL_BYTES", 0)
    with pytest.raises(MemoryError, match=r"would need about .*B \(.*\), but only .*B is"):
        usl_fast.density(x, 20)
    with pytest.raises(MemoryError, match="kNN lists"):
        usl_fast.knn(x, 20)


# --------------------------------------------------------------------------- the Python layer


def test_help_shows_real_defaults():
    sig = inspect.signature(usl_fast.select)
    assert "object at" not in str(sig)
    assert repr(sig.parameters["k"].default) == "PRESET"
    assert sig.parameters["seed"].default == 0
    p = usl_fast.PRESETS["cifar10"]
    assert p.k == 400 and p["k"] == 400 and dict(p)["rounds"] == 10
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        p.k = 3


def test_every_public_function_returns_the_callers_library():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_unit_with_dups(300, 6, 3))
    labels = torch.arange(300) % 7
    reg = usl_fast.regularizer(x, labels, torch.tensor([1, 2, 3]))
    assert isinstance(reg, torch.Tensor)
    dens = usl_fast.density(x, 5)
    assert isinstance(dens, torch.Tensor)
    best = usl_fast.cluster_argmax(dens, labels, 7)
    assert isinstance(best, torch.Tensor)
    assert isinstance(usl_fast.range_count(x, 0.5), torch.Tensor)
    best_np = usl_fast.cluster_argmax(dens.numpy(), labels.numpy(), 7)
    np.testing.assert_array_equal(best.numpy(), best_np)


def test_lloyd_seams_for_split_rows():
    # The Python loop's seams (usl_fast.distributed): `segment_sum` replaces the engine's
    # and its counts are the ones returned; `step_reduce` decides the fixed-point stop.
    from usl_fast.backends.engine import lloyd

    x = _unit_with_dups(2000, 8, 3)
    init = x[:12].copy()
    plain = usl_fast.kmeans(x, 12, n_iter=60, init=init)
    assert plain.n_iter_run < 60
    calls = []

    def seg(xx, labels, K, threads):
        calls.append("sum")
        sums, counts = _dispatch.segment_sum(xx, labels, K, threads)
        return sums, counts

    def never_repeated(repeated, inertia):
        calls.append("step")
        return False, inertia

    cent = init.copy()
    labels, counts, inertia, n_run = lloyd(x, cent, 60, segment_sum=seg, step_reduce=never_repeated)
    assert n_run == 60 and calls.count("sum") == 60 and calls.count("step") == 60
    np.testing.assert_array_equal(labels, plain.labels)
    np.testing.assert_array_equal(cent, plain.centroids)
    np.testing.assert_array_equal(counts, plain.counts)
    # and a step_reduce that passes the local test through stops where the plain run does
    cent = init.copy()
    _, _, inertia2, n_run2 = lloyd(x, cent, 60, step_reduce=lambda r, i: (r, i))
    assert n_run2 == plain.n_iter_run
    np.testing.assert_array_equal(inertia2, plain.inertia)


_AVX2_I16_WIDE = r"""
import numpy as np
from usl_fast._backend import _cpu
rng = np.random.default_rng(5)
for d in (16384, 16385):
    a = rng.standard_normal((16, d)).astype(np.float32)
    b = rng.standard_normal((16, d)).astype(np.float32)
    out = np.empty(16 * 16, np.float32)
    center = np.zeros((1, d), np.float32) if d <= 16384 else None  # centred: int16 only
    rel = float(_cpu.gemm_tile(a, b, out, center))
    print(d, repr(rel), repr(float(_cpu.filter_rel(d))))
try:
    _cpu.gemm_tile(a, b, out, np.zeros((1, 16385), np.float32))
except ValueError as e:
    assert "64 <= d <= 16384" in str(e), e
    print("refused")
"""


def test_avx2_int16_filter_stops_at_its_column_limit(tmp_path):
    # Above kI16MaxColsAvx2 (16,384) the AVX2 int16 filter would fail its rounding test on
    # every tile and redo it from full centred copies: the float32 kernel runs instead, with
    # the float32 bound; at the limit the int16 tile still passes its rounding test.
    import subprocess
    import sys

    from test_cli import subprocess_env

    env = dict(subprocess_env(), USL_FAST_GEMM="avx2i16", USL_FAST_ISA="avx2")
    kind = subprocess.run(
        [sys.executable, "-c", "from usl_fast._backend import _cpu; print(_cpu.gemm_kind())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    if kind != "4":
        pytest.skip(f"this CPU or build runs GEMM kind {kind} on the AVX2 path")
    r = subprocess.run(
        [sys.executable, "-c", _AVX2_I16_WIDE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines()[:2]:
        d, rel, f32 = line.split()
        rows[int(d)] = (float(rel), float(f32))
    rel_at, f32_at = rows[16384]
    # int16 ran: its measured bound, neither float32's nor the redo's (float32 + 2^-21)
    assert f32_at + 2.0**-20 < rel_at < 2.0**-6
    rel_past, f32_past = rows[16385]
    assert rel_past == f32_past  # float32 kernel, float32 bound (no centred redo)
    assert r.stdout.count("refused") == 1  # and no centred product past the limit
