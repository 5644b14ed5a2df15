"""The USL pipeline: kNN density -> k-means -> regularized per-cluster arg-max
(docs/parity.md), with the published configurations as named presets."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from . import _dispatch, _ops, _progress
from ._backend import _cpu
from ._presets import (
    PARAMS,
    PRESET,
    PRESET_NAMES,
    PRESETS,  # noqa: F401  (re-exported until every reader imports _presets)
    Preset,  # noqa: F401
    check_reg_params,
    default_n_clusters,
    resolve,
    usl_defaults,
)
from ._validate import (
    as_bool,
    as_features,
    as_int,
    as_labels,
    as_seed,
    as_vector,
    threads_arg,
)

_UNSET: Any = PRESET


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


def _blend(reg: np.ndarray, new: np.ndarray, mu: float) -> np.ndarray:
    """mu * reg + (1 - mu) * new, where a zero factor drops its term: the regularizer is
    +inf at an unmasked zero distance, and 0 * inf would be NaN. (momentum 0 forgets the old
    term, momentum 1 never lets a new one in - as the formula means.)"""
    if mu == 0.0:
        return new.copy()
    if mu == 1.0:
        return reg
    return mu * reg + (1.0 - mu) * new


class _Rows:
    """Where USL's steps run over the rows: here, every row in this process.
    ``usl_fast.distributed`` subclasses it for rows split across processes (each holding a
    consecutive range), replacing each step by its collective version; ``_usl`` and
    ``_pick_rounds`` are written against these methods only, so both run the same code.

    Arrays of per-row values (density, labels, scores) are this process's rows; indices
    (picks, labeled) are global."""

    def __init__(self, x: Any, threads: Optional[int], progress: bool):
        self.x = x  # the rows (numpy here; a device tensor in portable.TorchRows)
        self.n = x.shape[0]  # rows over all processes
        self.offset = 0  # global index of x[0]
        self.threads = threads
        self.progress = progress
        self.warn = True

    def density(self, k: int) -> np.ndarray:
        return _dispatch.knn_density(self.x, k, self.threads, self.progress)

    def initial_centroids(self, K: int, init: str, seed: int) -> np.ndarray:
        return _ops.initial_rows(self.x, K, init, seed, self.threads, self.progress)

    def kmeans_labels(self, cent: np.ndarray, n_iter: int) -> np.ndarray:
        return _ops.lloyd(self.x, cent, n_iter, threads=self.threads, progress=self.progress)[0]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), d) float32 copies of the rows at global indices ``idx``."""
        return np.ascontiguousarray(self.x[idx])

    def values_at(self, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``values`` (per local row) at global indices ``idx``."""
        return values[idx]

    def norm_sample(self) -> np.ndarray:
        """Rows whose median squared norm decides the unit-norm warning: every n // 4096-th
        row of all n (through ``rows``, so every back end takes the same sample)."""
        return self.rows(np.arange(0, self.n, max(1, self.n // 4096)))

    def regularizer(self, lab, pts, tag, p, desc) -> np.ndarray:
        hd = np.inf if p["horizon_dist"] is None else p["horizon_dist"]
        # (with at most h picks the engine sums over all of them: docs/parity.md)
        hn = 0 if p["horizon_num"] is None else p["horizon_num"]
        return _dispatch.regularizer(
            self.x, pts, lab, tag, p["alpha"], hd, hn, p["mask_zero"], self.threads, desc=desc
        )

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


def _pick_rounds(rows: _Rows, dens, lab, K, m, p, fixed=None) -> tuple:
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
                new = rows.regularizer(lab, rows.rows(every), tag, p, f"regularizer round {t + 1}")
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


def regularized_select(
    features: Any,
    density: Any,
    labels: Any,
    m: int,
    *,
    n_clusters: Optional[int] = None,
    defaults: str = "cifar10",
    rounds: Any = _UNSET,
    weight: Any = _UNSET,
    momentum: Any = _UNSET,
    alpha: Any = _UNSET,
    horizon_dist: Any = _UNSET,
    horizon_num: Any = _UNSET,
    own_cluster: Any = _UNSET,
    mask_zero: Any = _UNSET,
    threads: Optional[int] = None,
    progress: bool = False,
) -> Any:
    """The published regularized per-cluster arg-max (docs/parity.md) on given densities
    and cluster labels. Parameters default to the ``defaults`` preset.

    Each round picks, for clusters 0..K-1 in order (empty ones skipped, stopping at m
    picks), the member with the largest ``density - weight * reg`` (first on ties); between
    rounds ``reg = momentum * reg + (1 - momentum) * regularizer(picks)``. Returns (m,)
    int64 indices in pick order. If fewer than m clusters are non-empty, the remaining
    picks are the best-scoring points not picked yet.
    """
    from . import portable

    rows = None
    if portable.wants(features):  # a tensor on a GPU: the distances computed there
        t, to_caller = portable._as_tensor(features)
        t = portable.as_device_features(t)
        n = t.shape[0]
        rows = portable.TorchRows(t, threads, progress)

        def back(a):
            import torch

            return to_caller(torch.from_numpy(a).to(t.device))

        density = portable.to_host(density)
        labels = portable.to_host(labels)
    else:
        x, back = as_features(features, "features")
        n = x.shape[0]
    m = as_int(m, "m", 1, n, f" = number of points n={n}")
    dens = as_vector(density, n, "density")
    K = None if n_clusters is None else as_int(n_clusters, "n_clusters", 1)
    lab, K = as_labels(labels, n, K)
    reg = dict(
        rounds=rounds,
        weight=weight,
        momentum=momentum,
        alpha=alpha,
        horizon_dist=horizon_dist,
        horizon_num=horizon_num,
        own_cluster=own_cluster,
        mask_zero=mask_zero,
    )
    p = check_reg_params(resolve(defaults, reg))
    threads_arg(threads)
    if rows is None:
        rows = _Rows(x, threads, progress)
    picks, _, _ = _pick_rounds(rows, dens, lab, K, m, p)
    return back(picks)


def _unit_norm_warning(rows: "_Rows", p: Dict[str, Any], given: Dict[str, Any]) -> None:
    """Warn when the features are far from unit norm and the preset's regularizer (tuned
    for L2-normalised features) would silently do nothing."""
    if p["weight"] <= 0 or "horizon_dist" in given or "horizon_num" in given:
        return
    sample = rows.norm_sample()  # every rank of a process group takes part
    if not rows.warn:
        return
    rows = sample.astype(np.float64)
    med = float(np.median(np.einsum("ij,ij->i", rows, rows)))
    if 0.25 <= med <= 4.0:
        return
    import warnings

    from ._validate import caller_stacklevel

    # One line (the CLIs print it as a note): what is wrong, its effect, what to do.
    effect = "does nothing" if med > 4.0 else "outweighs the density"
    warnings.warn(
        f"usl_fast.select: the features' median row norm is {np.sqrt(med):.3g}, far from 1, "
        f"so the preset's regularizer {effect}; pass normalize=True (CLI: --normalize) or "
        "set horizon_dist and weight",
        UserWarning,
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


def _check_usl_memory(x: np.ndarray, k: int, K: int, threads: Optional[int]) -> None:
    """The whole pipeline's peak against the memory limits, before the density pass: every
    phase checks its own allocations too, but k-means' float64 sums (K x d) failing after
    a long density pass would waste it. Beyond the features: the density pass (its output,
    norms and candidate buffers, ``_dispatch.knn_density``), or afterwards the densities
    kept (4 bytes a row) plus the larger of k-means (labels, distances, norms, the moved
    search's temporaries: 48 bytes a row; sums, centroids and their previous copy: 16 K d)
    and the selection rounds (labels, the regularizer, its blend, the scores: 44 bytes a
    row)."""
    n, d = x.shape
    th = _dispatch.resolve_threads(threads)
    shared, per_thread = _dispatch.topk_buffers(n, k, True, _cpu.DEFAULT_MAX_RESERVOIR_BYTES)
    density_pass = 4.0 * n + shared + _dispatch._norm_bytes(n)
    later = 4.0 * n + max(48.0 * n + 16.0 * K * d, 44.0 * n)
    _dispatch.check_memory(
        max(density_pass, later),
        f"USL on {n} points (k={k}, {K} clusters: the peak of its phases)",
        th,
        per_thread,
    )


def _usl(
    x: Any,
    m: int,
    fixed: np.ndarray,
    *,
    seed: int,
    threads: Optional[int],
    progress: bool,
    **usl: Any,
) -> SelectResult:
    """USL on validated float32 features ``x`` (numpy results; or a ``_Rows`` that says
    where the rows are); ``fixed``: labeled (global) indices; ``usl``: the USL parameters
    of ``_usl_params`` (defaults, k, n_clusters, kmeans_iter, kmeans_init, the regularizer's)."""
    rows = x if isinstance(x, _Rows) else _Rows(x, threads, progress)
    p, K, given = _usl_params(rows.n, m, fixed, seed=seed, **usl)
    threads_arg(threads)
    if type(rows) is _Rows:  # this process holds every row (the others check per step)
        _check_usl_memory(rows.x, p["k"], K, threads)
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


def select(
    features: Any,
    m: int,
    *,
    method: str = "usl",
    labeled: Any = None,
    defaults: str = "cifar10",
    k: Any = _UNSET,
    n_clusters: Optional[int] = None,
    kmeans_iter: Any = _UNSET,
    kmeans_init: Any = "random",
    rounds: Any = _UNSET,
    weight: Any = _UNSET,
    momentum: Any = _UNSET,
    alpha: Any = _UNSET,
    horizon_dist: Any = _UNSET,
    horizon_num: Any = _UNSET,
    own_cluster: Any = _UNSET,
    mask_zero: Any = _UNSET,
    normalize: Optional[bool] = None,
    seed: int = 0,
    threads: Optional[int] = None,
    progress: bool = False,
    return_info: bool = False,
    **method_params: Any,
) -> Any:
    """Choose ``m`` points to label: Unsupervised Selective Labeling (USL) by default, or
    another cold-start method.

    Parameters
    ----------
    features : (n, d) numpy array or torch tensor (float16/32/64); a tensor on a GPU (or a
        CuPy array) runs on its device through ``usl_fast.portable`` (USL; the same picks)
        One row per unlabeled instance, usually L2-normalised self-supervised features.
        Read in place when float32 with contiguous rows; NaN/inf is an error.
    m : int
        Labeling budget: new picks, 1 <= m <= n - len(labeled).
    method : {"usl", "typiclust", "probcover", "kcenter", "random", "uslt"}
        The selection method; the functional form of the estimators ``USL``,
        ``TypiClust``, ``ProbCover``, ``KCenterGreedy``, ``RandomSelect`` and
        ``usl_fast.uslt.USLT`` (needs torch). Parameters of another method go in
        ``**method_params`` (e.g. ``method="probcover", delta=0.5``); the USL parameters
        below apply to method="usl" only.
    labeled : 1-D integer indices labeled in earlier rounds (a later round). The m picks
        are new: never one of these, never repeated. USL covers the labeled points'
        clusters first and counts them as picks in the regularizer (docs/methods.md).
    defaults : {"cifar10", "cifar100", "imagenet" (= "imagenet-moco"), "imagenet-clip"}
        Which published configuration supplies every USL parameter not given.
    k : kNN size for the density (self included), 1 <= k < n.
    n_clusters : k-means K (default: m, or the published K for m=2,500 / 12,820; plus
        len(labeled) in a later round), >= m.
    kmeans_iter, kmeans_init, seed : Lloyd iterations (fixed count), init ("random" as the
        reference, or "k-means++"), and the seed that makes everything reproducible.
    rounds, weight, momentum, alpha, horizon_dist, horizon_num, own_cluster, mask_zero :
        the regularizer (see ``regularized_select``). own_cluster="cluster" fixes the
        reference's position-vs-label quirk.
    normalize : L2-normalise a copy of the features first (default: the method's own
        default; False for USL, whose presets expect features that already are).
    threads : OpenMP threads (default all); results do not depend on it.
    progress : tqdm bars per phase.
    return_info : return a ``SelectResult`` (labels, densities, scores, timings) instead.

    Returns
    -------
    (m,) int64 indices in pick order (numpy, or torch if a torch tensor came in), or a
    SelectResult.

    Memory of USL beyond the features: about n (16 k + 148) bytes at the peak (the kNN
    pass's candidate buffers; no (n, k) lists), checked against available memory first;
    no n x n or n x m matrix is ever formed.
    """
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a string (got {method!r})")
    usl = dict(
        defaults=defaults,
        k=k,
        n_clusters=n_clusters,
        kmeans_iter=kmeans_iter,
        kmeans_init=kmeans_init,
        rounds=rounds,
        weight=weight,
        momentum=momentum,
        alpha=alpha,
        horizon_dist=horizon_dist,
        horizon_num=horizon_num,
        own_cluster=own_cluster,
        mask_zero=mask_zero,
    )
    if method != "usl":
        return _select_other(
            features,
            m,
            method,
            labeled,
            usl,
            normalize,
            seed,
            threads,
            progress,
            return_info,
            method_params,
        )
    if method_params:
        raise TypeError(
            f"select() got unexpected keyword arguments for method='usl': {sorted(method_params)}"
        )
    from . import portable

    if portable.wants(features):  # a tensor on a GPU: the portable torch path there
        return portable.select_usl(
            features, m, labeled, normalize, seed, threads, progress, return_info, usl
        )
    from ._methods import prepare_round, unit_rows

    norm = normalize is not None and as_bool(normalize, "normalize")
    x, back, fixed, m = prepare_round(features, m, labeled, "features", normalize=norm)
    if norm:
        x = unit_rows(x)
    res = _usl(x, m, fixed, seed=seed, threads=threads, progress=progress, **usl)
    if not return_info:
        return back(res.indices)
    for f in ("indices", "labels", "density", "scores", "labeled"):
        setattr(res, f, back(getattr(res, f)))
    return res


def _select_other(
    features, m, method, labeled, usl_args, normalize, seed, threads, progress, return_info, params
):
    import inspect
    import operator

    from ._methods import METHODS, method_names

    select_defaults = inspect.signature(select).parameters

    if method not in method_names():
        raise ValueError(f"`method` must be one of {list(method_names())} (got {method!r})")
    if method == "uslt":
        from .uslt import USLT

        cls = USLT
    else:
        cls = METHODS[method]
    names = [q for q in inspect.signature(cls.__init__).parameters if q != "self"]
    kw = dict(params)
    # select()'s signature names the USL parameters; a method with a parameter of the same
    # name (TypiClust's k, ProbCover's alpha, USL-T's n_clusters) takes it, the rest are refused.
    for name, val in usl_args.items():
        if val is select_defaults[name].default:
            continue
        if name not in names:
            raise TypeError(
                f"`{name}` is a USL parameter; method={method!r} does not take it "
                f"(its parameters: see usl_fast.{_class_name(method)})"
            )
        kw[name] = val
    kw.update(seed=seed)
    if method == "uslt":
        n_lab = 0 if labeled is None else len(labeled)
        try:
            n_clusters = operator.index(m) + n_lab
        except TypeError:
            n_clusters = m  # not an integer: USLT's own check names it
        kw.setdefault("n_clusters", n_clusters)
        kw.setdefault("m", m)
        if normalize is not None:
            kw["normalize"] = normalize
        kw.update(threads=threads, progress=progress)
        est = USLT(**kw).fit(features, labeled=labeled)
        density = None
    else:
        for key in list(kw):
            if key not in names:
                raise TypeError(
                    f"method={method!r} ({cls.__name__}) has no parameter {key!r}; "
                    f"its parameters are {list(names)}"
                )
        if "threads" in names:
            kw.update(threads=threads, progress=progress)
        if normalize is not None:
            if "normalize" not in names:
                raise TypeError(f"method={method!r} has no `normalize` parameter")
            kw["normalize"] = normalize
        est = cls(**kw).fit(features, m, labeled)
        density = getattr(est, "density_", None)
    if not return_info:
        return est.indices_
    return SelectResult(
        indices=est.indices_,
        labels=est.labels_,
        density=density,
        n_filled=int(getattr(est, "n_filled_", 0) or 0),
        timings=dict(est.timings_),
        params=_params_of(est),
        method=method,
        scores=getattr(est, "scores_", getattr(est, "confidence_", None)),
        labeled=getattr(est, "labeled_", None),
    )


def _params_of(est: Any) -> Dict[str, Any]:
    """An estimator's constructor parameters (USLT predates get_params)."""
    import inspect

    names = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    return {name: getattr(est, name) for name in names if hasattr(est, name)}


def _class_name(method: str) -> str:
    return {
        "typiclust": "TypiClust",
        "probcover": "ProbCover",
        "kcenter": "KCenterGreedy",
        "random": "RandomSelect",
        "uslt": "uslt.USLT",
    }.get(method, "select")


def random_select(n: int, m: int, seed: int = 0) -> np.ndarray:
    """The authors' random baseline: the indices of ``np.random.seed(seed)`` then
    ``np.random.choice(n, m, replace=False)`` (reproduces their published random lists).

    Drawn from a private ``np.random.RandomState(seed)``, which is the same Mersenne
    Twister seeded the same way, so the picks are identical while NumPy's global generator
    is neither read nor changed: safe to call from several threads at once.

    Parameters
    ----------
    n : int
        Pool size (indices 0..n-1).
    m : int
        Number of indices to draw, 1 <= m <= n.
    seed : int
        Seed, 0 <= seed < 2**32 (the legacy generator's range).

    Returns
    -------
    numpy.ndarray
        (m,) int64 distinct indices.
    """
    n = as_int(n, "n", 1)
    m = as_int(m, "m", 1, n, f" = n={n}")
    seed = as_seed(seed, legacy=True)  # RandomState takes 32-bit seeds
    # A private generator, not a save/seed/restore of the global one: that sequence races
    # with any other thread that seeds or draws between the three steps.
    return np.random.RandomState(seed).choice(n, size=m, replace=False).astype(np.int64)
