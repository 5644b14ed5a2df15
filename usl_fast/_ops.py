"""The building blocks of USL as public functions: kNN, density, k-means, the selection
regularizer, the per-cluster pick and range counts. Each validates its arguments, converts
once, calls the engine through ``_dispatch`` and returns arrays of the caller's library.

Every distance these functions return or use is the engine's exact squared distance
(docs/engine.md): the same bits whatever the path, thread count or SIMD width."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import _dispatch, _progress
from ._backend import _cpu
from ._dispatch import FAR, MIN_MEAN_DIST
from ._validate import (
    MAX_ROWS,
    MIN_SQUARED_NORM,
    _is_torch,
    _to_torch,
    as_features,
    as_features_top,
    as_float,
    as_int,
    as_labels,
    as_seed,
    as_vector,
    check_pair_scale,
    threads_arg,
    tiny_scale_message,
)

__all__ = ["FAR", "MIN_MEAN_DIST"]


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
        The base set. Read in place when float32 with contiguous rows, else converted
        once to float32.
    k : int
        Neighbours per row. Self-search: 1 <= k < n; queries: 1 <= k <= n.
    queries : (q, d) array-like, optional
        If None, the self kNN graph of ``features``: every point is in its own list at
        distance exactly 0 (as in the reference implementation) - first, unless exact
        duplicates with a lower index tie with it - and symmetry is used (each pair of
        tiles computed once).
    threads : int, optional
        OpenMP threads. None: the calling thread's OpenMP setting (what
        ``threadpoolctl.threadpool_limits`` or ``OMP_NUM_THREADS`` set; all cores by
        default). Results do not depend on it.

    Returns
    -------
    distances : (rows, k) float32, ascending exact squared L2 distances.
    indices : (rows, k) int64. Ties go to the lower index.

    Memory: the output lists (12 rows k bytes) plus candidate buffers (8 (2k + 16) + 8
    bytes per row, per tile row past 4 GiB); no (q, n) matrix is formed.
    """
    from . import portable

    if portable.wants(features):  # a tensor on a GPU: computed there
        return portable.public_knn(features, k, queries, threads)
    # With queries, the 2**-60 rule applies to the larger side (check_pair_scale): a tiny
    # side next to a normal one gives normal distances.
    x, back, top = as_features_top(features, "features")
    if queries is None and 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message("features", top))
    n = x.shape[0]
    threads_arg(threads)
    q = None
    if queries is None:
        k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
    else:
        q, back, q_top = as_features_top(queries, "queries")
        check_pair_scale(("features", top), ("queries", q_top))
        if q.shape[1] != x.shape[1]:
            raise ValueError(
                f"`queries` must have the same dimension as `features` (got {q.shape[1]} and {x.shape[1]})"
            )
        k = as_int(k, "k", 1, n, f" = number of base points n={n}")
    dist, idx = _dispatch.knn(
        x, k, q, threads, progress, float(_sample_hits), float(_max_reservoir_bytes)
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
    features: Any,
    k: int = 400,
    *,
    threads: Optional[int] = None,
    progress: bool = False,
    _sample_hits: float = _cpu.DEFAULT_SAMPLE_HITS,
    _max_reservoir_bytes: float = _cpu.DEFAULT_MAX_RESERVOIR_BYTES,
) -> Any:
    """kNN density of every point: 1 / mean of its k smallest squared distances, itself
    included (the paper's implementation drops the ball-volume constant). Returns (n,)
    float32 in the caller's library. Requires 1 <= k < n.

    No (n, k) lists are formed: each row's k distances are averaged (float64, ascending)
    as soon as they are final. Memory beyond the input: 4 n bytes of output plus the
    candidate buffers, 8 (2k + 16) + 8 bytes per row (per tile row past 4 GiB).
    """
    from . import portable

    if portable.wants(features):  # a tensor on a GPU: computed there
        return portable.public_density(features, k, threads)
    x, back = as_features(features, "features")
    n = x.shape[0]
    k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
    threads_arg(threads)
    dens = _dispatch.knn_density(
        x, k, threads, progress, float(_sample_hits), float(_max_reservoir_bytes)
    )
    return back(dens)


