"""Argument checks and array conversion shared by every public function.

Every check runs before any work and raises a ValueError/TypeError that names the
argument, the value received and what is allowed.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Optional, Tuple

import numpy as np

from . import _memory

#: Largest squared row norm the engine accepts: 2**124 (~2.1e37), so that every norm sum,
#: inner product and distance stays finite in float32 (|x| up to ~4.6e18).
MAX_SQUARED_NORM = 2.0**124
#: Smallest LARGEST squared row norm accepted (unless it is 0: every row zero, i.e. all
#: duplicates). Why 2**-60 (~8.7e-19, |x| ~ 9.3e-10): exact_l2 (usl_fast/l2.hpp) sums
#: exact float64 squares and rounds the sum once to float32, so a squared distance keeps
#: its ~2-ulp accuracy only while it is at least float32's smallest normal, 2**-126;
#: below that it loses bits, and below 2**-150 it is 0 and neighbours tie by index. For
#: data whose largest squared row norm is M, the largest coordinate c has c**2 >= M / d,
#: and two float32 values near c that differ at all differ by at least one ulp, > c 2**-24;
#: so rows that differ at the data's own resolution are at squared distance > M 2**-48 / d,
#: a normal float32 whenever M >= d 2**-78, i.e. for any d up to 2**18 coordinates when
#: M >= 2**-60. Under it (the issue's x * 1e-30 has M ~ 2**-195), whole neighbourhoods
#: collapse to 0 and the results silently follow row order. Multiplying by a power of two
#: is exact in float32 and scales every squared distance by the same factor, so the fix
#: the message suggests keeps every neighbour order.
MIN_SQUARED_NORM = 2.0**-60
#: Rows are indexed with int32 inside the engine.
MAX_ROWS = 2**31 - 1
#: Largest ``threads``: 1024, or four times the CPU count where that is larger. More is
#: always a mistake (a typo, a bit pattern): OpenMP maps a stack per thread (8 MiB by
#: default, 40 GB of address space for 5,000) and libgomp aborts the process when it
#: cannot create one, instead of raising.
MAX_THREADS = max(1024, 4 * (os.cpu_count() or 1))
#: Largest ``seed``: 2**64 - 1, what the generators behind it take (``numpy.random.
#: default_rng``: any non-negative integer; the engine's k-means++: a uint64; torch's
#: ``Generator.manual_seed``: up to 2**64 - 1). Beyond it pybind11 would refuse the engine's
#: argument with "incompatible function arguments".
MAX_SEED = 2**64 - 1
#: Largest seed of the random baseline (random_select, RandomSelect, select(method=
#: "random")): the authors' legacy ``numpy.random.RandomState`` takes 32-bit seeds.
MAX_LEGACY_SEED = 2**32 - 1


def as_features(
    x: Any, name: str = "features", row_offset: int = 0, check_scale: bool = True
) -> Tuple[np.ndarray, Any]:
    """Return (float32 2-D numpy array with contiguous, evenly spaced rows; a converter of
    results back to the caller's library): ``as_features_top`` less the largest squared
    norm, with the 2**-60 check unless ``check_scale=False``."""
    arr, to_caller, top = as_features_top(x, name, row_offset)
    if check_scale and 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message(name, top))
    return arr, to_caller


def as_features_top(
    x: Any, name: str = "features", row_offset: int = 0
) -> Tuple[np.ndarray, Any, float]:
    """Return (float32 2-D numpy array with contiguous, evenly spaced rows; a converter of
    results back to the caller's library; its largest squared row norm, float64).

    No copy is made when the input already is aligned float32 with contiguous rows
    (C-ordered, a row-strided view, read-only or memory-mapped); anything else (another
    dtype, a column-major or unaligned array) is converted once, after checking that the
    copy fits in memory. Errors: not 2-D or empty, non-numeric, NaN/inf, more than
    2**31 - 1 rows, a row whose squared norm exceeds 2**124 (float32 distances would
    overflow), each naming the row, or float64 values that all vanish in float32. A
    largest squared row norm in (0, 2**-60) (squared distances would underflow:
    ``MIN_SQUARED_NORM``) is left to the caller: ``as_features`` checks one set,
    ``check_pair_scale`` two whose cross distances are computed.

    ``row_offset``: the index of ``x``'s first row in the caller's numbering (a shard of a
    file), added to the row an error names. (``as_features``' ``check_scale=False`` skips
    the 2**-60 check, for a caller that L2-normalises the rows before computing any
    distance.)
    """
    to_caller = _identity
    if _is_torch(x):
        import torch

        if x.device.type != "cpu":
            raise ValueError(
                f"`{name}` is a torch tensor on {x.device}: select, knn, density, kmeans and "
                "regularized_select run such a tensor on its device (the portable torch back "
                "end); this function needs it on the CPU, move it with .cpu()"
            )
        if x.requires_grad:
            x = x.detach()
        if x.dtype == torch.bool or x.dtype.is_complex:
            raise TypeError(
                f"`{name}` must be a real numeric array (float16/32/64 or integer), got torch "
                f"dtype {x.dtype}"
            )
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        try:
            # Integer tensors become numpy integers, converted below like numpy input.
            arr = x.numpy()
        except TypeError as exc:  # a dtype numpy lacks (e.g. torch.uint32 on older numpy)
            raise TypeError(
                f"`{name}` has torch dtype {x.dtype}, which has no numpy equivalent: convert "
                "it with .float() first"
            ) from exc
        to_caller = _to_torch
    elif hasattr(x, "__cuda_array_interface__"):
        raise ValueError(
            f"`{name}` lives on a GPU (__cuda_array_interface__): pass a torch tensor or a CuPy "
            "array (select / knn / density / kmeans / regularized_select run those on the "
            "device), or move it to the host"
        )
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # e.g. ragged lists
            raise TypeError(f"`{name}` could not be converted to an array: {exc}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(
            f"`{name}` must be a real numeric array (float16/32/64 or integer), got dtype {arr.dtype}"
        )
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n_points, dim), got shape {arr.shape}")
    n, d = arr.shape
    if n == 0 or d == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {arr.shape}")
    if n > MAX_ROWS:
        raise ValueError(f"`{name}` has {n} rows; at most {MAX_ROWS} (2**31 - 1) are supported")
    src = arr
    if not _engine_layout(arr):
        # np.array, not np.ascontiguousarray: the latter returns a C-contiguous float32
        # array as it is even when it is unaligned (np.memmap(..., offset=3)).
        _memory.check(
            _memory.Estimate(4.0 * n * d),
            f"a float32 copy of `{name}` ({n} x {d}, {arr.dtype}"
            f"{', unaligned' if not arr.flags.aligned else ''})",
        )
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    top = _check_rows(arr, name, row_offset)
    if top == 0.0 and src is not arr and np.any(src):
        # Every value underflowed to 0 in the float32 conversion (float64 below ~1.4e-45):
        # not the all-duplicates input an all-zero array is.
        amax = float(np.max(np.abs(src)))
        raise ValueError(
            f"`{name}` is too small in magnitude: its largest absolute value {amax:.3g} "
            "becomes 0 in float32, so every row would be identical; rescale the features, "
            f"e.g. multiply them by 2.0**{int(np.ceil(-np.log2(amax)))} (a power of two keeps "
            "every neighbour order) or L2-normalise them"
        )
    return arr, to_caller, top


def check_pair_scale(a: Tuple[str, float], b: Tuple[str, float]) -> None:
    """The 2**-60 rule for distances between two sets (features and queries, or centroids),
    each given as (name, largest squared row norm): |a - b|^2 underflows float32 only when
    BOTH sides are tiny (between normal features and queries of size 1e-10 every distance
    is about |x|^2), so the rule applies to the larger of the two largest squared norms."""
    top = max(a[1], b[1])
    if 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message(a[0], top, b[0]))


def tiny_scale_message(name: str, top: float, other: Optional[str] = None) -> str:
    """The error for features whose largest squared row norm ``top`` is in (0, 2**-60);
    with ``other``, for two sets (``check_pair_scale``) whose larger such norm is."""
    # A power of two that brings the largest squared norm to about 1 (exact in float32).
    e = int(np.ceil(-np.log2(top) / 2.0))
    if other is None:
        what, norm, them = f"`{name}` is", "its largest squared row norm is", "them"
    else:
        what = f"`{name}` and `{other}` are"
        norm, them = "the larger of their largest squared row norms is", "both"
    return (
        f"{what} too small in magnitude: {norm} {top:.3g}, "
        f"below {MIN_SQUARED_NORM:.3g} = 2**-60, where float32 squared distances underflow "
        "(they come out 0 or subnormal and neighbours tie by index); rescale the features, "
        f"e.g. multiply {them} by 2.0**{e} (a power of two scales every squared distance by "
        "the same factor and keeps every neighbour order exactly) or L2-normalise them"
    )


def _engine_layout(arr: np.ndarray) -> bool:
    """Aligned float32 (native byte order) with contiguous rows at a constant,
    non-overlapping, positive stride below 2**31 elements: what the engine reads in place."""
    if arr.dtype != np.dtype(np.float32) or not arr.flags.aligned:
        return False
    n, d = arr.shape
    s0, s1 = arr.strides
    if d > 1 and s1 != 4:
        return False
    # BLAS takes 32-bit leading dimensions: a wider row stride is copied.
    return n == 1 or (s0 > 0 and s0 % 4 == 0 and d <= s0 // 4 <= 2**31 - 1)


def _check_rows(
    arr: np.ndarray, name: str, row_offset: int = 0, chunk_elems: int = 1 << 21
) -> float:
    """One pass in row blocks (a large memory-mapped input never needs a full-size
    temporary): the first row holding NaN/inf, or a squared norm beyond MAX_SQUARED_NORM,
    is an error naming it (as ``row_offset`` + its index). Returns the largest squared
    row norm (float64, from the float32 values)."""
    rows = max(1, chunk_elems // max(1, arr.shape[1]))
    top = 0.0
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        ok = sq <= MAX_SQUARED_NORM  # False for NaN too
        if ok.all():
            top = max(top, float(sq.max()))
            continue
        bad = start + int(np.flatnonzero(~ok)[0])
        row = arr[bad]
        where = f"row {row_offset + bad}"
        if row_offset:
            where += f" (local row {bad})"
        if not np.isfinite(row).all():
            col = int(np.flatnonzero(~np.isfinite(row))[0])
            raise ValueError(
                f"`{name}` contains NaN or inf (first at {where}, column {col}; "
                "after conversion to float32, values beyond +-3.4e38 become inf)"
            )
        raise ValueError(
            f"`{name}` {where} has squared norm {float(sq[bad - start]):.3g}, above the "
            f"largest the float32 engine accepts ({MAX_SQUARED_NORM:.3g} = 2**124, i.e. |x| up "
            "to ~4.6e18); rescale the features (e.g. L2-normalise them)"
        )
    return top


def as_int(value: Any, name: str, low: int, high: int | None = None, high_msg: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__})")
    v = int(value)
    if v < low:
        raise ValueError(f"`{name}` must be >= {low} (got {name}={v})")
    if high is not None and v > high:
        raise ValueError(f"`{name}` must be <= {high}{high_msg} (got {name}={v})")
    return v


def as_float(value: Any, name: str, low: float | None = None, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    v = float(value)
    if np.isnan(v) or (np.isinf(v) and not allow_inf):
        raise ValueError(f"`{name}` must be finite (got {name}={v})")
    if low is not None and v < low:
        raise ValueError(f"`{name}` must be >= {low} (got {name}={v})")
    return v


def as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False (got {name}={value!r})")
    return bool(value)


def as_interval(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """A real number in [low, high] (either end excluded where asked; NaN never passes)."""
    v = as_float(value, name, allow_inf=True)
    lo_ok = v > low if open_low else v >= low
    hi_ok = v < high if open_high else v <= high
    if not (lo_ok and hi_ok):
        lo = f"({low:g}" if open_low else f"[{low:g}"
        hi = f"{high:g})" if open_high else f"{high:g}]"
        raise ValueError(f"`{name}` must be in {lo}, {hi} (got {name}={v:g})")
    return v


def as_labels(
    labels: Any, n: int, n_clusters: int | None, name: str = "labels"
) -> Tuple[np.ndarray, int]:
    if _is_torch(labels):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match the features, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{name}` must hold integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 and n_clusters is None:
        raise ValueError(f"`{name}` must lie in [0, n_clusters), so >= 0 (got a value {lo})")
    if n_clusters is None:
        n_clusters = hi + 1
    if lo < 0 or hi >= n_clusters:
        raise ValueError(
            f"`{name}` must lie in [0, n_clusters) = [0, {n_clusters}) (got values in [{lo}, {hi}])"
        )
    if n_clusters > np.iinfo(np.int32).max:
        raise ValueError(f"`n_clusters` too large (got {n_clusters})")
    return np.ascontiguousarray(arr, dtype=np.int32), n_clusters


def as_vector(values: Any, n: int, name: str, dtype=np.float32) -> np.ndarray:
    if _is_torch(values):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"`{name}` must have shape ({n},) to match the features, got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"`{name}` must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        raise ValueError(
            f"`{name}` contains NaN or inf (first at index {int(np.argmin(np.isfinite(arr)))})"
        )
    return arr


def threads_arg(threads: Any) -> int:
    """``threads`` checked: None (0 returned: the OpenMP setting applies) or an integer in
    [1, MAX_THREADS]."""
    if threads is None:
        return 0
    return as_int(
        threads,
        "threads",
        1,
        MAX_THREADS,
        f" = max(1024, 4 x {os.cpu_count()} CPUs): more threads cannot help, and OpenMP maps "
        "a stack for each",
    )


def as_seed(seed: Any, name: str = "seed", legacy: bool = False) -> int:
    """A seed: an integer in [0, 2**64 - 1] (``MAX_SEED``), or with ``legacy=True``, for
    numpy's RandomState, in [0, 2**32 - 1] (``MAX_LEGACY_SEED``)."""
    if legacy:
        return as_int(
            seed,
            name,
            0,
            MAX_LEGACY_SEED,
            " = 2**32 - 1, the range of numpy.random.RandomState behind the random baseline",
        )
    return as_int(seed, name, 0, MAX_SEED, " = 2**64 - 1")


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _to_torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


#: usl_fast's own directory: frames whose file lies under it are not the caller's.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the function calling this one
    point at the first frame outside usl_fast: the user's line, whichever public entry
    point (select, an estimator's fit, distributed.select, ...) and however many internal
    calls led there. A fixed number would be right for one path only. (Python 3.12's
    ``skip_file_prefixes`` does this, but usl_fast supports 3.9.)"""
    import sys

    frame = sys._getframe(2)  # the caller of the function that will warn: stacklevel 2
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


# Round arguments: every selection starts with these checks.


def _not_indices(labeled: Any) -> None:
    """Raise for a ``labeled`` that is no sequence of indices: say what it is and what to
    pass."""
    import reprlib

    if isinstance(labeled, (set, frozenset)):
        got, fix = f"a set {reprlib.repr(labeled)}", "sorted(labeled)"
    elif isinstance(labeled, dict):
        got, fix = "a dict", "list(labeled) for its keys"
    elif isinstance(labeled, np.ndarray) and labeled.dtype.kind in "iu":
        got, fix = f"the 0-d array {labeled!r}", f"[{labeled.item()!r}]"
    elif isinstance(labeled, (numbers.Integral, np.integer)) and not isinstance(labeled, bool):
        got, fix = f"the single index {int(labeled)}", f"[{int(labeled)}]"
    else:
        got = f"a {type(labeled).__name__} ({reprlib.repr(labeled)})"
        iterator = hasattr(labeled, "__next__")  # a generator, map, iter(...)
        fix = "list(labeled)" if iterator else "the indices in a list, e.g. [3, 17]"
    raise TypeError(
        f"`labeled` must be a list or 1-D array of integer indices (got {got}); pass {fix}"
    )


def as_labeled(labeled: Any, n: int) -> np.ndarray:
    """The already-labeled indices as int64 (caller's order kept); [] when None."""
    if labeled is None:
        return np.zeros(0, np.int64)
    if _is_torch(labeled):
        labeled = labeled.detach().cpu().numpy()
    if isinstance(labeled, (set, frozenset, dict)) or not hasattr(labeled, "__len__"):
        # np.asarray makes a set, a dict, a generator or a lone number a 0-d array, whose
        # "shape ()" would not tell the user what to pass instead.
        _not_indices(labeled)
    arr = np.asarray(labeled)
    if arr.ndim == 0:
        _not_indices(labeled)
    if arr.ndim != 1:
        raise ValueError(f"`labeled` must be a 1-D array of indices (got shape {arr.shape})")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`labeled` must hold integer indices (got dtype {arr.dtype})")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        raise ValueError(
            f"`labeled` indices must lie in [0, n) = [0, {n}) (got values in [{lo}, {hi}])"
        )
    arr = arr.astype(np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        raise ValueError(f"`labeled` repeats index {int(uniq[np.argmax(counts > 1)])}")
    return arr


def prepare_round(
    X: Any, m: Any, labeled: Any, name: str, normalize: bool = False
) -> Tuple[np.ndarray, Any, np.ndarray, int]:
    """The checks every selection starts with: (float32 features, converter back to the
    caller's library, labeled indices, m), m at most the number of unlabeled points.
    ``normalize``: the rows will be L2-normalised before any distance (so their scale is
    not checked)."""
    x, back = as_features(X, name, check_scale=not normalize)
    lab, m = round_budget(x.shape[0], m, labeled)
    return x, back, lab, m


def round_budget(n: int, m: Any, labeled: Any) -> Tuple[np.ndarray, int]:
    """(labeled indices, m) for a selection over n points (every rank's, for a process
    group): m at most the number of unlabeled points."""
    lab = as_labeled(labeled, n)
    free = n - lab.size
    if free < 1:
        raise ValueError(f"`labeled` covers all n={n} points: nothing left to select")
    m = as_int(
        m,
        "m",
        1,
        free,
        f" = number of points n={n}"
        if not lab.size
        else f" = number of unlabeled points (n={n} minus {lab.size} labeled)",
    )
    return lab, m


def unit_rows(x: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """A float32 copy of x with every row scaled to unit L2 norm (norms in float64; a zero
    row stays zero)."""
    out = np.empty(x.shape, np.float32)
    for s in range(0, x.shape[0], chunk_rows):
        b = x[s : s + chunk_rows].astype(np.float64)
        nrm = np.sqrt(np.einsum("ij,ij->i", b, b))
        nrm[nrm == 0] = 1.0
        out[s : s + chunk_rows] = b / nrm[:, None]
    return out
