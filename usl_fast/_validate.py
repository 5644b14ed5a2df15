"""Argument checks and array conversion shared by every public function.

Every check runs before any work and raises a ValueError/TypeError that names the
argument, the value received and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any, Tuple

import numpy as np


def as_features(x: Any, name: str = "features") -> Tuple[np.ndarray, Any]:
    """Return (float32 C-contiguous 2-D numpy view or copy, converter back to caller's library).

    The converter turns a numpy result into the caller's array type (numpy stays numpy;
    a torch CPU tensor in gives torch tensors out).
    """
    to_caller = _identity
    if _is_torch(x):
        import torch

        if x.device.type != "cpu":
            raise ValueError(
                f"`{name}` is a torch tensor on {x.device}; this build has only the CPU back end, "
                "move it with .cpu() (the CUDA back end is not available yet)"
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
            f"`{name}` lives on a GPU (__cuda_array_interface__); this build has only the CPU back end"
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
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = _first_non_finite_row(arr)
    if bad is not None:
        col = int(np.flatnonzero(~np.isfinite(arr[bad]))[0])
        raise ValueError(
            f"`{name}` contains NaN or inf (first at row {bad}, column {col}; "
            "after conversion to float32, values beyond +-3.4e38 become inf)"
        )
    return arr, to_caller


def _first_non_finite_row(arr: np.ndarray, chunk_elems: int = 1 << 22) -> "int | None":
    """Index of the first row holding NaN/inf, or None. Checked in row blocks so that a
    large (memory-mapped) input never needs a full-size boolean mask."""
    rows = max(1, chunk_elems // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        if not np.isfinite(block).all():
            return start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
    return None


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