class KMeansResult(NamedTuple):
    """labels: (n,) int64, the last assignment; centroids: (K, d) float32 (an empty
    cluster keeps its last position); counts: (K,) int64 members per cluster (0 for an
    empty one); inertia: (n_iter,) float64 sum of squared distances per iteration;
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
    from . import portable

    if portable.wants(features):  # a tensor on a GPU: computed there
        return portable.public_kmeans(features, n_clusters, n_iter, init, seed, threads)
    x, back, top = as_features_top(features, "features")
    # The features are checked on their own: the centroids become their means.
    if 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message("features", top))
    n, d = x.shape
    K = as_int(n_clusters, "n_clusters", 1, n, f" = number of points n={n}")
    n_iter = as_int(n_iter, "n_iter", 1)
    seed = as_seed(seed)
    threads_arg(threads)
    if isinstance(init, str):
        if init not in ("random", "k-means++"):
            raise ValueError(
                f"`init` must be 'random', 'k-means++' or a (K, d) array (got {init!r})"
            )
        cent = initial_rows(x, K, init, seed, threads, progress)
    else:
        # Tiny initial centroids are fine beside normal features (check_pair_scale).
        cent, _, c_top = as_features_top(init, "init")
        check_pair_scale(("features", top), ("init", c_top))
        if cent.shape != (K, d):
            raise ValueError(
                f"`init` must have shape (n_clusters, d) = ({K}, {d}), got {cent.shape}"
            )
        cent = np.array(cent, dtype=np.float32, order="C")
    labels, counts, inertia, n_run = lloyd(x, cent, n_iter, threads=threads, progress=progress)
    return KMeansResult(
        back(labels.astype(np.int64)), back(cent), back(counts), back(inertia), int(n_run)
    )


def initial_rows(
    x: np.ndarray, K: int, init: str, seed: int, threads: Optional[int], progress: bool
) -> np.ndarray:
    """The (K, d) initial centroids of a validated ``init`` string: the rows at the first K
    positions of ``default_rng(seed).permutation(n)`` ("random"), or k-means++ seeding."""
    if init == "random":
        start = np.random.default_rng(seed).permutation(x.shape[0])[:K]
    else:
        start = _dispatch.kmeanspp_init(x, K, seed, threads, progress)
    return np.ascontiguousarray(x[start])


def lloyd(
    x: np.ndarray,
    cent: np.ndarray,
    n_iter: int,
    *,
    threads: Optional[int] = None,
    progress: bool = False,
    segment_sum: Any = None,
    step_reduce: Any = None,
    _reuse: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Lloyd's iterations from the (K, d) float32 centroids ``cent`` (updated in place), the
    loop in Python over two engine primitives: ``assign`` (nearest alive centroid, exact
    distances) and the CSR ``segment_sum`` (float64 member sums in row order).

    After the first iteration, an assignment searches only the centroids that moved (see
    ``_assign_moved``), with the same labels and distances as a search of all of them;
    ``_reuse=False`` searches all every time (tests compare the two).

    Seams for rows split across processes (usl_fast.distributed): ``segment_sum(x, labels,
    K, threads) -> (sums, counts)`` returns the sums and counts over every process's rows,
    with exactly the bits of one pass over all rows; ``step_reduce(repeated, inertia) ->
    (repeated_everywhere, total_inertia)`` combines each iteration's fixed-point test (a
    local fixed point is not a global one) and inertia. Both are called on every iteration.

    Returns (labels int32, counts int64, inertia float64 per iteration, iterations run).
    """
    n = x.shape[0]
    K = cent.shape[0]
    alive = np.ones(K, dtype=bool)
    inertia = np.empty(n_iter, np.float64)
    prev: Optional[np.ndarray] = None
    counts = np.zeros(K, np.int64)
    labels = np.zeros(n, np.int32)
    n_run = n_iter
    xn = _dispatch.row_norms(x, threads)
    # The centroids of the last assignment and its distances, for _assign_moved.
    before: Optional[np.ndarray] = None
    dist: Optional[np.ndarray] = None
    bar = None
    if progress:
        bar = _progress.bar("k-means", n_iter, "iterations")
    try:
        for it in range(n_iter):
            # A cluster that ended an assignment empty is dead: it never receives points
            # again (the reference's NaN centroid, without the NaN).
            live = np.flatnonzero(alive)
            moved = None
            if _reuse and before is not None:
                moved = alive & np.any(cent.view(np.uint32) != before.view(np.uint32), axis=1)
                # pairs searched: every row x the moved, at most the stale rows x all live
                cost = n * np.count_nonzero(moved) + np.count_nonzero(moved[labels]) * live.size
                if cost >= n * live.size:
                    moved = None  # one search of all is cheaper
            if moved is None:
                c_live = cent if live.size == K else np.ascontiguousarray(cent[live])
                lab, dist = _dispatch.assign(x, c_live, threads, xn)
                if live.size < K:
                    lab = live.astype(np.int32)[lab]
            else:
                lab, dist = _assign_moved(x, xn, cent, live, moved, labels, dist, threads)
            labels = lab
            # A repeated assignment is a fixed point: the update would rebuild these very
            # centroids (same members, same summation order) and no cluster dies, so every
            # remaining iteration repeats this one bit for bit.
            repeated = prev is not None and np.array_equal(labels, prev)
            inertia[it] = dist.sum(dtype=np.float64)
            if step_reduce is not None:
                repeated, inertia[it] = step_reduce(repeated, inertia[it])
            if repeated:
                inertia[it + 1 :] = inertia[it]
                n_run = it + 1
                if bar is not None:
                    bar.update(n_iter - it)
                break
            if segment_sum is None:
                sums, counts = _dispatch.segment_sum(x, labels, K, threads)
            else:
                sums, counts = segment_sum(x, labels, K, threads)
            alive &= counts > 0  # and a live cluster has members: update exactly those
            if _reuse:
                before = cent.copy()
            cent[alive] = (sums[alive] * (1.0 / counts[alive])[:, None]).astype(np.float32)
            prev = labels.copy()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if segment_sum is None:
        counts = np.bincount(labels, minlength=K).astype(np.int64)
    # else: the combined counts of the last update, which counted this very assignment
    # (the last iteration's, or at a fixed point the previous one, which it repeats).
    return labels, counts, inertia, n_run


