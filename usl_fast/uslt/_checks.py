"""Argument checks for the torch side of USL-T: every public function validates what a
user controls before any work, with messages that name the argument, the value and what
is allowed (the package's convention, see usl_fast._validate)."""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Optional, Tuple

import numpy as np
import torch

from .._validate import as_bool, as_float, as_int, as_interval

__all__ = ["as_float", "as_int", "as_prob", "as_bool", "as_logits", "as_features_torch"]


def as_prob(value: Any, name: str, *, open_low: bool = False, open_high: bool = False) -> float:
    """A real number in [0, 1] (ends excluded where asked)."""
    return as_interval(value, name, 0.0, 1.0, open_low=open_low, open_high=open_high)


def as_positive(value: Any, name: str) -> float:
    v = as_float(value, name)
    if not v > 0.0:
        raise ValueError(f"`{name}` must be > 0 (got {name}={v})")
    return v


def as_logits(x: Any, name: str, ndim: Tuple[int, ...] = (2,)) -> torch.Tensor:
    """A floating-point torch tensor with one of the allowed numbers of dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be floating-point, got dtype {x.dtype}")
    if x.dim() not in ndim:
        want = " or ".join(f"{d}-D" for d in ndim)
        raise ValueError(f"`{name}` must be {want}, got shape {tuple(x.shape)}")
    if x.shape[-1] < 1 or x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    return x


def as_features_torch(x: Any, name: str = "features") -> Tuple[torch.Tensor, str]:
    """(float32 2-D torch tensor on the caller's device, 'numpy' | 'torch').

    numpy / array-likes / torch CPU go through usl_fast's own checks (dtype, shape, NaN)
    and are converted once; a torch CUDA tensor is checked here and stays on its device.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"`{name}` must hold floating-point values (got torch dtype {x.dtype})")
        if x.dim() != 2:
            raise ValueError(f"`{name}` must be 2-D (n_points, dim), got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
        t = x.detach().to(torch.float32).contiguous()
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite)[0].tolist()
            raise ValueError(
                f"`{name}` contains NaN or inf (first at row {bad[0]}, column {bad[1]})"
            )
        # The CPU path's scale check (usl_fast._validate.MIN_SQUARED_NORM): normalize=True
        # does not rescue such rows, torch's normalize divides by max(norm, 1e-12).
        from .._validate import MIN_SQUARED_NORM, tiny_scale_message

        top = float(torch.linalg.vector_norm(t, dim=1, dtype=torch.float64).max()) ** 2
        if 0.0 < top < MIN_SQUARED_NORM:
            raise ValueError(tiny_scale_message(name, top))
        return t, "torch"
    from .._validate import as_features

    arr, _ = as_features(x, name)
    if not arr.flags.writeable:
        # A read-only (e.g. memory-mapped) input is shared, not copied: USL-T only reads
        # it, so torch's warning about non-writable arrays does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(arr), "numpy"
    return torch.from_numpy(arr), "numpy"


def as_device(value: Optional[Any], name: str = "device") -> Optional[torch.device]:
    if value is None:
        return None
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"`{name}` must name a torch device such as 'cpu' or 'cuda:0' (got {value!r})"
        ) from exc
    # Checked here, not at the first tensor moved there: torch reports a CUDA device on a
    # CPU-only build with an AssertionError from deep inside its lazy initialisation.
    # is_available() / device_count() do not create a CUDA context.
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this PyTorch ({torch.__version__}) was built without CUDA"
                if torch.version.cuda is None
                else "no CUDA device is visible (CUDA_VISIBLE_DEVICES, drivers)"
            )
            raise ValueError(f"`{name}`={value!r} is not available: {why}; use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"`{name}`={value!r} is not available: {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(
                f"`{name}`={value!r} is not available on this machine; use device='cpu'"
            )
    return dev


def is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (numbers.Integral, np.integer))
