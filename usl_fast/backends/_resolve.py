"""The one place a back end is chosen for an input, and the one reader of
``USL_FAST_BACKEND`` (docs/development.md): a registry of named back ends, as faiss and
torchvision pick an implementation per device, with the CUDA kernels handed to the portable
back end from here rather than looked up inside its loops."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from .._validate import _is_torch

#: The environment variable that routes CPU tensors through the portable back end
#: ("portable") or turns on the CUDA kernels for CUDA tensors ("cuda").
ENV = "USL_FAST_BACKEND"
#: its documented values (docs/development.md); unset or empty: the default choice
VALUES = ("portable", "cuda")
_warned: set = set()


def _env() -> str:
    """The variable's value; a value it does not know is ignored with a warning, once per
    value and process (a misspelt "portable" would otherwise run the engine in silence)."""
    value = os.environ.get(ENV, "")
    if value and value not in VALUES and value not in _warned:
        _warned.add(value)
        import warnings

        from .._validate import caller_stacklevel

        warnings.warn(
            f"{ENV}={value!r} is not one of {', '.join(VALUES)} (or unset); it is ignored: "
            "CPU inputs run on the C++ engine, device tensors on the portable torch path "
            "(docs/development.md)",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return value


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


@dataclass(frozen=True)
class Backend:
    """A chosen back end: its name ("engine" or "portable") and, for "portable" on a CUDA
    device with ``USL_FAST_BACKEND=cuda``, the CUDA kernels module it should use."""

    name: str
    kernels: Any = None

    @property
    def module(self) -> Any:
        """The back end's module: ``features``, ``to_host``, ``normalized``, ``check_usl``,
        ``make_rows``."""
        if self.name == "engine":
            from . import engine

            return engine
        from . import portable

        return portable

    def features(self, X: Any, name: str, check_scale: bool = True):
        """(validated rows in this back end's form, converter of numpy results back)."""
        return self.module.features(X, name, check_scale)

    def host(self, a: Any) -> Any:
        """A per-row array given beside the rows (densities, labels) where numpy reads it."""
        return self.module.to_host(a)

    def normalized(self, x: Any) -> Any:
        return self.module.normalized(x)

    def check_usl(self, usl: dict) -> None:
        self.module.check_usl(usl)

    def rows(self, x: Any, threads: Optional[int], progress: bool):
        """The ``Rows`` of validated rows ``x`` (as ``features`` returns them)."""
        return self.module.make_rows(x, threads, progress, self.kernels)


ENGINE = Backend("engine")


def _cuda_kernels(device_type: str) -> Any:
    if _env() != "cuda" or device_type != "cuda":
        return None
    try:
        from .. import _cuda
    except ImportError as exc:
        raise RuntimeError(
            "USL_FAST_BACKEND=cuda, but this build of usl_fast has no CUDA kernels (it was "
            "built without a CUDA compiler); unset it to use the portable torch path"
        ) from exc
    return _cuda


def resolve(x: Any) -> Backend:
    """The back end for the input ``x``: "portable" for a torch tensor on a device the C++
    engine cannot read (CUDA, ROCm, ...), a CuPy array, or any torch tensor with
    USL_FAST_BACKEND=portable (the oracle runs of the tests); else "engine"."""
    if _is_cupy(x):  # always on a CUDA device
        return Backend("portable", _cuda_kernels("cuda"))
    if not _is_torch(x):
        _env()  # (a numpy array always runs on the engine; still say the value is unknown)
        return ENGINE
    if x.device.type != "cpu" or _env() == "portable":
        return Backend("portable", _cuda_kernels(x.device.type))
    return ENGINE
