"""usl_fast.TypiClust, ProbCover and probcover_delta against scikit-activeml 1.0.1
(skactiveml.pool.TypiClust / ProbCover), the maintained implementation a user is most
likely to compare with, on small data where the two definitions can be made to agree.

Where the definitions differ, and how each test makes them agree:

TypiClust
- Clusters: skactiveml runs ``cluster_algo(n_clusters=n_labeled + batch_size).fit_predict(X)``
  (KMeans by default); we run our own k-means with K = m + |labeled|, the same K. The test
  hands skactiveml OUR clusters through a ``cluster_algo`` that returns given labels (and
  records the n_clusters it was asked for, which must equal our K).
- Typicality: theirs is 1 / (mean Euclidean distance to the k nearest cluster members +
  1e-7 / k) with k = min(cluster size - 1, 5), over the whole cluster; ours (authors' code)
  1 / (mean distance + 1e-5) with k' = min(k, r // 2) over the r remaining members, squared
  L2 by default. With ``metric="euclidean", k=5`` and clusters of >= 10 points both use 5
  neighbours and the plain distance; the two constants only shift a monotone function of
  the same mean, so the argmax is the same (and the means themselves are compared).
- Cluster order: theirs visits uncovered clusters largest first with random ties
  (rand_argmax); ours orders clusters by (labeled members, size descending, id). With
  distinct cluster sizes (checked on the data: a precondition, not an assumption) the
  orders are the same; theirs then picks from up to batch_size clusters, ours round-robins,
  which is the same while m <= the number of uncovered clusters (K - |labeled| >= m).
- Small clusters: ours drops clusters of <= min_cluster_size points (5), theirs keeps all:
  ``min_cluster_size=0``. Ours normalises rows by default, theirs not: ``normalize=False``
  (the data are unit-norm already). ``max_clusters`` large so K is never capped.
- Ties in typicality: none on continuous data (checked: the best and second-best means in
  every visited cluster differ by far more than float32 rounding).

ProbCover
- Ball: theirs ``d <= delta`` on a dense n x n ``pairwise_distances`` matrix (float32 for
  float32 input); ours ``d < delta`` on the engine's exact distance, as a CSR graph. The
  tests choose delta in the middle of a gap of the pairwise distances, so no pair lies
  within 1e-5 of delta and inclusive/strict and the two roundings cannot differ.
- Greedy: both count, for every candidate, the uncovered points in its ball (labeled
  points' balls covered first) and take the maximum; theirs breaks ties at random, ours by
  the lowest index. The test replays our picks one at a time as labels and checks each pick
  has theirs's maximal utility (ties allowed).
- After full coverage: theirs takes a random candidate (every utility is 0), ours draws the
  remaining picks uniformly (``n_random_``); not compared pick for pick.
- Delta: theirs fixes delta when ``deltas`` has one value (and then skips the purity search
  and warns that the purity was -1); we pass ``delta=`` directly.

probcover_delta
- Pseudo-labels: theirs KMeans(n_classes), ours our k-means: both get the same given labels.
- Purity: both "fraction of points whose ball holds no other label", theirs with ``<=``,
  ours with ``<``; the grid is round numbers (theirs's default ``arange(0.2, 2.2, 0.2)``) on
  continuous data, checked to lie >= 1e-5 from every point's nearest other-label distance,
  so the two balls hold the same points. n = 301 keeps alpha * n off the integers, so the
  float comparison ``purity >= alpha`` and our integer count agree.
- No grid value passing: theirs warns and returns the smallest; ours raises ValueError.
- deltas=None: theirs uses its default grid; ours returns the exact largest delta (the grid
  answer is then the largest grid value not above it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import usl_fast
from usl_fast import ProbCover, TypiClust

skal = pytest.importorskip("skactiveml.pool")

GAP = 1e-5  # distance margin around every threshold (float32 rounding is ~1e-7 here)


class GivenClusters:
    """A ``cluster_algo`` for skactiveml that returns the labels it was built with and
    records the number of clusters it was asked for (no ``random_state`` parameter, so
    skactiveml passes none)."""

    def __init__(self, n_clusters, labels, asked):
        self.n_clusters = n_clusters
        self.labels = np.asarray(labels)
        asked.append(n_clusters)

    def fit_predict(self, X):
        assert len(X) == self.labels.size
        self.labels_ = self.labels
        return self.labels


def _y(n, labeled):
    """skactiveml's labels: NaN (missing_label) everywhere except the labeled indices."""
    y = np.full(n, np.nan)
    y[np.asarray(labeled, dtype=np.int64)] = 0.0
    return y


