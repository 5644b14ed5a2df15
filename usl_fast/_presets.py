"""USL's parameters, each declared once (name, type, allowed range or choices, default,
one doc line), and the published configurations as frozen presets. ``select``, ``USL``,
``usl_fast.distributed`` and the CLI read these declarations for their checks, docs and
options, as scikit-learn estimators read their ``_parameter_constraints``."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from ._validate import MAX_ROWS, as_bool, as_float, as_int, as_interval, as_seed, threads_arg


class _FromPreset:
    """Default of every parameter that a preset supplies: shows as ``PRESET`` in help()."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PRESET"

    def __reduce__(self):
        return (_FromPreset, ())


#: Marks "take this parameter from the ``defaults`` preset" (``repr``: ``PRESET``).
PRESET: Any = _FromPreset()


@dataclass(frozen=True)
class Preset(Mapping):
    """One published configuration of the paper's implementation (read-only). Also a
    read-only mapping, so ``PRESETS["cifar10"]["k"]`` and ``dict(PRESETS["cifar10"])`` work."""

    k: int
    kmeans_iter: int
    rounds: int
    weight: float
    momentum: float
    horizon_dist: Optional[float]
    horizon_num: Optional[int]
    alpha: float
    own_cluster: str
    mask_zero: bool

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


_CIFAR10 = Preset(
    k=400,
    kmeans_iter=200,
    rounds=10,
    weight=0.5,
    momentum=0.9,
    horizon_dist=4.0,
    horizon_num=None,
    alpha=0.5,
    own_cluster="position",
    mask_zero=False,
)
_MOCO = Preset(
    k=20,
    kmeans_iter=100,
    rounds=2,
    weight=1.5,
    momentum=0.0,
    horizon_dist=None,
    horizon_num=128,
    alpha=0.5,
    own_cluster="none",
    mask_zero=True,
)

#: The published configurations as frozen ``Preset`` records, in the order help and the
#: CLI show them. "imagenet" is the MoCo one.
PRESETS: Mapping[str, Preset] = {
    "cifar10": _CIFAR10,
    "cifar100": dataclasses.replace(_CIFAR10, weight=1.0, horizon_dist=1.0, alpha=1.0),
    "imagenet": _MOCO,
    "imagenet-moco": _MOCO,
    "imagenet-clip": dataclasses.replace(
        _MOCO, weight=0.05, horizon_num=32, alpha=1.0, own_cluster="position", mask_zero=False
    ),
}

#: Every ``method=`` name of ``usl_fast.select`` (usl first, the default): the estimators
#: of ``usl_fast.METHODS`` plus "uslt" (``usl_fast.uslt.USLT``, needs torch).
METHOD_NAMES: Tuple[str, ...] = ("usl", "typiclust", "probcover", "kcenter", "random", "uslt")

#: method name -> where its estimator lives, for messages.
METHOD_CLASSES: Mapping[str, str] = {
    "usl": "USL",
    "typiclust": "TypiClust",
    "probcover": "ProbCover",
    "kcenter": "KCenterGreedy",
    "random": "RandomSelect",
    "uslt": "uslt.USLT",
}


def default_n_clusters(defaults: str, m: int) -> int:
    """K as the published scripts choose it: m, except two budgets that add clusters to
    absorb empty ones (CIFAR m=2,500 -> 2,501; ImageNet 1% m=12,820 -> 12,900)."""
    if defaults.startswith("cifar") and m == 2500:
        return 2501
    if defaults.startswith("imagenet") and m == 12820:
        return 12900
    return m


