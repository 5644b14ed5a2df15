"""usl_fast: Unsupervised Selective Labeling (USL, Wang, Lian & Yu, ECCV 2022) on a
compiled tiled-distance engine. ``usl_fast.select(features, m)`` returns the m indices
to send to annotators."""

from ._backend import _cpu  # noqa: F401  (loads the engine and its OpenBLAS at import)
from ._backend import build_info, runtime_info
from ._methods import (
    METHODS,
    USL,
    KCenterGreedy,
    ProbCover,
    RandomSelect,
    Selector,
    TypiClust,
    probcover_delta,
)
from ._ops import (
    KMeansResult,
    cluster_argmax,
    density,
    density_from_knn,
    kmeans,
    knn,
    range_count,
    regularizer,
)
from ._pipeline import SelectResult, regularized_select
from ._presets import PRESET, PRESETS, Preset, default_n_clusters
from .api import random_select, select
from .plot import plot_picks  # matplotlib is imported only when a figure is drawn

__version__ = "0.1.0"


def __getattr__(name: str):
    # usl_fast.uslt needs torch, so ``import usl_fast`` does not import it; reached as an
    # attribute (README's ``uslt.USLT``), it is imported here, and without torch the user
    # gets its "needs PyTorch" ImportError instead of "module has no attribute 'uslt'".
    if name == "uslt":
        # (not ``from . import uslt``: its fromlist step asks this module for the
        # attribute first, which would call __getattr__ again)
        import usl_fast.uslt

        return usl_fast.uslt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "select",
    "USL",
    "TypiClust",
    "ProbCover",
    "KCenterGreedy",
    "RandomSelect",
    "Selector",
    "METHODS",
    "probcover_delta",
    "plot_picks",
    "regularized_select",
    "random_select",
    "knn",
    "density",
    "density_from_knn",
    "kmeans",
    "KMeansResult",
    "regularizer",
    "cluster_argmax",
    "range_count",
    "SelectResult",
    "PRESETS",
    "Preset",
    "PRESET",
    "default_n_clusters",
    "build_info",
    "runtime_info",
]
