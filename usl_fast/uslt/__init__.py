"""USL-T (Wang, Lian & Yu, ECCV 2022, section 3.3): learn the clusters with a trainable
clustering head instead of k-means, then label the most confident member of each.

Two ways in:

* ``USLT(n_clusters=40).fit(features)`` trains the heads on frozen features (the
  practical default) and selects: ``indices_``, ``labels_``, ``confidence_``.
* ``ClusterHead``, ``global_loss``, ``local_loss``, ``EMAPrior`` and ``uslt_loss`` are the
  building blocks for the full method inside your own training loop (backbone + head);
  see ``docs/uslt.md`` for one training step on images.

Needs PyTorch (``pip install usl_fast[torch]``); ``import usl_fast`` itself does not.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "usl_fast.uslt (USL-T) needs PyTorch, which is not installed: "
        "pip install usl_fast[torch]  (or install torch yourself: https://pytorch.org). "
        "The rest of usl_fast (select, knn, kmeans, ...) works without it."
    ) from exc

from ._augment import FeatureAugment
from ._heads import ClusterHead
from ._losses import EMAPrior, global_loss, local_loss, uslt_loss
from ._select import SelectionResult, select_confident
from ._trainer import USLT, knn_neighbors

__all__ = [
    "USLT",
    "ClusterHead",
    "global_loss",
    "local_loss",
    "uslt_loss",
    "EMAPrior",
    "FeatureAugment",
    "knn_neighbors",
    "select_confident",
    "SelectionResult",
]