def _or(choices: Sequence[str]) -> str:
    quoted = [repr(c) for c in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


@dataclass(frozen=True)
class Param:
    """The declaration of one parameter.

    name : the keyword (``select``, ``USL``) and, with ``-`` for ``_``, the CLI option.
    type : int, float, str or bool: what a value must be (a CLI parses it as this type).
    default : the value when not given; ``PRESET``: the ``defaults`` preset's.
    doc : one line for docstrings and the CLI's help.
    low, high : the allowed range (inclusive; None: unbounded). A bound that depends on the
        data (k < n, m <= n_clusters <= n) is passed to ``check`` by the caller.
    open_low : ``low`` itself is excluded (a radius or a purity that must be > 0).
    choices : the allowed strings (type str).
    none : None is allowed (it means "off" or "decided later", see doc).
    inf : +inf is allowed (type float).
    strict : False for a bool taken by truth value (a preset flag such as ``mask_zero``).
    phrase : how a message names the choices, when not "'a', 'b' or 'c'".
    legacy : a seed for numpy's RandomState (32 bits) rather than any 64-bit seed.
    """

    name: str
    type: type
    default: Any
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    high_msg: str = ""
    choices: Optional[Tuple[str, ...]] = None
    none: bool = False
    inf: bool = False
    strict: bool = True
    phrase: str = ""
    open_low: bool = False
    legacy: bool = False

    @property
    def option(self) -> str:
        """The CLI option: ``-k`` for k, else ``--`` and the name with dashes."""
        return "-k" if self.name == "k" else "--" + self.name.replace("_", "-")

    @property
    def from_preset(self) -> bool:
        return self.default is PRESET

    def check(self, value: Any, low: Any = None, high: Any = None, high_msg: str = "") -> Any:
        """``value`` checked against the declaration and returned in its type; ``low`` /
        ``high`` (with the text that explains ``high``) replace the declared bounds."""
        if value is None and self.none:
            return None
        lo = self.low if low is None else low
        hi = self.high if high is None else high
        msg = self.high_msg if high is None else high_msg
        if self.name == "seed":
            return as_seed(value, legacy=self.legacy)
        if self.name == "threads":
            threads_arg(value)
            return value
        if self.choices is not None:
            if not (isinstance(value, str) and value in self.choices):
                if len(self.choices) > 3:
                    raise ValueError(
                        f"`{self.name}` must be one of {sorted(self.choices)} (got {value!r})"
                    )
                said = self.phrase or _or(self.choices)
                raise ValueError(f"`{self.name}` must be {said} (got {value!r})")
            return value
        if self.type is bool:
            return as_bool(value, self.name) if self.strict else bool(value)
        if self.type is int:
            return as_int(value, self.name, lo, hi, msg)
        if self.open_low:
            if hi is not None:
                return as_interval(value, self.name, lo, hi, open_low=True)
            v = as_float(value, self.name, allow_inf=self.inf)
            if not v > lo:
                raise ValueError(f"`{self.name}` must be > {lo:g} (got {self.name}={v})")
            return v
        v = as_float(value, self.name, lo, allow_inf=self.inf)
        if hi is not None and v > hi:
            raise ValueError(f"`{self.name}` must be in [{lo:g}, {hi:g}] (got {self.name}={v})")
        return v


#: USL's parameters, in ``select``'s order. ``defaults`` names the preset that supplies
#: every one whose default is ``PRESET``.
USL_PARAMS: Tuple[Param, ...] = (
    Param(
        "defaults",
        str,
        "cifar10",
        "published configuration supplying every parameter not given",
        choices=tuple(PRESETS),
    ),
    Param("k", int, PRESET, "kNN size of the density, self included (1 <= k < n)", low=1),
    Param(
        "n_clusters",
        int,
        None,
        "k-means K >= m (default: m, or the published K for m=2500 / 12820; plus "
        "len(labeled) in a later round)",
        none=True,
    ),
    Param("kmeans_iter", int, PRESET, "Lloyd iterations (fixed count)", low=1),
    Param(
        "kmeans_init",
        str,
        "random",
        "k-means init: random (as the reference) or k-means++",
        choices=("random", "k-means++"),
    ),
    Param("rounds", int, PRESET, "selection rounds T", low=1),
    Param("weight", float, PRESET, "regularizer weight w", low=0.0),
    Param("momentum", float, PRESET, "regularizer momentum in [0, 1]", low=0.0, high=1.0),
    Param("alpha", float, PRESET, "regularizer exponent", low=0.0),
    Param(
        "horizon_dist",
        float,
        PRESET,
        "mask squared distances >= this (CIFAR flavour; giving it drops the preset's horizon_num)",
        low=0.0,
        none=True,
        inf=True,
    ),
    Param(
        "horizon_num",
        int,
        PRESET,
        "use only this many nearest picks (ImageNet flavour; giving it drops the preset's "
        "horizon_dist)",
        low=1,
        # (the engine takes a 32-bit count; more than the picks means all of them)
        high=MAX_ROWS,
        high_msg=" = 2**31 - 1",
        none=True,
    ),
    Param(
        "own_cluster",
        str,
        PRESET,
        "which pick is masked as a point's own cluster: position (reference), cluster "
        "(corrected), none",
        choices=("position", "cluster", "none"),
    ),
    Param(
        "mask_zero",
        bool,
        PRESET,
        "mask exact zero distances in the regularizer (ImageNet MoCo flavour)",
        strict=False,
    ),
)

#: The parameters every method's functional form takes besides its own.
COMMON_PARAMS: Tuple[Param, ...] = (
    Param(
        "normalize",
        bool,
        None,
        "L2-normalise a copy of the features first (default: the method's own; False for "
        "USL, whose presets expect features that already are)",
        none=True,
    ),
    Param("seed", int, 0, "seed that makes everything reproducible", low=0),
    Param(
        "threads", int, None, "OpenMP threads (default all); results do not depend on it", none=True
    ),
    Param("progress", bool, False, "tqdm bars per phase"),
)

#: name -> declaration, for every parameter above.
PARAMS: Mapping[str, Param] = {p.name: p for p in USL_PARAMS + COMMON_PARAMS}

#: The regularizer's parameters (``regularized_select``): USL's from ``rounds`` on.
REG_NAMES: Tuple[str, ...] = tuple(p.name for p in USL_PARAMS)[
    [p.name for p in USL_PARAMS].index("rounds") :
]

#: The parameters a preset supplies (``Preset``'s fields).
PRESET_NAMES: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Preset))


