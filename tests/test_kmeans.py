"""k-means: Lloyd with a fixed iteration count against the float64 oracle from the same
init, the dead-empty-cluster rule on hand cases, the reference's random init, k-means++,
thread independence, and scikit-learn's Lloyd as a peer."""

from __future__ import annotations

import numpy as np
import oracles
import pytest


def first_of_each(ids, n_blobs):
    return np.array([np.flatnonzero(ids == b)[0] for b in range(n_blobs)])


def assert_matches_oracle(res, x, init, n_iter, atol=1e-5):
    ol, oc, ocnt, oin = oracles.lloyd(x, init, n_iter)
    np.testing.assert_array_equal(res.labels, ol)
    np.testing.assert_array_equal(res.counts, ocnt)
    np.testing.assert_allclose(res.centroids, oc, rtol=0, atol=atol)
    # inertia sums float32 expanded-form distances: each is off by ~eps * (|x|^2 + |c|^2)
    x64 = np.asarray(x, np.float64)
    scale = (x64**2).sum(1).max() + (np.asarray(oc) ** 2).sum(1)[ocnt > 0].max()
    np.testing.assert_allclose(res.inertia, oin, rtol=1e-5, atol=4e-7 * x.shape[0] * scale)


@pytest.mark.parametrize("n_per,n_blobs,d", [(100, 8, 10), (37, 7, 3), (300, 3, 33)])
def test_same_labels_as_oracle_from_given_init(usl, make_blobs, n_per, n_blobs, d):
    x, ids, _ = make_blobs(n_per, n_blobs, d, seed=n_per)
    init = x[first_of_each(ids, n_blobs)]
    res = usl.kmeans(x, n_blobs, n_iter=15, init=init)
    assert res.labels.dtype == np.int64 and res.counts.dtype == np.int64
    assert res.centroids.shape == (n_blobs, d) and res.inertia.shape == (15,)
    assert_matches_oracle(res, x, init, 15)
    # and they recover the blobs
    np.testing.assert_array_equal(res.labels, ids)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_init_is_the_seeded_permutation(usl, make_unit_blobs, seed):
    x = make_unit_blobs(600, 6, 10, seed=50 + seed)
    K = 12
    init = x[oracles.random_init_indices(x.shape[0], K, seed)]
    res = usl.kmeans(x, K, n_iter=25, seed=seed)  # init="random" is the default
    assert_matches_oracle(res, x, init, 25)
    # n_iter=1: the labels are the assignment to exactly those initial rows
    one = usl.kmeans(x, K, n_iter=1, seed=seed)
    np.testing.assert_array_equal(one.labels, np.argmin(oracles.sqdist(x, init), axis=1))


def test_random_init_on_unit_vectors_crossing_tiles(usl, make_unit_blobs):
    x = make_unit_blobs(1100, 16, 20, seed=4)
    K = 300  # two centroid tiles
    init = x[oracles.random_init_indices(1100, K, 7)]
    res = usl.kmeans(x, K, n_iter=3, seed=7)
    ol, oc, _, _ = oracles.lloyd(x, init, 3)
    # float32 vs float64 assignment may differ only on near ties: require near-identity
    # and that every disagreement is a near tie in the oracle.
    diff = np.flatnonzero(res.labels != ol)
    assert diff.size <= 3
    if diff.size:
        _, c_prev, _, _ = oracles.lloyd(x, init, 2)
        D = oracles.sqdist(x[diff], c_prev)
        gap = np.abs(D[np.arange(diff.size), res.labels[diff]] - D[np.arange(diff.size), ol[diff]])
        assert np.all(gap < 1e-5)
    else:
        np.testing.assert_allclose(res.centroids, oc, atol=1e-5)


def test_labels_are_the_last_assignment_before_the_last_update(usl):
    # 1-D hand case. Init 1, 16, 2: first assignment {1} {13, 10, 16, 9} {8, 2, 2}
    # (9 is equidistant from 16 and 2: the lower centroid index wins); centroids then
    # 1, 12, 4. Second assignment: 8 is equidistant from 12 and 4 -> cluster 1, both 2s
    # go to cluster 0 -> cluster 2 is empty and dies, keeping its centroid at 4.
    x = np.array([[1], [8], [13], [2], [10], [16], [2], [9]], np.float32)
    init = np.array([[1], [16], [2]], np.float32)
    one = usl.kmeans(x, 3, n_iter=1, init=init)
    np.testing.assert_array_equal(one.labels, [0, 2, 1, 2, 1, 1, 2, 1])
    np.testing.assert_array_equal(one.counts, [1, 4, 3])
    np.testing.assert_allclose(one.centroids.ravel(), [1, 12, 4])
    np.testing.assert_allclose(one.inertia, [0 + 36 + 9 + 0 + 36 + 0 + 0 + 49])
    for n_iter in (2, 3, 10):
        res = usl.kmeans(x, 3, n_iter=n_iter, init=init)
        np.testing.assert_array_equal(res.labels, [0, 1, 1, 0, 1, 1, 0, 1])
        np.testing.assert_array_equal(res.counts, [3, 5, 0])
        np.testing.assert_allclose(res.centroids.ravel(), [5 / 3, 56 / 5, 4], rtol=1e-6)
        assert_matches_oracle(res, x, init, n_iter)


