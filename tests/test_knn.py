"""kNN and density: the tiled float32 engine against the float64 brute-force oracle, hand
cases (self, duplicates, k = n-1), tile-boundary shapes, query mode, thread
independence, input conversion, and the faiss / scikit-learn peers."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

TOL = 1e-5  # float32 squared distances of unit vectors (values in [0, 4])


def check_knn(x, k, dist, idx, queries=None, tol=TOL):
    """Distances equal to the oracle within tol; index sets identical except where the
    oracle has a near tie at the k-th distance; each returned index really is at the
    returned distance; rows ascending."""
    od, oi = oracles.knn(x, k, queries)
    dist = np.asarray(dist)
    idx = np.asarray(idx)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    assert dist.shape == od.shape and idx.shape == oi.shape
    np.testing.assert_allclose(dist, od, rtol=0, atol=tol)
    assert np.all(np.diff(dist, axis=1) >= 0), "distances not ascending"
    # The returned distances belong to the returned indices.
    full = oracles.sqdist(x if queries is None else queries, x)
    np.testing.assert_allclose(np.take_along_axis(full, idx, axis=1), dist, rtol=0, atol=tol)
    n = full.shape[1]
    for r in range(idx.shape[0]):
        got = set(idx[r].tolist())
        assert len(got) == k, f"row {r}: repeated neighbours {idx[r]}"
        kth = od[r, -1]
        sure = set(oi[r][od[r] < kth - tol].tolist())  # strictly inside: must be there
        assert sure <= got, f"row {r}: missing {sorted(sure - got)}"
        nxt = np.sort(full[r])[k] if k < n else np.inf
        if nxt - kth > 2 * tol:  # no near tie at the boundary: sets must be equal
            assert got == set(oi[r].tolist()), f"row {r}: {sorted(got)} vs {sorted(oi[r])}"
    return od, oi


@pytest.mark.parametrize("n", [2, 3, 255, 256, 257, 600, 1000])
def test_self_knn_matches_oracle_across_tile_boundaries(usl, make_unit, n):
    x = make_unit(n, 24, seed=n)
    k = min(7, n - 1)
    dist, idx = usl.knn(x, k)
    check_knn(x, k, dist, idx)


@pytest.mark.parametrize("n,k", [(2, 1), (10, 9), (257, 256), (300, 299)])
def test_k_equals_n_minus_one(usl, make_unit, n, k):
    x = make_unit(n, 5, seed=k)
    dist, idx = usl.knn(x, k)
    check_knn(x, k, dist, idx)
    # every row: itself plus all points but the farthest one, each once
    far = np.argmax(oracles.sqdist(x, x), axis=1)
    for r in range(n):
        assert r in idx[r] and far[r] not in idx[r]
        assert len(set(idx[r].tolist())) == k


def test_self_is_first_at_exactly_zero(usl, make_unit):
    x = make_unit(700, 16, seed=3)  # distinct points, three row tiles
    dist, idx = usl.knn(x, 5)
    np.testing.assert_array_equal(idx[:, 0], np.arange(700))
    assert np.all(dist[:, 0] == 0.0)
    assert np.all(dist[:, 1] > 0.0)


def test_large_k_crosses_column_tiles(usl, make_unit):
    x = make_unit(600, 12, seed=11)
    dist, idx = usl.knn(x, 300)
    check_knn(x, 300, dist, idx)


def test_hand_table(usl):
    # 1-D points 0, 1, 3, 7: squared distances are hand-computable.
    x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    dist, idx = usl.knn(x, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]])
    np.testing.assert_array_equal(dist, [[0, 1, 9], [0, 1, 4], [0, 4, 9], [0, 16, 36]])


def test_exact_ties_go_to_lower_index(usl):
    # Point 0 at the origin, points 1..4 all at squared distance 1: ties.
    x = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
    dist, idx = usl.knn(x, 3)
    np.testing.assert_array_equal(idx[0], [0, 1, 2])
    np.testing.assert_array_equal(dist[0], [0, 1, 1])
    # From point 3 (-1, 0): 0 at 1, then 2 and 4 at 2 -> 2 before 4.
    np.testing.assert_array_equal(idx[3], [3, 0, 2])


def test_duplicates_small(usl, make_unit):
    x = make_unit(10, 5, seed=0)
    x[7] = x[2]
    x[9] = x[2]
    dist, idx = usl.knn(x, 4)
    for r in (2, 7, 9):
        np.testing.assert_array_equal(idx[r, :3], [2, 7, 9])
        np.testing.assert_array_equal(dist[r, :3], [0, 0, 0])
    check_knn(x, 4, dist, idx)


@pytest.mark.parametrize("n_half", [300, 700])
def test_duplicates_across_tiles_ties_to_lower_index(usl, make_unit, n_half):
    """Exact duplicates are at squared distance exactly 0 from each other (the oracle's
    sum((x_i - x_j)**2) is 0), so a duplicate pair is an exact tie with the point itself
    and the lower index must come first, in every row, whichever tiles the pair lies in."""
    base = make_unit(n_half, 17, seed=n_half)
    x = np.concatenate([base, base])  # row i + n_half duplicates row i
    dist, idx = usl.knn(x, 3)
    _, oi = oracles.knn(x, 3)
    rows = np.arange(n_half)
    # oracle: both rows of a pair list (i, i + n_half) first, both at 0
    np.testing.assert_array_equal(oi[rows, :2], np.stack([rows, rows + n_half], 1))
    np.testing.assert_array_equal(oi[rows + n_half, :2], np.stack([rows, rows + n_half], 1))
    bad = np.flatnonzero(idx[rows + n_half, 0] != rows)
    assert bad.size == 0, (
        f"{bad.size}/{n_half} duplicate rows list themselves before the lower-index "
        f"duplicate; e.g. row {bad[0] + n_half}: idx {idx[bad[0] + n_half]}, "
        f"dist {dist[bad[0] + n_half]}"
    )
    np.testing.assert_array_equal(dist[:, :2], 0.0)
    np.testing.assert_array_equal(idx, oi)


def test_duplicate_groups_in_query_mode_and_signed_zero(usl, make_unit):
    """Queries against a base set with groups of exact duplicates scattered over tiles
    (three copies of some rows, one copy with -0.0 where the original has +0.0): each
    group enters a list lowest index first, all its members at one distance, exactly as
    the float64 oracle orders them; the symmetric self graph agrees with query mode."""
    base = make_unit(400, 13, seed=21)
    base[:, 0][:50] = 0.0
    extra = base[:50].copy()
    extra[:, 0] = -0.0
    x = np.concatenate([base, extra, base[:50]])  # 500 rows, groups of three
    queries = make_unit(70, 13, seed=22)
    dist, idx = usl.knn(x, 40, queries=queries)
    _, oi = oracles.knn(x, 40, queries=queries)
    np.testing.assert_array_equal(idx, oi)
    check_knn(x, 40, dist, idx, queries=queries)
    groups = np.where(idx >= 400, (idx - 400) % 50, idx)
    for r in range(len(queries)):
        for g in np.unique(groups[r]):
            at = groups[r] == g
            assert len(set(dist[r, at].tolist())) == 1, (r, g)
    ds, is_ = usl.knn(x, 40)
    dq, iq = usl.knn(x, 40, queries=x)
    np.testing.assert_array_equal(is_, iq)
    _, os_ = oracles.knn(x, 40)
    np.testing.assert_array_equal(is_, os_)


def test_query_mode_matches_oracle(usl, make_unit):
    base = make_unit(600, 20, seed=1)
    for q in (1, 255, 257):
        queries = make_unit(q, 20, seed=100 + q)
        dist, idx = usl.knn(base, 9, queries=queries)
        check_knn(base, 9, dist, idx, queries=queries)


def test_query_mode_k_equals_n_and_single_base_point(usl, make_unit):
    base = make_unit(1, 4, seed=2)
    queries = make_unit(5, 4, seed=3)
    dist, idx = usl.knn(base, 1, queries=queries)
    np.testing.assert_array_equal(idx, np.zeros((5, 1)))
    check_knn(base, 1, dist, idx, queries=queries)
    base = make_unit(257, 4, seed=4)
    dist, idx = usl.knn(base, 257, queries=queries)
    check_knn(base, 257, dist, idx, queries=queries)
    assert all(sorted(r) == list(range(257)) for r in idx.tolist())


def test_query_mode_has_no_self_special_case(usl, make_unit):
    # queries equal to base rows: their own row is found at (near) 0, no forced entry
    base = make_unit(300, 8, seed=5)
    dist, idx = usl.knn(base, 2, queries=base[:10] + np.float32(0.01))
    check_knn(base, 2, dist, idx, queries=base[:10] + np.float32(0.01))
    assert np.all(dist[:, 0] > 0)


def test_non_unit_data(usl):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((513, 6)) * 3).astype(np.float32)
    dist, idx = usl.knn(x, 11)
    check_knn(x, 11, dist, idx, tol=1e-3)  # values up to ~200: float32 relative error


def test_threads_give_identical_results(usl, make_unit):
    x = make_unit(1000, 32, seed=7)
    d1, i1 = usl.knn(x, 20, threads=1)
    d2, i2 = usl.knn(x, 20, threads=2)
    assert np.array_equal(d1, d2) and np.array_equal(i1, i2)
    d3, i3 = usl.knn(x, 20, threads=5)  # more threads than cores, odd count
    assert np.array_equal(d1, d3) and np.array_equal(i1, i3)
    q = make_unit(300, 32, seed=8)
    d1, i1 = usl.knn(x, 20, queries=q, threads=1)
    d2, i2 = usl.knn(x, 20, queries=q, threads=2)
    assert np.array_equal(d1, d2) and np.array_equal(i1, i2)
    assert np.array_equal(usl.density(x, 20, threads=1), usl.density(x, 20, threads=2))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64])
def test_input_dtypes_convert(usl, dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(-5, 6, size=(40, 3)).astype(dtype)
    dist, idx = usl.knn(x, 4)
    ref_d, ref_i = usl.knn(x.astype(np.float32), 4)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(dist, ref_d)
    np.testing.assert_array_equal(idx, ref_i)
    check_knn(x.astype(np.float64), 4, dist, idx)  # integer grid: exact ties everywhere


def test_non_contiguous_input(usl, make_unit):
    x = make_unit(300, 10, seed=3)
    xf = np.asfortranarray(x)
    xs = np.repeat(x, 2, axis=1)[:, ::2]
    for v in (xf, xs):
        d, i = usl.knn(v, 5)
        d0, i0 = usl.knn(x, 5)
        assert np.array_equal(d, d0) and np.array_equal(i, i0)


def test_torch_in_torch_out(usl, make_unit):
    torch = pytest.importorskip("torch")
    x = make_unit(260, 8, seed=4)
    t = torch.from_numpy(x.copy())
    dist, idx = usl.knn(t, 6)
    assert isinstance(dist, torch.Tensor) and isinstance(idx, torch.Tensor)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    d0, i0 = usl.knn(x, 6)
    np.testing.assert_array_equal(dist.numpy(), d0)
    np.testing.assert_array_equal(idx.numpy(), i0)
    dens = usl.density(t.double().requires_grad_(True), 6)
    assert isinstance(dens, torch.Tensor)
    dq, iq = usl.knn(t, 3, queries=t[:5])
    assert isinstance(dq, torch.Tensor) and tuple(iq.shape) == (5, 3)
    # half / bfloat16 / non-contiguous tensors convert to the same float32 input
    wide = torch.from_numpy(np.repeat(x, 2, axis=1))
    for v in (t.half(), t.bfloat16(), t.t().contiguous().t(), wide[:, ::2]):
        dv, iv = usl.knn(v, 6)
        d1, i1 = usl.knn(v.float().contiguous().numpy(), 6)
        assert isinstance(dv, torch.Tensor)
        np.testing.assert_array_equal(dv.numpy(), d1)
        np.testing.assert_array_equal(iv.numpy(), i1)


@pytest.mark.parametrize("n,k", [(255, 10), (600, 33)])
def test_density_matches_oracle(usl, make_unit, n, k):
    x = make_unit(n, 12, seed=n)
    dens = usl.density(x, k)
    assert dens.dtype == np.float32 and dens.shape == (n,)
    np.testing.assert_allclose(dens, oracles.density(x, k), rtol=1e-5)
    # density_from_knn applies the same rule to given distances
    dist, _ = usl.knn(x, k)
    np.testing.assert_allclose(
        usl.density_from_knn(dist), oracles.density_from_distances(dist), rtol=1e-6
    )


def test_density_hand_values_and_duplicate_floor(usl):
    x = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
    # k = 2: means (0+1)/2, (0+1)/2, (0+4)/2, (0+16)/2
    np.testing.assert_allclose(usl.density(x, 2), [2.0, 2.0, 0.5, 0.125], rtol=1e-7)
    # exact duplicates: mean 0 -> floored at 1e-12 -> density 1e12, finite
    y = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0]], np.float32)
    dens = usl.density(y, 2)
    assert np.all(np.isfinite(dens))
    np.testing.assert_allclose(dens[:2], 1e12, rtol=1e-6)
    np.testing.assert_allclose(dens, oracles.density(y, 2).astype(np.float32), rtol=1e-6)


def test_against_faiss(usl, make_unit):
    faiss = pytest.importorskip("faiss")
    x = make_unit(900, 32, seed=12)
    q = make_unit(100, 32, seed=13)
    index = faiss.IndexFlatL2(32)
    index.add(x)
    fd, fi = index.search(q, 15)
    dist, idx = usl.knn(x, 15, queries=q)
    np.testing.assert_allclose(dist, fd, atol=TOL)
    full = oracles.sqdist(q, x)
    for r in range(q.shape[0]):
        kth = np.sort(full[r])[14]
        sure = set(fi[r][fd[r] < kth - TOL].tolist())
        assert sure <= set(idx[r].tolist())
    # self-search: faiss finds every point itself first on distinct data
    fd, fi = index.search(x, 8)
    dist, idx = usl.knn(x, 8)
    np.testing.assert_allclose(dist, fd, atol=TOL)
    assert np.mean(fi == idx) > 0.999


def test_against_sklearn(usl, make_unit):
    neighbors = pytest.importorskip("sklearn.neighbors")
    x = make_unit(700, 10, seed=14)
    nn = neighbors.NearestNeighbors(n_neighbors=12, algorithm="brute").fit(x.astype(np.float64))
    sd, si = nn.kneighbors(x.astype(np.float64))
    dist, idx = usl.knn(x, 12)
    np.testing.assert_allclose(dist, sd**2, atol=TOL)
    np.testing.assert_array_equal(idx[:, 0], si[:, 0])
    assert np.mean(idx == si) > 0.999
