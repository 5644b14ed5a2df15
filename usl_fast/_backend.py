"""Loads the compiled CPU engine (usl_fast._cpu) and the OpenBLAS it links against."""

from __future__ import annotations

import ctypes
import os


def _preload_openblas() -> None:
    # The extension's rpath points at site-packages/scipy_openblas32/lib; loading the
    # library by absolute path first also covers installs where that relative path
    # does not hold (editable installs, unusual layouts).
    try:
        import scipy_openblas32
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ImportError(
            "usl_fast needs the scipy-openblas32 package (pip install scipy-openblas32)"
        ) from exc
    lib_dir = scipy_openblas32.get_lib_dir()
    for name in os.listdir(lib_dir):
        if name.startswith("libscipy_openblas") and ".so" in name:
            # The engine calls this OpenBLAS only from inside its own OpenMP threads, one
            # tile each, so the library's worker pool is never used; created anyway, its
            # threads spin and steal cycles from ours (measured: ~8% of a k-means run).
            # OPENBLAS_NUM_THREADS is read once, at load: set it for this load only.
            saved = os.environ.get("OPENBLAS_NUM_THREADS")
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
            try:
                ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
            finally:
                if saved is None:
                    del os.environ["OPENBLAS_NUM_THREADS"]
                else:
                    os.environ["OPENBLAS_NUM_THREADS"] = saved
            return


_preload_openblas()

try:
    from . import _cpu  # noqa: E402
except ImportError as exc:  # pragma: no cover - depends on how Python was started
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    raise ImportError(
        f"usl_fast's compiled engine (usl_fast._cpu) was not found next to {here}. If that is "
        "the source checkout, Python is importing the sources instead of the installed "
        "package: run from another directory, or use the `pytest` command rather than "
        "`python -m pytest` in the repository root (which puts the checkout first on sys.path). "
        "Otherwise (re)install with `pip install .`."
    ) from exc


#: The engine's run-time switches (read once by csrc/cpu/runtime.cpp, gemm.cpp, dedup.cpp
#: and exact.cpp, at the engine's load or first use) and their documented values
#: (docs/development.md). The engine has no way to report a value it does not know: it
#: falls back to its own choice in silence (USL_FAST_DEDUP is off only for "0",
#: USL_FAST_COUNT_EXACT on only for "1": "false" or "yes" would be taken as the default).
SWITCHES = {
    "USL_FAST_ISA": ("portable", "avx2", "avx512"),
    "USL_FAST_GEMM": ("amx", "avx512bf16", "avx512vnni", "avx512", "avx2i16", "avx2", "blas"),
    "USL_FAST_DEDUP": ("0", "1"),
    "USL_FAST_COUNT_EXACT": ("0", "1"),
}
#: accepted by the engine but not documented (the old name of "portable")
_ALIASES = {"USL_FAST_ISA": ("scalar",)}


def _check_switches() -> None:
    """Warn, once per process (here, at import), about a switch set to a value the engine
    does not know, or to one this CPU or build cannot honour (the engine then falls back,
    as documented per switch): a misspelt or unavailable USL_FAST_GEMM would otherwise time
    another path under its name. A warning, not an error: every path gives the same bits,
    so only the speed is at stake, and a stale variable in a shell should not break
    ``import usl_fast`` (unless the warning filters turn warnings into errors, which is
    then the user's call). The warnings point at the code that imported usl_fast, not at
    this module."""
    import warnings

    problems = []
    for var, allowed in SWITCHES.items():
        value = os.environ.get(var, "")
        if value == "" or value in allowed or value in _ALIASES.get(var, ()):
            continue
        problems.append(
            f"{var}={value!r} is not one of {', '.join(allowed)} (or unset); the engine "
            f"ignores it and {_instead(var)}, its default here (docs/development.md)"
        )
    isa, gemm = _running("USL_FAST_ISA"), _running("USL_FAST_GEMM")
    for var, runs, cannot in (
        ("USL_FAST_ISA", isa, "this CPU or build cannot run that SIMD path"),
        (
            "USL_FAST_GEMM",
            gemm,
            f"that tile GEMM cannot run on the {isa} SIMD path with this CPU and build",
        ),
    ):
        value = os.environ.get(var, "")
        if value in SWITCHES[var] and value != runs:
            problems.append(
                f"{var}={value!r}: {cannot}; the engine runs {runs} instead (docs/development.md)"
            )
    if problems:
        level = _importer_level()
        for message in problems:
            warnings.warn(message, UserWarning, stacklevel=level)


