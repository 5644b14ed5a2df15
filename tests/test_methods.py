"""Every selection method against a float64 NumPy transcription of its paper's rule
(tests/oracles.py), the estimator protocol, later rounds (labeled=) and the select()
front door."""

from __future__ import annotations

import warnings

import numpy as np
import oracles
import pytest

import usl_fast
from usl_fast import KCenterGreedy, ProbCover, RandomSelect, TypiClust

ALL = ["usl", "typiclust", "probcover", "kcenter", "random"]


def _params(method):
    return {"usl": dict(k=10), "probcover": dict(delta=0.5)}.get(method, {})


# --------------------------------------------------------------------------- range search


@pytest.mark.parametrize("radius", [0.0, 0.3, 1.1, 4.5])
def test_range_search_is_the_exact_ball(radius, make_unit):
    x = make_unit(700, 12, seed=3)
    x[5] = x[600]  # a duplicate pair
    off, nbr = usl_fast._dispatch.range_search(x, x, radius, None, False)
    E = oracles.exact_l2(x, x)
    for i in range(x.shape[0]):
        assert np.array_equal(nbr[off[i] : off[i + 1]], np.flatnonzero(E[i] <= np.float32(radius)))
    # the same pairs as range_count, and symmetric (the distance is)
    assert np.array_equal(np.diff(off), usl_fast.range_count(x, radius))
    assert off[-1] == np.count_nonzero(E <= np.float32(radius))


def test_range_search_refuses_past_max_edges(make_unit):
    x = make_unit(300, 8, seed=0)
    with pytest.raises(ValueError, match="max_edges"):
        usl_fast._dispatch.range_search(x, x, 4.0, None, False, max_edges=1000)
    with pytest.raises(ValueError, match="max_edges"):
        ProbCover(delta=1.9, max_edges=1000).fit(x, 5)


def test_strict_ball_boundary():
    from usl_fast._methods import _strictly_below

    for v in [0.36, 0.25, 1.0, 2.0**-20, 1e-30]:
        r = _strictly_below(v)
        assert np.float32(r) < v and np.nextafter(np.float32(r), np.float32(np.inf)) >= v


# --------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("seed", range(4))
def test_kcenter_equals_farthest_first_oracle(seed, make_unit):
    x = make_unit(400, 10, seed=seed)
    got = KCenterGreedy(seed=seed).fit(x, 25)
    first = int(np.random.default_rng(seed).integers(400))
    assert np.array_equal(got.indices_, oracles.kcenter_greedy(x, 25, first=first))
    lab = np.random.default_rng(seed + 9).choice(400, 7, replace=False)
    got = KCenterGreedy().fit(x, 25, labeled=lab)
    assert np.array_equal(got.indices_, oracles.kcenter_greedy(x, 25, labeled=lab))
    # scores_: distance to the nearest chosen point; radius_ its max over the others
    ch = np.r_[lab, got.indices_]
    assert np.array_equal(got.scores_, oracles.exact_l2(x, x[ch]).min(axis=1))
    assert got.radius_ == np.delete(got.scores_, ch).max()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", ["sqeuclidean", "euclidean"])
def test_typiclust_equals_authors_rule(seed, metric, make_unit_blobs):
    x = make_unit_blobs(500, 8, n_blobs=9, seed=seed)
    lab = np.random.default_rng(seed).choice(500, 6, replace=False)
    for labeled in (None, lab):
        t = TypiClust(seed=seed, k=7, metric=metric, normalize=False).fit(x, 14, labeled=labeled)
        want = oracles.typiclust(
            x, t.labels_, 14, () if labeled is None else labeled, k=7, metric=metric
        )
        assert np.array_equal(t.indices_, want)
        assert t.n_clusters_ == 14 + (0 if labeled is None else 6)


