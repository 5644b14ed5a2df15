"""USL over features sharded across the ranks of a ``torch.distributed`` process group.

Each rank passes its own rows (a consecutive range; rank 0 holds the first rows, rank 1
the next, ...). Every rank gets the same global indices, and they are exactly those of
``usl_fast.select`` on the concatenated rows, for any number of ranks::

    import torch.distributed as dist, usl_fast.distributed as ud
    dist.init_process_group("gloo")            # e.g. under torchrun
    x = ud.load_shard("feats.npy")             # this rank's rows, memory-mapped
    idx = ud.select(x, 20000)                  # the same (m,) global indices on every rank

or from the command line, ``torchrun --nproc-per-node 8 -m usl_fast.distributed select
feats.npy -m 20000 -o picks.npy``. The compute is the local engine's (CPU); the ranks talk
only through torch.distributed collectives and point-to-point messages over gloo (in a job
whose default group is NCCL, over a gloo group of the same ranks opened for them). How each step keeps the
one-process bits, what it sends and what it costs: docs/distributed.md.

Failures: a rank whose arguments are invalid, or shards that disagree (columns, dtype) or
ranks called with different arguments, make every rank raise before any work. A rank that
exits makes the others raise ``DistributedError`` at their next message; a rank that stops
answering, after the process group's timeout (``init_process_group(timeout=...)``).
"""

from __future__ import annotations

import hashlib
import numbers
from typing import Any, Callable, Optional, Tuple

import numpy as np

from .._ops import KMeansResult
from .._pipeline import _pick_rounds, _usl, _usl_params
from .._presets import REG_NAMES, USL_PARAMS, check_reg_params, given, resolve, takes
from .._validate import (
    as_bool,
    as_features,
    as_int,
    as_labels,
    as_seed,
    as_vector,
    threads_arg,
)
from ..backends._comm import Comm, DistributedError
from ..backends.shard import ShardRows

#: The USL parameters select() takes (declared in usl_fast._presets).
USL_NAMES = tuple(p.name for p in USL_PARAMS)

__all__ = [
    "select",
    "knn_density",
    "kmeans",
    "regularized_select",
    "load_shard",
    "shard_range",
    "DistributedError",
]


def shard_range(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows [lo, hi) of rank ``rank`` when n rows are split as evenly as possible in rank
    order (the first n % world_size ranks get one row more)."""
    n = as_int(n, "n", 1)
    world_size = as_int(world_size, "world_size", 1)
    rank = as_int(rank, "rank", 0, world_size - 1, f" = world_size - 1 = {world_size - 1}")
    q, extra = divmod(n, world_size)
    lo = rank * q + min(rank, extra)
    return lo, lo + q + (1 if rank < extra else 0)


def load_shard(
    path: str, rank: Optional[int] = None, world_size: Optional[int] = None, group: Any = None
):
    """This rank's rows of a 2-D ``.npy`` file, memory-mapped: only this range is ever read.
    Rank and world size default to the process group's; then every rank also checks that
    all of them see a file of the same shape and dtype (a path that names different files
    on different machines is an error on every rank, not a silent mix)."""
    a = None
    err: Optional[str] = None
    try:
        a = np.load(path, mmap_mode="r")
        if a.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D array of features, got shape {a.shape}")
    except (OSError, ValueError) as exc:
        err = str(exc)
    if rank is None or world_size is None:
        comm = Comm(group)
        rank = comm.rank if rank is None else rank
        world_size = comm.size if world_size is None else world_size
        seen = comm.all_gather_object((None if a is None else (tuple(a.shape), str(a.dtype)), err))
        bad = [(i, e) for i, (_, e) in enumerate(seen) if e]
        if bad:
            raise ValueError("; ".join(f"rank {i}: {e}" for i, e in bad))
        if len({sh for sh, _ in seen}) > 1:
            raise ValueError(
                f"the ranks see different files at {path}: "
                + ", ".join(f"rank {i}: shape {sh[0]} {sh[1]}" for i, (sh, _) in enumerate(seen))
            )
    if err is not None:
        raise ValueError(err)
    if a.shape[0] < world_size:
        raise ValueError(
            f"{path}: {a.shape[0]} rows cannot give each of {world_size} ranks at least one row"
        )
    lo, hi = shard_range(a.shape[0], rank, world_size)
    return a[lo:hi]


def _canon(v: Any) -> Any:
    """A value as the fingerprint sees it: numbers as floats (7, 7.0 and np.int64(7) agree;
    the checks after the fingerprint tell an int from a float on every rank alike),
    integer arrays and tensors as int64 lists."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    if isinstance(v, (list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.dtype.kind in "iub":
            return ("ints", a.astype(np.int64).tobytes(), a.shape)
        if a.dtype.kind == "f":
            return ("floats", a.astype(np.float64).tobytes(), a.shape)
    return repr(v)


def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, dict):
            part = sorted((key, _canon(val)) for key, val in part.items())
        else:
            part = _canon(part)
        h.update(repr(part).encode())
    return h.hexdigest()[:16]