def test_dead_cluster_is_never_revived(usl):
    # Init 8, 9: every point is nearer 8 -> cluster 1 empty after the first assignment.
    # Its centroid (9) is then nearer to the point 7 than the moved centroid 0 (3.75) is:
    # plain Lloyd would give it 7 back; the reference's NaN centroid never wins again.
    x = np.array([[5], [2], [1], [7]], np.float32)
    init = np.array([[8], [9]], np.float32)
    plain = oracles.lloyd(x, init, 5, dead_rule=False)[0]
    assert plain[3] == 1  # the rule matters in this case
    res = usl.kmeans(x, 2, n_iter=5, init=init)
    np.testing.assert_array_equal(res.labels, [0, 0, 0, 0])
    np.testing.assert_array_equal(res.counts, [4, 0])
    assert np.all(np.isfinite(res.centroids))
    assert res.centroids[1, 0] == 9.0  # kept where it was, no NaN
    np.testing.assert_allclose(res.centroids[0, 0], 3.75)
    assert_matches_oracle(res, x, init, 5)


def test_far_init_centroid_stays_empty(usl, make_blobs):
    x, ids, _ = make_blobs(120, 3, 5, seed=21)
    init = np.concatenate([x[first_of_each(ids, 3)], np.full((1, 5), 1000.0, np.float32)])
    init = init[[0, 3, 1, 2]]  # the far one in the middle: cluster ids after it shift
    for n_iter in (1, 4, 20):
        res = usl.kmeans(x, 4, n_iter=n_iter, init=init)
        assert res.counts[1] == 0
        assert not np.any(res.labels == 1)
        assert np.all(np.isfinite(res.centroids))
        np.testing.assert_array_equal(res.centroids[1], init[1])
        assert_matches_oracle(res, x, init, n_iter)


def test_duplicate_init_centroids_second_one_dies(usl, make_blobs):
    # Two identical initial centroids: every tie goes to the lower index, so the copy
    # never gets a member.
    x, ids, _ = make_blobs(50, 2, 4, seed=5)
    c = x[first_of_each(ids, 2)]
    init = np.stack([c[0], c[0], c[1]])
    res = usl.kmeans(x, 3, n_iter=6, init=init)
    assert res.counts[1] == 0 and res.counts.sum() == 100
    assert_matches_oracle(res, x, init, 6)


def test_k_equals_one_and_k_equals_n(usl, make_unit):
    x = make_unit(40, 3, seed=1)
    res = usl.kmeans(x, 1, n_iter=3)
    np.testing.assert_array_equal(res.labels, 0)
    np.testing.assert_allclose(res.centroids[0], x.astype(np.float64).mean(0), atol=1e-6)
    res = usl.kmeans(x, 40, n_iter=3)
    assert sorted(res.labels.tolist()) == list(range(40))
    np.testing.assert_array_equal(res.counts, 1)


def test_threads_give_identical_results(usl, make_unit_blobs):
    x = make_unit_blobs(1000, 16, 30, seed=2)
    for init in ("random", "k-means++"):
        a = usl.kmeans(x, 50, n_iter=30, init=init, seed=3, threads=1)
        b = usl.kmeans(x, 50, n_iter=30, init=init, seed=3, threads=2)
        for u, v in zip(a, b):
            assert np.array_equal(u, v)


def test_kmeanspp_distinct_indices_and_deterministic(usl, make_unit):
    x = make_unit(500, 8, seed=9)
    K = 40
    a = usl.kmeans(x, K, n_iter=1, init="k-means++", seed=5)
    b = usl.kmeans(x, K, n_iter=1, init="k-means++", seed=5)
    c = usl.kmeans(x, K, n_iter=1, init="k-means++", seed=6)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    assert not np.array_equal(a.labels, c.labels)
    # On distinct points, each initial row is nearest to its own centroid (distance 0):
    # every cluster is non-empty after one assignment iff the K initial rows are distinct.
    assert np.all(a.counts > 0)
    cpu = usl._cpu
    if hasattr(cpu, "kmeanspp_init"):
        idx = np.empty(K, np.int64)
        cpu.kmeanspp_init(x, K, 5, idx, 1, None)
        assert len(set(idx.tolist())) == K and idx.min() >= 0 and idx.max() < 500
        # the public result is Lloyd from exactly those rows
        assert_matches_oracle(a, x, x[idx], 1, atol=1e-5)