#: Bytes of feature rows _assign_moved gathers at a time (at least 256 rows).
_GATHER_BYTES = 32 << 20


def _assign_moved(x, xn, cent, live, moved, labels, dist, threads):
    """The assignment to the live centroids ``cent[live]`` when only ``moved`` (a mask of
    live centroids) changed since the assignment ``labels`` / ``dist``, which was exact
    then: the same labels and distances as one search of every live centroid, at the cost
    of a search of the moved ones plus, for the rows whose own centroid moved, of all.

    Why it is exact: a row whose centroid c did not move is still at bit-identical exact
    distances from c and from every unmoved centroid, and c beat each of those (distance,
    then lower index) last time; so its nearest is c or a moved centroid, whichever is
    first in that order. A row whose own centroid moved but is no farther than before has
    the same guarantee (its unmoved rivals are still at least as far, and behind on ties).
    A centroid that died was never the nearest of anything left."""
    ids = np.flatnonzero(moved).astype(np.int32)
    if ids.size == 0:
        return labels.copy(), dist.copy()
    # Every row against the moved centroids.
    near, d_near = _dispatch.assign(x, np.ascontiguousarray(cent[ids]), threads, xn)
    near = ids[near]
    take = (d_near < dist) | ((d_near == dist) & (near < labels))
    new_lab = np.where(take, near, labels)
    new_dist = np.where(take, d_near, dist)
    # Rows whose own centroid c moved. If c came no farther, every unmoved centroid is
    # still at least as far as c (and behind it on ties), so the nearest is the moved
    # centroids' nearest, found above; otherwise search all.
    stale = np.flatnonzero(moved[labels])
    if stale.size:
        c_live = None
        live32 = live.astype(np.int32)
        step = max(256, _GATHER_BYTES // (4 * x.shape[1]))
        for lo in range(0, stale.size, step):
            rows = stale[lo : lo + step]
            xr = x[rows]
            now = _dispatch.exact_l2_pairs(xr, np.ascontiguousarray(cent[labels[rows]]))
            closer = now <= dist[rows]
            new_lab[rows[closer]] = near[rows[closer]]
            new_dist[rows[closer]] = d_near[rows[closer]]
            far = ~closer
            if far.any():
                if c_live is None:
                    c_live = np.ascontiguousarray(cent[live])
                lab, d = _dispatch.assign(xr[far], c_live, threads, xn[rows[far]])
                new_lab[rows[far]] = live32[lab]
                new_dist[rows[far]] = d
    return new_lab, new_dist


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
) -> Any:
    """One round's regularizer (docs/parity.md) for every point: a float64 (n,)
    array ``sum_j f(D[i, j])`` over the picks, where D is the squared distance to pick j,
    f(D) = D^-alpha, and a masked entry counts as D = 1e10.

    Parameters
    ----------
    horizon_dist : float, optional
        Mask D >= horizon_dist (CIFAR flavour).
    horizon_num : int, optional
        Sum only over the horizon_num nearest picks, masks applied after choosing them
        (ImageNet flavour).
    own_cluster : {"position", "cluster", "none"}
        Which picks count as the point's own cluster (masked): "position" (the reference:
        pick number j vs the point's label, wrong once a cluster was skipped), "cluster"
        (the pick's real cluster, needs ``pick_clusters``), or "none".
    mask_zero : bool
        Mask exact zero distances (the ImageNet MoCo flavour).
    """
    x, back = as_features(features, "features")
    lab, _ = as_labels(labels, x.shape[0], None)
    p = np.asarray(picks.detach().cpu().numpy() if _is_torch(picks) else picks)
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
    hn = (
        0
        if horizon_num is None
        else as_int(horizon_num, "horizon_num", 1, MAX_ROWS, " = 2**31 - 1")
    )
    threads_arg(threads)
    pts = np.ascontiguousarray(x[p])
    out = _dispatch.regularizer(x, pts, lab, tag, alpha, hd, hn, bool(mask_zero), threads)
    return back(out)