def _digest(x: np.ndarray) -> str:
    """A few rows' bytes: equal on every rank means every rank passed the same rows."""
    h = hashlib.sha256(repr(x.shape).encode())
    for i in sorted({0, x.shape[0] // 2, x.shape[0] - 1}):
        h.update(np.ascontiguousarray(x[i]).tobytes())
    return h.hexdigest()[:16]


def _begin(
    comm: Comm,
    features: Any,
    name: str,
    fingerprint: str,
    threads: Optional[int],
    check: Optional[Callable] = None,
    scale: bool = True,
):
    """Validate this rank's rows and threads, then agree with every rank before any work:
    each rank's outcome, column count, dtype and arguments are exchanged, and every rank
    raises the same error if one failed or they disagree. Returns (rows, converter, shard
    sizes, what ``check(rows)`` returned)."""
    comm.phase = "argument check"
    err: Optional[BaseException] = None
    info = None
    extra = None
    # Every rank's row count first, so that an error in a row names its global index (the
    # row of the file), not its index within this rank's shard.
    try:
        local_n = int(features.shape[0])
    except (AttributeError, TypeError, IndexError, ValueError):
        local_n = -1  # not an array: as_features names the problem
    counts = comm.all_gather_object(local_n)
    offset = sum(counts[: comm.rank]) if min(counts[: comm.rank], default=0) >= 0 else 0
    try:
        dtype = str(getattr(features, "dtype", type(features).__name__)).replace("torch.", "")
        # (select may L2-normalise the rows first: their scale is then checked after that)
        x, back = as_features(features, name, row_offset=offset, check_scale=scale)
        threads_arg(threads)
        if check is not None:
            extra = check(x)
        info = (int(x.shape[0]), int(x.shape[1]), dtype, fingerprint, _digest(x))
    except Exception as exc:  # shared with the other ranks below, then re-raised
        err = exc
    msg = None if err is None else f"{type(err).__name__}: {err}"
    everyone = comm.all_gather_object((info, msg))
    if err is not None:
        raise err
    failed = [(i, m) for i, (_, m) in enumerate(everyone) if m]
    if failed:
        raise DistributedError(
            "usl_fast.distributed: "
            + "; ".join(f"rank {i} rejected its arguments ({m})" for i, m in failed)
        )
    infos = [inf for inf, _ in everyone]
    for pos, what in ((1, "number of columns"), (2, "dtype")):
        vals = [inf[pos] for inf in infos]
        if len(set(vals)) > 1:
            raise ValueError(
                f"usl_fast.distributed: the shards disagree on the {what}: "
                + ", ".join(f"rank {i}: {v}" for i, v in enumerate(vals))
            )
    if len({inf[3] for inf in infos}) > 1:
        raise ValueError(
            "usl_fast.distributed: the ranks were called with different arguments (every rank "
            "must pass the same m, labeled and parameters; only the rows differ)"
        )
    if comm.size > 1 and len({inf[4] for inf in infos}) == 1 and comm.rank == 0:
        import warnings

        warnings.warn(
            f"usl_fast.distributed: all {comm.size} ranks passed the same rows, so the data "
            f"set is {comm.size} copies of them; pass each rank its own rows "
            "(usl_fast.distributed.load_shard)",
            UserWarning,
            stacklevel=3,
        )
    sizes = np.array([inf[0] for inf in infos], np.int64)
    return x, back, sizes, extra


def _agree(comm: Comm, fn: Callable) -> Any:
    """Run the checks that need every rank's row count on every rank, and raise on every
    rank if any rank's raised (the ones that raised re-raise their own error)."""
    err: Optional[BaseException] = None
    out = None
    try:
        out = fn()
    except Exception as exc:
        err = exc
    everyone = comm.all_gather_object(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(i, m) for i, m in enumerate(everyone) if m]
    if failed:
        raise DistributedError(
            "usl_fast.distributed: "
            + "; ".join(f"rank {i} rejected its arguments ({m})" for i, m in failed)
        )
    return out


@takes(USL_NAMES, before="normalize")
def select(
    local_rows: Any,
    m: int,
    *,
    group: Any = None,
    labeled: Any = None,
    normalize: Optional[bool] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: bool = False,
    return_info: bool = False,
    **usl: Any,
) -> Any:
    """``usl_fast.select`` (method USL) over the rows of every rank of the process group.

    Parameters
    ----------
    local_rows : (n_r, d) array or tensor
        This rank's rows (numpy, a memory-mapped slice, or a torch CPU tensor); the global
        rows are rank 0's, then rank 1's, ... Every rank needs at least one row; d and
        dtype must agree.
    m, labeled, and every USL parameter
        As ``usl_fast.select``, the same on every rank (``labeled`` holds global indices).
        kmeans_init must be "random" (the default).
    group : process group, optional
        The process group (default: the default group).
    progress : bool
        Bars on rank 0 only.

    Returns
    -------
    (m,) int64 or SelectResult
        The same global indices on every rank, exactly those of ``usl_fast.select`` on the
        concatenated rows; with ``return_info`` a SelectResult whose per-row arrays
        (labels, density, scores) hold this rank's rows.
    """
    params = given("select", USL_NAMES, usl)
    kmeans_init = params["kmeans_init"]
    comm = Comm(group)
    fp = _fingerprint("select", m, labeled, params, normalize, seed)
    x, back, sizes, _ = _begin(
        comm, local_rows, "local_rows", fp, threads, scale=normalize is not True
    )
    n = int(sizes.sum())
    from .._validate import round_budget, unit_rows

    def check():
        fixed, mm = round_budget(n, m, labeled)  # n: every rank's rows
        if not (isinstance(kmeans_init, str) and kmeans_init == "random"):
            raise ValueError(
                f"usl_fast.distributed.select: `kmeans_init` must be 'random' (got "
                f"{kmeans_init!r}); k-means++ seeding is sequential over all rows and is not "
                "offered across ranks"
            )
        _usl_params(n, mm, fixed, seed=seed, **params)
        norm = normalize is not None and as_bool(normalize, "normalize")
        as_bool(return_info, "return_info")
        return fixed, mm, norm

    fixed, m, norm = _agree(comm, check)
    if norm:
        x = unit_rows(x)
    rows = ShardRows(x, comm, sizes, threads, progress)
    res = _usl(rows, m, fixed, seed=seed, threads=threads, progress=progress, **params)
    res.params["ranks"] = comm.size
    res.params["rows"] = (rows.offset, rows.offset + x.shape[0])
    res.params["sent_bytes"] = dict(comm.sent_by_phase, total=comm.sent_bytes)
    if not return_info:
        return back(res.indices)
    for f in ("indices", "labels", "density", "scores", "labeled"):
        setattr(res, f, back(getattr(res, f)))
    return res


def knn_density(
    local_rows: Any,
    k: int = 400,
    *,
    group: Any = None,
    threads: Optional[int] = None,
    progress: bool = False,
) -> Any:
    """``usl_fast.density`` of this rank's rows against every rank's rows: (n_r,) float32,
    the same bits as the one-process density of the concatenated rows (1 <= k < n)."""
    comm = Comm(group)
    x, back, sizes, _ = _begin(
        comm, local_rows, "local_rows", _fingerprint("knn_density", k), threads
    )
    n = int(sizes.sum())
    k = _agree(
        comm,
        lambda: as_int(
            k, "k", 1, n - 1, f" and < number of points over all ranks n={n} (self included)"
        ),
    )
    return back(ShardRows(x, comm, sizes, threads, progress).density(k))


def kmeans(
    local_rows: Any,
    n_clusters: int,
    *,
    n_iter: int = 200,
    init: str = "random",
    seed: int = 0,
    group: Any = None,
    threads: Optional[int] = None,
    progress: bool = False,
) -> KMeansResult:
    """``usl_fast.kmeans`` over every rank's rows: labels of this rank's rows, and the
    centroids, counts and iterations run of the one-process run on the concatenated rows,
    bit for bit. ``inertia`` is the sum of the ranks' sums (equal up to rounding)."""
    comm = Comm(group)
    fp = _fingerprint("kmeans", n_clusters, n_iter, init, seed)
    x, back, sizes, _ = _begin(comm, local_rows, "local_rows", fp, threads)
    n = int(sizes.sum())

    def check():
        if not (isinstance(init, str) and init == "random"):
            raise ValueError(
                f"usl_fast.distributed.kmeans: `init` must be 'random' (got {init!r}): "
                "k-means++ seeding is sequential over all rows and initial centroids given "
                "as an array are not offered across ranks"
            )
        return (
            as_int(n_clusters, "n_clusters", 1, n, f" = number of points over all ranks n={n}"),
            as_int(n_iter, "n_iter", 1),
            as_seed(seed),
        )

    K, n_iter, seed = _agree(comm, check)
    rows = ShardRows(x, comm, sizes, threads, progress)
    cent = rows.initial_centroids(K, init, seed)
    labels, counts, inertia, n_run = rows.lloyd(cent, n_iter)
    return KMeansResult(
        back(labels.astype(np.int64)), back(cent), back(counts), back(inertia), int(n_run)
    )


@takes(REG_NAMES, before="threads")
def regularized_select(
    local_rows: Any,
    local_density: Any,
    local_labels: Any,
    m: int,
    *,
    n_clusters: Optional[int] = None,
    group: Any = None,
    defaults: str = "cifar10",
    threads: Optional[int] = None,
    progress: bool = False,
    **reg: Any,
) -> Any:
    """``usl_fast.regularized_select`` with this rank's rows, densities and cluster labels:
    the same (m,) global indices on every rank. ``n_clusters`` defaults to 1 + the largest
    label over all ranks."""
    reg = given("regularized_select", REG_NAMES, reg)
    comm = Comm(group)
    fp = _fingerprint("regularized_select", m, n_clusters, defaults, reg)

    def check(x):
        dens = as_vector(local_density, x.shape[0], "local_density")
        K = None if n_clusters is None else as_int(n_clusters, "n_clusters", 1)
        lab, K_local = as_labels(local_labels, x.shape[0], K)
        return dens, lab, K_local

    x, back, sizes, (dens, lab, K) = _begin(comm, local_rows, "local_rows", fp, threads, check)
    if n_clusters is None:
        K = int(comm.all_reduce(np.array([K], np.int64), "max")[0])
    n = int(sizes.sum())
    m, p = _agree(
        comm,
        lambda: (
            as_int(m, "m", 1, n, f" = number of points over all ranks n={n}"),
            check_reg_params(resolve(defaults, reg)),
        ),
    )
    picks, _, _ = _pick_rounds(ShardRows(x, comm, sizes, threads, progress), dens, lab, K, m, p)
    return back(picks)