def _pairwise(x):
    """float64 Euclidean distances of the float32 rows (the reference both round from)."""
    x = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


# --------------------------------------------------------------------------- TypiClust


def sized_blobs(sizes, d, seed, spread=0.05):
    """Unit vectors in blobs of the given sizes around orthogonal directions (equally far
    apart, so k-means++ rarely lands two seeds in one blob), rows shuffled."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[: len(sizes)]
    ids = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[ids] + spread * rng.standard_normal((ids.size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(ids.size)
    return x[perm].astype(np.float32), ids[perm]


SIZES = [14 + 3 * i for i in range(12)]  # 12 blobs, 14..47 points, all sizes distinct


def _typiclust_case(x, m, labeled):
    ours = TypiClust(
        seed=0,
        max_clusters=10_000,
        min_cluster_size=0,
        k=5,
        metric="euclidean",
        normalize=False,
    ).fit(x, m, labeled=labeled)
    labels = np.asarray(ours.labels_)
    lab = np.zeros(0, np.int64) if labeled is None else np.asarray(labeled)

    # Preconditions under which the two definitions coincide (see the module docstring).
    counts = np.bincount(labels, minlength=ours.n_clusters_)
    covered = np.zeros(ours.n_clusters_, bool)
    covered[labels[lab]] = True
    sizes = np.sort(counts[~covered])[::-1]
    assert sizes.size >= m, "fewer uncovered clusters than picks"
    top = sizes[: m + 1]
    assert np.unique(top).size == top.size, f"tied cluster sizes would be random: {top}"
    assert sizes[:m].min() >= 10, "a visited cluster under 10 points: the k's would differ"

    asked = []
    theirs = skal.TypiClust(
        random_state=0,
        cluster_algo=GivenClusters,
        cluster_algo_dict={"labels": labels, "asked": asked},
        k=5,
    )
    q, util = theirs.query(x, _y(x.shape[0], lab), batch_size=m, return_utilities=True)
    assert asked == [ours.n_clusters_] == [lab.size + m]  # the same K
    return ours, q, util, labels


def _check_typicality(ours, util, labels):
    """Each batch step's utilities are the typicality of one cluster's members: the same
    mean kNN distance as our scores_, once each side's constant is taken out."""
    scores = np.asarray(ours.scores_)
    for row in util:
        members = np.flatnonzero(np.isfinite(row) & (row > -np.inf))
        assert np.unique(labels[members]).size == 1
        c = labels[members[0]]
        assert np.array_equal(members, np.flatnonzero(labels == c))
        mean_theirs = 1.0 / row[members] - 1e-7 / 5
        mean_ours = 1.0 / scores[members] - 1e-5
        np.testing.assert_allclose(mean_ours, mean_theirs, rtol=1e-5)
        best2 = np.sort(mean_theirs)[:2]
        assert best2[1] - best2[0] > GAP, "near-tie in typicality"


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("m", [12, 7])
def test_typiclust_first_round_equals_skactiveml(seed, m):
    x, _ = sized_blobs(SIZES, 16, seed)
    ours, q, util, labels = _typiclust_case(x, m, None)
    assert np.array_equal(np.asarray(ours.indices_), q)  # same picks, same order
    _check_typicality(ours, util, labels)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spread_labels", [True, False])
