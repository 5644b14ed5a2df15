"""One test per documented error: the type, a message naming the argument, and that it is
raised before any work (the `no_engine` fixture makes every engine call fail the test)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((500, 5))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def dens(x):
    return np.ones(x.shape[0], np.float32)


@pytest.fixture(scope="module")
def labels(x):
    return np.arange(x.shape[0]) % 6


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    "bad",
    [np.zeros(5, np.float32), np.zeros((2, 3, 4), np.float32), np.float32(1.0)],
    ids=["1d", "3d", "0d"],
)
def test_wrong_ndim(usl, no_engine, bad):
    with pytest.raises(ValueError, match="`features` must be 2-D"):
        usl.knn(bad, 1)
    with pytest.raises(ValueError, match="`features` must be 2-D"):
        usl.select(bad, 1)


@pytest.mark.parametrize("shape", [(0, 4), (5, 0)])
def test_empty_input(usl, no_engine, shape):
    with pytest.raises(ValueError, match="`features` must not be empty"):
        usl.select(np.zeros(shape, np.float32), 1)
    with pytest.raises(ValueError, match="`features` must not be empty"):
        usl.kmeans(np.zeros(shape, np.float32), 1)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_features(usl, no_engine, x, value):
    bad = x.copy()
    bad[7, 2] = value
    for call in (
        lambda: usl.knn(bad, 3),
        lambda: usl.select(bad, 5),
        lambda: usl.kmeans(bad, 3),
        lambda: usl.density(bad, 3),
    ):
        with pytest.raises(ValueError, match=r"`features` contains NaN or inf.*row 7, column 2"):
            call()


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_float64_overflowing_float32_is_inf(usl, no_engine, x):
    bad = x.astype(np.float64)
    bad[3, 1] = 1e39  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="`features` contains NaN or inf"):
        usl.select(bad, 4)


def test_nan_in_queries(usl, no_engine, x):
    q = x[:3].copy()
    q[1, 0] = np.nan
    with pytest.raises(ValueError, match="`queries` contains NaN or inf"):
        usl.knn(x, 3, queries=q)


def test_queries_dimension_mismatch(usl, no_engine, x):
    with pytest.raises(ValueError, match="`queries` must have the same dimension"):
        usl.knn(x, 3, queries=np.zeros((4, 6), np.float32))


@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b"], ["c", "d"]]),
        np.array([[object(), 1.0]], dtype=object),
        np.array([[1 + 2j, 0j]]),
        [[1.0, 2.0], [3.0]],
    ],
    ids=["str", "object", "complex", "ragged"],
)
def test_dtype_that_cannot_convert(usl, no_engine, bad):
    with pytest.raises(TypeError, match="`features`"):
        usl.select(bad, 1)


def test_torch_bool_tensor_rejected(usl, no_engine):
    # Integer tensors are accepted like numpy integers (tests/test_messages.py); booleans
    # and complex numbers are not numbers to measure distances between.
    torch = pytest.importorskip("torch")
    for dtype in (torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="`features` must be a real numeric array"):
            usl.knn(torch.zeros((5, 2), dtype=dtype), 1)


# --------------------------------------------------------------------------- m, k, counts


@pytest.mark.parametrize("m", [0, -3])
def test_m_not_positive(usl, no_engine, x, dens, labels, m):
    with pytest.raises(ValueError, match="`m` must be >= 1"):
        usl.select(x, m)
    with pytest.raises(ValueError, match="`m` must be >= 1"):
        usl.regularized_select(x, dens, labels, m)
    with pytest.raises(ValueError, match="`m` must be >= 1"):
        usl.random_select(10, m)


def test_m_greater_than_n(usl, no_engine, x, dens, labels):
    with pytest.raises(ValueError, match=r"`m` must be <= 500.*got m=501"):
        usl.select(x, 501)
    with pytest.raises(ValueError, match=r"`m` must be <= 500"):
        usl.regularized_select(x, dens, labels, 501)
    with pytest.raises(ValueError, match=r"`m` must be <= 10"):
        usl.random_select(10, 11)


@pytest.mark.parametrize("k", [500, 501, 10000])
def test_k_at_least_n(usl, no_engine, x, k):
    with pytest.raises(ValueError, match=rf"`k` must be <= 499.*got k={k}"):
        usl.knn(x, k)
    with pytest.raises(ValueError, match=r"`k` must be <= 499"):
        usl.density(x, k)
    with pytest.raises(ValueError, match=r"`k` must be <= 499"):
        usl.select(x, 5, k=k)


def test_query_k_greater_than_base(usl, no_engine, x):
    with pytest.raises(ValueError, match=r"`k` must be <= 500"):
        usl.knn(x, 501, queries=x[:2])


def test_single_point_self_knn(usl, no_engine):
    with pytest.raises(ValueError, match="`k`"):
        usl.knn(np.zeros((1, 3), np.float32), 1)


@pytest.mark.parametrize("k", [0, -1])
def test_k_not_positive(usl, no_engine, x, k):
    with pytest.raises(ValueError, match="`k` must be >= 1"):
        usl.knn(x, k)
    with pytest.raises(ValueError, match="`k` must be >= 1"):
        usl.select(x, 5, k=k)


@pytest.mark.parametrize("bad", [2.5, True, "3", None, 3.0, np.float64(2.0)])
def test_non_integer_k_and_m(usl, no_engine, x, dens, labels, bad):
    with pytest.raises(TypeError, match="`k` must be an integer"):
        usl.knn(x, bad)
    with pytest.raises(TypeError, match="`k` must be an integer"):
        usl.select(x, 5, k=bad)
    with pytest.raises(TypeError, match="`m` must be an integer"):
        usl.select(x, bad)
    with pytest.raises(TypeError, match="`m` must be an integer"):
        usl.regularized_select(x, dens, labels, bad)


def test_numpy_integers_accepted(usl, x):
    picks = usl.select(x, np.int64(5), k=np.int32(4), kmeans_iter=np.int16(3))
    assert len(picks) == 5


@pytest.mark.parametrize("K", [0, 501, 2.0])
def test_bad_n_clusters_kmeans(usl, no_engine, x, K):
    with pytest.raises((ValueError, TypeError), match="`n_clusters`"):
        usl.kmeans(x, K)


def test_n_clusters_below_m(usl, no_engine, x):
    with pytest.raises(ValueError, match=r"`n_clusters` must be >= 10"):
        usl.select(x, 10, n_clusters=9)


@pytest.mark.parametrize("n_iter", [0, 1.5])
def test_bad_n_iter(usl, no_engine, x, n_iter):
    with pytest.raises((ValueError, TypeError), match="`n_iter`"):
        usl.kmeans(x, 3, n_iter=n_iter)
    with pytest.raises((ValueError, TypeError), match="`kmeans_iter`"):
        usl.select(x, 3, kmeans_iter=n_iter)


# --------------------------------------------------------------------------- labels, density


def test_labels_out_of_range(usl, no_engine, x, dens):
    lab = np.arange(500) % 6
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, n_clusters\) = \[0, 5\)"):
        usl.regularized_select(x, dens, lab, 3, n_clusters=5)
    neg = lab.copy()
    neg[4] = -1
    with pytest.raises(ValueError, match="`labels` must lie in"):
        usl.regularized_select(x, dens, neg, 3)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        usl.cluster_argmax(dens, neg, 6)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        usl.cluster_argmax(dens, lab, 5)
    with pytest.raises(ValueError, match="`labels` must lie in"):
        usl.regularizer(x, neg, [0, 1], alpha=1.0)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(499, np.int64), np.zeros((500, 1), np.int64), np.zeros(501, np.int64)],
    ids=["short", "2d", "long"],
)
def test_labels_wrong_shape(usl, no_engine, x, dens, bad):
    with pytest.raises(ValueError, match=r"`labels` must have shape \(500,\)"):
        usl.regularized_select(x, dens, bad, 3)
    with pytest.raises(ValueError, match=r"`labels` must have shape"):
        usl.regularizer(x, bad, [0, 1], alpha=1.0)
    with pytest.raises(ValueError, match=r"`labels` must have shape"):
        usl.cluster_argmax(dens, bad, 3)


@pytest.mark.parametrize(
    "bad",
    [np.zeros(500, np.float64), np.array(["a"] * 500), np.zeros(500, bool)],
    ids=["float", "str", "bool"],
)
def test_labels_non_integer(usl, no_engine, x, dens, bad):
    with pytest.raises(TypeError, match="`labels` must hold integers"):
        usl.regularized_select(x, dens, bad, 3)
    with pytest.raises(TypeError, match="`labels` must hold integers"):
        usl.cluster_argmax(dens, bad, 3)


def test_density_wrong_shape_or_nan(usl, no_engine, x, labels):
    with pytest.raises(ValueError, match=r"`density` must have shape \(500,\)"):
        usl.regularized_select(x, np.ones(499, np.float32), labels, 3)
    bad = np.ones(500, np.float32)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="`density` contains NaN or inf"):
        usl.regularized_select(x, bad, labels, 3)
    with pytest.raises(ValueError, match="`density` contains NaN or inf"):
        usl.cluster_argmax(bad, labels, 6)


@pytest.mark.parametrize("picks", [[], [0, 500], [-1, 2], [[0, 1]], [0.0, 1.0]])
def test_regularizer_bad_picks(usl, no_engine, x, labels, picks):
    with pytest.raises(ValueError, match="`picks`"):
        usl.regularizer(x, labels, np.asarray(picks), alpha=1.0)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", ["cifar", "CIFAR10", "imagenet-mocov2", ""])
def test_bad_defaults_name(usl, no_engine, x, dens, labels, name):
    with pytest.raises(ValueError, match="`defaults` must be one of"):
        usl.select(x, 5, defaults=name)
    with pytest.raises(ValueError, match="`defaults` must be one of"):
        usl.regularized_select(x, dens, labels, 5, defaults=name)


@pytest.mark.parametrize("mode", ["label", "Position", None, ""])
def test_bad_own_cluster(usl, no_engine, x, dens, labels, mode):
    with pytest.raises(ValueError, match="`own_cluster` must be"):
        usl.select(x, 5, own_cluster=mode)
    with pytest.raises(ValueError, match="`own_cluster` must be"):
        usl.regularized_select(x, dens, labels, 5, own_cluster=mode)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(own_cluster="label"), "`own_cluster` must be"),
        (dict(own_cluster="cluster"), "`pick_clusters`"),
        (dict(alpha=-1.0), "`alpha` must be"),
        (dict(horizon_num=0), "`horizon_num` must be"),
        (dict(horizon_dist=np.nan), "`horizon_dist` must be"),
    ],
    ids=["own_cluster", "pick_clusters", "alpha", "horizon_num", "horizon_dist"],
)
def test_regularizer_parameter_errors_before_any_work(usl, no_engine, x, labels, kw, match):
    kw = {"alpha": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        usl.regularizer(x, labels, np.array([0, 1]), **kw)


@pytest.mark.parametrize("mu", [-0.1, 1.01, 2, np.nan])
def test_bad_momentum(usl, no_engine, x, dens, labels, mu):
    with pytest.raises(ValueError, match="`momentum` must be"):
        usl.select(x, 5, momentum=mu)
    with pytest.raises(ValueError, match="`momentum` must be"):
        usl.regularized_select(x, dens, labels, 5, momentum=mu)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(weight=-1.0), "weight"),
        (dict(alpha=-0.5), "alpha"),
        (dict(rounds=0), "rounds"),
        (dict(weight=np.inf), "weight"),
        (dict(horizon_dist=-1.0), "horizon_dist"),
        (dict(horizon_dist=None, horizon_num=0), "horizon_num"),
    ],
)
def test_bad_regularizer_parameters(usl, no_engine, x, dens, labels, kw, name):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        usl.select(x, 5, **kw)
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        usl.regularized_select(x, dens, labels, 5, **kw)


def test_both_horizons_given(usl, no_engine, x, dens, labels):
    with pytest.raises(ValueError, match="`horizon_dist` and `horizon_num`"):
        usl.select(x, 5, horizon_dist=1.0, horizon_num=10)
    with pytest.raises(ValueError, match="`horizon_dist` and `horizon_num`"):
        usl.regularized_select(
            x, dens, labels, 5, defaults="imagenet", horizon_dist=1.0, horizon_num=3
        )
    with pytest.raises(ValueError, match="`horizon_dist` and `horizon_num`"):
        usl.regularizer(x, labels, np.arange(3), horizon_dist=1.0, horizon_num=3)


@pytest.mark.parametrize("init", ["kmeans++", "Random", "", "k-means||"])
def test_bad_kmeans_init_string(usl, no_engine, x, init):
    with pytest.raises(ValueError, match="`init` must be"):
        usl.kmeans(x, 3, init=init)
    with pytest.raises(ValueError, match="`kmeans_init` must be"):
        usl.select(x, 3, kmeans_init=init)


@pytest.mark.parametrize("shape", [(2, 5), (3, 4), (3,), (3, 5, 1)])
def test_bad_kmeans_init_shape(usl, no_engine, x, shape):
    with pytest.raises(ValueError, match="`init` must"):
        usl.kmeans(x, 3, init=np.zeros(shape, np.float32))


def test_kmeans_init_nan(usl, no_engine, x):
    init = x[:3].copy()
    init[0, 0] = np.nan
    with pytest.raises(ValueError, match="`init` contains NaN or inf"):
        usl.kmeans(x, 3, init=init)


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_threads(usl, no_engine, x, threads):
    err = TypeError if isinstance(threads, (float, bool)) else ValueError
    with pytest.raises(err, match="`threads`"):
        usl.knn(x, 3, threads=threads)
    with pytest.raises(err, match="`threads`"):
        usl.kmeans(x, 3, threads=threads)
    with pytest.raises(err, match="`threads`"):
        usl.select(x, 3, threads=threads)


@pytest.mark.parametrize("seed", [-1, 1.5])
def test_bad_seed(usl, no_engine, x, seed):
    with pytest.raises((ValueError, TypeError), match="`seed`"):
        usl.select(x, 3, seed=seed)
    with pytest.raises((ValueError, TypeError), match="`seed`"):
        usl.kmeans(x, 3, seed=seed)


def test_late_argument_errors_come_before_any_engine_call(usl, no_engine):
    # The last-checked arguments of select() fail before the kNN / k-means work starts
    # (no_engine turns any engine call into a test failure).
    rng = np.random.default_rng(1)
    big = rng.standard_normal((2000, 16)).astype(np.float32)
    for kw in (
        dict(own_cluster="bad"),
        dict(threads=0),
        dict(kmeans_init="nope"),
        dict(horizon_num=5, horizon_dist=1.0),
        dict(momentum=1.5),
    ):
        with pytest.raises((ValueError, TypeError)):
            usl.select(big, 100, **kw)


@pytest.mark.parametrize("bad", ["yes", 1, None], ids=["str", "int", "none"])
def test_progress_must_be_a_bool_everywhere(usl, no_engine, x, bad):
    # A truthy string used to draw bars as if it were True; every entry point now refuses
    # a non-bool before any work, as it does for normalize.
    calls = [
        lambda: usl.knn(x, 5, progress=bad),
        lambda: usl.density(x, 5, progress=bad),
        lambda: usl.kmeans(x, 3, progress=bad),
        lambda: usl.range_count(x, 0.5, progress=bad),
        lambda: usl.select(x, 3, k=20, progress=bad),
        lambda: usl.select(x, 3, method="probcover", progress=bad),
        lambda: usl.select(x, 3, method="typiclust", progress=bad),
        lambda: usl.select(x, 3, method="kcenter", progress=bad),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"`progress` must be True or False"):
            call()
