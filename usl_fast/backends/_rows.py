"""The ``Rows`` protocol: the steps USL needs over the rows (density, k-means, the
regularizer, the per-cluster arg-max, the fill), written once in ``_pipeline._usl`` and
implemented by each back end (``engine``, ``portable``, ``shard``)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from .. import _dispatch


class KMeansResult(NamedTuple):
    """labels: (n,) int64, the last assignment; centroids: (K, d) float32 (an empty
    cluster keeps its last position); counts: (K,) int64 members per cluster (0 for an
    empty one); inertia: (n_iter,) float64 sum of squared distances per iteration;
    n_iter_run: iterations computed - once an assignment repeats the previous one, every
    later iteration would repeat it exactly, so the run stops there with the same result
    (and the same inertia for the remaining iterations)."""

    labels: Any
    centroids: Any
    counts: Any
    inertia: Any
    n_iter_run: int


class Rows:
    """Where USL's steps run over the rows. A back end implements the steps that touch the
    features (``density``, ``initial_centroids``, ``kmeans_labels``, ``rows``,
    ``regularizer``); the per-row bookkeeping below (arg-max, fill) runs on host arrays and
    is shared. ``_pipeline._usl`` and ``_pick_rounds`` are written against these methods
    only, so every back end runs the same algorithm.

    Arrays of per-row values (density, labels, scores) are this process's rows; indices
    (picks, labeled) are global."""

    def __init__(self, x: Any, threads: Optional[int], progress: bool):
        self.x = x  # the rows (numpy for the engine; a device tensor for portable)
        self.n = x.shape[0]  # rows over all processes
        self.offset = 0  # global index of x[0]
        self.threads = threads
        self.progress = progress
        self.warn = True

    # -- the steps a back end supplies ---------------------------------------------------
    def density(self, k: int) -> np.ndarray:
        """(rows,) float32 kNN density (self included)."""
        raise NotImplementedError

    def initial_centroids(self, K: int, init: str, seed: int) -> np.ndarray:
        """(K, d) float32 initial centroids of a validated ``init``."""
        raise NotImplementedError

    def kmeans_labels(self, cent: np.ndarray, n_iter: int) -> np.ndarray:
        """(rows,) cluster labels after ``n_iter`` Lloyd iterations (``cent`` updated)."""
        raise NotImplementedError

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), d) float32 copies of the rows at global indices ``idx``."""
        raise NotImplementedError

    def regularizer(self, lab, pts, tag, p, desc) -> np.ndarray:
        """(rows,) float64 regularizer of the picks ``pts`` (tagged ``tag``). A back end
        whose ``regularizer_memo`` gives a memo also takes ``memo=`` and ``keys=`` (the
        picks' global indices)."""
        raise NotImplementedError

    def regularizer_memo(self, m: int, calls: int, p: dict) -> Any:
        """A memo that lets ``calls`` regularizer rounds of ``m`` picks reuse distances
        between rounds, or None (the default: every round evaluates every pair)."""
        return None

    def check_memory(self, k: int, K: int) -> None:
        """Refuse a run whose peak would not fit, before any work (where it can be known)."""

    # -- shared host bookkeeping --------------------------------------------------------
    def values_at(self, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``values`` (per local row) at global indices ``idx``."""
        return values[idx]

    def norm_sample(self) -> np.ndarray:
        """Rows whose median squared norm decides the unit-norm warning: every n // 4096-th
        row of all n (through ``rows``, so every back end takes the same sample)."""
        return self.rows(np.arange(0, self.n, max(1, self.n // 4096)))

    def cluster_argmax(self, dens, reg, weight, lab, K) -> np.ndarray:
        """(K,) global index of each cluster's best ``dens - weight * reg``, first on ties."""
        return _dispatch.segment_argmax(dens, reg, weight, lab, K)

    def best_rest(self, score: np.ndarray, taken: np.ndarray, r: int) -> np.ndarray:
        """The ``r`` best-scoring rows not in ``taken`` (global), best first, ties to the
        lower index."""
        rest = np.ones(score.shape[0], dtype=bool)  # score: one per row of this process
        rest[taken] = False
        candidates = np.flatnonzero(rest)
        # Stable sort on -score: ties (including -inf scores) go to the lower index.
        return candidates[np.argsort(-score[candidates], kind="stable")][:r]
