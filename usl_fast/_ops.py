"""The building blocks of USL as public functions: kNN, density, k-means, the selection
regularizer, the per-cluster pick and range counts. Each validates its arguments, converts
once, calls the engine through ``_dispatch`` and returns arrays of the caller's library.

Every distance these functions return or use is the engine's exact squared distance
(docs/engine.md): the same bits whatever the path, thread count or SIMD width."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _dispatch, backends
from ._backend import _cpu
from ._dispatch import FAR, MIN_MEAN_DIST
from ._validate import (
    MAX_ROWS,
    MIN_SQUARED_NORM,
    _is_torch,
    _to_torch,
    as_bool,
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
from .backends import KMeansResult
from .backends.engine import initial_rows, lloyd

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
    bytes per row, per tile row past 4 GiB) and, where a 16-bit filter runs (AVX-512 bf16
    or int16, AVX2 int16), the rows' images (about 2 d bytes a row of each side); no (q, n)
    matrix is formed.
    """
    be = backends.resolve(features)
    if be.name == "portable":  # a tensor on a GPU: computed there
        from .backends import portable

        return portable.public_knn(features, k, queries, threads, kernels=be.kernels)
    # With queries, the 2**-60 rule applies to the larger side (check_pair_scale): a tiny
    # side next to a normal one gives normal distances.
    x, back, top = as_features_top(features, "features")
    if queries is None and 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message("features", top))
    n = x.shape[0]
    threads_arg(threads)
    as_bool(progress, "progress")
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
    candidate buffers, 8 (2k + 16) + 8 bytes per row (per tile row past 4 GiB), plus the
    rows' images where a 16-bit filter runs (about 2 d bytes a row).
    """
    be = backends.resolve(features)
    if be.name == "portable":  # a tensor on a GPU: computed there
        from .backends import portable

        return portable.public_density(features, k, threads, kernels=be.kernels)
    x, back = as_features(features, "features")
    n = x.shape[0]
    k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
    threads_arg(threads)
    as_bool(progress, "progress")
    dens = _dispatch.knn_density(
        x, k, threads, progress, float(_sample_hits), float(_max_reservoir_bytes)
    )
    return back(dens)


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
    be = backends.resolve(features)
    if be.name == "portable":  # a tensor on a GPU: computed there
        from .backends import portable

        return portable.public_kmeans(
            features, n_clusters, n_iter, init, seed, threads, kernels=be.kernels
        )
    x, back, top = as_features_top(features, "features")
    # The features are checked on their own: the centroids become their means.
    if 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message("features", top))
    n, d = x.shape
    K = as_int(n_clusters, "n_clusters", 1, n, f" = number of points n={n}")
    n_iter = as_int(n_iter, "n_iter", 1)
    seed = as_seed(seed)
    threads_arg(threads)
    as_bool(progress, "progress")
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
    as_bool(progress, "progress")
    return back(_dispatch.range_count(q, x, radius, threads, progress))