def test_typiclust_later_round_equals_skactiveml(seed, spread_labels):
    """Labeled points mark their clusters covered on both sides: 4 labels in 4 blobs
    (K = 12: the 8 uncovered blobs are all visited) or 5 labels in 2 blobs (K = 13: the 8
    largest of 11 uncovered clusters are visited)."""
    x, ids = sized_blobs(SIZES, 16, seed)
    rng = np.random.default_rng(seed)
    if spread_labels:
        blobs_used = rng.choice(12, 4, replace=False)
        lab = np.array([rng.choice(np.flatnonzero(ids == b)) for b in blobs_used])
    else:
        blobs_used = rng.choice(12, 2, replace=False)
        lab = np.concatenate(
            [
                rng.choice(np.flatnonzero(ids == blobs_used[0]), 3, replace=False),
                rng.choice(np.flatnonzero(ids == blobs_used[1]), 2, replace=False),
            ]
        )
    ours, q, util, labels = _typiclust_case(x, 8, lab)
    assert np.array_equal(np.asarray(ours.indices_), q)
    assert not np.isin(q, lab).any()
    _check_typicality(ours, util, labels)


# --------------------------------------------------------------------------- ProbCover


def _gap_delta(dist, lo, hi):
    """The middle of the widest gap between consecutive pairwise distances in [lo, hi]."""
    v = np.unique(dist[np.triu_indices_from(dist, 1)])
    v = v[(v >= lo) & (v <= hi)]
    j = int(np.argmax(np.diff(v)))
    delta = float(0.5 * (v[j] + v[j + 1]))
    assert np.abs(dist - delta).min() > GAP, "no clean gap for delta"
    return delta


def _their_probcover(delta):
    return skal.ProbCover(n_classes=2, deltas=[delta], random_state=0)


def _replay(x, ours, delta, lab):
    """Query skactiveml once per pick, our earlier picks (and lab) marked labeled; each of
    our picks must carry the maximal utility. Returns their estimator (distances_ inside)."""
    n = x.shape[0]
    theirs = _their_probcover(delta)
    picks = np.asarray(ours.indices_)
    greedy = picks.size - ours.n_random_
    for t in range(picks.size):
        with warnings.catch_warnings():
            # deltas of one value: the purity search is skipped and reported as -1.
            warnings.filterwarnings("ignore", message="The maximum purity was")
            _, util = theirs.query(
                x, _y(n, np.r_[lab, picks[:t]]), batch_size=1, return_utilities=True
            )
        u = util[0]
        assert np.isnan(u[np.r_[lab, picks[:t]].astype(np.int64)]).all()
        best = np.nanmax(u)
        if t < greedy:
            assert best > 0
            assert u[picks[t]] == best, f"pick {t}: utility {u[picks[t]]}, max {best}"
        else:  # everything covered: both choose at random
            assert best == 0
    return theirs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probcover_greedy_equals_skactiveml(make_unit_blobs, seed):
    x = make_unit_blobs(300, 16, n_blobs=8, seed=seed)
    delta = _gap_delta(_pairwise(x), 0.35, 0.40)
    ours = ProbCover(delta=delta, normalize=False).fit(x, 12)
    assert ours.n_random_ == 0
    theirs = _replay(x, ours, delta, np.zeros(0, np.int64))
    # The graph: their first-step utilities are every point's ball size, our scores_.
    _, util = theirs.query(x, _y(300, []), batch_size=1, return_utilities=True)
    assert np.array_equal(util[0], np.asarray(ours.scores_))
    # Coverage after the picks, from their dense matrix.
    cov = (theirs.distances_[np.asarray(ours.indices_)] <= delta).any(axis=0).mean()
    assert cov == ours.coverage_


