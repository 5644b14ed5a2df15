"""The USL pipeline: kNN density -> k-means -> regularized per-cluster arg-max
(docs/parity.md), with the published configurations as named presets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from . import _progress, backends
from ._presets import (
    PARAMS,
    PRESET,
    PRESET_NAMES,
    PRESETS,  # noqa: F401  (re-exported until every reader imports _presets)
    REG_NAMES,
    Preset,  # noqa: F401
    check_reg_params,
    default_n_clusters,
    document,
    given,
    resolve,
    takes,
    usl_defaults,
)
from ._validate import (
    as_int,
    as_labels,
    as_vector,
    threads_arg,
)
from .backends import Rows


@dataclass
class SelectResult:
    """What ``select(..., return_info=True)`` returns.

    Attributes
    ----------
    indices : (m,) int64
        Picks in pick order (cluster order), in the caller's library.
    labels : (n,) int64 or None
        Cluster of every point (k-means, or the labels given); None for a method without
        clusters.
    density : (n,) float32 or None
        kNN density (USL; None for the other methods).
    n_filled : int
        Picks added after the per-cluster ones because fewer than m clusters were
        non-empty (0 in the normal case); they are the highest-scoring remaining points.
    timings : dict
        Seconds per phase.
    params : dict
        The resolved parameters.
    method : str
        The method that chose the picks.
    scores : (n,) float64 or None
        The method's per-point score (USL: density - weight * reg of the last round; the
        other methods: see their estimators).
    labeled : 1-D int64
        The indices given as already labeled (empty for a first round).
    coverage : float or None
        ProbCover: the fraction of points within ``delta`` of a pick or a labeled point
        (``params["delta"]`` is the radius used); None for the other methods.
    """

    indices: Any
    labels: Any
    density: Any
    n_filled: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    params: Dict[str, Any] = field(default_factory=dict)
    method: str = "usl"
    scores: Any = None
    labeled: Any = None
    coverage: Optional[float] = None


def _blend(reg: np.ndarray, new: np.ndarray, mu: float) -> np.ndarray:
    """mu * reg + (1 - mu) * new, where a zero factor drops its term: the regularizer is
    +inf at an unmasked zero distance, and 0 * inf would be NaN. (momentum 0 forgets the old
    term, momentum 1 never lets a new one in - as the formula means.)"""
    if mu == 0.0:
        return new.copy()
    if mu == 1.0:
        return reg
    return mu * reg + (1.0 - mu) * new


def _pick_rounds(rows: Rows, dens, lab, K, m, p, fixed=None) -> tuple:
    """The regularized rounds. ``fixed``: indices labeled earlier (a later round): their
    clusters give no pick, they are never picked, and they join every round's regularizer
    as picks already made (tagged with their own cluster). Returns (picks, n_filled, the
    last round's score, float64)."""
    reg = np.zeros(lab.shape[0], np.float64)
    rounds = p["rounds"]
    own = p["own_cluster"]
    if fixed is not None and fixed.size:
        # Points of covered clusters (and the labeled points) go to a dummy cluster K that
        # the per-cluster arg-max computes and we drop.
        fixed_lab = rows.values_at(lab, fixed)
        covered = np.zeros(K + 1, dtype=bool)
        covered[fixed_lab] = True
        cand = np.where(covered[lab], K, lab).astype(np.int32)
        K_cand = K + 1
        # "position" compares pick numbers with cluster ids, the reference's quirk; with
        # labeled points there is no reference behaviour to keep, so use real clusters.
        if own == "position":
            own = "cluster"
    else:
        fixed = np.zeros(0, np.int64)
        cand, K_cand = lab, K
    bar = None
    if rows.progress:
        bar = _progress.bar("regularized selection", rounds, "rounds")
    memo = None
    try:
        for t in range(rounds):
            # weight 0 means no regularizer at all (not 0 * inf = NaN where reg is inf).
            best = rows.cluster_argmax(
                dens, reg if p["weight"] > 0 else None, p["weight"], cand, K_cand
            )[:K]
            clusters = np.flatnonzero(best >= 0)[:m]
            picks = best[clusters]
            if t < rounds - 1:
                if own == "position":
                    tag = np.arange(picks.size, dtype=np.int32)
                elif own == "cluster":
                    tag = clusters.astype(np.int32)
                else:
                    tag = np.full(picks.size, -1, np.int32)
                if fixed.size:
                    every = np.concatenate([fixed, picks])
                    ftag = fixed_lab if own != "none" else np.full(fixed.size, -1, np.int32)
                    tag = np.concatenate([ftag.astype(np.int32), tag])
                else:
                    every = picks
                desc = f"regularizer round {t + 1}"
                if t == 0 and rounds >= 3:  # two regularizer rounds or more: a memo may pay
                    memo = rows.regularizer_memo(every.size, rounds - 1, p)
                if memo is None:
                    new = rows.regularizer(lab, rows.rows(every), tag, p, desc)
                else:
                    new = rows.regularizer(
                        lab, rows.rows(every), tag, p, desc, memo=memo, keys=every
                    )
                reg = _blend(reg, new, p["momentum"])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    score = dens.astype(np.float64)
    if p["weight"] > 0:
        score = score - p["weight"] * reg
    n_filled = 0
    if picks.size < m:
        # Fewer non-empty (uncovered) clusters than picks wanted: top up with the
        # best-scoring points not picked (nor labeled) yet, and report how many.
        extra = rows.best_rest(score, np.concatenate([picks, fixed]), m - picks.size)
        n_filled = int(extra.size)
        picks = np.concatenate([picks, extra])
    return picks.astype(np.int64), n_filled, score


@document(reg_params=REG_NAMES)
@takes(REG_NAMES, before="threads")
def regularized_select(
    features: Any,
    density: Any,
    labels: Any,
    m: int,
    *,
    n_clusters: Optional[int] = None,
    defaults: str = "cifar10",
    threads: Optional[int] = None,
    progress: bool = False,
    **reg: Any,
) -> Any:
    """The published regularized per-cluster arg-max (docs/parity.md) on given densities
    and cluster labels. Parameters default to the ``defaults`` preset.

    Each round picks, for clusters 0..K-1 in order (empty ones skipped, stopping at m
    picks), the member with the largest ``density - weight * reg`` (first on ties); between
    rounds ``reg = momentum * reg + (1 - momentum) * regularizer(picks)``. Returns (m,)
    int64 indices in pick order. If fewer than m clusters are non-empty, the remaining
    picks are the best-scoring points not picked yet.

    The regularizer's parameters, keyword-only; each left at ``PRESET`` takes the value
    of the ``defaults`` preset:

    {reg_params}
    """
    reg = given("regularized_select", REG_NAMES, reg)
    be = backends.resolve(features)
    x, back = be.features(features, "features")
    n = x.shape[0]
    density, labels = be.host(density), be.host(labels)
    m = as_int(m, "m", 1, n, f" = number of points n={n}")
    dens = as_vector(density, n, "density")
    K = None if n_clusters is None else as_int(n_clusters, "n_clusters", 1)
    lab, K = as_labels(labels, n, K)
    p = check_reg_params(resolve(defaults, reg))
    threads_arg(threads)
    picks, _, _ = _pick_rounds(be.rows(x, threads, progress), dens, lab, K, m, p)
    return back(picks)


def _unit_norm_warning(rows: Rows, p: Dict[str, Any], given: Dict[str, Any]) -> None:
    """Warn when the features are far from unit norm and the preset's regularizer (tuned
    for L2-normalised features) would silently do nothing."""
    if p["weight"] <= 0 or "horizon_dist" in given or "horizon_num" in given:
        return
    sample = rows.norm_sample()  # every rank of a process group takes part
    rows_n = rows.n
    if not rows.warn:
        return
    rows = sample.astype(np.float64)
    sq = np.einsum("ij,ij->i", rows, rows)
    med = float(np.median(sq))
    if 0.25 <= med <= 4.0:
        return
    import warnings

    from ._validate import caller_stacklevel

    # One line (the CLIs print it as a note): what is wrong, its effect, what to do.
    effect = "does nothing" if med > 4.0 else "outweighs the density"
    zero = sq == 0
    live = sq[~zero]
    if zero.any() and (live.size == 0 or 0.25 <= float(np.median(live)) <= 4.0):
        # All-zero rows pull the median down, and normalize=True cannot help them (a zero
        # row has no direction; it stays zero): say so instead of advising normalize=True.
        n_zero = int(zero.sum())
        which = (
            f"{n_zero} of {sq.size} rows"
            if sq.size == rows_n
            else f"{n_zero} of {sq.size} sampled rows"
        )
        warnings.warn(
            f"usl_fast.select: the features' median row norm is {np.sqrt(med):.3g}, far from 1, "
            f"as {which} are all zero (normalize=True leaves them zero): the regularizer "
            f"{effect}; fix or drop them",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
        return
    warnings.warn(
        f"usl_fast.select: the features' median row norm is {np.sqrt(med):.3g}, far from 1, "
        f"so the preset's regularizer {effect}; pass normalize=True (CLI: --normalize) or "
        "set horizon_dist and weight",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def _fill_warning(m: int, n_filled: int, K: int, n_labeled: int, init: str) -> None:
    """Say that some picks came from the fill rule (docs/parity.md, item 6), not one per
    cluster: the picks are kept as they are (the published code would stop with an
    assertion error), but the user should know that part of the budget went by score alone,
    usually to copies of rows already picked."""
    import warnings

    from ._validate import caller_stacklevel

    where = "non-empty" if not n_labeled else "non-empty and hold no labeled point"
    cure = "pass kmeans_init='k-means++' or remove the duplicates"
    if init == "k-means++":
        cure = "remove the duplicates"
    if n_labeled:
        cure += ", or pass a larger n_clusters"
    # RuntimeWarning, as USL-T's and TypiClust's fill warnings: the outcome of the run, not
    # a misuse of an argument.
    warnings.warn(
        f"USL: only {m - n_filled} of the {K} k-means clusters are {where}, fewer than "
        f"m={m}, so the last {n_filled} of {m} picks were filled with the best-scoring "
        "points left (n_filled), not one per cluster; exact-duplicate or all-zero rows are "
        f"the usual cause (coinciding initial centroids leave clusters empty): {cure}",
        RuntimeWarning,
        stacklevel=caller_stacklevel(),
    )


def _usl_params(n: int, m: int, fixed: np.ndarray, *, seed: int, **usl: Any) -> tuple:
    """USL's parameters (``usl``: names of ``_presets.USL_PARAMS``, the rest at their
    declared defaults) for n points, resolved from the preset and checked against their
    declarations: (params, K, the ones given). Raises before any work."""
    usl = {**usl_defaults(), **usl}
    defaults, n_clusters, kmeans_init = usl["defaults"], usl["n_clusters"], usl["kmeans_init"]
    overrides = {name: usl[name] for name in PRESET_NAMES}
    given = {key: v for key, v in overrides.items() if v is not PRESET}
    p = resolve(defaults, overrides)
    if n < 2:
        raise ValueError(
            f"USL needs at least 2 points (got n={n}): the kNN density needs k >= 1 neighbours"
        )
    if "k" not in given and isinstance(p["k"], int) and p["k"] > n - 1:
        raise ValueError(
            f"`k`={p['k']} comes from the defaults={defaults!r} preset and must be < number of "
            f"points n={n} (self included): override it, e.g. k={min(20, n - 1)} "
            f"(command line: -k {min(20, n - 1)})"
        )
    p["k"] = PARAMS["k"].check(p["k"], 1, n - 1, f" and < number of points n={n} (self included)")
    p["kmeans_iter"] = PARAMS["kmeans_iter"].check(p["kmeans_iter"])
    if n_clusters is None:
        # The published K can exceed a small data set (m = 2,500 -> K = 2,501): clamp it.
        # A later round adds one cluster per labeled point (their clusters are covered).
        K = min(default_n_clusters(defaults, m) + fixed.size, n)
    else:
        K = PARAMS["n_clusters"].check(n_clusters, m, n, f" = number of points n={n}")
    p["n_clusters"] = K
    p["seed"] = PARAMS["seed"].check(seed)
    p["kmeans_init"] = PARAMS["kmeans_init"].check(kmeans_init)
    p = check_reg_params(p)
    return p, K, given


def _usl(
    rows: Rows,
    m: int,
    fixed: np.ndarray,
    *,
    seed: int,
    threads: Optional[int],
    progress: bool,
    **usl: Any,
) -> SelectResult:
    """USL on the ``Rows`` of any back end (numpy results); ``fixed``: labeled (global)
    indices; ``usl``: the USL parameters of ``_usl_params`` (defaults, k, n_clusters,
    kmeans_iter, kmeans_init, the regularizer's)."""
    p, K, given = _usl_params(rows.n, m, fixed, seed=seed, **usl)
    threads_arg(threads)
    rows.check_memory(p["k"], K)
    _unit_norm_warning(rows, p, given)

    # x and every parameter are validated above: straight to the engine from here (the
    # public density() / kmeans() would validate x again, a full pass over the features).
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    dens = rows.density(p["k"])
    timings["density"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cent = rows.initial_centroids(K, p["kmeans_init"], p["seed"])
    lab = rows.kmeans_labels(cent, p["kmeans_iter"])
    timings["kmeans"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    picks, n_filled, score = _pick_rounds(rows, dens, lab, K, m, p, fixed)
    timings["selection"] = time.perf_counter() - t0
    if n_filled and rows.warn:
        _fill_warning(m, n_filled, K, fixed.size, p["kmeans_init"])
    return SelectResult(
        indices=picks,
        labels=lab.astype(np.int64),
        density=dens,
        n_filled=n_filled,
        timings=timings,
        params=p,
        method="usl",
        scores=score,
        labeled=fixed,
    )