def test_typiclust_round_robin_small_clusters_and_cap(make_unit_blobs):
    # More picks than clusters (cap 3): clusters are revisited in the same order; clusters
    # of <= min_cluster_size points are never visited.
    x = make_unit_blobs(200, 6, n_blobs=3, seed=1)
    t = TypiClust(max_clusters=3, k=5, normalize=False).fit(x, 10)
    assert t.n_clusters_ == 3
    assert np.array_equal(t.indices_, oracles.typiclust(x, t.labels_, 10, k=5))
    sizes = np.bincount(t.labels_)
    # typicality scores: the whole cluster's, before any pick
    c = int(t.kept_clusters_[0])
    rows = np.flatnonzero(t.labels_ == c)
    D = oracles.exact_l2(x[rows], x[rows]).astype(np.float64)
    kk = min(5, rows.size // 2)
    want = 1.0 / (np.sort(D, axis=1)[:, 1 : kk + 1].mean(axis=1) + 1e-5)
    np.testing.assert_allclose(t.scores_[rows], want, rtol=1e-12)
    assert sizes.sum() == 200


def test_typiclust_drops_small_clusters(make_unit_blobs):
    rng = np.random.default_rng(0)
    big = make_unit_blobs(120, 5, n_blobs=2, seed=2)
    tiny = (rng.standard_normal((4, 5)) * 0.01 + 5.0).astype(np.float32)  # a far blob of 4
    x = np.vstack([big, tiny])
    t = TypiClust(max_clusters=3, k=5, normalize=False).fit(x, 5)
    far = int(t.labels_[-1])
    assert np.all(t.labels_[-4:] == far) and np.bincount(t.labels_)[far] == 4
    assert far not in set(t.kept_clusters_.tolist())
    assert not set(t.indices_.tolist()) & set(range(120, 124))
    assert np.isnan(t.scores_[-4:]).all()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("delta", [0.35, 0.6, 0.9])
def test_probcover_equals_authors_greedy(seed, delta, make_unit_blobs):
    x = make_unit_blobs(300, 6, n_blobs=5, seed=seed, spread=0.2)
    lab = np.random.default_rng(seed).choice(300, 4, replace=False)
    for labeled in ((), lab):
        want, n_rand = oracles.probcover(x, 12, delta, labeled)
        got = ProbCover(delta=delta, seed=seed, normalize=False).fit(
            x, 12, labeled=None if len(labeled) == 0 else labeled
        )
        assert np.array_equal(got.indices_[: want.size], want)
        assert got.n_random_ == n_rand
        E = oracles.exact_l2(x, x).astype(np.float64)
        assert np.array_equal(got.scores_, (E < delta * delta).sum(axis=1))


def test_probcover_random_tail_after_full_coverage(make_unit_blobs):
    x = make_unit_blobs(60, 4, n_blobs=2, seed=0, spread=0.01)
    got = ProbCover(delta=1.0, seed=3, normalize=False).fit(x, 10)
    greedy, n_rand = oracles.probcover(x, 10, 1.0)
    assert got.coverage_ == 1.0 and n_rand == got.n_random_ > 0
    assert np.array_equal(got.indices_[: greedy.size], greedy)
    pool = np.setdiff1d(np.arange(60), greedy)
    tail = np.random.default_rng(3).choice(pool, n_rand, replace=False)
    assert np.array_equal(got.indices_[greedy.size :], tail)


def test_probcover_delta_by_purity(make_unit_blobs):
    x = make_unit_blobs(240, 6, n_blobs=4, seed=5, spread=0.25)
    lab = usl_fast.kmeans(x, 4, init="k-means++", seed=0).labels
    d = usl_fast.probcover_delta(x, labels=lab, alpha=0.9, normalize=False)
    assert oracles.purity(x, lab, d) >= 0.9
    assert oracles.purity(x, lab, np.nextafter(d, np.inf)) < 0.9  # the largest, exactly
    grid = np.arange(0.05, 2.0, 0.05)
    g = usl_fast.probcover_delta(x, labels=lab, alpha=0.9, deltas=grid, normalize=False)
    passing = [v for v in grid if oracles.purity(x, lab, v) >= 0.9]
    assert g == pytest.approx(max(passing), abs=0) and g <= d
    # n_classes: k-means pseudo-labels inside, and ProbCover(n_classes=...) uses it
    pc = ProbCover(n_classes=4, alpha=0.9, normalize=False).fit(x, 6)
    assert pc.delta_ == usl_fast.probcover_delta(x, 4, alpha=0.9, normalize=False)
    assert ProbCover().fit(x, 6).delta_ == 0.6  # neither: the authors' default
    with pytest.raises(ValueError, match="not both"):
        ProbCover(delta=0.5, n_classes=4).fit(x, 6)
    with pytest.raises(ValueError, match=r"labels.*>= 0"):
        usl_fast.probcover_delta(x, labels=np.full(240, -1))


def test_probcover_degenerate_cases(make_unit):
    same = np.ones((50, 4), np.float32)
    with pytest.raises(ValueError, match="pass `delta`"):
        ProbCover(n_classes=2).fit(same, 1)  # one pseudo-label: no delta can be chosen
    # a delta so small that delta**2 underflows still has the self loops
    x = make_unit(30, 4, seed=0)
    tiny = ProbCover(delta=1e-170, normalize=False).fit(x, 3)
    assert tiny.n_edges_ == 30 and np.array_equal(tiny.indices_, [0, 1, 2])
    assert tiny.n_random_ == 0 and tiny.coverage_ == 0.1


def test_probcover_cover_step_memory_is_bounded(make_unit):
    import tracemalloc

    from usl_fast import _methods

    x = make_unit(3000, 3, seed=0)
    pc = ProbCover(delta=100.0, normalize=False, threads=1)
    tracemalloc.start()
    try:
        pc.fit(x, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    graph = 4 * pc.n_edges_ + 8 * 3001
    assert pc.n_edges_ == 3000 * 3000
    # the graph plus O(n + chunk) working memory, not several bytes more per edge
    assert peak < graph + 64 * 3000 + 24 * _methods._CHUNK + (2 << 20)


def test_select_passes_shared_parameter_names(make_unit):
    x = make_unit(300, 6, seed=1)
    a = usl_fast.select(x, 5, method="typiclust", k=5, kmeans_iter=10)
    assert np.array_equal(a, TypiClust(k=5, kmeans_iter=10).fit(x, 5).indices_)
    b = usl_fast.select(x, 5, method="probcover", n_classes=4, alpha=0.9)
    assert np.array_equal(b, ProbCover(n_classes=4, alpha=0.9).fit(x, 5).indices_)
    with pytest.raises(TypeError, match="USL parameter"):
        usl_fast.select(x, 5, method="typiclust", horizon_dist=1.0)


def test_typiclust_tiny_data_fills_with_a_warning(make_unit):
    x = make_unit(8, 3, seed=0)
    with pytest.warns(RuntimeWarning, match="min_cluster_size"):
        t = TypiClust().fit(x, 3)
    assert t.n_filled_ == 3 and np.array_equal(t.indices_, [0, 1, 2])
    assert np.array_equal(t.indices_, oracles.typiclust(x, t.labels_, 3))


def test_usl_needs_two_points():
    with pytest.raises(ValueError, match="at least 2 points"):
        usl_fast.select(np.ones((1, 3), np.float32), 1, k=1)


def test_random_is_the_authors_recipe():
    r = RandomSelect(seed=4).fit(np.zeros((50, 2), np.float32), 9)
    assert np.array_equal(r.indices_, usl_fast.random_select(50, 9, seed=4))
    assert np.array_equal(r.indices_, oracles.random_select(50, 9, 4))
    lab = np.array([3, 7, 1])
    r = RandomSelect(seed=4).fit(np.zeros((50, 2), np.float32), 9, labeled=lab)
    np.random.seed(4)
    want = np.random.choice(np.setdiff1d(np.arange(50), lab), 9, replace=False)
    assert np.array_equal(r.indices_, want)


# --------------------------------------------------------------------------- USL later rounds


def _usl_later_round_oracle(x, dens, labels, K, m, fixed, p):
    """The documented rule, transcribed: covered clusters give no pick; labeled points are
    never picked and join every round's regularizer as picks tagged with their cluster."""
    labels = np.asarray(labels)
    covered = np.zeros(K, bool)
    covered[labels[fixed]] = True
    reg = np.zeros(x.shape[0])
    for t in range(p["rounds"]):
        score = oracles.as64(dens) - (p["weight"] * reg if p["weight"] > 0 else 0)
        picks, clusters = [], []
        for c in range(K):
            if covered[c]:
                continue
            mem = np.flatnonzero(labels == c)
            if mem.size:
                picks.append(mem[np.argmax(score[mem])])
                clusters.append(c)
            if len(picks) == m:
                break
        if t < p["rounds"] - 1:
            every = np.r_[fixed, picks]
            new = oracles.regularizer(
                x,
                labels,
                every,
                alpha=p["alpha"],
                horizon_dist=p["horizon_dist"],
                horizon_num=p["horizon_num"],
                own_cluster="cluster",
                pick_clusters=np.r_[labels[fixed], clusters],
            )
            reg = new if p["momentum"] == 0 else p["momentum"] * reg + (1 - p["momentum"]) * new
    return np.asarray(picks, np.int64)


@pytest.mark.parametrize("defaults", ["cifar10", "imagenet-clip"])
@pytest.mark.parametrize("seed", range(3))
def test_usl_later_round_equals_rule(defaults, seed, make_unit):
    x = make_unit(600, 16, seed=seed)
    first = usl_fast.select(x, 20, k=10, defaults=defaults, seed=seed)
    r = usl_fast.select(x, 15, k=10, defaults=defaults, seed=seed, labeled=first, return_info=True)
    K = 35
    assert r.params["n_clusters"] == K
    p = dict(usl_fast.PRESETS[defaults])
    want = _usl_later_round_oracle(x, r.density, r.labels, K, 15, first, p)
    assert np.array_equal(r.indices, want)
    # new clusters first: no pick shares a cluster with a labeled point
    assert not set(r.labels[r.indices].tolist()) & set(r.labels[first].tolist())


def test_usl_first_round_unchanged_by_empty_labeled(make_unit):
    x = make_unit(500, 8, seed=1)
    a = usl_fast.select(x, 30, k=10)
    assert np.array_equal(a, usl_fast.select(x, 30, k=10, labeled=[]))
    assert np.array_equal(a, usl_fast.USL(k=10).fit(x, 30).indices_)
    assert np.array_equal(a, usl_fast.select(x, 30, k=10, method="usl", labeled=None))


def test_usl_later_round_fills_when_clusters_run_out(make_unit):
    x = make_unit(80, 6, seed=2)
    first = usl_fast.select(x, 30, k=5)
    # n_clusters = m + 30 would cover at most 30 clusters; force K small so few are free
    r = usl_fast.select(x, 20, k=5, n_clusters=20, labeled=first, return_info=True)
    assert r.n_filled > 0
    assert not set(r.indices.tolist()) & set(first.tolist())
    assert len(set(r.indices.tolist())) == 20


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("seed", range(3))
def test_labeled_never_returned_nor_repeated(method, seed, make_unit_blobs):
    rng = np.random.default_rng(seed)
    x = make_unit_blobs(300, 8, n_blobs=6, seed=seed, spread=0.3)
    x[10:20] = x[0]  # duplicates
    labeled = rng.choice(300, int(rng.integers(1, 60)), replace=False)
    m = int(rng.integers(1, 40))
    idx = usl_fast.select(x, m, method=method, labeled=labeled, seed=seed, **_params(method))
    assert idx.shape == (m,) and idx.dtype == np.int64
    assert np.unique(idx).size == m
    assert not np.isin(idx, labeled).any()
    # the estimator gives the same, and a second call the same again
    cls = usl_fast.METHODS[method]
    est = cls(seed=seed, **_params(method)).fit(x, m, labeled=labeled)
    assert np.array_equal(est.indices_, idx)
    assert np.array_equal(est.fit(x, m, labeled=labeled).indices_, idx)


@pytest.mark.parametrize("method", ["usl", "typiclust", "kcenter"])
def test_second_round_covers_new_clusters_first(method, make_blobs):
    x, truth, _ = make_blobs(50, 8, 8, seed=4, spread=0.05)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kw = dict(_params(method), **({"kmeans_init": "k-means++"} if method == "usl" else {}))
    first = usl_fast.select(x, 4, method=method, **kw)
    second = usl_fast.select(x, 4, method=method, labeled=first, **kw)
    # 8 tight blobs: the second round's picks land in blobs the first did not touch
    assert len(set(truth[np.r_[first, second]].tolist())) == 8


def test_all_labeled_and_budget_errors(make_unit):
    x = make_unit(30, 4, seed=0)
    with pytest.raises(ValueError, match="nothing left"):
        usl_fast.select(x, 1, labeled=np.arange(30), k=5)
    with pytest.raises(ValueError, match="unlabeled points"):
        usl_fast.select(x, 25, method="kcenter", labeled=np.arange(10))
    with pytest.raises(ValueError, match="repeats index 3"):
        KCenterGreedy().fit(x, 2, labeled=[3, 3])
    with pytest.raises(ValueError, match=r"labeled.*\[0, 30\)"):
        KCenterGreedy().fit(x, 2, labeled=[30])
    with pytest.raises(TypeError, match="labeled"):
        KCenterGreedy().fit(x, 2, labeled=[0.5])


def test_select_front_door_errors(make_unit):
    x = make_unit(50, 4, seed=0)
    with pytest.raises(ValueError, match="method"):
        usl_fast.select(x, 5, method="coreset")
    with pytest.raises(TypeError, match="USL parameter"):
        usl_fast.select(x, 5, method="kcenter", k=20)
    with pytest.raises(TypeError, match="has no parameter 'delta'"):
        usl_fast.select(x, 5, method="typiclust", delta=0.3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        usl_fast.select(x, 5, k=5, delta=0.3)
    with pytest.raises(TypeError, match="normalize"):
        usl_fast.select(x, 5, method="random", normalize=True)


# --------------------------------------------------------------------------- protocol


def test_estimator_protocol(make_unit):
    from sklearn.base import clone

    t = TypiClust(seed=3, k=7)
    assert repr(t) == "TypiClust(seed=3, k=7)"
    assert repr(ProbCover()) == "ProbCover()"
    assert t.get_params()["k"] == 7 and t.get_params()["max_clusters"] == 500
    c = clone(t)
    assert c is not t and c.get_params() == t.get_params()
    assert t.set_params(k=9) is t and t.k == 9
    with pytest.raises(ValueError, match="no parameter 'kk'"):
        t.set_params(kk=1)
    x = make_unit(200, 6, seed=0)
    assert t.fit(x, 5) is t
    for name in ("indices_", "labels_", "scores_", "labeled_", "n_features_in_", "timings_"):
        assert hasattr(t, name)
    assert t.n_features_in_ == 6 and t.labeled_.size == 0
    # bad parameters are reported at fit, naming the parameter
    with pytest.raises(ValueError, match="metric"):
        TypiClust(metric="cosine").fit(x, 5)
    with pytest.raises(ValueError, match="delta"):
        ProbCover(delta=-1.0).fit(x, 5)


def test_torch_in_torch_out(make_unit):
    torch = pytest.importorskip("torch")
    x = make_unit(200, 6, seed=0)
    for method in ALL:
        a = usl_fast.select(x, 5, method=method, **_params(method))
        b = usl_fast.select(torch.from_numpy(x), 5, method=method, **_params(method))
        assert isinstance(b, torch.Tensor) and np.array_equal(a, b.numpy())


def test_return_info_for_every_method(make_unit):
    x = make_unit(200, 6, seed=0)
    for method in ALL:
        r = usl_fast.select(x, 5, method=method, return_info=True, **_params(method))
        assert r.method == method and r.indices.shape == (5,)
        assert isinstance(r.timings, dict) and isinstance(r.params, dict)
    assert usl_fast.select(x, 5, method="kcenter", return_info=True).labels is None


# --------------------------------------------------------------------------- newcomer fixes


def test_normalize_and_far_from_unit_norm_warning(make_unit):
    x = make_unit(400, 8, seed=0)
    base = usl_fast.select(x, 20, k=10)
    with pytest.warns(UserWarning, match="normalize=True"):
        big = usl_fast.select(100 * x, 20, k=10)
    # the warning's claim: at this scale the regularizer does nothing
    assert np.array_equal(big, usl_fast.select(100 * x, 20, k=10, weight=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm = usl_fast.select(100 * x, 20, k=10, normalize=True)
        usl_fast.select(x, 20, k=10)  # unit rows: no warning
    assert np.array_equal(norm, base)  # the unit rows of 100 x are x (to the float32 bit)


def test_preset_k_larger_than_n_says_where_it_came_from(make_unit):
    x = make_unit(100, 4, seed=0)
    with pytest.raises(ValueError, match=r"k`=400 comes from the defaults='cifar10' preset.*k="):
        usl_fast.select(x, 5)


def test_uslt_later_round(make_unit_blobs):
    pytest.importorskip("torch")
    from usl_fast.uslt import USLT

    x = make_unit_blobs(300, 8, n_blobs=6, seed=0)
    first = usl_fast.select(x, 6, method="uslt", epochs=3, seed=0)
    r = usl_fast.select(x, 6, method="uslt", labeled=first, epochs=3, seed=0, return_info=True)
    assert r.indices.shape == (6,) and not np.isin(r.indices, first).any()
    assert np.unique(r.indices).size == 6
    assert r.params["n_clusters"] == 12
    est = USLT(n_clusters=12, m=6, epochs=3, seed=0).fit(x, labeled=first)
    assert np.array_equal(est.indices_, r.indices)
    # picks from clusters (not filled) never share a cluster with a labeled point
    main = est.indices_[~est.filled_]
    assert not set(est.labels_[main].tolist()) & set(est.labels_[first].tolist())
    with pytest.raises(ValueError, match="raise n_clusters"):
        USLT(n_clusters=8, m=6, epochs=1).fit(x, labeled=first)
