"""The package's import layers (issue 23): every module imports only modules of its own
layer or below, there is no import cycle (module-level and function-level imports both
count), back ends are chosen in one place, and the estimators follow one protocol."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import numpy as np
import pytest

PKG = Path(__file__).resolve().parent.parent / "usl_fast"

#: Each module's layer (a package's ``__init__`` stands for the package; a module missing
#: here fails the test, so a new module must be placed). Lower layers never import higher.
LAYERS: Dict[str, int] = {
    # 1: checks, conversions, progress, files, memory limits, the engine's loader and calls
    "usl_fast._cpu": 1,  # (compiled)
    "usl_fast._cuda": 1,  # (compiled, when nvcc was found)
    "usl_fast._backend": 1,
    "usl_fast._build_info": 1,  # (written by the build)
    "usl_fast._progress": 1,
    "usl_fast._memory": 1,
    "usl_fast._validate": 1,
    "usl_fast._io": 1,
    "usl_fast._safe_torch": 1,
    "usl_fast._dispatch": 1,
    # 2: the parameter declarations and the presets
    "usl_fast._presets": 2,
    # 3: the back ends and the one place that chooses them
    "usl_fast.backends": 3,
    "usl_fast.backends._resolve": 3,
    "usl_fast.backends._rows": 3,
    "usl_fast.backends._comm": 3,
    "usl_fast.backends.engine": 3,
    "usl_fast.backends.portable": 3,
    "usl_fast.backends.shard": 3,
    # 4: USL on any back end's rows; the public ops (each resolves its back end once)
    "usl_fast._pipeline": 4,
    "usl_fast._ops": 4,
    # 5: the estimators (USL-T's trainer uses the public kNN of layer 4)
    "usl_fast._methods": 5,
    "usl_fast.uslt": 5,
    "usl_fast.uslt._augment": 5,
    "usl_fast.uslt._checks": 5,
    "usl_fast.uslt._heads": 5,
    "usl_fast.uslt._losses": 5,
    "usl_fast.uslt._select": 5,
    "usl_fast.uslt._trainer": 5,
    # 6: the functional API, the process-group API, pictures
    "usl_fast.api": 6,
    "usl_fast.distributed": 6,
    "usl_fast.plot": 6,
    # 7: semi-supervised training on the picks
    "usl_fast.ssl": 7,
    "usl_fast.ssl.augment": 7,
    "usl_fast.ssl.fixmatch": 7,
    # 8: the package's front door (``usl_fast.select`` and the rest of ``__all__``)
    "usl_fast": 8,
    # 9: applications that call the front door (the CLI, the demo, the entry points)
    "usl_fast.demo": 9,
    "usl_fast.cli": 9,
    "usl_fast.__main__": 9,
    "usl_fast.distributed.__main__": 9,
}

#: Modules with no .py file in the sources (compiled, or written by the build), whose
#: imports are still edges.
COMPILED = ("usl_fast._cpu", "usl_fast._cuda", "usl_fast._build_info")


def _modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _layer(mod: str) -> int:
    """The declared layer of ``mod``: its own entry, or its package's (``usl_fast.cli.x``
    is in ``usl_fast.cli``'s layer)."""
    name = mod
    while name not in LAYERS:
        if "." not in name:
            raise KeyError(mod)
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _known(name: str, modules: Set[str]) -> str:
    """The package module ``name`` refers to (an attribute import ``from . import x``
    names a module only when x is one), or ''."""
    while name and name not in modules:
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return name


