"""Exact-duplicate groups (csrc/cpu/dedup.hpp): the ops run on one representative per group
of bit-identical rows and expand the results after. The answers must not move: each op
against its float64 NumPy oracle on data with planted groups (sizes around k, interleaved
by index, several groups tied at one distance, +0.0 and -0.0 rows, all-equal data), and the
whole pipeline bit for bit against USL_FAST_DEDUP=0 in fresh processes (the switch is read
once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import oracles
import pytest
from test_cli import subprocess_env

import usl_fast
from usl_fast._backend import _cpu

ON = _cpu.dedup_enabled()


def planted(n: int, d: int, k: int, seed: int, big: int = 0) -> np.ndarray:
    """Gaussian rows with duplicate groups of sizes 2, 3, k - 1, k, k + 1 (and `big`), each
    group's rows scattered over the whole index range; three groups of three at one
    distance from the zero rows (+-0.5 e0, 0.5 e1); four +0.0 rows and four rows mixing
    +0.0 and -0.0 (other bytes, the same distances: two groups tied at 0)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    perm = rng.permutation(n)
    pos = 0
    for s in [2, 3, k - 1, k, k + 1] + ([big] if big else []):
        if s < 2:
            continue
        rows = perm[pos : pos + s]
        pos += s
        x[rows] = x[rows[int(rng.integers(s))]]
    for sign, axis in ((1, 0), (-1, 0), (1, 1)):
        rows = perm[pos : pos + 3]
        pos += 3
        x[rows] = 0.0
        x[rows, axis % d] = 0.5 * sign
    zero = perm[pos : pos + 4]
    neg = perm[pos + 4 : pos + 8]
    x[zero] = 0.0
    x[neg] = 0.0
    x[neg, ::2] = -0.0
    assert pos + 8 <= n
    return x


def byte_groups(x: np.ndarray) -> np.ndarray:
    """Each row's group by its bytes, groups numbered by their lowest row."""
    v = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))[:, 0]
    _, first, inv = np.unique(v, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inv.ravel()]


def density_oracle(x: np.ndarray, k: int) -> np.ndarray:
    """1 / max(mean, 1e-12) of the k exact distances, summed in ascending order in float64
    (the engine's order; np.cumsum adds left to right), as float32."""
    dist, _ = oracles.knn_exact(x, k)
    mean = np.cumsum(dist.astype(np.float64), axis=1)[:, -1] / k
    return (1.0 / np.maximum(mean, oracles.MIN_MEAN_DIST)).astype(np.float32)


needs_on = pytest.mark.skipif(not ON, reason="USL_FAST_DEDUP=0 in this process")


# ----------------------------------------------------------------------------- groups


@needs_on
@pytest.mark.parametrize("d", [1, 3, 8, 9, 33])
def test_groups_are_the_byte_groups(d):
    x = planted(600, d, 12, seed=d, big=100)
    of = np.empty(600, np.int32)
    count = _cpu.duplicate_groups(x, of)
    want = byte_groups(x)
    assert count == want.max() + 1 < 600
    assert np.array_equal(of, want)
    # +0.0 and -0.0 rows are different bytes: different groups
    zero = np.flatnonzero(~x.any(axis=1))
    assert len(set(of[zero].tolist())) == 2


def test_no_duplicates_means_no_groups():
    x = np.random.default_rng(0).standard_normal((3000, 7)).astype(np.float32)
    assert _cpu.duplicate_groups(x, np.empty(3000, np.int32)) == 0


@needs_on
def test_groups_of_strided_rows():
    # A view with a row stride: only each row's d floats count, not the gap after them.
    base = np.random.default_rng(1).standard_normal((400, 12)).astype(np.float32)
    base[::2, :6] = base[0, :6]
    view = base[:, :6]
    of = np.empty(400, np.int32)
    assert _cpu.duplicate_groups(view, of) == 201
    assert np.array_equal(of, byte_groups(np.ascontiguousarray(view)))


# ----------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("k", [1, 2, 3, 4, 11, 12, 13, 30])
def test_self_knn_equals_oracle(k):
    x = planted(500, 9, 12, seed=k, big=60)
    dist, idx = usl_fast.knn(x, k)
    want_d, want_i = oracles.knn_exact(x, k)
    assert np.array_equal(idx, want_i)
    assert np.array_equal(dist, want_d)