def _importer_level() -> int:
    """The ``stacklevel`` at which ``warnings.warn``, called from _check_switches, names
    the first frame outside this package: the user's ``import usl_fast`` (or the console
    script, or runpy for ``python -m usl_fast``). Counted as warnings counts: one per frame
    outward from the caller of ``warn``, importlib's bootstrap frames not counted."""
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def internal(frame) -> bool:
        name = frame.f_code.co_filename
        return "importlib" in name and "_bootstrap" in name

    frame, level = sys._getframe(1), 1  # _check_switches, where warn counts 1 from
    while frame is not None:
        if level > 1 and not internal(frame):
            if not os.path.abspath(frame.f_code.co_filename).startswith(package):
                return level
        frame = frame.f_back
        while frame is not None and internal(frame):
            frame = frame.f_back
        level += 1
    return 2


def _instead(var: str) -> str:
    """What the engine does with ``var`` set to a value it does not know, in the switch's
    own words. Asking fixes the choice now rather than at the first use, which only matters
    if the variable changes in between: then it was wrong anyway."""
    if var in ("USL_FAST_ISA", "USL_FAST_GEMM"):
        return f"runs {_running(var)}"
    if var == "USL_FAST_DEDUP":
        on = _cpu.dedup_enabled()
        return f"{'collapses' if on else 'keeps'} duplicate rows (as with {int(on)})"
    # USL_FAST_COUNT_EXACT: only "1" counts, and the engine has no call that says so.
    return "counts no exact evaluations (as with 0)"


def _running(var: str) -> str:
    """What the engine runs for ``var`` (USL_FAST_ISA or USL_FAST_GEMM), as the value of
    that switch which selects it."""
    if var == "USL_FAST_ISA":
        return _ISA_NAMES[_cpu.active_isa()]
    return _GEMM_NAMES.get(_cpu.gemm_kind(), "?")


#: _cpu.active_isa() -> the USL_FAST_ISA value that selects it
_ISA_NAMES = ("portable", "avx2", "avx512")

#: _cpu.gemm_kind() -> the USL_FAST_GEMM value that selects it (docs/engine.md)
_GEMM_NAMES = {
    0: "blas",
    1: "avx512",
    2: "amx",
    3: "avx2",
    4: "avx2i16",
    5: "avx512bf16",
    6: "avx512vnni",
}


_check_switches()


def build_info() -> dict:
    """What the installed build of usl_fast holds, as its own build recorded it.

    Returns
    -------
    dict
        ``cuda`` (bool): whether the CUDA kernels (``usl_fast._cuda``) were built, which a
        wheel also says in its build tag (``usl_fast-0.1.0-1cuda-...whl``);
        ``cuda_version`` and ``cuda_architectures`` (str, or None without them);
        ``isa``: ``"dispatch"`` (AVX2 / AVX-512 chosen at run time) or ``"portable"``;
        ``sanitize``: the sanitizers compiled in (``""`` for none); ``cxx_compiler`` and
        ``build_type``. What runs in this process (the SIMD path and tile GEMM chosen
        from the CPU and the ``USL_FAST_*`` switches) is ``runtime_info()``'s.

    Raises
    ------
    RuntimeError
        If the engine next to this package was not put there by the build's install step
        (for example a compiled module copied by hand into a source checkout).
    """
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        import pathlib

        raise RuntimeError(
            f"usl_fast at {pathlib.Path(__file__).resolve().parent} has no _build_info.py: "
            "its engine was not installed by the build (pip install . or a wheel writes it)"
        ) from None
    return dict(BUILD_INFO)


def runtime_info() -> dict:
    """What the engine runs in this process: the choices it made from the CPU, the build
    and the ``USL_FAST_*`` switches (docs/development.md), in the switches' own words.

    Returns
    -------
    dict
        ``isa``: the SIMD path, ``"portable"``, ``"avx2"`` or ``"avx512"`` (the
        ``USL_FAST_ISA`` value that selects it); ``gemm``: the filter's tile GEMM, one of
        ``"amx"``, ``"avx512bf16"``, ``"avx512vnni"``, ``"avx512"``, ``"avx2i16"``,
        ``"avx2"``, ``"blas"`` (the ``USL_FAST_GEMM`` value; docs/engine.md says where each
        falls back to float32); ``dedup``: whether exact-duplicate rows are collapsed
        before the distance passes (``USL_FAST_DEDUP``); ``max_threads``: the OpenMP
        threads a call without ``threads=`` uses from the calling thread.

    Each switch is read once per process, at the engine's first use: this asks for the
    choices now, so a variable changed later in the process has no effect (as it would
    have none on the engine). Unlike ``build_info()``, this needs no build record.
    """
    return {
        "isa": _running("USL_FAST_ISA"),
        "gemm": _running("USL_FAST_GEMM"),
        "dedup": bool(_cpu.dedup_enabled()),
        "max_threads": int(_cpu.max_threads()),
    }


__all__ = ["_cpu", "build_info", "runtime_info"]