def _imports(mod: str, path: Path, modules: Set[str]) -> Set[str]:
    """Every package module ``mod`` imports, anywhere in the file (module level, inside
    functions, under ``if``): an import that runs at call time still ties the modules."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "usl_fast" or a.name.startswith("usl_fast."):
                    out.add(_known(a.name, modules))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
                if not (target == "usl_fast" or target.startswith("usl_fast.")):
                    continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in modules else _known(target, modules))
    out.discard("")
    out.discard(mod)
    return out


def _graph() -> Dict[str, Set[str]]:
    mods = dict(_modules())
    names = set(mods) | set(COMPILED)
    return {m: _imports(m, p, names) for m, p in mods.items()}


def test_every_module_has_a_declared_layer() -> None:
    missing = []
    for mod, _ in _modules():
        try:
            _layer(mod)
        except KeyError:
            missing.append(mod)
    assert not missing, f"place these modules in LAYERS: {missing}"


def test_no_import_runs_up_the_layers() -> None:
    up = []
    for mod, deps in _graph().items():
        for dep in sorted(deps):
            # A package's __init__ re-exporting its own submodules is its front door.
            if (
                dep.startswith(mod + ".")
                and PKG.joinpath(*mod.split(".")[1:], "__init__.py").exists()
            ):
                continue
            if _layer(dep) > _layer(mod):
                up.append(f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})")
    assert not up, "imports that run up the layers:\n" + "\n".join(up)


def test_no_import_cycle() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodule is not an edge back: Python
    # imports the package first in any case. Everything else counts.
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: Dict[str, int] = {}
    stack: list = []
    cycles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_walker_sees_function_level_and_relative_imports(tmp_path) -> None:
    # The walker's own check: a function-level relative import is an edge.
    src = "def f():\n    from .. import _pipeline\n    from ..backends import engine\n"
    p = tmp_path / "x.py"
    p.write_text(src)
    mods = {"usl_fast._pipeline", "usl_fast.backends", "usl_fast.backends.engine"}
    got = _imports("usl_fast.api.x", p, mods)
    assert got == {"usl_fast._pipeline", "usl_fast.backends.engine"}


def test_only_the_resolver_reads_USL_FAST_BACKEND() -> None:
    # Strict: no other module even names it (a docstring says "backends.resolve" instead),
    # so a second reader cannot hide behind a mention.
    readers = sorted(
        str(p.relative_to(PKG.parent))
        for p in PKG.rglob("*.py")
        if "USL_FAST_BACKEND" in p.read_text(encoding="utf-8")
        and p != PKG / "backends" / "_resolve.py"
    )
    assert not readers, f"USL_FAST_BACKEND named outside backends/_resolve.py: {readers}"


def test_resolve_is_the_only_chooser(monkeypatch) -> None:
    from usl_fast import backends

    x = np.zeros((3, 2), np.float32)
    assert backends.resolve(x).name == "engine"
    torch = pytest.importorskip("torch")
    t = torch.zeros((3, 2))
    monkeypatch.delenv("USL_FAST_BACKEND", raising=False)
    assert backends.resolve(t).name == "engine"
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    assert backends.resolve(t).name == "portable"
    assert backends.resolve(x).name == "engine"  # numpy never leaves the engine


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_usl_fit_takes_what_select_takes_on_the_portable_back_end(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    import usl_fast

    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    t = torch.from_numpy(_unit(300, 8, seed=1))
    want = usl_fast.select(t, 40, k=10, kmeans_iter=20)
    est = usl_fast.USL(k=10, kmeans_iter=20).fit(t, 40)
    assert isinstance(est.indices_, torch.Tensor)
    assert torch.equal(est.indices_, want)
    assert est.params_["backend"] == "portable"
    # and the same picks as the engine on the numpy rows
    monkeypatch.delenv("USL_FAST_BACKEND")
    np.testing.assert_array_equal(
        usl_fast.USL(k=10, kmeans_iter=20).fit(t.numpy(), 40).indices_, want.numpy()
    )


def test_usl_fit_default_presets_equal_select() -> None:
    import usl_fast

    x = _unit(400, 8, seed=2)
    for kw in ({}, {"defaults": "imagenet-clip"}, {"horizon_num": 5}, {"horizon_dist": None}):
        a = usl_fast.select(x, 30, k=10, kmeans_iter=10, **kw)
        b = usl_fast.USL(k=10, kmeans_iter=10, **kw).fit(x, 30).indices_
        np.testing.assert_array_equal(a, b)


def test_declarations_drive_select_and_usl_signatures() -> None:
    import inspect

    import usl_fast
    from usl_fast._presets import USL_PARAMS

    sel = inspect.signature(usl_fast.select).parameters
    est = inspect.signature(usl_fast.USL).parameters
    for p in USL_PARAMS:
        assert sel[p.name].default is p.default
        assert est[p.name].default is p.default
        assert p.name in usl_fast.select.__doc__
        assert p.doc in usl_fast.USL.__doc__


def test_method_names_are_select_s_methods() -> None:
    import usl_fast
    from usl_fast._presets import METHOD_NAMES

    assert set(METHOD_NAMES) == set(usl_fast.METHODS) | {"uslt"}
    assert METHOD_NAMES[0] == "usl"


# --------------------------------------------------------------------------- USL-T as a Selector

_USLT_FAST = dict(epochs=3, batch_size=64, n_neighbors=5)


def test_uslt_is_a_selector_with_the_protocol() -> None:
    pytest.importorskip("torch")
    from sklearn.base import clone

    import usl_fast
    from usl_fast.uslt import USLT

    t = USLT(seed=3, n_heads=2, **_USLT_FAST)
    assert isinstance(t, usl_fast.Selector) and t.method == "uslt"
    assert t.get_params()["n_heads"] == 2 and t.get_params()["n_clusters"] is None
    c = clone(t)
    assert c is not t and c.get_params() == t.get_params()
    assert t.set_params(n_heads=3) is t and t.n_heads == 3
    with pytest.raises(ValueError, match="no parameter 'kk'"):
        t.set_params(kk=1)
    x = _unit(200, 6, seed=0)
    assert t.fit(x, 5) is t
    for name in ("indices_", "labels_", "scores_", "labeled_", "n_features_in_", "timings_"):
        assert hasattr(t, name)
    assert t.n_features_in_ == 6 and t.labeled_.size == 0 and t.indices_.shape == (5,)
    np.testing.assert_array_equal(t.fit_select(x, 5), t.indices_)


@pytest.mark.parametrize("seed", range(2))
def test_uslt_labeled_never_returned_nor_repeated(seed) -> None:
    pytest.importorskip("torch")
    import usl_fast
    from usl_fast.uslt import USLT

    rng = np.random.default_rng(seed)
    x = _unit(300, 8, seed=seed)
    x[10:20] = x[0]  # duplicates
    labeled = rng.choice(300, int(rng.integers(1, 30)), replace=False)
    m = int(rng.integers(1, 20))
    idx = usl_fast.select(x, m, method="uslt", labeled=labeled, seed=seed, **_USLT_FAST)
    assert idx.shape == (m,) and idx.dtype == np.int64
    assert np.unique(idx).size == m
    assert not np.isin(idx, labeled).any()
    # the estimator, given m at fit as every Selector, gives the same
    est = USLT(seed=seed, **_USLT_FAST).fit(x, m, labeled=labeled)
    np.testing.assert_array_equal(est.indices_, idx)


def test_declared_defaults_are_the_constructors() -> None:
    import inspect

    import usl_fast

    for cls in usl_fast.METHODS.values():
        sig = inspect.signature(cls.__init__).parameters
        for name, p in cls._parameter_constraints.items():
            if cls is usl_fast.USL and name == "normalize":
                continue  # USL's own default (False) where select's is "the method's"
            assert sig[name].default == p.default, (cls.__name__, name)


def test_usl_takes_positional_arguments_in_the_declared_order() -> None:
    # Earlier releases' estimator took positional arguments; its signature (from the
    # declarations) still says so, and so does the constructor.
    from usl_fast import USL

    x = np.random.default_rng(3).standard_normal((600, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    base = USL(defaults="imagenet", k=10).fit(x, 12)
    assert np.array_equal(USL("imagenet", 10).fit(x, 12).indices_, base.indices_)
    assert USL("imagenet", 10).get_params() == base.get_params()
    with pytest.raises(TypeError, match="multiple values for argument 'k'"):
        USL("imagenet", 10, k=3)
    with pytest.raises(TypeError, match="at most"):
        USL(*range(40))


def test_usl_reads_none_as_select_does() -> None:
    # One path: USL(p=None) is select(p=None), an error where select refuses None.
    from usl_fast import USL

    x = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with pytest.raises((TypeError, ValueError), match="k"):
        USL(k=None).fit(x, 5)


def test_every_method_checks_every_constructor_parameter_from_a_declaration():
    """One source of truth for each method's parameters: every constructor argument has a
    ``_presets.Param`` (scikit-learn's ``_parameter_constraints``), and a bad value of each
    is refused at ``fit`` with a message naming it."""
    import inspect

    import usl_fast
    from usl_fast.api import METHODS

    # 600 rows: USL's default preset wants k = 400 < n before it looks at anything else
    x = np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32)
    for name, cls in METHODS.items():
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        declared = set(cls._parameter_constraints)
        assert set(params) <= declared, (name, sorted(set(params) - declared))
        for p in params:
            decl = cls._parameter_constraints[p]
            if decl.type is bool and not decl.strict:
                continue  # a preset flag taken by truth value (documented): any value is one
            with pytest.raises((TypeError, ValueError), match=f"`{p}`"):
                cls(**{p: "not a value"}).fit(x, 3)
    assert usl_fast.ProbCover(delta=0.5).fit(x, 3).indices_.shape == (3,)
