"""The building blocks of USL as public functions: kNN, density, k-means, the selection
regularizer and the per-cluster pick. Each validates its arguments, converts once,
calls the engine and returns arrays of the caller's library."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _progress
from ._backend import _cpu
from ._validate import as_features, as_float, as_int, as_labels, as_vector, threads_arg

#: Squared distance the reference substitutes for a masked entry (it still adds far^-alpha).
FAR = 1e10
#: Floor on the mean kNN distance: exact duplicates (mean 0) get a large finite density
#: instead of inf, so scores stay comparable and never turn into NaN.
MIN_MEAN_DIST = 1e-12


def knn(
    features: Any,
    k: int,
    queries: Any = None,
    *,
    threads: Optional[int] = None,
    progress: bool = False,
    _sample_hits: float = _cpu.DEFAULT_SAMPLE_HITS,
    _max_reservoir_bytes: float = _cpu.DEFAULT_MAX_RESERVOIR_BYTES,
) -> Tuple[Any, Any]:
    """k nearest neighbours by squared Euclidean distance.

    Parameters
    ----------
    features : (n, d) array-like (numpy, torch CPU tensor), float16/32/64
        The base set. Converted once to float32 C-contiguous.
    k : int
        Neighbours per row. Self-search: 1 <= k < n; queries: 1 <= k <= n.
    queries : (q, d) array-like, optional
        If None, the self kNN graph of ``features``: every point is its own first
        neighbour at distance exactly 0 (as in the reference implementation), and
        symmetry is used (each pair of tiles computed once).
    threads : int, optional
        OpenMP threads (default: all). Results do not depend on it.

    Returns
    -------
    distances : (rows, k) float32, ascending squared L2 distances.
    indices : (rows, k) int64. Ties go to the lower index.

    Memory: O((n + q) d + rows k); no (q, n) matrix is formed.
    """
    x, back = as_features(features, "features")
    n = x.shape[0]
    th = threads_arg(threads)
    if queries is None:
        k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
        dist = np.empty((n, k), np.float32)
        idx = np.empty((n, k), np.int64)
        _progress.run(
            lambda c: _cpu.knn_self(
                x, k, dist, idx, th, c, float(_sample_hits), float(_max_reservoir_bytes)
            ),
            desc="kNN",
            progress=progress,
        )
    else:
        q, back = as_features(queries, "queries")
        if q.shape[1] != x.shape[1]:
            raise ValueError(
                f"`queries` must have the same dimension as `features` (got {q.shape[1]} and {x.shape[1]})"
            )
        k = as_int(k, "k", 1, n, f" = number of base points n={n}")
        dist = np.empty((q.shape[0], k), np.float32)
        idx = np.empty((q.shape[0], k), np.int64)
        _progress.run(
            lambda c: _cpu.knn_query(q, x, k, dist, idx, th, c), desc="kNN", progress=progress
        )
    return back(dist), back(idx)


def density_from_knn(distances: Any) -> np.ndarray:
    """USL density from kNN distances: 1 / mean of each row (self included), float32.

    The mean is floored at ``MIN_MEAN_DIST`` so exact duplicates give a large finite
    density rather than inf.
    """
    # float64 accumulation without a float64 copy of the (n, k) array
    mean = np.asarray(distances).mean(axis=1, dtype=np.float64)
    return (1.0 / np.maximum(mean, MIN_MEAN_DIST)).astype(np.float32)


def density(
    features: Any, k: int = 400, *, threads: Optional[int] = None, progress: bool = False
) -> Any:
    """kNN density of every point: 1 / mean of its k smallest squared distances, itself
    included (REFERENCE.md section 1). Returns (n,) float32 in the caller's library.
    Requires 1 <= k < n."""
    x, back = as_features(features, "features")
    dist, _ = knn(x, k, threads=threads, progress=progress)
    return back(density_from_knn(dist))


class KMeansResult(NamedTuple):
    """labels: (n,) int64, the last assignment; centroids: (K, d) float32 (an empty
    cluster keeps its last position); counts: (K,) int64 members per cluster (0 for an
    empty one); inertia: (n_iter,) float32 sum of squared distances per iteration;
    n_iter_run: iterations computed - once an assignment repeats the previous one, every
    later iteration would repeat it exactly, so the run stops there with the same result
    (and the same inertia for the remaining iterations)."""

    labels: Any
    centroids: Any
    counts: Any
    inertia: Any
    n_iter_run: int


def kmeans(
    features: Any,
    n_clusters: int,
    *,
    n_iter: int = 200,
    init: Union[str, Any] = "random",
    seed: int = 0,
    threads: Optional[int] = None,
    progress: bool = False,
) -> KMeansResult:
    """Lloyd's k-means, squared Euclidean, a fixed number of iterations (no tolerance).

    init : "random" (reference: the rows at the first K positions of a permutation of
        0..n-1 drawn by ``numpy.random.default_rng(seed)``), "k-means++" (D^2 sampling with
        a seeded generator), or a (K, d) array of initial centroids.

    An empty cluster stays empty for the rest of the run, as in the reference (where its
    centroid becomes NaN); here it keeps its last centroid and never receives points, so no
    NaN leaves the function. Centroid sums are float64 in row order: the result is the
    same for any thread count.
    """
    x, back = as_features(features, "features")
    n, d = x.shape
    K = as_int(n_clusters, "n_clusters", 1, n, f" = number of points n={n}")
    n_iter = as_int(n_iter, "n_iter", 1)
    seed = as_int(seed, "seed", 0)
    th = threads_arg(threads)
    if isinstance(init, str):
        if init == "random":
            start = np.random.default_rng(seed).permutation(n)[:K]
        elif init == "k-means++":
            start = np.empty(K, np.int64)
            _progress.run(
                lambda c: _cpu.kmeanspp_init(x, K, seed, start, th, c),
                desc="k-means++",
                progress=progress,
            )
        else:
            raise ValueError(
                f"`init` must be 'random', 'k-means++' or a (K, d) array (got {init!r})"
            )
        cent = np.ascontiguousarray(x[start])
    else:
        cent, _ = as_features(init, "init")
        if cent.shape != (K, d):
            raise ValueError(
                f"`init` must have shape (n_clusters, d) = ({K}, {d}), got {cent.shape}"
            )
        cent = cent.copy()
    labels = np.empty(n, np.int32)
    counts = np.empty(K, np.int64)
    inertia = np.empty(n_iter, np.float32)
    n_run = _progress.run(
        lambda c: _cpu.kmeans_lloyd(x, cent, n_iter, labels, counts, inertia, th, c),
        desc="k-means",
        progress=progress,
    )
    return KMeansResult(
        back(labels.astype(np.int64)), back(cent), back(counts), back(inertia), int(n_run)
    )


_OWN = ("position", "cluster", "none")


def regularizer(
    features: Any,
    labels: Any,
    picks: Any,
    *,
    alpha: float = 0.5,
    horizon_dist: Optional[float] = None,
    horizon_num: Optional[int] = None,
    own_cluster: str = "position",
    pick_clusters: Any = None,
    mask_zero: bool = False,
    threads: Optional[int] = None,
) -> np.ndarray:
    """One round's regularizer (REFERENCE.md section 3) for every point: a float64 (n,)
    array ``sum_j f(D[i, j])`` over the picks, where D is the squared distance to pick j,
    f(D) = D^-alpha, and a masked entry counts as D = 1e10.

    horizon_dist : mask D >= horizon_dist (CIFAR flavour). horizon_num : sum only over
        the horizon_num nearest picks, masks applied after choosing them (ImageNet flavour).
    own_cluster : which picks count as the point's own cluster (masked): "position" (the
        reference: pick number j vs the point's label, wrong once a cluster was skipped),
        "cluster" (the pick's real cluster, needs ``pick_clusters``), or "none".
    mask_zero : mask exact zero distances (the ImageNet MoCo flavour).
    """
    x, _ = as_features(features, "features")
    lab, _ = as_labels(labels, x.shape[0], None)
    p = np.asarray(picks)
    if p.ndim != 1 or p.size == 0 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(
            f"`picks` must be a non-empty 1-D integer array (got shape {p.shape}, dtype {p.dtype})"
        )
    if p.min() < 0 or p.max() >= x.shape[0]:
        raise ValueError(f"`picks` must index rows of `features` in [0, {x.shape[0]})")
    alpha = as_float(alpha, "alpha", 0.0)
    if own_cluster not in _OWN:
        raise ValueError(f"`own_cluster` must be one of {_OWN} (got {own_cluster!r})")
    if own_cluster == "position":
        tag = np.arange(p.size, dtype=np.int32)
    elif own_cluster == "cluster":
        if pick_clusters is None:
            raise ValueError("`pick_clusters` is required with own_cluster='cluster'")
        tag = np.asarray(pick_clusters)
        if tag.shape != p.shape or not np.issubdtype(tag.dtype, np.integer):
            raise ValueError(
                f"`pick_clusters` must be integers with the shape of `picks` {p.shape} (got {tag.shape})"
            )
        tag = np.ascontiguousarray(tag, dtype=np.int32)
    else:
        tag = np.full(p.size, -1, np.int32)
    if horizon_dist is not None and horizon_num is not None:
        raise ValueError("give at most one of `horizon_dist` and `horizon_num`")
    hd = (
        np.inf
        if horizon_dist is None
        else as_float(horizon_dist, "horizon_dist", 0.0, allow_inf=True)
    )
    hn = 0 if horizon_num is None else as_int(horizon_num, "horizon_num", 1)
    th = threads_arg(threads)
    xn = np.empty(x.shape[0], np.float32)
    _cpu.row_norms(x, xn, th)
    out = np.empty(x.shape[0], np.float64)
    pts = np.ascontiguousarray(x[p])
    _cpu.regularizer(x, xn, pts, lab, tag, alpha, hd, hn, bool(mask_zero), FAR, out, th, None)
    return out


def cluster_argmax(
    density: Any, labels: Any, n_clusters: int, reg: Any = None, weight: float = 0.0
) -> np.ndarray:
    """For every cluster c, the member with the largest ``density - weight * reg`` (first
    index on ties), -1 for an empty cluster. (n_clusters,) int64."""
    dens = as_vector(density, len(np.asarray(density)), "density")
    lab, K = as_labels(labels, dens.shape[0], as_int(n_clusters, "n_clusters", 1))
    r = None
    if reg is not None:
        r = np.asarray(reg.detach().cpu().numpy() if hasattr(reg, "detach") else reg)
        if r.shape != dens.shape or not np.issubdtype(r.dtype, np.number):
            raise ValueError(
                f"`reg` must be numeric with the shape of `density` {dens.shape} (got {r.shape})"
            )
        r = np.ascontiguousarray(r, dtype=np.float64)
    weight = as_float(weight, "weight", 0.0)
    if weight == 0.0:
        r = None  # no regularizer (and no 0 * inf = NaN where reg is inf)
    out = np.empty(K, np.int64)
    _cpu.segment_argmax(dens, r, float(weight), lab, K, out)
    return out