def test_kmeanspp_samples_by_squared_distance(usl):
    # 60 points near the origin and one point at distance 1000: after the first centre,
    # D^2 sampling picks the far point with probability ~1; uniform sampling would not.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((60, 2)), [[1000.0, 0.0]]]).astype(np.float32)
    for seed in range(10):
        res = usl.kmeans(x, 2, n_iter=1, init="k-means++", seed=seed)
        far = res.labels[60]
        assert res.counts[far] == 1, f"seed {seed}: far point not a centre"


def test_torch_in_torch_out(usl, make_blobs):
    torch = pytest.importorskip("torch")
    x, ids, _ = make_blobs(30, 3, 4, seed=1)
    res = usl.kmeans(torch.from_numpy(x), 3, n_iter=5, init=x[first_of_each(ids, 3)])
    assert all(isinstance(t, torch.Tensor) for t in res[:4])
    assert isinstance(res.n_iter_run, int)
    assert res.labels.dtype == torch.int64
    ref = usl.kmeans(x, 3, n_iter=5, init=x[first_of_each(ids, 3)])
    np.testing.assert_array_equal(res.labels.numpy(), ref.labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn_lloyd(usl, make_blobs, seed):
    cluster = pytest.importorskip("sklearn.cluster")
    x, ids, _ = make_blobs(80, 6, 8, seed=30 + seed)
    K = 6
    init = x[first_of_each(ids, K)] + np.float32(0.05)  # one per blob, off the data
    res = usl.kmeans(x, K, n_iter=50, init=init)
    km = cluster.KMeans(
        n_clusters=K,
        init=init.astype(np.float64),
        n_init=1,
        algorithm="lloyd",
        max_iter=50,
        tol=0.0,
    )
    km.fit(x.astype(np.float64))
    np.testing.assert_array_equal(res.labels, km.labels_)
    np.testing.assert_allclose(res.centroids, km.cluster_centers_, atol=1e-4)


def test_fixed_point_stop_equals_running_every_iteration(usl, monkeypatch):
    # The engine stops once an assignment repeats; a float64 Lloyd that never stops must
    # agree, and so must a run told to do exactly the iterations the engine reported.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((900, 6)).astype(np.float32)
    init = x[rng.permutation(900)[:12]]
    res = usl.kmeans(x, 12, n_iter=300, init=init)
    assert 1 <= res.n_iter_run < 300  # random data in 6-d settles well before 300
    short = usl.kmeans(x, 12, n_iter=res.n_iter_run, init=init)
    np.testing.assert_array_equal(res.labels, short.labels)
    np.testing.assert_array_equal(res.centroids, short.centroids)
    assert np.all(res.inertia[res.n_iter_run - 1 :] == res.inertia[res.n_iter_run - 1])
    ref_labels = oracles.lloyd(x, init, 300)[0]
    np.testing.assert_array_equal(res.labels, ref_labels)


def _lloyd_both_ways(x, init, n_iter, monkeypatch):
    """usl_fast's Lloyd with the moved-centroid search and with a full search every
    iteration, and what the first one did: the (rows x centroids) of each assign call, how
    many rows went through the "moved but no farther" test, and the number of dead clusters
    after each update."""
    from usl_fast import _dispatch
    from usl_fast.backends import engine as _ops  # lloyd's home (was usl_fast._ops)

    stats = {"assign": [], "rechecked": [], "dead": []}
    real_assign, real_pairs, real_seg = (
        _dispatch.assign,
        _dispatch.exact_l2_pairs,
        _dispatch.segment_sum,
    )

    def assign(xx, c, th, xn=None):
        stats["assign"].append((int(xx.shape[0]), int(c.shape[0])))
        return real_assign(xx, c, th, xn)

    def pairs(a, b):
        stats["rechecked"].append(int(a.shape[0]))
        return real_pairs(a, b)

    def seg(*args, **kw):
        sums, counts = real_seg(*args, **kw)
        stats["dead"].append(int(np.count_nonzero(counts == 0)))
        return sums, counts

    monkeypatch.setattr(_dispatch, "assign", assign)
    monkeypatch.setattr(_dispatch, "exact_l2_pairs", pairs)
    monkeypatch.setattr(_ops, "_GATHER_BYTES", 1)  # gather 256 rows at a time: several steps
    monkeypatch.setattr(_dispatch, "segment_sum", seg)
    c_fast = init.copy()
    fast = _ops.lloyd(x, c_fast, n_iter)
    monkeypatch.setattr(_dispatch, "assign", real_assign)
    monkeypatch.setattr(_dispatch, "exact_l2_pairs", real_pairs)
    monkeypatch.setattr(_dispatch, "segment_sum", real_seg)
    c_full = init.copy()
    full = _ops.lloyd(x, c_full, n_iter, _reuse=False)
    return fast, c_fast, full, c_full, stats


@pytest.mark.parametrize(
    "case",
    [
        "clustered",
        "moved centroid ties",
        "moved away, overtaken",
        "ties on a grid",
        "duplicate rows and centroids",
        "clusters die late",
        "K = n",
    ],
)
def test_moved_centroid_search_equals_full_search(case, monkeypatch):
    # Searching only the centroids that moved since the last assignment (plus every centroid
    # for rows whose own one moved away) must give the full search's labels, counts, inertia
    # and centroids bit for bit, including ties (lower index first) and clusters that die.
    rng = np.random.default_rng(11)
    if case == "clustered":
        centers = rng.standard_normal((40, 16)) * 3
        x = (centers[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 16))).astype("f4")
        init = x[rng.choice(3000, 120, replace=False)]
    elif case == "moved centroid ties":
        # c0 moves -1 -> 0, c1 stays at 3 (mean of 1.5, 2, 5.5); the row 1.5, labeled 1, is
        # then exactly 2.25 from both, and the lower index (the moved c0) must win.
        x = np.array([[0.0], [1.5], [2.0], [5.5]], "f4")
        init = np.array([[-1.0], [3.0]], "f4")
    elif case == "moved away, overtaken":
        # the row 0.95 starts with c1 (1.899, 0.9006 away; c0 = 0 is 0.9025 away); c1 moves
        # to 1.902, now 0.9044 away: barely farther, and the unmoved c0 (its members cancel
        # exactly) must take the row
        x = np.array([[-0.5], [0.5], [-0.25], [0.25], [-0.1], [0.1], [0.95], [2.854]], "f4")
        init = np.array([[0.0], [1.899]], "f4")
    elif case == "ties on a grid":
        # small integer coordinates: many rows are exactly equidistant from two centroids
        x = rng.integers(0, 4, (2000, 3)).astype("f4")
        init = rng.integers(0, 4, (30, 3)).astype("f4") + 0.5
    elif case == "duplicate rows and centroids":
        base = rng.standard_normal((300, 8)).astype("f4")
        x = np.vstack([base, base, base[:100]])
        init = np.vstack([base[:20], base[:5]])  # equal centroids: the later ones die
    elif case == "clusters die late":
        # many small clusters in the plane: some empty out only after several updates,
        # while the moved-centroid search is running
        x = rng.standard_normal((500, 2)).astype("f4")
        init = x[rng.choice(500, 200, replace=False)]
    else:
        x = rng.standard_normal((257, 6)).astype("f4")
        init = x[::-1] * 0.5
    init = np.ascontiguousarray(init, dtype=np.float32)
    fast, c_fast, full, c_full, st = _lloyd_both_ways(x, init, 40, monkeypatch)
    for a, b in zip(fast[:3], full[:3]):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))
    assert fast[3] == full[3]
    assert np.array_equal(c_fast.view(np.uint32), c_full.view(np.uint32))
    n, K = x.shape[0], init.shape[0]
    # assign calls of the moved search: every row against fewer centroids than are alive
    moved_calls = [(r, c) for r, c in st["assign"] if r == n and c < K - st["dead"][0]]
    if case == "moved away, overtaken":
        assert fast[0][6] == 0
    if case in ("clustered", "clusters die late", "moved centroid ties", "moved away, overtaken"):
        assert moved_calls, "the moved-centroid search never ran"
        assert st["rechecked"], "no row went through the moved-but-no-farther test"
    if case == "clustered":
        # rows whose centroid moved away searched everything (in several gathers); in all,
        # far fewer pairs
        assert any(r < n for r, _ in st["assign"])
        assert max(st["rechecked"]) == 256 and len(st["rechecked"]) > fast[3]
        assert sum(r * c for r, c in st["assign"]) < 0.8 * fast[3] * n * K
    if case == "clusters die late":
        # a cluster emptied by an assignment of the moved search, and the search went on
        d = st["dead"]
        assert any(d[i] > d[i - 1] for i in range(1, len(d) - 1)), d
