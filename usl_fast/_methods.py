"""Every cold-start selection method as an estimator with one protocol (scikit-learn
conventions): parameters in ``__init__``, ``fit(X, m, labeled=None)`` returns self, fitted
attributes end in ``_``, ``get_params`` / ``set_params``, a repr that shows what differs
from the defaults. Each method runs on the engine's exact distance (docs/engine.md); none
forms an n x n or n x m matrix. The rules, their papers and every default: docs/methods.md.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from . import _dispatch, backends
from ._pipeline import _usl
from ._presets import COMMON_PARAMS, METHOD_NAMES, PARAMS, USL_PARAMS, Param, document
from ._validate import (
    as_bool,
    as_features,
    as_int,
    as_interval,
    as_seed,
    round_budget,
    unit_rows,
)
from .backends.engine import initial_rows, lloyd

__all__ = [
    "Selector",
    "USL",
    "TypiClust",
    "ProbCover",
    "KCenterGreedy",
    "RandomSelect",
    "probcover_delta",
    "METHODS",
]


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[idx] = True
    return out


class Selector:
    """Base of every selection method (see the module docstring for the protocol).

    After ``fit(X, m, labeled=None)``: ``indices_`` (m,) the new picks in pick order
    (int64, the caller's library), never a labeled index, never repeated; ``labels_`` (n,)
    cluster of each point or None; ``scores_`` (n,) the method's per-point score or None;
    ``labeled_`` the labeled indices given; ``n_features_in_``; ``timings_`` seconds per
    phase.
    """

    #: name accepted by ``usl_fast.select(..., method=...)``
    method = ""

    # -- scikit-learn's estimator conventions ---------------------------------------
    @classmethod
    def _param_names(cls) -> Sequence[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """The constructor parameters and their current values."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Selector":
        """Set constructor parameters by name (validated at the next ``fit``); returns self."""
        names = self._param_names()
        for key, val in params.items():
            if key not in names:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {key!r}; its parameters are {list(names)}"
                )
            setattr(self, key, val)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        changed = []
        for name, p in sig.parameters.items():
            if name == "self":
                continue
            val = getattr(self, name)
            default = p.default
            same = val is default
            if not same:
                try:
                    same = bool(val == default)
                except Exception:
                    same = False
            if not same:
                changed.append(f"{name}={val!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- the protocol ------------------------------------------------------------------
    #: Whether the method runs on any back end (``backends.resolve``: a device tensor runs
    #: on its device) or on the engine only (its input converted to numpy).
    _any_backend = False

    def fit(self, X: Any, m: int, labeled: Any = None, *, _name: str = "X") -> "Selector":
        """Choose ``m`` new points of ``X`` to label; ``labeled``: indices labeled in
        earlier rounds (never returned again). Returns self."""
        t_start = time.perf_counter()
        be = backends.resolve(X) if self._any_backend else backends.ENGINE
        norm = getattr(self, "normalize", False) is True  # validated by _validate below
        x, back = be.features(X, _name, check_scale=not norm)
        lab, m = round_budget(x.shape[0], m, labeled)
        n = x.shape[0]
        self._validate(n)
        self._check_backend(be)
        if getattr(self, "normalize", False):
            x = be.normalized(x)
        timings: Dict[str, float] = {"validate": time.perf_counter() - t_start}
        self._backend = be
        out = self._select(x, m, lab, timings)
        idx = np.asarray(out.pop("indices"), dtype=np.int64)
        # The protocol's promises, checked on every fit (cheap next to any method).
        if idx.shape != (m,) or np.unique(idx).size != m or (lab.size and _mask(n, lab)[idx].any()):
            raise AssertionError(f"{type(self).__name__}: internal error, invalid picks")
        labels, scores = out.pop("labels", None), out.pop("scores", None)
        self.indices_ = back(idx)
        self.labels_ = None if labels is None else back(labels)
        self.scores_ = None if scores is None else back(scores)
        for key, val in out.items():
            setattr(self, key + "_", back(val) if isinstance(val, np.ndarray) else val)
        self.labeled_ = back(lab)
        self.n_features_in_ = x.shape[1]
        self.timings_ = timings
        return self

    def _check_backend(self, be: Any) -> None:
        """Refuse what the chosen back end cannot run (after ``_validate``)."""

    def fit_select(self, X: Any, m: int, labeled: Any = None) -> Any:
        """``fit(X, m, labeled).indices_``."""
        return self.fit(X, m, labeled).indices_

    #: name -> ``_presets.Param``: the constructor parameters checked at ``fit``, in this
    #: order (scikit-learn's ``_parameter_constraints``). A method whose checks depend on the
    #: data or on each other overrides ``_validate`` instead.
    _parameter_constraints: Dict[str, Param] = {}

    def _validate(self, n: int) -> None:
        for name, p in self._parameter_constraints.items():
            p.check(getattr(self, name))

    def _select(self, x: np.ndarray, m: int, lab: np.ndarray, timings: Dict[str, float]) -> dict:
        raise NotImplementedError  # pragma: no cover


def _seed(v: Any) -> int:
    return as_seed(v)


# ---------------------------------------------------------------------------------------
# Random.


class RandomSelect(Selector):
    """The authors' random baseline: NumPy's legacy generator seeded with ``seed``, then
    ``choice(pool, m, replace=False)`` where the pool is 0..n-1 (first round: the same
    indices as ``usl_fast.random_select``) or the unlabeled indices in ascending order.
    Drawn from a private ``np.random.RandomState(seed)`` (the same picks as seeding the
    global generator), so NumPy's global state is untouched and threads do not race."""

    method = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    _parameter_constraints = {
        # RandomState takes 32-bit seeds
        "seed": Param("seed", int, 0, "seed of numpy's RandomState", low=0, legacy=True),
    }

    def _select(self, x, m, lab, timings):
        n = x.shape[0]
        pool = np.flatnonzero(~_mask(n, lab)) if lab.size else None
        # Private generator: seeding the global one would race with other threads.
        rs = np.random.RandomState(as_seed(self.seed, legacy=True))
        idx = rs.choice(n if pool is None else pool, size=m, replace=False)
        return {"indices": idx.astype(np.int64), "labels": None, "scores": None}


# ---------------------------------------------------------------------------------------
# k-center greedy.


class KCenterGreedy(Selector):
    """k-center greedy (Sener & Savarese, ICLR 2018, the "core-set" baseline):
    farthest-first traversal. Start from the labeled points (or, with none, one point
    drawn by ``numpy.random.default_rng(seed).integers(n)``), then repeatedly pick the point
    whose squared distance to its nearest chosen point is largest (first index on ties).
    The running nearest distance is the engine's min-update epilogue: O(n) memory, one
    pass over the features per pick.

    scores_ : (n,) float32 squared distance of every point to its nearest chosen point
        (labeled or picked) after the last pick; ``radius_`` is its maximum over the points
        not chosen (the covering radius, squared)."""

    method = "kcenter"

    def __init__(
        self,
        seed: int = 0,
        normalize: bool = False,
        threads: Optional[int] = None,
        progress: bool = False,
    ):
        self.seed = seed
        self.normalize = normalize
        self.threads = threads
        self.progress = progress

    _parameter_constraints = {
        "seed": PARAMS["seed"],
        "normalize": Param("normalize", bool, False, "L2-normalise a copy of the features first"),
        "threads": PARAMS["threads"],
        "progress": PARAMS["progress"],
    }

    def _select(self, x, m, lab, timings):
        n = x.shape[0]
        t0 = time.perf_counter()
        mind = np.full(n, np.inf, np.float32)
        chosen = np.zeros(n, dtype=bool)
        picks = []
        if lab.size:
            _dispatch.min_update(x, np.ascontiguousarray(x[lab]), 0, mind, None, self.threads)
            chosen[lab] = True
        else:
            first = int(np.random.default_rng(_seed(self.seed)).integers(n))
            picks.append(first)
            chosen[first] = True
            _dispatch.min_update(x, x[first : first + 1], 0, mind, None, self.threads)
        bar = _bar(self.progress, m, "k-center greedy", "pick")
        if bar is not None:
            bar.update(len(picks))
        try:
            while len(picks) < m:
                # Chosen points are at distance 0 but so can be their duplicates: mask them.
                score = np.where(chosen, np.float32(-1.0), mind)
                i = int(np.argmax(score))
                picks.append(i)
                chosen[i] = True
                _dispatch.min_update(x, x[i : i + 1], 0, mind, None, self.threads)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        timings["select"] = time.perf_counter() - t0
        rest = ~chosen
        radius = float(mind[rest].max()) if rest.any() else 0.0
        return {
            "indices": np.asarray(picks, np.int64),
            "labels": None,
            "scores": mind,
            "radius": radius,
        }


def _bar(progress: bool, total: int, desc: str, unit: str):
    if not progress:
        return None
    from . import _progress

    return _progress.bar(desc, total, unit + "s")


# ---------------------------------------------------------------------------------------
# TypiClust.


class TypiClust(Selector):
    """TypiClust (Hacohen, Dekel & Weinshall, ICML 2022), the authors' rule.

    1. k-means with K = min(|labeled| + m, max_clusters) clusters (the engine's Lloyd,
       k-means++ seeding from ``seed``, at most ``kmeans_iter`` iterations).
    2. Clusters with at most ``min_cluster_size`` points (labeled ones counted) are dropped.
    3. The kept clusters are ordered once by (labeled members ascending, size descending,
       cluster id ascending) and visited round-robin in that order, one pick a visit.
    4. A visit picks the most typical remaining member (not labeled, not picked yet):
       typicality = 1 / (mean distance to its k' nearest remaining members + 1e-5),
       k' = min(k, r // 2) for r remaining members, distance = squared L2 (the authors'
       faiss IndexFlatL2) or plain L2 with ``metric="euclidean"``; first index on ties. A
       cluster with one remaining member gives that member; an exhausted one is skipped.

    Attributes
    ----------
    scores_ : (n,) float64
        Typicality of each point within its whole cluster (labeled members left out)
        before any pick; NaN for labeled points and dropped clusters.
    labels_ : (n,) int64
        k-means clusters.
    n_clusters_ : int
        K used.
    kept_clusters_ : 1-D int64
        The visiting order (cluster ids).
    """

    method = "typiclust"

    def __init__(
        self,
        seed: int = 0,
        max_clusters: int = 500,
        min_cluster_size: int = 5,
        k: int = 20,
        metric: str = "sqeuclidean",
        kmeans_iter: int = 300,
        normalize: bool = True,
        threads: Optional[int] = None,
        progress: bool = False,
    ):
        self.seed = seed
        self.max_clusters = max_clusters
        self.min_cluster_size = min_cluster_size
        self.k = k
        self.metric = metric
        self.kmeans_iter = kmeans_iter
        self.normalize = normalize
        self.threads = threads
        self.progress = progress

    _parameter_constraints = {
        "seed": PARAMS["seed"],
        "max_clusters": Param("max_clusters", int, 500, "most k-means clusters", low=1),
        "min_cluster_size": Param(
            "min_cluster_size", int, 5, "clusters this small or smaller are dropped", low=0
        ),
        "k": Param("k", int, 20, "neighbours of the typicality", low=1),
        "metric": Param(
            "metric",
            str,
            "sqeuclidean",
            "distance of the typicality",
            choices=("sqeuclidean", "euclidean"),
            phrase="'sqeuclidean' (the authors') or 'euclidean'",
        ),
        "kmeans_iter": Param("kmeans_iter", int, 300, "most Lloyd iterations", low=1),
        "normalize": Param("normalize", bool, True, "L2-normalise a copy of the features first"),
        "threads": PARAMS["threads"],
        "progress": PARAMS["progress"],
    }

    def _typicality(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Typicality of each of ``rows`` within the set ``rows`` (float64)."""
        r = rows.size
        kk = min(self.k, r // 2)
        if kk == 0:
            return np.full(r, np.inf)
        sub = np.ascontiguousarray(x[rows])
        dist, _ = _dispatch.knn(sub, kk + 1, None, self.threads, False)
        d = dist[:, 1:].astype(np.float64)
        if self.metric == "euclidean":
            d = np.sqrt(d)
        return 1.0 / (d.mean(axis=1) + 1e-5)

    def _select(self, x, m, lab, timings):
        n = x.shape[0]
        t0 = time.perf_counter()
        K = min(lab.size + m, as_int(self.max_clusters, "max_clusters", 1), n)
        cent = initial_rows(x, K, "k-means++", _seed(self.seed), self.threads, self.progress)
        labels, counts, _, _ = lloyd(
            x, cent, self.kmeans_iter, threads=self.threads, progress=self.progress
        )
        timings["kmeans"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        labels = labels.astype(np.int64)
        existing = np.bincount(labels[lab], minlength=K)
        kept = np.flatnonzero(counts > self.min_cluster_size)
        if kept.size == 0:
            import warnings

            warnings.warn(
                f"TypiClust: no cluster has more than min_cluster_size={self.min_cluster_size} "
                f"points (K={K} clusters of {n} points), so every pick is a fill pick "
                "(n_filled_); lower `min_cluster_size` for small data",
                RuntimeWarning,
                stacklevel=3,
            )
        order = kept[np.lexsort((kept, -counts[kept], existing[kept]))]
        free = ~_mask(n, lab)
        # Members of every kept cluster, labeled ones left out, ascending index.
        by_cluster = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        members = {}
        scores = np.full(n, np.nan)
        for c in kept:
            rows = by_cluster[starts[c] : starts[c + 1]]
            rows = rows[free[rows]]
            members[int(c)] = rows
        picks = []
        bar = _bar(self.progress, m, "typiclust", "pick")
        try:
            visit = 0
            misses = 0
            while len(picks) < m and order.size:
                c = int(order[visit % order.size])
                visit += 1
                rows = members[c]
                if rows.size == 0:
                    misses += 1
                    if misses >= order.size:
                        break  # every kept cluster exhausted: the fill below takes over
                    continue
                misses = 0
                typ = self._typicality(x, rows)
                if visit <= order.size:  # first visit: the whole cluster
                    scores[rows] = typ
                j = int(np.argmax(typ))
                picks.append(int(rows[j]))
                members[c] = np.delete(rows, j)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        n_filled = 0
        if len(picks) < m:
            # Every kept cluster ran out of members: the rest are the lowest-index points
            # not chosen (all in dropped clusters); n_filled_ says how many.
            taken = _mask(n, np.asarray(picks, np.int64)) | ~free
            rest = np.flatnonzero(~taken)
            extra = rest[: m - len(picks)]
            n_filled = int(extra.size)
            picks.extend(int(i) for i in extra)
        # Clusters never visited (more kept clusters than picks) still get their scores.
        for c in kept:
            rows = by_cluster[starts[c] : starts[c + 1]]
            rows = rows[free[rows]]
            if rows.size and np.isnan(scores[rows[0]]):
                scores[rows] = self._typicality(x, rows)
        timings["select"] = time.perf_counter() - t0
        return {
            "indices": np.asarray(picks, np.int64),
            "labels": labels,
            "scores": scores,
            "n_clusters": K,
            "kept_clusters": order,
            "n_filled": n_filled,
        }


# ---------------------------------------------------------------------------------------
# ProbCover.


def _strictly_below(v: float) -> float:
    """The squared radius R such that, for a float32 distance E, E <= R iff E < v."""
    if v <= 1.401298464324817e-45:  # below the smallest positive float32: only E == 0
        return 0.0
    f = np.float32(min(v, 3.4028234663852886e38))
    if float(f) >= v:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _nearest_other_cluster(x: np.ndarray, labels: np.ndarray, threads: Optional[int]) -> np.ndarray:
    """Squared distance of every point to the nearest point with a different label (inf if
    none): the rows sorted by label once, then each cluster against the contiguous rows
    before and after it (min-update epilogue), so nothing but one sorted copy is made."""
    n = x.shape[0]
    order = np.argsort(labels, kind="stable")
    xs = np.ascontiguousarray(x[order])
    ls = labels[order]
    bounds = np.flatnonzero(np.diff(ls)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [n]])
    out_sorted = np.full(n, np.inf, np.float32)
    for s, e in zip(starts, ends):
        part = out_sorted[s:e]
        if s > 0:
            _dispatch.min_update(xs[s:e], xs[:s], 0, part, None, threads)
        if e < n:
            _dispatch.min_update(xs[s:e], xs[e:], 0, part, None, threads)
        out_sorted[s:e] = part
    out = np.empty(n, np.float32)
    out[order] = out_sorted
    return out


def probcover_delta(
    X: Any,
    n_classes: Optional[int] = None,
    *,
    labels: Any = None,
    alpha: float = 0.95,
    deltas: Any = None,
    seed: int = 0,
    kmeans_iter: int = 300,
    normalize: bool = True,
    threads: Optional[int] = None,
) -> float:
    """The ProbCover ball size by the purity rule (Yehuda et al., NeurIPS 2022): with
    pseudo-labels from k-means with K = ``n_classes`` (or ``labels`` given), a point's
    delta-ball is pure when every point strictly within delta has its label; purity(delta)
    is the fraction of points with a pure ball; return the largest delta with purity >=
    ``alpha``.

    deltas=None: the exact largest delta (purity only changes at a point's distance to
    its nearest other-label point, so the answer is one of those distances). Given a grid
    of candidates: the largest one that passes (purity falls as delta grows, so scanning
    up to the first failure gives the same). Memory O(n); one pass over all pairs.
    """
    norm = as_bool(normalize, "normalize")
    x, _ = as_features(X, "X", check_scale=not norm)
    n = x.shape[0]
    if norm:
        x = unit_rows(x)
    alpha = as_interval(alpha, "alpha", 0.0, 1.0, open_low=True)
    if labels is None:
        if n_classes is None:
            raise ValueError("give `n_classes` (k-means pseudo-labels) or `labels`")
        K = as_int(n_classes, "n_classes", 2, n, f" = number of points n={n}")
        cent = initial_rows(x, K, "k-means++", as_seed(seed), threads, False)
        lab, _, _, _ = lloyd(x, cent, as_int(kmeans_iter, "kmeans_iter", 1), threads=threads)
    else:
        from ._validate import as_labels

        lab, _ = as_labels(labels, n, None)
    other = _nearest_other_cluster(x, lab, threads).astype(np.float64)
    need = int(np.ceil(alpha * n - 1e-9))
    # Ball of delta is pure iff other >= delta^2; purity(delta) = #(other >= delta^2) / n.
    if deltas is None:
        v = np.sort(other)[::-1]
        best_sq = float(v[need - 1])
        if not np.isfinite(best_sq):
            return float("inf")
        d = float(np.sqrt(best_sq))
        while d * d > best_sq:  # the largest delta whose square (as ProbCover forms it) <= v
            d = float(np.nextafter(d, 0.0))
        return d
    grid = np.asarray(deltas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)) or (grid <= 0).any():
        raise ValueError("`deltas` must be a non-empty 1-D array of positive finite numbers")
    ok = [float(d) for d in np.sort(grid) if np.count_nonzero(other >= d * d) >= need]
    if not ok:
        raise ValueError(
            f"no delta in `deltas` reaches purity {alpha}: the smallest, {grid.min():g}, "
            f"gives {np.count_nonzero(other >= grid.min() ** 2) / n:.3f}; try smaller deltas"
        )
    return ok[-1]


class ProbCover(Selector):
    """ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022), the authors' rule.

    The delta-ball graph: an edge i -> j when ||x_i - x_j|| < delta (strict, self loops
    included; the engine's range search, memory 4 bytes an edge plus 8 a point, refused
    past ``max_edges``; the greedy step adds O(n) working memory, never O(edges)). Every point in a labeled point's ball is covered first; then each
    pick is the point whose ball holds the most uncovered points (first index on ties),
    and its ball becomes covered. Once everything is covered the remaining picks are drawn
    uniformly from the points not chosen (``numpy.random.default_rng(seed)``), where the
    authors' code would repeat one index.

    delta : ball radius (plain L2). Default (None): chosen with ``probcover_delta`` from
        ``n_classes`` k-means pseudo-labels and purity >= ``alpha`` when ``n_classes`` is
        given, else the authors' default 0.6 (for unit-norm features). Give one of
        ``delta`` and ``n_classes``, not both.

    scores_ : (n,) int64 ball size (degree) of every point.  coverage_ : fraction of
    points covered after the picks.  delta_ : the delta used.  n_edges_ : edges stored.
    n_random_ : picks drawn after full coverage.
    """

    method = "probcover"

    def __init__(
        self,
        delta: Optional[float] = None,
        n_classes: Optional[int] = None,
        alpha: float = 0.95,
        seed: int = 0,
        max_edges: Optional[int] = None,
        normalize: bool = True,
        threads: Optional[int] = None,
        progress: bool = False,
    ):
        self.delta = delta
        self.n_classes = n_classes
        self.alpha = alpha
        self.seed = seed
        self.max_edges = max_edges
        self.normalize = normalize
        self.threads = threads
        self.progress = progress

    #: the authors' ball radius, used when neither delta nor n_classes is given
    DEFAULT_DELTA = 0.6

    _parameter_constraints = {
        "n_classes": Param(
            "n_classes", int, None, "k-means pseudo-labels for the purity rule", low=2, none=True
        ),
        "delta": Param(
            "delta", float, None, "ball radius (plain L2)", low=0.0, open_low=True, none=True
        ),
        "alpha": Param(
            "alpha", float, 0.95, "purity delta must reach", low=0.0, high=1.0, open_low=True
        ),
        "seed": PARAMS["seed"],
        "max_edges": Param("max_edges", int, None, "most edges stored", low=1, none=True),
        "normalize": Param("normalize", bool, True, "L2-normalise a copy of the features first"),
        "threads": PARAMS["threads"],
        "progress": PARAMS["progress"],
    }

    def _validate(self, n: int) -> None:
        if self.delta is not None and self.n_classes is not None:
            raise ValueError(
                "give `delta` (a fixed ball radius) or `n_classes` (delta by the purity "
                f"rule), not both (got delta={self.delta}, n_classes={self.n_classes})"
            )
        for name, p in self._parameter_constraints.items():
            if name == "n_classes":  # at most one class per point
                p.check(self.n_classes, high=n, high_msg=f" = number of points n={n}")
            else:
                p.check(getattr(self, name))

    def _singleton_warning(self, delta: float) -> None:
        """Every ball holds only its own point: every greedy step ties at one uncovered
        point, so the picks are the lowest indices not covered, whatever the data."""
        import warnings

        from ._validate import caller_stacklevel

        if self.n_classes is None:
            cure = "pass a larger `delta`, or `n_classes` to choose it by the purity rule"
        else:
            cure = f"pass `delta` yourself or a smaller `alpha` (got alpha={self.alpha})"
        warnings.warn(
            f"ProbCover: no point has a neighbour within delta={delta:.4g} (every ball holds "
            f"only its own point), so the picks are just the lowest indices; {cure}",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )

    def _select(self, x, m, lab, timings):
        n = x.shape[0]
        t0 = time.perf_counter()
        delta = self.delta
        if delta is None and self.n_classes is None:
            delta = self.DEFAULT_DELTA
        if delta is None:
            delta = probcover_delta(
                x,
                self.n_classes,
                alpha=self.alpha,
                seed=self.seed,
                normalize=False,  # x is already as the user asked
                threads=self.threads,
            )
            timings["delta"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if not np.isfinite(delta):
                raise ValueError(
                    f"ProbCover: the {self.n_classes} k-means pseudo-labels leave no two "
                    "distinct labels (e.g. identical points), so every delta is pure and the "
                    "purity rule cannot choose one: pass `delta`"
                )
        delta = float(delta)
        offsets, nbr = _dispatch.range_search(
            x, x, _strictly_below(delta * delta), self.threads, self.progress, self.max_edges
        )
        timings["graph"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        degree = np.diff(offsets)  # balls are symmetric: in-degree == out-degree
        if degree.max() <= 1:
            self._singleton_warning(delta)
        scores = degree.copy()
        live = degree.copy()  # uncovered points in each ball
        covered = np.zeros(n, dtype=bool)
        chosen = np.zeros(n, dtype=bool)

        def cover(centers: np.ndarray) -> None:
            # Mark the centres' balls covered, in chunks of at most _CHUNK gathered edges so
            # the working memory stays O(n + _CHUNK) whatever the ball sizes.
            new_mask = np.zeros(n, dtype=bool)
            for part in _chunks(offsets, centers):
                ball = _gather(offsets, nbr, part)
                new_mask[ball] = True
            new_mask &= ~covered
            new = np.flatnonzero(new_mask)
            if new.size == 0:
                return
            covered[new] = True
            # Each newly covered point leaves the ball of every point whose ball holds it,
            # which (symmetry) are exactly the points in its own ball.
            for part in _chunks(offsets, new):
                hit = _gather(offsets, nbr, part)
                if hit.size > n // 8:
                    live[:] -= np.bincount(hit, minlength=n)
                else:
                    np.subtract.at(live, hit, 1)

        if lab.size:
            chosen[lab] = True
            cover(lab)
        picks = []
        bar = _bar(self.progress, m, "probcover", "pick")
        try:
            while len(picks) < m:
                i = int(np.argmax(live))
                if live[i] == 0:
                    break
                picks.append(i)
                chosen[i] = True
                cover(np.array([i]))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        n_random = m - len(picks)
        if n_random:
            pool = np.flatnonzero(~chosen)
            extra = np.random.default_rng(_seed(self.seed)).choice(pool, n_random, replace=False)
            picks.extend(int(i) for i in extra)
        timings["select"] = time.perf_counter() - t0
        return {
            "indices": np.asarray(picks, np.int64),
            "labels": None,
            "scores": scores,
            "coverage": float(covered.mean()),
            "delta": delta,
            "n_edges": int(offsets[-1]),
            "n_random": int(n_random),
        }


#: At most this many edges are gathered at once by ProbCover's cover step.
_CHUNK = 1 << 20


def _chunks(offsets: np.ndarray, rows: np.ndarray):
    """Consecutive pieces of ``rows`` whose CSR rows hold at most _CHUNK edges together
    (a single larger row is a piece of its own: at most n edges)."""
    lens = offsets[rows + 1] - offsets[rows]
    ends = np.cumsum(lens)
    start = 0
    while start < rows.size:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + _CHUNK, side="right"))
        stop = max(stop, start + 1)
        yield rows[start:stop]
        start = stop


def _gather(offsets: np.ndarray, nbr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated CSR rows ``rows`` of (offsets, nbr), int32 (about 20 bytes of
    temporaries per gathered edge)."""
    starts = offsets[rows]
    lens = offsets[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int32)
    pos = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    pos += np.arange(total)
    return nbr[pos]


# ---------------------------------------------------------------------------------------
# USL as an estimator.


class USL(Selector):
    """USL (Wang, Lian & Yu, ECCV 2022): kNN density, k-means, regularized per-cluster
    arg-max; the estimator form of ``usl_fast.select`` (same parameters, same picks, any
    input ``select`` takes: a tensor on a GPU runs on its device).

    With ``labeled``: K = (the preset's K for m) + |labeled| clusters; a cluster holding a
    labeled point is covered and gives no pick; the labeled points enter the regularizer
    as picks already made (every round), and the m new picks come from the uncovered
    clusters in cluster order (docs/methods.md says why).

    Parameters
    ----------
    {usl_params}
    normalize : bool, default False
        L2-normalise a copy of the features first.
    seed, threads, progress :
        As ``usl_fast.select``.

    labels_ : k-means clusters.  density_ : kNN density.  scores_ : density - weight * reg
    of the last round.  n_filled_ : picks taken outside the per-cluster rule.  params_ :
    the resolved parameters.

    The parameters are declared once, in ``usl_fast._presets.USL_PARAMS`` (as scikit-learn's
    ``_parameter_constraints``), and checked against those declarations at ``fit``; a
    parameter left at ``PRESET`` takes the ``defaults`` preset's value.
    """

    method = "usl"
    _any_backend = True

    #: The declarations this estimator's parameters are checked against at fit.
    _parameter_constraints = {p.name: p for p in USL_PARAMS + COMMON_PARAMS}

    def __init__(self, *args: Any, **params: Any):
        names = self._param_names()
        # Positional arguments in the declared order, as the signature (and earlier
        # releases) accept them: USL("imagenet", 10).
        if len(args) > len(names):
            raise TypeError(
                f"USL() takes at most {len(names)} positional arguments ({len(args)} given)"
            )
        for name, value in zip(names, args):
            if name in params:
                raise TypeError(f"USL() got multiple values for argument {name!r}")
            params[name] = value
        for key in params:
            if key not in names:
                raise TypeError(f"USL() got an unexpected keyword argument {key!r}")
        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name != "self":
                setattr(self, name, params.get(name, p.default))

    def _validate(self, n: int) -> None:
        # normalize and progress here; every USL parameter against its declaration in
        # _usl_params (their bounds depend on n and m)
        as_bool(self.normalize, "normalize")
        PARAMS["progress"].check(self.progress)

    def _check_backend(self, be: Any) -> None:
        be.check_usl({"kmeans_init": self.kmeans_init})

    def _kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {p.name: getattr(self, p.name) for p in USL_PARAMS}
        kw.update(seed=self.seed, threads=self.threads, progress=self.progress)
        return kw

    def _select(self, x, m, lab, timings):
        be = self._backend
        res = _usl(be.rows(x, self.threads, self.progress), m, lab, **self._kwargs())
        if be.name != "engine":
            res.params["backend"] = be.name
        timings.update(res.timings)
        return {
            "indices": res.indices,
            "labels": res.labels,
            "scores": res.scores,
            "density": res.density,
            "n_filled": res.n_filled,
            "params": res.params,
        }


def _usl_signature() -> inspect.Signature:
    """USL.__init__'s signature from the declarations (what get_params, clone, repr and
    help() read): the USL parameters, then normalize (False), seed, threads, progress."""
    own = {"normalize": False}
    ps = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for p in USL_PARAMS + COMMON_PARAMS:
        ps.append(
            inspect.Parameter(
                p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=own.get(p.name, p.default)
            )
        )
    return inspect.Signature(ps)


USL.__init__.__signature__ = _usl_signature()  # type: ignore[attr-defined]
document(usl_params=[p.name for p in USL_PARAMS])(USL)


#: method name -> estimator class (``usl_fast.select(..., method=name)``; "uslt" needs torch)
METHODS: Dict[str, type] = {
    cls.method: cls for cls in (USL, TypiClust, ProbCover, KCenterGreedy, RandomSelect)
}


def method_names() -> Tuple[str, ...]:
    """Every ``select(method=...)`` name (``_presets.METHOD_NAMES``)."""
    return METHOD_NAMES
