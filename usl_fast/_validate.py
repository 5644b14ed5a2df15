"""Argument checks and array conversion shared by every public function.

Every check runs before any work and raises a ValueError/TypeError that names the
argument, the value received and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any, Tuple

import numpy as np

#: Largest squared row norm the engine accepts: 2**124 (~2.1e37), so that every norm sum,
#: inner product and distance stays finite in float32 (|x| up to ~4.6e18).
MAX_SQUARED_NORM = 2.0**124
#: Rows are indexed with int32 inside the engine.
MAX_ROWS = 2**31 - 1


def as_features(x: Any, name: str = "features") -> Tuple[np.ndarray, Any]:
    """Return (float32 2-D numpy array with contiguous, evenly spaced rows; a converter of
    results back to the caller's library).

    No copy is made when the input already is float32 with contiguous rows (C-ordered,
    a row-strided view, read-only or memory-mapped); anything else is converted once.
    Errors: not 2-D or empty, non-numeric, NaN/inf, more than 2**31 - 1 rows, or a row whose
    squared norm exceeds 2**124 (float32 distances would overflow), each naming the row.
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
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"`{name}` must hold floating-point values (got torch dtype {x.dtype})")
        if x.dtype == torch.bfloat16:
            x = x.float()
        arr = x.numpy()
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
    if not _engine_layout(arr):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    _check_rows(arr, name)
    return arr, to_caller


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


def _check_rows(arr: np.ndarray, name: str, chunk_elems: int = 1 << 21) -> None:
    """One pass in row blocks (a large memory-mapped input never needs a full-size
    temporary): the first row holding NaN/inf, or a squared norm beyond MAX_SQUARED_NORM."""
    rows = max(1, chunk_elems // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        ok = sq <= MAX_SQUARED_NORM  # False for NaN too
        if ok.all():
            continue
        bad = start + int(np.flatnonzero(~ok)[0])
        row = arr[bad]
        if not np.isfinite(row).all():
            col = int(np.flatnonzero(~np.isfinite(row))[0])
            raise ValueError(
                f"`{name}` contains NaN or inf (first at row {bad}, column {col}; "
                "after conversion to float32, values beyond +-3.4e38 become inf)"
            )
        raise ValueError(
            f"`{name}` row {bad} has squared norm {float(sq[bad - start]):.3g}, above the "
            f"largest the float32 engine accepts ({MAX_SQUARED_NORM:.3g} = 2**124, i.e. |x| up "
            "to ~4.6e18); rescale the features (e.g. L2-normalise them)"
        )


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
    if threads is None:
        return 0
    return as_int(threads, "threads", 1)


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _to_torch(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))
