"""The one module that calls into the compiled engine.

Arrays arrive here validated (``_validate``): float32 with contiguous, evenly spaced rows,
finite, squared norms within range. This module resolves the thread count in the caller's
thread, checks that the outputs it is about to allocate fit in memory, allocates them
(numpy), and runs the op with progress and Ctrl-C support. The public functions convert
results back to the caller's array library.

Back ends: the CPU engine (``usl_fast._cpu``) serves numpy arrays and torch CPU tensors
through this module. Tensors on a GPU go to ``usl_fast.backends.portable`` (torch operations on the
device, the same definitions) before reaching here. The op names and arguments are those of
``csrc/include/usl_fast/ops.hpp``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _memory, _progress
from ._backend import _cpu

#: Squared distance the reference substitutes for a masked entry (it still adds far^-alpha).
FAR = 1e10
#: Floor on the mean kNN distance: exact duplicates (mean 0) get a large finite density
#: instead of inf, so scores stay comparable and never turn into NaN.
MIN_MEAN_DIST = 1e-12


#: Multiply-adds (rows x centroids x d) below which a k-means assign runs in the caller's
#: thread instead of a cancellable worker thread (a few milliseconds of work at most).
INLINE_ASSIGN_WORK = 1 << 26


def resolve_threads(threads: Optional[int]) -> int:
    """``threads`` if given, else the OpenMP setting of the calling thread (what
    ``threadpoolctl.threadpool_limits``, ``omp_set_num_threads`` or ``OMP_NUM_THREADS`` set)."""
    return int(threads) if threads else int(_cpu.max_threads())


def available_memory() -> Optional[int]:
    """Bytes a new allocation can take under the tightest limit that applies now
    (RLIMIT_AS / RLIMIT_DATA, the cgroup's memory limit, MemAvailable: ``_memory``), or
    None if none is known."""
    found = _memory.limits()
    return min(lim.free for lim in found) if found else None


def check_memory(
    nbytes: float, what: str, threads: int = 0, per_thread: float = 0.0, tiles: bool = True
) -> None:
    """Raise MemoryError naming the sizes and the limit when an op cannot fit, before it
    allocates anything.

    Parameters
    ----------
    nbytes : float
        The arrays the op allocates: its outputs and the engine's buffers sized by the input.
    what : str
        What they are, for the message ("the kNN lists (q x k) ...").
    threads : int
        OpenMP threads the op runs (0: none). Each adds the engine's own per-thread buffers
        (``_memory.ENGINE_THREAD_BYTES``), ``per_thread``, OpenBLAS's buffer where the tile
        GEMM is OpenBLAS, and, against the address-space limits, its stack and malloc arena.
    per_thread : float
        Further bytes each thread allocates (e.g. its candidate buffers).
    tiles : bool
        Whether the threads run the tile GEMM and allocate (``_memory.Estimate.tiles``):
        False for the norms and the k-means sums.
    """
    _memory.check(
        _memory.Estimate(float(nbytes), int(threads), float(per_thread), bool(tiles)), what
    )


def reservoir_bytes_per_row(k: int) -> float:
    """Candidate buffer of one row: 2k + 16 packed keys, a count and a threshold (the
    engine's own figure is ``_cpu.reservoir_bytes_per_row``; a test keeps them equal)."""
    return 8.0 * (2 * k + 16) + 8.0


def topk_buffers(
    n: int, k: int, self_pass: bool, max_reservoir_bytes: float
) -> Tuple[float, float]:
    """(bytes shared by the threads, bytes per thread) of the candidate buffers of a top-k
    pass over n base rows: the symmetric self pass keeps every row's buffer
    (``reservoir_bytes_per_row``) and its sampled bound (4 bytes a row), while the query
    pass (queries, or a self pass past ``max_reservoir_bytes``) keeps a 256-row buffer per
    thread; each thread also holds k keys to finish a row. (The norms: ``_norm_bytes``.)"""
    per_row = reservoir_bytes_per_row(k)
    if self_pass and n * per_row <= max_reservoir_bytes:
        return n * per_row + 4.0 * n, 8.0 * k
    return 0.0, 256 * per_row + 8.0 * k


#: The engine's duplicate-row detection before a kNN or density pass (csrc/cpu/dedup.hpp):
#: a hash, a head and 2-4 table slots per row, freed before the pass allocates its own
#: buffers. It only adds to an estimate where those are smaller: the query pass.
DEDUP_DETECT_BYTES_PER_ROW = 28.0


def _norm_bytes(*rows: int) -> float:
    """The engine's squared norms of each side (4 bytes a row) and the AMX filter's
    centred norms (4 more)."""
    return 8.0 * sum(rows)


def _image_bytes(d: int, *rows: int) -> float:
    """The 16-bit images of each side's rows that the symmetric and bipartite kNN passes
    convert once per call where the filter's GEMM is AVX2 int16 or AVX-512 bf16 or int16
    (about 2 d bytes a row; 0 elsewhere: the engine's own figure,
    ``_cpu.filter_image_bytes``)."""
    return float(sum(_cpu.filter_image_bytes(int(r), int(d)) for r in rows))


def _rect_image_bytes(d: int, rows: int, cols: int, same: bool = False) -> float:
    """The images of a rectangular pass (the engine's for_each_tile): made only where both
    sides have more than one 256-row tile; one image when the two sides are one array."""
    if rows <= 256 or cols <= 256:
        return 0.0
    return _image_bytes(d, rows) if same else _image_bytes(d, rows, cols)


def _knn_image_bytes(d: int, n: int, rows: int, symmetric: bool, same: bool) -> float:
    """The images a kNN pass over n base rows holds: the symmetric pass one of x, the query
    pass (``rows`` queries, ``same``: x itself) those of a rectangular pass."""
    return _image_bytes(d, n) if symmetric else _rect_image_bytes(d, rows, n, same)


def row_norms(x: np.ndarray, threads: Optional[int] = None) -> np.ndarray:
    th = resolve_threads(threads)
    check_memory(4.0 * x.shape[0], f"the squared norms of {x.shape[0]} rows", th, tiles=False)
    out = np.empty(x.shape[0], np.float32)
    _cpu.row_norms(x, out, th, None)
    return out


def exact_l2_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    check_memory(4.0 * a.shape[0], f"the distances of {a.shape[0]} row pairs")  # one thread
    out = np.empty(a.shape[0], np.float32)
    _cpu.exact_l2_pairs(a, b, out)
    return out


def knn(
    x: np.ndarray,
    k: int,
    queries: Optional[np.ndarray],
    threads: Optional[int],
    progress: bool,
    sample_hits: float = _cpu.DEFAULT_SAMPLE_HITS,
    max_reservoir_bytes: float = _cpu.DEFAULT_MAX_RESERVOIR_BYTES,
    indices: bool = True,
    desc: str = "kNN",
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(distances, indices) of the k nearest; ``indices=False``: distances only (None for
    the indices, and 8 bytes a list entry less)."""
    n = x.shape[0]
    rows = n if queries is None else queries.shape[0]
    th = resolve_threads(threads)
    shared, per_thread = topk_buffers(n, k, queries is None, max_reservoir_bytes)
    symmetric = shared != 0.0
    if not symmetric:  # the query pass
        shared = DEDUP_DETECT_BYTES_PER_ROW * (n + (0 if queries is None else rows))
    shared += _knn_image_bytes(x.shape[1], n, rows, symmetric, queries is None)
    check_memory(
        rows * k * (12.0 if indices else 4.0)
        + shared
        + _norm_bytes(n, 0 if queries is None else rows),
        f"the kNN lists ({rows} x {k}) and their candidate buffers",
        th,
        per_thread,
    )
    dist = np.empty((rows, k), np.float32)
    idx = np.empty((rows, k), np.int64) if indices else None
    _progress.run(
        _cpu.knn,
        x,
        queries,
        k,
        dist,
        idx,
        th,
        desc=desc,
        unit="tile",
        progress=progress,
        extra=(float(sample_hits), float(max_reservoir_bytes)),
    )
    return dist, idx


def knn_density(
    x: np.ndarray,
    k: int,
    threads: Optional[int],
    progress: bool,
    sample_hits: float = _cpu.DEFAULT_SAMPLE_HITS,
    max_reservoir_bytes: float = _cpu.DEFAULT_MAX_RESERVOIR_BYTES,
) -> np.ndarray:
    n = x.shape[0]
    th = resolve_threads(threads)
    shared, per_thread = topk_buffers(n, k, True, max_reservoir_bytes)
    symmetric = shared != 0.0
    if not symmetric:  # the query pass
        shared = DEDUP_DETECT_BYTES_PER_ROW * n
    shared += _knn_image_bytes(x.shape[1], n, n, symmetric, True)
    check_memory(
        4.0 * n + shared + _norm_bytes(n),
        f"the kNN density of {n} points (k={k}: candidate buffers)",
        th,
        per_thread,
    )
    out = np.empty(n, np.float32)
    _progress.run(
        _cpu.knn_density,
        x,
        k,
        MIN_MEAN_DIST,
        out,
        th,
        desc="kNN density",
        unit="tile",
        progress=progress,
        extra=(float(sample_hits), float(max_reservoir_bytes)),
    )
    return out


def assign(
    x: np.ndarray,
    centroids: np.ndarray,
    threads: Optional[int],
    x_norms: Optional[np.ndarray] = None,
):
    th = resolve_threads(threads)
    n, K = x.shape[0], centroids.shape[0]
    check_memory(
        8.0 * n + _norm_bytes(n, K) + _rect_image_bytes(x.shape[1], n, K),
        f"the assignment of {n} points to {K} centroids",
        th,
    )
    labels = np.empty(x.shape[0], np.int32)
    dist = np.empty(x.shape[0], np.float32)
    # One k-means iteration. A large one runs in a worker thread with the cancel slot like
    # every long op: a single assign can take seconds (100,000 x 256 against 10,000
    # centroids: about 13 s on 2 cores), and Ctrl-C must stop it inside the pass. A small one
    # (a few milliseconds at most) runs in the caller's thread, where Ctrl-C lands right
    # after it, and skips the worker thread's start (about 0.3 ms, 5x a 2,000 x 32 x 20
    # assign).
    if x.shape[0] * centroids.shape[0] * x.shape[1] < INLINE_ASSIGN_WORK:
        _cpu.assign(x, x_norms, centroids, labels, dist, th, None)
    else:
        _progress.run(_cpu.assign, x, x_norms, centroids, labels, dist, th, desc="k-means assign")
    return labels, dist


def segment_sum(
    x: np.ndarray,
    labels: np.ndarray,
    K: int,
    threads: Optional[int],
    sums: Optional[np.ndarray] = None,
    c_lo: int = 0,
    c_hi: Optional[int] = None,
    rows: Optional[np.ndarray] = None,
):
    """Float64 member sums (K, d) in ascending row order and counts (K,). With ``sums``
    given, the clusters [c_lo, c_hi) are added ONTO it (a later row range continuing the
    sums of an earlier one: the same bits as one pass over all rows) and the rest of it is
    left untouched; without, the sums outside [c_lo, c_hi) are zero. ``rows`` (int64):
    visit only these rows, in that order (e.g. the block's members, sorted by label then
    row); counts are of the rows visited."""
    th = resolve_threads(threads)
    check_memory(
        8.0 * K + (0.0 if sums is not None else 8.0 * K * x.shape[1]),
        f"the member sums of {K} clusters x {x.shape[1]} coordinates (float64)",
        th,
        tiles=False,  # each thread adds its clusters' rows: no GEMM, no allocation
    )
    counts = np.empty(K, np.int64)
    hi = K if c_hi is None else int(c_hi)
    accumulate = sums is not None
    if sums is None:  # the engine zeroes [c_lo, c_hi) itself
        full = int(c_lo) == 0 and hi == K
        sums = (np.empty if full else np.zeros)((K, x.shape[1]), np.float64)
    _cpu.segment_sum(x, labels, K, sums, counts, th, int(c_lo), hi, accumulate, rows)
    return sums, counts


def knn_cross(
    a: np.ndarray,
    b: np.ndarray,
    k: int,
    a_start: Optional[np.ndarray],
    b_start: Optional[np.ndarray],
    threads: Optional[int],
    progress: bool = False,
    desc: str = "kNN (block)",
):
    """Both sides of the block a x b: ((na, k), (nb, k)) float32 ascending exact distances,
    +inf past what was kept; ``*_start``: per-row bounds beyond which nothing is needed."""
    na, nb = a.shape[0], b.shape[0]
    th = resolve_threads(threads)
    check_memory(
        (na + nb) * (k * 4.0 + reservoir_bytes_per_row(k))
        + _norm_bytes(na, nb)
        + _image_bytes(a.shape[1], na, nb),
        f"a {na} x {nb} kNN block (k={k}: lists and candidate buffers)",
        th,
        8.0 * k,
    )
    out_a = np.empty((na, k), np.float32)
    out_b = np.empty((nb, k), np.float32)
    _progress.run(
        _cpu.knn_cross,
        a,
        b,
        int(k),
        a_start,
        b_start,
        out_a,
        out_b,
        th,
        desc=desc,
        unit="tile",
        progress=progress,
    )
    return out_a, out_b


def min_update(
    x: np.ndarray,
    centers: np.ndarray,
    arg_offset: int,
    mind: np.ndarray,
    arg: Optional[np.ndarray],
    threads: Optional[int],
) -> None:
    th = resolve_threads(threads)
    check_memory(
        _norm_bytes(x.shape[0], centers.shape[0])
        + _rect_image_bytes(x.shape[1], x.shape[0], centers.shape[0]),
        f"the nearest of {centers.shape[0]} centers for {x.shape[0]} points",
        th,
    )
    _progress.run(_cpu.min_update, x, centers, int(arg_offset), mind, arg, th, desc="min-update")


def range_count(
    queries: np.ndarray, base: np.ndarray, radius: float, threads: Optional[int], progress: bool
) -> np.ndarray:
    th = resolve_threads(threads)
    q = queries.shape[0]
    check_memory(
        8.0 * q
        + _norm_bytes(q, base.shape[0])
        + _rect_image_bytes(base.shape[1], q, base.shape[0]),
        f"the range counts of {q} queries",
        th,
    )
    out = np.empty(queries.shape[0], np.int64)
    # Distances are float32: E <= radius iff E <= the largest float32 <= radius.
    _progress.run(
        _cpu.range_count,
        queries,
        base,
        _float32_at_most(radius),
        out,
        th,
        desc="range count",
        progress=progress,
    )
    return out


def range_search(
    queries: np.ndarray,
    base: np.ndarray,
    radius: float,
    threads: Optional[int],
    progress: bool,
    max_edges: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (offsets int64 (q+1,), indices int32) of the base rows within squared distance
    ``radius`` of each query row, ascending per row. Two passes: the counts first, so the
    list is allocated once at its exact size, after checking ``max_edges`` and memory."""
    counts = range_count(queries, base, radius, threads, progress)
    offsets = np.zeros(queries.shape[0] + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    if max_edges is not None and total > max_edges:
        raise ValueError(
            f"the radius gives {total:,} pairs (mean {total / max(queries.shape[0], 1):.1f} a "
            f"point), more than `max_edges`={max_edges:,}: use a smaller radius or raise max_edges "
            f"(memory: 4 bytes a pair)"
        )
    th = resolve_threads(threads)
    check_memory(
        4.0 * total
        + _norm_bytes(queries.shape[0], base.shape[0])
        + _rect_image_bytes(base.shape[1], queries.shape[0], base.shape[0]),
        f"the neighbour list of {total:,} pairs",
        th,
    )
    out = np.empty(total, np.int32)
    _progress.run(
        _cpu.range_search,
        queries,
        base,
        _float32_at_most(radius),
        offsets,
        out,
        th,
        desc="range search",
        progress=progress,
    )
    return offsets, out


def _float32_at_most(v: float) -> float:
    """The largest float32 <= v (v >= 0; beyond float32's range: its largest value)."""
    f = np.float32(min(v, 3.4028234663852886e38))
    if float(f) > v:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _float32_at_least(v: float) -> float:
    """The smallest float32 >= v (v >= 0; inf stays inf)."""
    with np.errstate(over="ignore"):
        f = np.float32(v)
    if float(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def regularizer(
    x: np.ndarray,
    picks: np.ndarray,
    labels: np.ndarray,
    tag: np.ndarray,
    alpha: float,
    horizon_dist: float,
    horizon_num: int,
    mask_zero: bool,
    threads: Optional[int],
    desc: str = "regularizer",
    memo: Optional[np.ndarray] = None,
    fresh: Optional[np.ndarray] = None,
) -> np.ndarray:
    """memo, fresh: the distance memo of the selection rounds (``engine.DistanceMemo``:
    (n, m) float32, kept where fresh[j] == 0, evaluated and stored where it is 1)."""
    th = resolve_threads(threads)
    n, m = x.shape[0], picks.shape[0]
    # The engine (csrc/cpu/regularizer.cpp) keeps the h nearest picks only when
    # 0 < h < m: a 256-row candidate buffer and h keys per thread. With h >= m every pick
    # counts and it sums them all with no buffer (h = 10**7 would otherwise "need" 81 GiB).
    top_h = 0 < horizon_num < m
    check_memory(
        # (the images: an upper bound; the engine skips them where its filter cannot run)
        8.0 * n + _norm_bytes(n, m) + _rect_image_bytes(x.shape[1], n, m),
        f"the regularizer of {n} points and {m} picks",
        th,
        256 * reservoir_bytes_per_row(horizon_num) + 8.0 * horizon_num if top_h else 0.0,
    )
    out = np.empty(x.shape[0], np.float64)
    _progress.run(
        _cpu.regularizer,
        x,
        picks,
        labels,
        tag,
        float(alpha),
        # a float32 distance E is >= horizon iff E >= the smallest float32 >= horizon
        _float32_at_least(horizon_dist),
        int(horizon_num),
        bool(mask_zero),
        FAR,
        out,
        th,
        desc=desc,
        extra=(memo, fresh),
    )
    return out


def segment_argmax(
    density: np.ndarray, reg: Optional[np.ndarray], weight: float, labels: np.ndarray, K: int
) -> np.ndarray:
    check_memory(16.0 * K, f"the best member of each of {K} clusters")  # one thread
    out = np.empty(K, np.int64)
    _cpu.segment_argmax(density, reg, float(weight), labels, int(K), out)
    return out


def kmeanspp_init(
    x: np.ndarray, K: int, seed: int, threads: Optional[int], progress: bool = False
) -> np.ndarray:
    th = resolve_threads(threads)
    # the engine's running minimum (float64) and taken flag per row, and the K picks
    check_memory(9.0 * x.shape[0] + 8.0 * K, f"k-means++ seeding of {K} centers", th)
    out = np.empty(K, np.int64)
    _progress.run(
        _cpu.kmeanspp_init,
        x,
        int(K),
        int(seed),
        out,
        th,
        desc="k-means++",
        unit="center",
        progress=progress,
    )
    return out