@pytest.fixture(scope="module")
def sampled_case():
    x = planted(2400, 12, 120, seed=11, big=300)
    return x, oracles.knn_exact(x, 120)


@pytest.mark.parametrize(
    "knobs", [dict(_sample_hits=1.0), dict(_sample_hits=0.0), dict(_max_reservoir_bytes=0.0)]
)
def test_self_knn_paths_on_groups(knobs, sampled_case):
    # The representatives' pass on each path of the self graph: the sampled bound (hits = 1
    # fails on many rows, redone exhaustively), no sample, and the query pass.
    x, (want_d, want_i) = sampled_case
    d, i = usl_fast.knn(x, 120, **knobs)
    assert np.array_equal(i, want_i) and np.array_equal(d, want_d)
    dens = usl_fast.density(x, 120, **knobs)
    mean = np.cumsum(want_d.astype(np.float64), axis=1)[:, -1] / 120
    assert np.array_equal(dens, (1.0 / np.maximum(mean, oracles.MIN_MEAN_DIST)).astype("f4"))


@pytest.mark.parametrize("k", [1, 5, 12, 13])
def test_knn_with_queries_equals_oracle(k):
    x = planted(400, 10, 12, seed=k)
    rng = np.random.default_rng(k)
    # queries: rows of x (duplicates of base groups), repeated, plus fresh rows
    q = np.vstack([x[rng.integers(0, 400, 150)], x[:40], x[:40], rng.standard_normal((30, 10))])
    q = q.astype(np.float32)
    dist, idx = usl_fast.knn(x, k, queries=q)
    want_d, want_i = oracles.knn_exact(x, k, queries=q)
    assert np.array_equal(idx, want_i)
    assert np.array_equal(dist, want_d)


@pytest.mark.parametrize("k", [1, 3, 12, 13, 40])
def test_density_equals_oracle(k):
    x = planted(450, 8, 12, seed=k + 100, big=45)
    assert np.array_equal(usl_fast.density(x, k), density_oracle(x, k))


@pytest.mark.parametrize("k", [1, 7, 299, 300])
def test_all_equal_rows(k):
    # k = n: the engine's limit (the public functions stop at n - 1)
    x = np.full((300, 5), 0.25, np.float32)
    dist, idx = usl_fast._dispatch.knn(x, k, None, None, False)
    assert np.array_equal(idx, np.broadcast_to(np.arange(k), (300, k)))
    assert not dist.any()
    dens = usl_fast._dispatch.knn_density(x, k, None, False)
    assert np.array_equal(dens, np.full(300, np.float32(1.0 / oracles.MIN_MEAN_DIST)))


def test_half_the_rows_one_group():
    x = planted(700, 6, 20, seed=5, big=350)
    for k in (1, 20, 21, 100):
        d, i = usl_fast.knn(x, k)
        wd, wi = oracles.knn_exact(x, k)
        assert np.array_equal(i, wi) and np.array_equal(d, wd)


@pytest.mark.parametrize("k", [1, 12, 13, 40])
def test_knn_cross_equals_oracle(k):
    # A distributed kNN's block between two shards: each side's k smallest distances to
    # the other, with duplicate groups inside each side and across the two.
    x = planted(600, 7, 12, seed=k, big=90)
    a, b = x[:250], x[250:]
    E = oracles.exact_l2(a, b)
    da, db = usl_fast._dispatch.knn_cross(a, b, k, None, None, None)
    assert np.array_equal(da, np.sort(E, axis=1)[:, :k])
    assert np.array_equal(db, np.sort(E.T, axis=1)[:, :k])


def test_range_count_equals_oracle():
    x = planted(500, 7, 10, seed=3, big=80)
    E = oracles.exact_l2(x, x)
    for r in (0.0, 0.25, 2.0, 9.0):
        assert np.array_equal(usl_fast.range_count(x, r), (E <= np.float32(r)).sum(axis=1))


