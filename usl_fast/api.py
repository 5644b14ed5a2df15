"""The functional API: ``select(features, m, method=...)`` is the estimator of ``method``
fitted once (``METHODS[method](**params).fit(features, m, labeled=labeled)``), its fitted
attributes returned as picks or a ``SelectResult``; ``random_select`` is the authors'
random list."""

from __future__ import annotations

import inspect
from typing import Any, Dict

import numpy as np

from ._methods import METHODS
from ._pipeline import SelectResult
from ._presets import METHOD_CLASSES, METHOD_NAMES, USL_PARAMS, document
from ._validate import as_bool, as_int, as_seed

#: select()'s USL parameters (method="usl"); other methods take theirs in **method_params.
_USL_NAMES = tuple(p.name for p in USL_PARAMS)


def _estimator_class(method: str) -> type:
    if method == "uslt":
        from .uslt import USLT

        return USLT
    return METHODS[method]


def _estimator(method, m, labeled, normalize, seed, threads, progress, params) -> Any:
    """The estimator of ``method`` built from select()'s arguments (refusing parameters
    it does not take, with the messages select() has always given)."""
    if method not in METHOD_NAMES:
        raise ValueError(f"`method` must be one of {list(METHOD_NAMES)} (got {method!r})")
    if method == "usl":
        other = sorted(k for k in params if k not in _USL_NAMES)
        if other:
            raise TypeError(f"select() got unexpected keyword arguments for method='usl': {other}")
        kw = dict(params, seed=seed, threads=threads, progress=progress)
        if normalize is not None:
            kw["normalize"] = normalize
        return METHODS["usl"](**kw)
    import operator

    cls = _estimator_class(method)
    names = [q for q in inspect.signature(cls.__init__).parameters if q != "self"]
    kw = {}
    # select()'s signature names the USL parameters; a method with a parameter of the same
    # name (TypiClust's k, ProbCover's alpha, USL-T's n_clusters) takes it, the rest are refused.
    # ``params`` holds only the keywords the caller gave (select() collects them in
    # **method_params), so a given USL parameter is refused whatever its value:
    # defaults="cifar10" (the default, the same str object) used to pass for kcenter.
    usl_default = {p.name: p.default for p in USL_PARAMS}
    for name, val in params.items():
        if name not in usl_default:
            continue
        if name not in names:
            raise TypeError(
                f"`{name}` is a USL parameter; method={method!r} does not take it "
                f"(its parameters: see usl_fast.{METHOD_CLASSES[method]})"
            )
        if val is usl_default[name]:
            continue  # USL's default, not the method's: leave the method's own
        kw[name] = val
    kw.update((k, v) for k, v in params.items() if k not in usl_default)
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
        return cls(**kw)
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
    return cls(**kw)


@document(usl_params=_USL_NAMES)
def select(
    features: Any,
    m: int,
    *,
    method: str = "usl",
    labeled: Any = None,
    normalize: Any = None,
    seed: int = 0,
    threads: Any = None,
    progress: bool = False,
    return_info: bool = False,
    **method_params: Any,
) -> Any:
    """Choose ``m`` points to label: Unsupervised Selective Labeling (USL) by default, or
    another cold-start method.

    Parameters
    ----------
    features : (n, d) numpy array or torch tensor (float16/32/64); a tensor on a GPU (or a
        CuPy array) runs on its device through the portable back end (USL; the same picks)
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
    {usl_params}
    normalize, seed, threads, progress :
        As declared in ``usl_fast._presets.COMMON_PARAMS``: L2-normalise a copy of the
        features first (default: the method's own; False for USL, whose presets expect
        features that already are); the seed that makes everything reproducible; OpenMP
        threads (default all; results do not depend on it); tqdm bars per phase.
    return_info : bool
        Return a ``SelectResult`` (labels, densities, scores, timings) instead.

    Returns
    -------
    (m,) int64 indices in pick order (numpy, or torch if a torch tensor came in), or a
    SelectResult.

    Memory of USL beyond the features: about n (16 k + 148) bytes at the peak (the kNN
    pass's candidate buffers; no (n, k) lists), plus about 2 n d where a 16-bit filter
    converts the rows once per pass (AVX-512 bf16 or int16, AVX2 int16), checked against
    available memory first. No n x n matrix is ever formed; the only n x m one is the
    distance memo of the selection rounds (4 n m bytes, kept only for a power-sum over
    three rounds or more when it takes at most 1 GiB and a quarter of the free memory).
    """
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a string (got {method!r})")
    # Before any work, like normalize and progress: "yes" or 1 would otherwise pass as a
    # truthy value and a typo ("no") would silently return a SelectResult.
    as_bool(return_info, "return_info")
    est = _estimator(method, m, labeled, normalize, seed, threads, progress, method_params)
    # (USL's messages have always named select()'s argument `features`)
    est.fit(features, m, labeled=labeled, **({"_name": "features"} if method == "usl" else {}))
    if not return_info:
        return est.indices_
    return _result(est, method)


def _signature() -> inspect.Signature:
    """select()'s signature with USL's declared parameters spelled out (help(), IDEs)."""
    sig = inspect.signature(select)
    ps = list(sig.parameters.values())
    at = [p.name for p in ps].index("normalize")
    usl = [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default)
        for p in USL_PARAMS
    ]
    return sig.replace(parameters=ps[:at] + usl + ps[at:])


select.__signature__ = _signature()  # type: ignore[attr-defined]


def _result(est: Any, method: str) -> SelectResult:
    timings = dict(est.timings_)
    if method == "usl":
        timings.pop("validate", None)  # select() reports the pipeline's phases
    params = est.params_ if method == "usl" else _params_of(est)
    if method == "probcover":
        # the radius used (the constructor's delta is None when it was chosen for the
        # user: the authors' 0.6, or the purity rule from n_classes)
        params["delta"] = est.delta_
    return SelectResult(
        indices=est.indices_,
        labels=est.labels_,
        density=getattr(est, "density_", None),
        n_filled=int(getattr(est, "n_filled_", 0) or 0),
        timings=timings,
        params=params,
        method=method,
        scores=getattr(est, "scores_", getattr(est, "confidence_", None)),
        labeled=getattr(est, "labeled_", None),
        coverage=getattr(est, "coverage_", None),
    )


def _params_of(est: Any) -> Dict[str, Any]:
    """An estimator's constructor parameters (USLT predates get_params)."""
    names = [p for p in inspect.signature(type(est).__init__).parameters if p != "self"]
    return {name: getattr(est, name) for name in names if hasattr(est, name)}


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