@pytest.mark.parametrize("seed", [0, 1])
def test_probcover_later_round_covers_labeled_balls_first(make_unit_blobs, seed):
    """Points within delta of a labeled point are covered before the first pick, on both
    sides: our first pick is their best candidate given the labels, and the final coverage
    counts the labeled balls."""
    x = make_unit_blobs(300, 16, n_blobs=8, seed=seed)
    delta = _gap_delta(_pairwise(x), 0.35, 0.40)
    lab = np.random.default_rng(seed).choice(300, 10, replace=False)
    ours = ProbCover(delta=delta, normalize=False).fit(x, 10, labeled=lab)
    theirs = _replay(x, ours, delta, lab)
    chosen = np.r_[lab, np.asarray(ours.indices_)]
    cov = (theirs.distances_[chosen] <= delta).any(axis=0).mean()
    assert cov == ours.coverage_


def test_probcover_full_coverage_tail(make_unit_blobs):
    """Labels whose balls cover everything: their utilities are all 0 (any candidate), ours
    draws every pick at random (n_random_ = m)."""
    x = make_unit_blobs(200, 16, n_blobs=4, seed=3)
    delta = float(_pairwise(x).max()) + 0.01  # every ball holds every point
    lab = np.array([0, 1, 2])
    ours = ProbCover(delta=delta, normalize=False).fit(x, 5, labeled=lab)
    assert ours.n_random_ == 5 and ours.coverage_ == 1.0
    _replay(x, ours, delta, lab)


# --------------------------------------------------------------------------- delta search

GRID = np.arange(0.2, 2.2, 0.2)  # skactiveml's default grid


def _their_delta(x, labels, alpha, deltas, n_classes):
    asked = []
    theirs = skal.ProbCover(
        n_classes=n_classes,
        deltas=deltas,
        alpha=alpha,
        cluster_algo=GivenClusters,
        cluster_algo_dict={"labels": labels, "asked": asked},
        random_state=0,
    )
    theirs.query(x, _y(x.shape[0], []), batch_size=1)
    assert asked == [n_classes]
    return float(theirs.delta_max_)


def _nearest_other(x, labels):
    d = _pairwise(x)
    d[labels[:, None] == labels[None, :]] = np.inf
    return d.min(axis=1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.8, 0.9, 0.95])
def test_probcover_delta_equals_skactiveml(make_unit_blobs, seed, alpha):
    # Blobs that touch: purity falls over the grid, and these alphas stop at 0.2 .. 1.0.
    x = make_unit_blobs(301, 8, n_blobs=6, seed=seed, spread=0.1)
    K = 6
    labels = np.asarray(usl_fast.kmeans(x, K, seed=seed).labels).astype(np.int64)
    other = _nearest_other(x, labels)
    assert np.abs(other[:, None] - GRID[None, :]).min() > GAP
    assert not float(alpha * x.shape[0]).is_integer()

    ours = usl_fast.probcover_delta(x, labels=labels, alpha=alpha, deltas=GRID, normalize=False)
    assert ours == _their_delta(x, labels, alpha, None, K)
    # The exact search (ours, deltas=None) lies in the same grid step.
    exact = usl_fast.probcover_delta(x, labels=labels, alpha=alpha, normalize=False)
    assert ours == GRID[GRID <= exact].max()


def test_probcover_delta_when_no_grid_value_passes(make_unit_blobs):
    x = make_unit_blobs(301, 8, n_blobs=6, seed=0, spread=0.1)
    labels = np.asarray(usl_fast.kmeans(x, 6, seed=0).labels).astype(np.int64)
    grid = [1.8, 1.9]
    with pytest.warns(UserWarning, match="maximum purity"):
        assert _their_delta(x, labels, 0.95, grid, 6) == 1.8  # theirs: smallest, warned
    with pytest.raises(ValueError, match="no delta in `deltas` reaches purity"):
        usl_fast.probcover_delta(x, labels=labels, alpha=0.95, deltas=grid, normalize=False)