def test_probcover_graph_equals_oracle():
    x = planted(300, 6, 8, seed=4, big=40)
    E = oracles.exact_l2(x, x)
    off, nbr = usl_fast._dispatch.range_search(x, x, 1.5, None, False)
    for i in range(300):
        assert np.array_equal(nbr[off[i] : off[i + 1]], np.flatnonzero(E[i] <= np.float32(1.5)))


def test_kmeans_assign_equals_oracle():
    x = planted(800, 6, 10, seed=6, big=200)
    cent = np.random.default_rng(6).standard_normal((300, 6)).astype(np.float32)
    lab, dist = usl_fast._dispatch.assign(x, cent, None)
    E = oracles.exact_l2(x, cent)
    assert np.array_equal(lab, E.argmin(axis=1))
    assert np.array_equal(dist, E.min(axis=1))


# ------------------------------------------------------- collapse vs no collapse, bit for bit

_SCRIPT = r"""
import sys, numpy as np, usl_fast
sys.path.insert(0, sys.argv[2])
from test_dedup import planted
from usl_fast._backend import _cpu
n, big = int(sys.argv[3]), int(sys.argv[4])
out = {"on": np.array([_cpu.dedup_enabled()])}
x = planted(n, 9, 20, seed=7, big=big)
half = planted(n, 5, 20, seed=8, big=n // 2)
zero = np.zeros((max(n // 5, 300), 4), np.float32)
for name, data in (("x", x), ("half", half), ("zero", zero)):
    for k in (1, 3, 19, 20, 21, 50):
        out[f"{name}_knn_d{k}"], out[f"{name}_knn_i{k}"] = usl_fast.knn(data, k)
        out[f"{name}_dens{k}"] = usl_fast.density(data, k)
    q = np.vstack([data[::3], data[:25]])
    out[f"{name}_q_d"], out[f"{name}_q_i"] = usl_fast.knn(data, 21, queries=q)
    out[f"{name}_rc"] = usl_fast.range_count(data, 1.0)
    h = data.shape[0] // 2
    bounds = (0.5 * data[:, 0] ** 2).astype(np.float32)  # a row's own: equal rows, equal bounds
    for j, (sa, sb) in enumerate(((None, None), (bounds[:h], bounds[h:]))):
        ca, cb = usl_fast._dispatch.knn_cross(data[:h], data[h:], 21, sa, sb, None)
        out[f"{name}_cross_a{j}"], out[f"{name}_cross_b{j}"] = ca, cb
    km = usl_fast.kmeans(data, 260, n_iter=15)  # >= 256 centroids: assign collapses
    out[f"{name}_km_l"], out[f"{name}_km_c"] = km.labels, km.centroids
    picks = np.arange(0, data.shape[0], max(data.shape[0] // 260, 1))[:260]
    for j, kw in enumerate((dict(horizon_dist=9.0), dict(horizon_num=7),
                            dict(alpha=1.0, mask_zero=True))):
        out[f"{name}_reg{j}"] = usl_fast.regularizer(data, km.labels, picks, **kw)
for method, kw in (("usl", dict(k=20, kmeans_iter=10)), ("typiclust", dict(k=20)),
                   ("probcover", dict(delta=0.9)), ("kcenter", {})):
    out["sel_" + method] = usl_fast.select(x, 260, method=method, normalize=False, **kw)
np.savez(sys.argv[1], **out)
"""


def _run(tmp_path, switch: str, n: int, big: int) -> dict:
    env = subprocess_env()
    env["USL_FAST_DEDUP"] = switch
    path = str(tmp_path / f"dedup{switch}.npz")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, path, here, str(n), str(big)],
        check=True,
        env=env,
        cwd=str(tmp_path),
    )
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _compare(tmp_path, n: int, big: int) -> None:
    off = _run(tmp_path, "0", n, big)
    on = _run(tmp_path, "1", n, big)
    assert not off.pop("on")[0] and on.pop("on")[0]
    assert off.keys() == on.keys()
    for key in off:
        assert off[key].dtype == on[key].dtype, key
        assert off[key].tobytes() == on[key].tobytes(), key


def test_collapse_changes_no_bit(tmp_path):
    _compare(tmp_path, 1200, 300)


@pytest.mark.slow
def test_collapse_changes_no_bit_large(tmp_path):
    _compare(tmp_path, 12000, 1000)
