"""The engine back end: USL's steps on numpy rows in this process, through the C++
extension (``_dispatch`` calls it; docs/engine.md). Also the engine's Lloyd loop and
k-means seeding, which the public ``kmeans`` and the shard back end reuse."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _dispatch, _memory, _progress
from .._backend import _cpu
from .._validate import as_features, unit_rows
from ._rows import Rows

#: This back end's name (``backends.resolve``).
NAME = "engine"


def features(X: Any, name: str, check_scale: bool = True) -> Tuple[np.ndarray, Any]:
    """(validated float32 rows, converter of numpy results back to X's library)."""
    return as_features(X, name, check_scale=check_scale)


def to_host(a: Any) -> Any:
    """Arrays given beside the rows: read as they are (``_validate`` converts them)."""
    return a


def normalized(x: np.ndarray) -> np.ndarray:
    """The rows scaled to unit norm (``_validate.unit_rows``)."""
    return unit_rows(x)


def check_usl(usl: dict) -> None:
    """Every USL parameter is supported here (they are checked by ``_usl_params``)."""


def make_rows(x: np.ndarray, threads: Optional[int], progress: bool, kernels: Any = None) -> Rows:
    return EngineRows(x, threads, progress)


class EngineRows(Rows):
    """Every row in this process, as numpy; each step one engine call.
    ``usl_fast.backends.shard`` subclasses it for rows split across processes (each holding
    a consecutive range), replacing each step by its collective version."""

    def density(self, k: int) -> np.ndarray:
        return _dispatch.knn_density(self.x, k, self.threads, self.progress)

    def initial_centroids(self, K: int, init: str, seed: int) -> np.ndarray:
        return initial_rows(self.x, K, init, seed, self.threads, self.progress)

    def kmeans_labels(self, cent: np.ndarray, n_iter: int) -> np.ndarray:
        return lloyd(self.x, cent, n_iter, threads=self.threads, progress=self.progress)[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.x[idx])

    def regularizer(self, lab, pts, tag, p, desc, memo=None, keys=None) -> np.ndarray:
        hd, hn = _horizons(p)
        if memo is not None and (memo.dist.shape[1] != len(keys) or memo.horizon != hd):
            memo = None  # (not for this memo's picks or horizon; _pick_rounds keeps both)
        if memo is None:
            return _dispatch.regularizer(
                self.x, pts, lab, tag, p["alpha"], hd, hn, p["mask_zero"], self.threads,
                desc=desc,
            )
        fresh = memo.fresh(keys)
        memo.keys = None  # until this call has filled the fresh columns
        out = _dispatch.regularizer(
            self.x, pts, lab, tag, p["alpha"], hd, hn, p["mask_zero"], self.threads,
            desc=desc, memo=memo.dist, fresh=fresh,
        )
        memo.keys = np.array(keys, np.int64)
        return out

    def regularizer_memo(self, m: int, calls: int, p: dict) -> Optional["DistanceMemo"]:
        """A ``DistanceMemo`` for ``calls`` regularizer rounds of ``m`` picks when it pays
        and fits: two rounds or more, the power-sum (every pick counts: no top-h), this
        process holding every row, and n x m float32 within ``MEMO_MAX_BYTES`` and a
        quarter of what the memory limits still allow. Otherwise None (each round
        evaluates every pair)."""
        hn = p["horizon_num"]
        if type(self) is not EngineRows or calls < 2 or (hn is not None and 0 < hn < m):
            return None
        size = 4 * self.x.shape[0] * m
        if size > MEMO_MAX_BYTES:
            return None
        free = [lim.free for lim in _memory.limits()]
        if free and 4 * size > min(free):
            return None
        try:
            return DistanceMemo(self.x.shape[0], m, _horizons(p)[0])
        except MemoryError:  # (a limit the checks do not see, such as strict overcommit)
            return None

    def check_memory(self, k: int, K: int) -> None:
        if type(self) is EngineRows:  # this process holds every row (shards check per step)
            check_usl_memory(self.x, k, K, self.threads)


def _horizons(p: dict) -> Tuple[float, int]:
    """The engine's horizon_dist (inf for none) and horizon_num (0 for none: with at most h
    picks the engine sums over all of them, docs/parity.md) of regularizer parameters."""
    return (
        np.inf if p["horizon_dist"] is None else p["horizon_dist"],
        0 if p["horizon_num"] is None else p["horizon_num"],
    )


#: The largest distance memo the selection rounds keep (``EngineRows.regularizer_memo``).
MEMO_MAX_BYTES = 2**30


class DistanceMemo:
    """The float32 distances of the rows to the previous round's picks (n x m; row r is the
    r-th row the engine's power-sum runs on, which after its duplicate collapse is a group's
    representative), so that a regularizer round evaluates only the positions whose pick
    changed and reads the others. The regularizer's bits are the same with it or without it
    (its sums still add every term in pick order); it saves time where picks persist between
    rounds (with the CIFAR-10 preset at m = 2,500, 1,520 of the picks change after round 1
    and 84 after round 8). Valid for one set of rows and labels and one horizon (a pair the
    filter puts beyond it is kept as +inf): ``_pick_rounds`` makes one per selection.
    ``keys``: the pick indices the memo's columns hold (None: none valid)."""

    def __init__(self, n: int, m: int, horizon: float):
        self.dist = np.empty((n, m), np.float32)
        self.horizon = horizon
        self.keys: Optional[np.ndarray] = None

    def fresh(self, keys: np.ndarray) -> np.ndarray:
        """(m,) uint8: 1 where column j must be evaluated (its pick changed, or no round
        filled the memo yet)."""
        keys = np.asarray(keys, np.int64)
        if self.keys is None or self.keys.shape != keys.shape:
            return np.ones(keys.shape[0], np.uint8)
        return (self.keys != keys).astype(np.uint8)


def check_usl_memory(x: np.ndarray, k: int, K: int, threads: Optional[int]) -> None:
    """The whole pipeline's peak against the memory limits, before the density pass: every
    phase checks its own allocations too, but k-means' float64 sums (K x d) failing after
    a long density pass would waste it. Beyond the features: the density pass (its output,
    norms, candidate buffers and the 16-bit filters' row images, ``_dispatch.knn_density``),
    or afterwards the densities kept (4 bytes a row) plus the larger of k-means (labels,
    distances, norms, the moved search's temporaries: 48 bytes a row; sums, centroids and
    their previous copy: 16 K d) and the selection rounds (labels, the regularizer, its
    blend, the scores: 44 bytes a row), each with the row images of its passes against
    the K centroids or at most K picks (``_dispatch._rect_image_bytes``)."""
    n, d = x.shape
    th = _dispatch.resolve_threads(threads)
    shared, per_thread = _dispatch.topk_buffers(n, k, True, _cpu.DEFAULT_MAX_RESERVOIR_BYTES)
    shared += _dispatch._knn_image_bytes(d, n, n, shared != 0.0, True)
    density_pass = 4.0 * n + shared + _dispatch._norm_bytes(n)
    images = _dispatch._rect_image_bytes(d, n, K)
    later = 4.0 * n + max(48.0 * n + 16.0 * K * d, 44.0 * n) + images
    _dispatch.check_memory(
        max(density_pass, later),
        f"USL on {n} points (k={k}, {K} clusters: the peak of its phases)",
        th,
        per_thread,
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