def cluster_argmax(
    density: Any, labels: Any, n_clusters: int, reg: Any = None, weight: float = 0.0
) -> Any:
    """For every cluster c, the member with the largest ``density - weight * reg`` (first
    index on ties), -1 for an empty cluster. (n_clusters,) int64 in the library of
    ``density`` (numpy, or torch for a torch tensor)."""
    back = _to_torch if _is_torch(density) else (lambda a: a)
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
    return back(_dispatch.segment_argmax(dens, r, float(weight), lab, K))


def range_count(
    features: Any,
    radius: float,
    queries: Any = None,
    *,
    threads: Optional[int] = None,
    progress: bool = False,
) -> Any:
    """For every query row (default: every row of ``features``), how many rows of
    ``features`` lie within squared distance ``radius`` (<=, the point itself included in a
    self count). (rows,) int64 in the caller's library.

    The filter decides most pairs from its bounds alone; only pairs within rounding of the
    radius are evaluated exactly, so the count is exact for the engine's distance.
    Memory: no pair list or matrix, O(threads * tile) beyond the output.
    """
    x, back, top = as_features_top(features, "features")
    q = x
    if queries is None:
        if 0.0 < top < MIN_SQUARED_NORM:
            raise ValueError(tiny_scale_message("features", top))
    else:
        q, back, q_top = as_features_top(queries, "queries")
        check_pair_scale(("features", top), ("queries", q_top))  # the larger side counts
        if q.shape[1] != x.shape[1]:
            raise ValueError(
                f"`queries` must have the same dimension as `features` (got {q.shape[1]} and {x.shape[1]})"
            )
    radius = as_float(radius, "radius", 0.0, allow_inf=True)
    threads_arg(threads)
    return back(_dispatch.range_count(q, x, radius, threads, progress))