def usl_defaults() -> Dict[str, Any]:
    """Every USL parameter at its declared default (``PRESET`` where the preset decides)."""
    return {p.name: p.default for p in USL_PARAMS}


def resolve(defaults: str, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The preset ``defaults`` with the ``overrides`` not left at ``PRESET`` on top.
    Giving one horizon replaces the preset's other one (they are alternatives)."""
    PARAMS["defaults"].check(defaults)
    p = dict(dataclasses.asdict(PRESETS[defaults]))
    given = {key: val for key, val in overrides.items() if val is not PRESET}
    if given.get("horizon_dist") is not None and "horizon_num" not in given:
        p["horizon_num"] = None
    if given.get("horizon_num") is not None and "horizon_dist" not in given:
        p["horizon_dist"] = None
    p.update(given)
    return p


def check_reg_params(p: Dict[str, Any]) -> Dict[str, Any]:
    """The regularizer's parameters in ``p`` checked from their declarations (in place)."""
    for name in REG_NAMES:
        p[name] = PARAMS[name].check(p[name])
        if name == "horizon_num" and p["horizon_dist"] is not None and p[name] is not None:
            raise ValueError("give at most one of `horizon_dist` and `horizon_num`")
    return p


def check_params(values: Mapping[str, Any], **bounds: Tuple[Any, Any, str]) -> Dict[str, Any]:
    """Each of ``values`` checked against its declaration (``PRESET`` passes as is);
    ``bounds``: name -> (low, high, text explaining high) for data-dependent ranges."""
    out = {}
    for name, val in values.items():
        if val is PRESET:
            out[name] = val
            continue
        out[name] = PARAMS[name].check(val, *bounds.get(name, ()))
    return out


def takes(names: Sequence[str], before: str, var_keyword: bool = False):
    """Decorator for a function that takes the declared parameters ``names`` through its
    ``**kwargs``: its signature (help(), IDEs, autodoc) shows them, keyword-only with their
    declared defaults, before the parameter ``before``; ``var_keyword=False`` hides the
    ``**kwargs`` (the function takes nothing else: see ``given``)."""

    def wrap(fn):
        sig = inspect.signature(fn)
        ps = list(sig.parameters.values())
        var = [p for p in ps if p.kind is inspect.Parameter.VAR_KEYWORD]
        ps = [p for p in ps if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in ps].index(before)
        new = ps[:at] + signature_params(names) + ps[at:] + (var if var_keyword else [])
        fn.__signature__ = sig.replace(parameters=new)
        return fn

    return wrap


def given(fn_name: str, names: Sequence[str], kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """``kwargs`` over the declared defaults of ``names``, in ``names``' order; a keyword
    not among ``names`` is a TypeError, as Python reports one."""
    for key in kwargs:
        if key not in names:
            raise TypeError(f"{fn_name}() got an unexpected keyword argument {key!r}")
    return {n: kwargs.get(n, PARAMS[n].default) for n in names}


def signature_params(names: Iterable[str]) -> list:
    """``inspect.Parameter``s (keyword-only) of the declared ``names``, for a generated
    ``__signature__``."""
    return [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=PARAMS[n].default)
        for n in names
    ]


def params_doc(names: Iterable[str], indent: str = "    ") -> str:
    """numpydoc lines (``name : doc``) of the declared ``names``."""
    lines = []
    for n in names:
        p = PARAMS[n]
        if p.choices is not None:
            kind = "{" + ", ".join(repr(c).replace("'", '"') for c in p.choices) + "}"
        else:
            kind = p.type.__name__ + (" or None" if p.none else "")
        default = "the preset's" if p.from_preset else repr(p.default)
        lines.append(f"{indent}{n} : {kind}, default {default}")
        lines.append(f"{indent}    {p.doc}.")
    return "\n".join(lines)


def document(**sections: Iterable[str]):
    """A decorator that fills ``{name}`` fields of a docstring with ``params_doc`` of the
    parameter names given for each (so docstrings list the declarations, not copies)."""

    def wrap(obj):
        doc = obj.__doc__ or ""
        for key, names in sections.items():
            line = next((ln for ln in doc.splitlines() if "{" + key + "}" in ln), "")
            indent = line[: len(line) - len(line.lstrip())]
            doc = doc.replace(indent + "{" + key + "}", params_doc(names, indent))
        obj.__doc__ = doc
        return obj

    return wrap
