"""The ``usl-fast`` command line: ``select`` reads a feature file and writes the picks
(``.npy``, ``.txt`` and/or the reference's ``Index,ImageID`` CSVs) with any method of
``usl_fast.select``; ``fixmatch`` trains the reference FixMatch on them; ``plot`` draws
them (``usl_fast.plot``); ``demo`` runs the bundled scikit-learn digits comparison
(``usl_fast.demo``).

Exit status: 0 on success, 2 on any error, printed on one line with no traceback: a
command-line error as ``usl-fast select: error: ...; see usl-fast select --help``, any
other as ``usl-fast: error: ...``; 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

import numpy as np

from ._io import Outputs, check_directory, open_append, write_atomic

PROG = "usl-fast"

# Every --defaults name usl_fast.select accepts, in the order --help shows them
# (test_cli checks that this is exactly the set of usl_fast.PRESETS).
DEFAULTS_CHOICES = ("cifar10", "cifar100", "imagenet", "imagenet-moco", "imagenet-clip")

# Options whose argparse dest is also the usl_fast.select keyword. They are forwarded
# only when given, so that everything left out comes from the --defaults preset.
_SELECT_OPTIONS = (
    "k",
    "n_clusters",
    "kmeans_iter",
    "kmeans_init",
    "rounds",
    "weight",
    "momentum",
    "alpha",
    "horizon_dist",
    "horizon_num",
    "own_cluster",
    "mask_zero",
)

# Options of the other methods: argparse dest -> keyword of the method's estimator
# (usl_fast.TypiClust, ProbCover, ..., usl_fast.uslt.USLT). Forwarded when given and the
# chosen --method takes that keyword; otherwise an error.
_METHOD_OPTIONS = {
    **{o: o for o in _SELECT_OPTIONS},
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "n_heads": "n_heads",
    "n_neighbors": "n_neighbors",
    "head": "head",
    "head_init": "init",
    "device": "device",
    "delta": "delta",
    "n_classes": "n_classes",
    "max_clusters": "max_clusters",
    "min_cluster_size": "min_cluster_size",
    "metric": "metric",
    "max_edges": "max_edges",
}


class CLIError(Exception):
    """A user-facing error: printed as ``usl-fast: error: <message>``, exit status 2."""


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``[default: X]`` to an option's help unless the help already states its
    default (or the default is None/False, i.e. "not given" / a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        # identity, not ==: a default of 0 is shown (0 == False)
        if "default" in text or d is None or d is False or d is argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional: its default is never used
        return f"{text} [default: %(default)s]".strip()


class _Parser(argparse.ArgumentParser):
    """argparse with no prefix matching (``--k`` must not mean ``--kmeans-iter``), the
    help formatter above, and one-line errors: ``usl-fast select: error: <message>; see
    usl-fast select --help`` (exit status 2) instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # one line, whatever argparse put in it
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


# --------------------------------------------------------------------------- input


def load_features(path: str, key: Optional[str] = None) -> Any:
    """Open a feature matrix from disk without copying it when the format allows.

    Parameters
    ----------
    path : str
        ``.npy`` (memory-mapped read-only, so a file larger than RAM is paged in as the
        engine reads it), ``.npz`` (the array under ``key``, or its only array), or
        ``.pt``/``.pth`` (``torch.load`` with ``weights_only=True``, memory-mapped when the
        file is in torch's zip format; a tensor, or a dict holding one under ``key``).
    key : str, optional
        Entry to take from a ``.npz`` archive or a dict saved in a ``.pt`` file. May be
        omitted when there is exactly one candidate.

    Returns
    -------
    (n, d) numpy array or numpy memmap (no dtype conversion here: ``usl_fast.select``
    converts once to float32 and validates shape and values).

    Raises
    ------
    CLIError
        Unknown extension, missing/ambiguous key, torch not installed, unreadable file.
    ImportError
        A ``.pt``/``.pth`` file with torch older than 2.6, whose ``weights_only=True``
        loading can run code from a crafted file (CVE-2025-32434): upgrade torch.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.is_file():
        raise CLIError(f"FEATURES file not found: {path!r}")
    try:
        if suffix == ".npy":
            if key is not None:
                raise CLIError("--key applies to .npz/.pt/.pth files, not to .npy")
            _check_npy(p, path)
            # mmap_mode='r': nothing is read until the engine touches it, and a C-ordered
            # float32 file reaches the C++ core with no copy at all.
            return np.load(p, mmap_mode="r", allow_pickle=False)
        if suffix == ".npz":
            if not zipfile.is_zipfile(p):
                raise CLIError(
                    f"FEATURES file {path!r} is not a valid .npz file (numpy.savez writes a "
                    "zip archive; this is not one, or it is truncated)"
                )
            with np.load(p, allow_pickle=False) as archive:
                return _pick_entry({name: archive[name] for name in archive.files}, key, path)
        if suffix in (".pt", ".pth"):
            return _load_torch(p, key)
    except CLIError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"cannot read FEATURES file {path!r}: {_never_unsafe(exc)}") from exc
    raise CLIError(
        f"FEATURES must be a .npy, .npz, .pt or .pth file (got {path!r}); "
        "save a numpy array with numpy.save or a tensor with torch.save"
    )


def _never_unsafe(exc: BaseException) -> str:
    """``exc``'s message on one line, unless it suggests loading the file unsafely (numpy's
    "allow_pickle", torch's "weights_only=False"): files are never unpickled, so that
    advice is replaced by what it means."""
    msg = " ".join(str(exc).split())
    if "allow_pickle" in msg or "weights_only" in msg or "pickle" in msg.lower():
        return (
            "it is not a valid array file, or it holds Python objects, which usl-fast never "
            "loads (unpickling can run code); save a numeric array with numpy.save or a "
            "tensor with torch.save"
        )
    return msg


def _check_npy(p: Path, path: str) -> None:
    """A CLIError before numpy's loader runs unless ``p`` is a .npy file of a numeric
    array whose data is all there: numpy takes a file without the .npy signature for a
    pickle (and says to load it with allow_pickle), and maps a truncated one into an
    "mmap length is greater than file size" error."""
    fmt = np.lib.format
    with open(p, "rb") as f:
        if f.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
            raise CLIError(
                f"FEATURES file {path!r} is not a valid .npy file: it does not start with the "
                "\\x93NUMPY signature numpy.save writes (another format, or corrupt)"
            )
        f.seek(0)
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                return  # format 3.0 (utf-8 field names): numpy's own checks
        except ValueError as exc:
            raise CLIError(
                f"FEATURES file {path!r} is not a valid .npy file: its header cannot be read "
                f"({' '.join(str(exc).split())})"
            ) from exc
        offset = f.tell()
    if dtype.hasobject:
        raise CLIError(
            f"FEATURES file {path!r} holds Python objects (dtype {dtype}), which usl-fast never "
            "loads (unpickling can run code); save a numeric array"
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = p.stat().st_size
    if actual < expected:
        raise CLIError(
            f"FEATURES file {path!r} is truncated: its header describes a {dtype} array of "
            f"shape {tuple(shape)}, {expected:,} bytes in all, but the file has {actual:,} bytes"
        )


def _load_torch(p: Path, key: Optional[str]) -> np.ndarray:
    try:
        import torch
    except ImportError as exc:
        raise CLIError(
            f"reading {p.suffix} files needs PyTorch: pip install usl_fast[torch] "
            "(or save the features with numpy.save and pass the .npy file)"
        ) from exc
    from ._safe_torch import check_torch_load

    check_torch_load(f"reading {p.suffix} files")  # torch <= 2.5.1: weights_only can run code
    # torch.save writes a zip archive (legacy: a pickle starting with torch's magic
    # number); anything else is refused here, before torch's unpickler reports it with
    # advice to retry with weights_only=False.
    zipped = zipfile.is_zipfile(p)
    if not zipped:
        with open(p, "rb") as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
        if head != _TORCH_LEGACY_MAGIC:
            raise CLIError(
                f"FEATURES file {str(p)!r} is not a valid {p.suffix} file: torch.save writes a "
                "zip archive (or, in its legacy format, a pickle starting with torch's magic "
                "number), and this is neither (another format, truncated, or corrupt)"
            )
    try:
        # mmap=True keeps a large tensor on disk like .npy; it needs torch's zip format,
        # so the legacy format gets a plain load.
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as exc:  # torch raises several types for a bad/unsafe pickle
        raise CLIError(
            f"cannot read FEATURES file {str(p)!r} with torch.load: {_torch_reason(exc)}"
        ) from exc
    if isinstance(obj, dict):
        obj = _pick_entry(obj, key, str(p))
    elif key is not None:
        raise CLIError(
            f"--key {key!r} given but {str(p)!r} holds a {type(obj).__name__}, not a dict"
        )
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        return t.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise CLIError(
        f"{str(p)!r} must hold a tensor (or a dict with one under --key), got {type(obj).__name__}"
    )


#: The start of a file torch.save wrote in its legacy format: pickle protocol 2, then the
#: magic number 0x1950a86a20f9469cfc6c as a pickled long.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _torch_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, on one line and without its
    advice (retry with weights_only=False, allowlist the global): the sentences that say
    what the restricted unpickler met ("Trying to load unsupported GLOBAL posix.system
    ..."), when torch gives them."""
    advice = ("weights_only", "safe_globals", "trusted source", "documentation", "allowlist")
    for line in str(exc).splitlines():
        sentences = [x.strip() for x in line.split(". ") if x.strip()]
        facts = [x for x in sentences if not any(a in x for a in advice)]
        if facts and ("unsupported" in line.lower() or "Unpickler" in line):
            return (
                ". ".join(facts).rstrip(".")
                + " (usl-fast loads only tensors and plain containers, never Python objects: "
                "unpickling can run code)"
            )
    return _never_unsafe(exc)


def _pick_entry(entries: Dict[Any, Any], key: Optional[str], path: str) -> Any:
    """The entry named by --key, or the only array-like entry when --key is omitted."""
    if key is not None:
        if key not in entries:
            raise CLIError(f"--key {key!r} not found in {path!r}; available keys: {_keys(entries)}")
        return entries[key]
    arrays = [k for k, v in entries.items() if hasattr(v, "shape")]
    if len(arrays) == 1:
        return entries[arrays[0]]
    raise CLIError(
        f"{path!r} holds several entries; choose one with --key (available: {_keys(entries)})"
    )


def _keys(entries: Dict[Any, Any]) -> str:
    names = [str(k) for k in entries]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def l2_normalize(x: Any, chunk_rows: int = 65536) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a new float32 array (the input is not modified).

    Works in row chunks so a memory-mapped input is streamed, with float64 norms for
    accuracy. An all-zero row stays zero (its norm is floored at 1e-12) rather than
    turning into NaN.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise CLIError(
            f"features must be 2-D (n_points, dim) to --normalize, got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CLIError(f"features must be numeric to --normalize, got dtype {arr.dtype}")
    out = np.empty(arr.shape, np.float32)
    for start in range(0, arr.shape[0], chunk_rows):
        blk = np.asarray(arr[start : start + chunk_rows], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", blk, blk))
        out[start : start + chunk_rows] = blk / np.maximum(norms, 1e-12)[:, None]
    return out


def read_image_ids(path: str, n: int) -> List[str]:
    """One id per line (e.g. ``classdir/filename``); exactly ``n`` lines are required.

    A final newline does not count as an extra line; ``\\r\\n`` endings are accepted.
    """
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read --image-ids file {path!r}: {exc}") from exc
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    elif text == "":
        lines = []
    if len(lines) != n:
        raise CLIError(
            f"--image-ids file {path!r} must have exactly one line per feature row "
            f"(expected {n} lines, got {len(lines)})"
        )
    return lines


# -------------------------------------------------------------------------- output


def _check_outputs(
    named: Sequence[Tuple[Optional[str], str]], force: bool, inputs: Sequence[str]
) -> Outputs:
    """Fail before any computation if an output would be refused at the end.

    ``named`` pairs each output path (None: not given) with the option that names it.
    Returns the ``Outputs`` that then stages and commits them (usl_fast._io): directory
    exists and accepts files, no symbolic link, no directory, no existing file without
    ``--force``, distinct from each other and from the inputs."""
    outs = Outputs(force=force, inputs=inputs)
    for path, what in named:
        outs.check(path, what)
    return outs


def _write_atomic(
    path: str, write: Callable[[Any], None], binary: bool, outs: Optional[Outputs] = None
) -> None:
    """Stage ``path`` into ``outs`` (renamed with the command's other outputs by
    ``outs.commit()``), or with ``outs`` None write it alone: a temporary file in the same
    directory renamed over ``path``, so an interrupted run never leaves a truncated
    output behind, and never through a symbolic link."""
    if outs is None:
        write_atomic(path, write, what="output", binary=binary)
    else:
        outs.stage(path, write, binary=binary)


def write_picks_npy(path: str, picks: np.ndarray, outs: Optional[Outputs] = None) -> None:
    """(m,) int64 in pick order. Written through a file object because ``np.save`` on a
    path would append ``.npy`` to a name that lacks it."""
    arr = np.ascontiguousarray(picks, dtype=np.int64)
    _write_atomic(path, lambda f: np.save(f, arr, allow_pickle=False), True, outs)


def write_picks_txt(path: str, picks: np.ndarray, outs: Optional[Outputs] = None) -> None:
    """One index per line (decimal, ``\\n`` endings), in pick order."""
    arr = np.asarray(picks, dtype=np.int64)
    _write_atomic(path, lambda f: f.write("".join(f"{int(i)}\n" for i in arr)), False, outs)


def write_index_csv(
    path: str,
    indices: np.ndarray,
    image_ids: Optional[List[str]],
    outs: Optional[Outputs] = None,
) -> None:
    """The reference's CSV: header ``Index,ImageID``, rows sorted by index ascending (what
    pandas ``to_csv(index=False)`` writes, with ``\\n`` line endings and minimal quoting).
    Without image ids the ImageID column is left out (header ``Index``): an empty column
    would look like data that was lost."""
    rows = np.sort(np.asarray(indices, dtype=np.int64))

    def write(f: Any) -> None:
        w = csv.writer(f, lineterminator="\n")
        if image_ids is None:
            w.writerow(["Index"])
            w.writerows((int(i),) for i in rows)
        else:
            w.writerow(["Index", "ImageID"])
            w.writerows((int(i), image_ids[i]) for i in rows)

    _write_atomic(path, write, False, outs)


#: -o/--output formats by file extension (lower-cased) and what each writes.
PICKS_FORMATS = {
    ".npy": "int64 .npy, pick order",
    ".txt": "text, one index per line, pick order",
    ".csv": "the --csv format: Index[,ImageID], sorted ascending",
}


def picks_format(path: str, option: str = "-o/--output") -> str:
    """The format (a key of ``PICKS_FORMATS``) chosen by ``path``'s extension.

    Raises
    ------
    CLIError
        The extension is not one of ``PICKS_FORMATS``: the message names the option,
        the path and the allowed extensions.
    """
    ext = Path(path).suffix.lower()
    if ext not in PICKS_FORMATS:
        allowed = "; ".join(f"{e} ({what})" for e, what in PICKS_FORMATS.items())
        raise CLIError(f"{option} {path!r}: the extension must be one of {allowed}")
    return ext


def _require_suffix(path: Optional[str], option: str, suffix: str, what: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise CLIError(f"{option} {path!r}: must end in {suffix} ({what})")


def write_picks(
    path: str,
    picks: np.ndarray,
    image_ids: Optional[List[str]],
    outs: Optional[Outputs] = None,
) -> None:
    """Write ``picks`` to ``path`` in the format its extension names (``PICKS_FORMATS``);
    staged into ``outs`` when given (see ``_write_atomic``)."""
    fmt = picks_format(path)
    if fmt == ".npy":
        write_picks_npy(path, picks, outs)
    elif fmt == ".txt":
        write_picks_txt(path, picks, outs)
    else:
        write_index_csv(path, picks, image_ids, outs)


def _json_default(obj: Any) -> Any:
    """What json.dumps cannot encode by itself: numpy scalars/arrays, tensors, tuples."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def info_arrays(result: Any) -> Dict[str, np.ndarray]:
    """Every field of a ``SelectResult`` (or any dataclass) as a numpy array for ``.npz``.

    Walks ``dataclasses.fields(result)``, so fields added to the result later are saved
    too. None fields are skipped; arrays and tensors become numpy arrays; numbers, bools
    and strings become 0-d arrays; dicts, lists and anything else that numpy would store
    as a pickled object become a 0-d string array holding JSON (read back with
    ``json.loads(str(npz[name]))``).
    """
    import dataclasses
    import json

    out: Dict[str, np.ndarray] = {}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if value is None:
            continue
        if hasattr(value, "detach"):  # a torch tensor, on any device
            value = value.detach().cpu().numpy()
        if isinstance(value, (dict, list, tuple)):
            arr = np.asarray(json.dumps(value, default=_json_default, sort_keys=False))
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "O":  # np.savez would pickle it
                arr = np.asarray(json.dumps(value, default=_json_default))
        out[f.name] = arr
    return out


def write_info_npz(path: str, result: Any, outs: Optional[Outputs] = None) -> None:
    """``info_arrays(result)`` as an uncompressed ``.npz`` (no pickles), atomically."""
    arrays = info_arrays(result)
    _write_atomic(path, lambda f: np.savez(f, **arrays), True, outs)


def complement(picks: np.ndarray, n: int) -> np.ndarray:
    """All indices of 0..n-1 not in ``picks``, ascending."""
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(picks, dtype=np.int64)] = False
    return np.flatnonzero(keep)


# ------------------------------------------------------------------------ commands


def _cmd_select(args: argparse.Namespace) -> int:
    import usl_fast

    t_start = time.perf_counter()
    if args.output is None and args.csv is None:
        raise CLIError(
            "give at least one output: -o/--output PICKS.npy|.txt|.csv and/or --csv PICKS.csv"
        )
    out_fmt = picks_format(args.output) if args.output is not None else None
    _require_suffix(args.csv, "--csv", ".csv", "the picks as CSV")
    _require_suffix(args.complement_csv, "--complement-csv", ".csv", "the other indices as CSV")
    _require_suffix(args.save_info, "--save-info", ".npz", "a numpy archive")
    writes_csv = args.csv is not None or args.complement_csv is not None or out_fmt == ".csv"
    if args.image_ids is not None and not writes_csv:
        raise CLIError("--image-ids is only used with --csv / --complement-csv / -o PICKS.csv")
    inputs = [args.features] + [p for p in (args.image_ids, args.labeled) if p is not None]
    outs = _check_outputs(
        [
            (args.output, "-o/--output"),
            (args.csv, "--csv"),
            (args.complement_csv, "--complement-csv"),
            (args.save_info, "--save-info"),
        ],
        args.force,
        inputs,
    )
    # The method's parameters (USL-T's need torch) and the labeled file, before any work.
    kwargs = _method_kwargs(args)
    labeled = read_indices(args.labeled, "--labeled") if args.labeled is not None else None

    feats = load_features(args.features, args.key)
    if args.normalize:
        feats = l2_normalize(feats)
    t_load = time.perf_counter() - t_start
    shape = getattr(feats, "shape", ())
    if len(shape) != 2:
        raise CLIError(f"features must be 2-D (n_points, dim), got shape {tuple(shape)}")
    n = int(shape[0])
    if labeled is not None:
        check_indices(labeled, n, "--labeled", args.labeled)
    # Read the ids before the (possibly long) selection so a wrong file fails at once.
    ids = read_image_ids(args.image_ids, n) if args.image_ids is not None else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = usl_fast.select(
            # USL-T reads numpy (a memory-mapped .npy is read once by its checks)
            feats if args.method != "uslt" else np.asarray(feats),
            args.m,
            method=args.method,
            labeled=labeled,
            seed=args.seed,
            threads=args.threads,
            progress=not args.no_progress,
            return_info=True,
            **kwargs,
        )
    for w in caught:  # e.g. features far from unit norm, clusters left empty
        print(f"{PROG}: note: {w.message}", file=sys.stderr)
    picks = np.asarray(res.indices, dtype=np.int64)
    if res.n_filled:
        print(
            f"{PROG}: note: only {args.m - res.n_filled} clusters were non-empty; the last "
            f"{res.n_filled} picks are the best-scoring remaining points",
            file=sys.stderr,
        )
    summary = ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
    if args.method != "usl":
        summary = f"--method {args.method}, seed {args.seed}, {summary}"
    if labeled is not None:
        summary = f"{labeled.size} labeled before, {summary}"
    summary = f"load {t_load:.2f} s, {summary}"

    # All or nothing: every output goes to a temporary file first, and only when all of
    # them are written are they renamed into place; on any error none is left behind.
    with outs:
        if args.output is not None:
            write_picks(args.output, picks, ids, outs)
        if args.save_info is not None:
            write_info_npz(args.save_info, res, outs)
        if args.csv is not None:
            write_index_csv(args.csv, picks, ids, outs)
        if args.complement_csv is not None:
            write_index_csv(args.complement_csv, complement(picks, n), ids, outs)
        outs.commit()
    total = time.perf_counter() - t_start
    print(f"selected {picks.size} of {n} in {total:.2f} s ({summary})")
    return 0


def method_choices() -> Tuple[str, ...]:
    """The methods ``usl_fast.select`` accepts: ``usl_fast.METHODS`` plus those its
    docstring lists for ``method`` (``uslt``, which needs torch, is not in METHODS)."""
    import re

    import usl_fast

    names = list(getattr(usl_fast, "METHODS", {}))
    doc = re.search(r"method : \{([^}]*)\}", usl_fast.select.__doc__ or "")
    if doc:
        names += re.findall(r'"([a-z0-9_-]+)"', doc.group(1))
    return tuple(dict.fromkeys(["usl", *names]))  # usl (the default) first, no repeats


def _option_name(dest: str) -> str:
    return "-k" if dest == "k" else "--" + dest.replace("_", "-")


def _method_params(method: str) -> Tuple[str, ...]:
    """Keywords the estimator of ``method`` takes (what select forwards to it)."""
    import inspect

    import usl_fast

    if method == "uslt":
        try:
            from .uslt import USLT
        except ImportError as exc:
            raise CLIError(f"--method uslt: {exc}") from exc
        cls: Any = USLT
    else:
        cls = usl_fast.METHODS[method]
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def _method_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The keywords of ``usl_fast.select`` for ``--method`` from the options given (each
    forwarded only when given, so the rest keeps the method's or the preset's default);
    a given option the method does not take is an error (forgetting ``--method probcover``
    while giving ``--delta`` would otherwise return USL picks)."""
    given = [o for o in _METHOD_OPTIONS if getattr(args, o, None) is not None]
    if args.method == "usl":
        kwargs = {o: getattr(args, o) for o in given if o in _SELECT_OPTIONS}
        kwargs["defaults"] = args.defaults or "cifar10"
        # The presets set exactly one horizon; giving the other one replaces it instead
        # of failing with "give at most one of horizon_dist and horizon_num".
        if "horizon_num" in kwargs and "horizon_dist" not in kwargs:
            kwargs["horizon_dist"] = None
        if "horizon_dist" in kwargs and "horizon_num" not in kwargs:
            kwargs["horizon_num"] = None
        ignored = [o for o in given if o not in _SELECT_OPTIONS]
    else:
        # Every option whose keyword the method's estimator takes (TypiClust's k and
        # kmeans_iter, ProbCover's alpha, USL-T's n_clusters included: select() passes
        # those on).
        takes = set(_method_params(args.method))
        kwargs = {
            _METHOD_OPTIONS[o]: getattr(args, o) for o in given if _METHOD_OPTIONS[o] in takes
        }
        ignored = [o for o in given if _METHOD_OPTIONS[o] not in takes]
    names = [_option_name(o) for o in ignored]
    if args.method != "usl" and args.defaults is not None:
        names.append("--defaults")
    if names:
        raise CLIError(
            f"--method {args.method} does not take {', '.join(names)}: leave "
            f"{'it' if len(names) == 1 else 'them'} out, or choose the --method "
            f"{'it belongs' if len(names) == 1 else 'they belong'} to"
        )
    return kwargs


def read_indices(path: str, option: str) -> np.ndarray:
    """Point indices from a file in a format ``usl-fast select -o`` writes: ``.npy``
    (integers), ``.txt`` (one per line) or ``.csv`` (an ``Index`` column first).

    Raises
    ------
    CLIError
        Missing file, another extension, unreadable content, or values that are not
        integers; the message names ``option`` and ``path``.
    """
    _require_file(path, option, "a .npy, .txt or .csv of indices (usl-fast select -o writes them)")
    fmt = Path(path).suffix.lower()
    try:
        if fmt == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif fmt == ".txt":
            with open(path, encoding="utf-8") as f:
                arr = np.array([int(line) for line in f if line.strip()], dtype=np.int64)
        elif fmt == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.reader(f) if r]
            if not rows or rows[0][0].strip() != "Index":
                raise CLIError(f"{option} {path!r}: a .csv needs the header Index[,ImageID]")
            arr = np.array([int(r[0]) for r in rows[1:]], dtype=np.int64)
        else:
            raise CLIError(
                f"{option} {path!r}: must be a .npy, .txt (one index per line) or .csv "
                "(Index column) file"
            )
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {option} file {path!r}: {exc}") from exc
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise CLIError(
            f"{option} {path!r} must hold a 1-D array of integer indices "
            f"(got shape {arr.shape}, dtype {arr.dtype})"
        )
    return arr.astype(np.int64)


def check_indices(idx: np.ndarray, n: int, option: str, path: str) -> None:
    """Indices must be distinct and lie in [0, n): a CLIError naming ``option`` if not."""
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise CLIError(
            f"{option} {path!r}: indices must lie in [0, {n}) for these features "
            f"(got values in [{idx.min()}, {idx.max()}])"
        )
    if np.unique(idx).size != idx.size:
        raise CLIError(f"{option} {path!r}: indices must be distinct (some repeat)")


def _require_file(path: Optional[str], option: str, what: str) -> None:
    """A CLIError naming ``option`` and ``path`` unless ``path`` (when given) is a file."""
    if path is None:
        return
    if os.path.isdir(path):
        raise CLIError(f"{option} {path!r} is a directory; it must be {what}")
    if not os.path.isfile(path):
        raise CLIError(f"{option} {path!r}: no such file; it must be {what}")


def _check_fixmatch_out(out: str, resume: bool, force: bool) -> Tuple[str, str]:
    """``--out``'s files (checkpoint.pt, log.txt), checked before any work: no symbolic
    link, directory or other non-file at either, an existing checkpoint only with --resume
    or --force; the directory, or when it does not exist yet its nearest existing ancestor
    (os.makedirs creates it before training), must accept new files.

    Returns
    -------
    (str, str)
        The checkpoint and log paths.
    """
    ckpt, log_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, "log.txt")
    if os.path.isdir(out):
        outs = Outputs(force=True)
        outs.check(ckpt, "--out checkpoint")
        outs.check(log_path, "--out log file")
        if os.path.lexists(ckpt) and not (resume or force):
            raise CLIError(f"{ckpt} exists: --resume it, or pass --force to start over")
        return ckpt, log_path
    # Walk up the path as given (not os.path.abspath's lexical form, which would drop a
    # "missing/.." that os.makedirs then trips over).
    ancestor = os.path.dirname(out.rstrip(os.sep) or out)
    while ancestor and not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    check_directory(ancestor or ".", "--out", out)
    return ckpt, log_path


def _cmd_fixmatch(args: argparse.Namespace) -> int:
    try:
        from .ssl import PRESETS, FixMatch, load_cifar, load_digits_split, read_labeled
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    from dataclasses import replace

    # Paths are checked before training; the data set's own files are checked first (its
    # loader says where to put them), then --labeled, before anything is trained.
    _require_file(args.resume, "--resume", "a checkpoint written by usl-fast fixmatch")
    if args.resume is None and args.labeled is None:
        raise CLIError("give --labeled PICKS (.npy or the reference .csv) or --resume CKPT")
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} exists and is not a directory")
    ckpt, log_path = _check_fixmatch_out(args.out, args.resume is not None, args.force)
    if args.resume is not None:  # before the data set is read: torch <= 2.5.1 is refused
        from ._safe_torch import check_torch_load

        check_torch_load("--resume")

    if args.dataset == "digits":
        try:
            data = load_digits_split()
        except ImportError as exc:
            raise CLIError("--dataset digits needs scikit-learn: pip install scikit-learn") from exc
    else:
        if args.root is None:
            raise CLIError(f"--dataset {args.dataset} needs --root DIR (where the data set lies)")
        try:
            data = load_cifar(args.root, args.dataset)
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from exc
    if args.resume is not None:
        if args.labeled is not None:
            print(
                f"{PROG}: note: --resume takes the labeled set from the checkpoint", file=sys.stderr
            )
        run = FixMatch.resume(args.resume, data, device=args.device)
        if args.steps is not None:
            run.config.steps = args.steps
    else:
        _require_file(
            args.labeled, "--labeled", "a .npy, .txt or .csv of picks from usl-fast select"
        )
        if Path(args.labeled).suffix not in (".npy", ".txt", ".csv"):
            raise CLIError(
                f"--labeled {args.labeled!r}: must be a .npy or .txt (usl-fast select -o "
                "PICKS.npy / PICKS.txt) or .csv (usl-fast select --csv PICKS.csv) file"
            )
        n_train = int(data.train_x.shape[0])
        try:
            labeled = read_labeled(args.labeled, n_train)
        except ValueError as exc:
            msg = str(exc).replace("`labeled` ", "", 1)
            if "must lie in" in msg:
                msg += f" (the {n_train} training images of --dataset {args.dataset})"
                if args.dataset == "digits":
                    msg += (
                        "; the picks must come from features of the same training split: "
                        "usl_fast.demo.digits_train_features(), see README"
                    )
            raise CLIError(f"--labeled {msg}") from exc
        cfg = PRESETS[args.dataset]
        over = {
            k: getattr(args, k)
            for k in ("steps", "batch_size", "eval_every", "lr", "threshold", "mu", "ema")
            if getattr(args, k) is not None
        }
        cfg = replace(cfg, seed=args.seed, **over)
        run = FixMatch(data, labeled, cfg, device=args.device)
    os.makedirs(args.out, exist_ok=True)
    c = run.config
    # Appended line by line (a resumed run continues the log), opened with O_NOFOLLOW.
    with open_append(log_path, "--out log file") as log_file:

        def log(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        log(
            f"FixMatch on {data.name}: {len(run.labeled)} labeled of {data.train_x.shape[0]}, "
            f"model {c.model}, {c.steps} steps, batch {c.batch_size} + {c.mu}x unlabeled, "
            f"threshold {c.threshold}, device {run.device}, from step {run.step_count}"
        )
        hist = run.train(log=log, checkpoint=ckpt, progress=not args.no_progress)
    acc = hist.test_acc[-1] if hist.test_acc else run.evaluate()
    print(f"final test accuracy {100 * acc:.2f}% (EMA model); checkpoint {ckpt}; log {log_path}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from . import plot

    if Path(args.output).suffix.lower() not in plot.FORMATS:
        raise CLIError(
            f"-o/--output {args.output!r}: the extension must be one of {', '.join(plot.FORMATS)}"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CLIError(
            'usl-fast plot needs matplotlib: pip install "usl_fast[plot]" (or pip install '
            "matplotlib)"
        ) from exc
    if args.projection == "tsne":
        from .demo import require_sklearn

        try:
            require_sklearn()
        except ImportError as exc:
            raise CLIError(
                "--projection tsne needs scikit-learn: pip install scikit-learn"
            ) from exc
    inputs = [args.features, args.picks] + [p for p in (args.labeled, args.info) if p]
    _check_outputs([(args.output, "-o/--output")], args.force, inputs)
    picks = read_indices(args.picks, "PICKS")
    labeled = read_indices(args.labeled, "--labeled") if args.labeled is not None else None
    extra: Dict[str, Any] = {}
    if args.info is not None:
        _require_suffix(args.info, "--info", ".npz", "written by usl-fast select --save-info")
        _require_file(args.info, "--info", "written by usl-fast select --save-info")
        extra["result"] = _read_info_result(args.info)
    for opt in ("defaults", "k", "max_points", "title", "threads"):
        if getattr(args, opt) is not None:
            extra[opt] = getattr(args, opt)

    feats = load_features(args.features, args.key)
    if args.normalize:
        feats = l2_normalize(feats)
    n = int(getattr(feats, "shape", (0,))[0])
    check_indices(picks, n, "PICKS", args.picks)
    if labeled is not None:
        check_indices(labeled, n, "--labeled", args.labeled)
    t0 = time.perf_counter()
    plot.plot_picks(
        feats,
        picks,
        labeled=labeled,
        path=args.output,
        projection=args.projection,
        seed=args.seed,
        **extra,
    )
    print(
        f"wrote {args.output} ({picks.size} picks of {n} points, {time.perf_counter() - t0:.2f} s)"
    )
    return 0


def _read_info_result(path: str) -> Any:
    """The ``SelectResult`` parts ``plot`` uses (labels, density, params: the density's k)
    from a ``select --save-info`` archive."""
    import json

    from ._pipeline import SelectResult

    with np.load(path, allow_pickle=False) as z:
        got = {key: z[key] for key in ("indices", "labels", "density", "params") if key in z.files}
    try:
        params = json.loads(str(got["params"])) if "params" in got else {}
    except ValueError:
        params = {}
    return SelectResult(
        indices=got.get("indices"),
        labels=got.get("labels"),
        density=got.get("density"),
        params=params if isinstance(params, dict) else {},
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    try:
        demo.require_sklearn()
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    if args.methods is not None and "uslt" in args.methods and not demo.have_torch():
        raise CLIError(
            f"--methods uslt needs PyTorch, which is not installed: {demo.TORCH_INSTALL}"
        )
    demo.run_demo(
        budgets=tuple(args.budgets),
        seeds=range(args.seeds),
        threads=args.threads,
        methods=args.methods,
    )
    return 0


# ------------------------------------------------------------------------- parsing


def _preset_k(name: str) -> int:
    from ._pipeline import PRESETS

    return int(PRESETS[name]["k"])


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def _off(v: Any) -> Any:
    return "off" if v is None else v


def _show_library_defaults(usl_group: Any, other_group: Any) -> None:
    """Append the real defaults to the help of options whose argparse default is None
    (None = "not given, the library decides"): each preset's value for the USL options,
    the estimator's constructor default for the TypiClust / ProbCover ones."""
    import inspect

    from . import _methods as usl_fast_methods
    from ._pipeline import PRESETS

    presets = ("cifar10", "cifar100", "imagenet", "imagenet-clip")
    for action in usl_group._group_actions:
        if action.dest in PRESETS["cifar10"]:
            vals = ", ".join(f"{name} {_off(PRESETS[name][action.dest])}" for name in presets)
            action.help = f"{action.help} [default: the preset's: {vals}]"
    owners = {}
    for cls in (usl_fast_methods.TypiClust, usl_fast_methods.ProbCover):
        for name, par in inspect.signature(cls.__init__).parameters.items():
            owners.setdefault(name, (cls.__name__, par.default))
    for action in other_group._group_actions:
        if action.dest in ("delta", "n_classes"):
            continue  # their help says how they combine
        if action.dest in owners and "[default" not in (action.help or ""):
            owner, default = owners[action.dest]
            shown = "no limit" if default is None else default
            action.help = f"{action.help} [default: {shown}]"


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``usl-fast`` (subcommands ``select``, ``fixmatch``, ``demo``)."""
    import inspect

    from . import __version__, plot

    parser = _Parser(
        prog=PROG,
        description="Unsupervised Selective Labeling (USL, Wang, Lian & Yu, ECCV 2022): "
        "choose which unlabeled instances to send for labeling.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.required = True

    sp = sub.add_parser(
        "select",
        help="choose m instances to label from a feature file",
        description="Choose m instances to label from FEATURES with USL (kNN density, k-means, "
        "regularized per-cluster arg-max) or another --method, optionally as a later round "
        "(--labeled). Every USL option not given comes from the --defaults preset (see "
        "usl_fast.PRESETS); the other methods' options default to their estimator's.",
    )
    sp.add_argument(
        "features",
        metavar="FEATURES",
        help="(n, d) features: .npy (memory-mapped), .npz, or .pt/.pth (needs torch)",
    )
    sp.add_argument(
        "-m",
        "--budget",
        dest="m",
        type=int,
        required=True,
        help="labeling budget: number of instances to pick, 1 <= m <= n",
    )
    sp.add_argument(
        "--key", help="entry holding the features in a .npz or a dict saved in .pt/.pth"
    )
    sp.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise rows first (the published configs assume unit-norm features)",
    )
    sp.add_argument(
        "--method",
        choices=method_choices(),
        default="usl",
        help="selection method, as usl_fast.select(method=...): usl (USL); typiclust, "
        "probcover, kcenter (k-center greedy), random (the authors' baseline) and uslt "
        "(USL-T heads, needs torch) are usl_fast.TypiClust, ProbCover, KCenterGreedy, "
        "RandomSelect and usl_fast.uslt.USLT [default: usl]",
    )
    sp.add_argument(
        "--labeled",
        metavar="LABELED",
        help="indices labeled in earlier rounds (.npy, or .txt / .csv as -o writes them): "
        "the picks are new ones, and the method accounts for these (usl_fast.select labeled=)",
    )

    out = sp.add_argument_group("outputs (at least one of -o / --csv)")
    out.add_argument(
        "-o",
        "--output",
        metavar="PICKS",
        help="write the picks; the extension picks the format: .npy (int64, pick order), "
        ".txt (one index per line, pick order) or .csv (as --csv)",
    )
    out.add_argument(
        "--csv",
        metavar="PICKS.csv",
        help="write the picks sorted ascending as CSV: header Index,ImageID with "
        "--image-ids, else a single Index column",
    )
    out.add_argument(
        "--complement-csv",
        metavar="REST.csv",
        help="write all other indices in the same CSV format",
    )
    out.add_argument(
        "--image-ids",
        metavar="FILE",
        help="ImageID column for the CSVs: one id per line, exactly n lines",
    )
    out.add_argument(
        "--save-info",
        metavar="INFO.npz",
        help="also save usl_fast.select's SelectResult: every field that is set (picks, "
        "cluster labels, densities, scores, ...) as an array, timings and params as JSON",
    )
    out.add_argument("--force", action="store_true", help="overwrite existing output files")

    g = sp.add_argument_group("USL parameters (default: from --defaults)")
    g.add_argument(
        "--defaults",
        choices=DEFAULTS_CHOICES,
        default=None,
        help="published configuration supplying every parameter not given [default: cifar10]",
    )
    g.add_argument(
        "-k", "--k", dest="k", type=int, default=None, help="kNN size of the density, self included"
    )
    g.add_argument(
        "--n-clusters",
        type=int,
        default=None,
        help="k-means K >= m [default: m, or the published K for m=2500 / 12820]",
    )
    g.add_argument("--kmeans-iter", type=int, default=None, help="Lloyd iterations (fixed count)")
    g.add_argument(
        "--kmeans-init",
        choices=("random", "k-means++"),
        default=None,
        help="k-means init [default: random, as the reference]",
    )
    g.add_argument("--rounds", type=int, default=None, help="selection rounds T")
    g.add_argument("--weight", type=float, default=None, help="regularizer weight w")
    g.add_argument("--momentum", type=float, default=None, help="regularizer momentum in [0, 1]")
    g.add_argument("--alpha", type=float, default=None, help="regularizer exponent")
    g.add_argument(
        "--horizon-dist",
        type=float,
        default=None,
        help="mask squared distances >= this (CIFAR flavour; replaces the preset's --horizon-num)",
    )
    g.add_argument(
        "--horizon-num",
        type=int,
        default=None,
        help="use only this many nearest picks (ImageNet flavour; replaces the "
        "preset's --horizon-dist)",
    )
    g.add_argument(
        "--own-cluster",
        choices=("position", "cluster", "none"),
        default=None,
        help="which pick is masked as a point's own cluster: position (reference), "
        "cluster (corrected), none",
    )
    g.add_argument(
        "--mask-zero",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mask exact zero distances in the regularizer (ImageNet MoCo flavour)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the k-means init / the random baseline [default: 0]",
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads [default: all]")
    g.add_argument("--no-progress", action="store_true", help="hide the per-phase progress bars")

    o = sp.add_argument_group(
        "TypiClust / ProbCover parameters (--method typiclust / probcover; -k and "
        "--kmeans-iter (TypiClust), --alpha (ProbCover's purity), --seed and --threads also "
        "apply; see usl_fast.TypiClust, usl_fast.ProbCover) [default: the method's own]"
    )
    o.add_argument(
        "--delta",
        type=float,
        default=None,
        help="ProbCover ball radius (plain L2) [default: by purity with --n-classes, else 0.6]",
    )
    o.add_argument(
        "--n-classes",
        type=int,
        default=None,
        help="ProbCover: choose delta by purity from this many k-means classes",
    )
    o.add_argument("--max-edges", type=int, default=None, help="ProbCover: most graph edges")
    o.add_argument(
        "--max-clusters", type=int, default=None, help="TypiClust: most k-means clusters"
    )
    o.add_argument(
        "--min-cluster-size",
        type=int,
        default=None,
        help="TypiClust: clusters this small or smaller are dropped",
    )
    o.add_argument(
        "--metric",
        choices=("sqeuclidean", "euclidean"),
        default=None,
        help="TypiClust typicality distance",
    )
    _show_library_defaults(g, o)

    t = sp.add_argument_group(
        "USL-T parameters (--method uslt; --n-clusters [default: m + len(labeled)], --seed "
        "and --threads also apply)"
    )
    t.add_argument(
        "--epochs", type=int, default=None, help="[default: >= 100 epochs and >= 600 steps]"
    )
    t.add_argument("--batch-size", type=int, default=None, help="[default: 1024]")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate [default: 3e-3]")
    t.add_argument("--n-heads", type=int, default=None, help="clustering heads [default: 3]")
    t.add_argument(
        "--n-neighbors", type=int, default=None, help="kNN list of the local loss [default: 20]"
    )
    t.add_argument(
        "--head", choices=("cosine", "linear"), default=None, help="head kind [default: cosine]"
    )
    t.add_argument(
        "--head-init",
        choices=("sample", "k-means++"),
        default=None,
        help="starting prototypes of cosine heads [default: sample]",
    )
    t.add_argument(
        "--device", default=None, help="torch device to train on, e.g. cuda:0 [default: cpu]"
    )
    sp.set_defaults(func=_cmd_select)

    fp = sub.add_parser(
        "fixmatch",
        help="train the reference FixMatch from a labeled-index file (needs torch)",
        description="Train FixMatch (Sohn et al. 2020) on CIFAR-10/100 (python-pickle batches "
        "under --root; never downloaded) or scikit-learn's digits from the picks of "
        "`usl-fast select`. Evaluates the EMA model on the test split every --eval-every steps, "
        "saves OUT/checkpoint.pt there, and resumes from one with --resume.",
    )
    fp.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100", "digits"),
        required=True,
        help="digits = scikit-learn's digits split by usl_fast.ssl.load_digits_split: the "
        "picks index its 1,347 training images",
    )
    fp.add_argument("--root", help="directory holding cifar-10-batches-py / cifar-100-python")
    fp.add_argument(
        "--labeled",
        metavar="PICKS",
        help="picks: .npy (usl-fast select -o) or Index[,ImageID] .csv, indices into the "
        "training split",
    )
    fp.add_argument(
        "--out", default="fixmatch_run", metavar="DIR", help="checkpoint and log directory"
    )
    fp.add_argument("--resume", metavar="CKPT", help="continue from this checkpoint file")
    fp.add_argument("--force", action="store_true", help="start over even if OUT has a checkpoint")
    fp.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="training steps [default: 2^20 CIFAR, 2000 digits]",
    )
    fp.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="labeled images per step [default: 64; digits 16]",
    )
    fp.add_argument(
        "--mu", type=_positive_int, default=None, help="unlabeled per labeled [default: 7]"
    )
    fp.add_argument(
        "--threshold", type=float, default=None, help="pseudo-label confidence [default: 0.95]"
    )
    fp.add_argument("--lr", type=float, default=None, help="SGD learning rate [default: 0.03]")
    fp.add_argument(
        "--ema", type=float, default=None, help="EMA decay [default: 0.999; digits 0.99]"
    )
    fp.add_argument(
        "--eval-every",
        type=_positive_int,
        default=None,
        help="steps between evaluations [default: 1024; digits 500]",
    )
    fp.add_argument("--seed", type=int, default=0, help="model init, batches, augmentations")
    fp.add_argument(
        "--device", default=None, help="torch device [default: cuda if available, else cpu]"
    )
    fp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fp.set_defaults(func=_cmd_fixmatch)

    dp = sub.add_parser(
        "demo",
        help="USL vs USL-T vs random picks on scikit-learn's digits (needs scikit-learn)",
        description="Compare USL and USL-T with random picks on scikit-learn's bundled digits data "
        "(no download): classes covered and label-spreading accuracy per budget.",
    )
    dp.add_argument(
        "--seeds", type=_positive_int, default=5, metavar="N", help="run seeds 0..N-1 [default: 5]"
    )
    dp.add_argument(
        "--budgets",
        type=_positive_int,
        nargs="+",
        default=[10, 20, 40],
        metavar="M",
        help="labeling budgets [default: 10 20 40]",
    )
    dp.add_argument(
        "--threads", type=_positive_int, default=None, help="CPU threads [default: all]"
    )
    dp.add_argument(
        "--methods",
        nargs="+",
        choices=("usl", "uslt", "random"),
        default=None,
        help="methods to compare [default: usl uslt random; without torch installed, uslt "
        "is skipped and the report says so]",
    )
    dp.set_defaults(func=_cmd_demo)
    plot_default = {
        name: p.default for name, p in inspect.signature(plot.plot_picks).parameters.items()
    }
    pp = sub.add_parser(
        "plot",
        help="draw where the picks lie (needs matplotlib; usl_fast.plot.plot_picks)",
        description="Draw a selection for a report (usl_fast.plot.plot_picks, docs/plot.md): a "
        "2-D projection of FEATURES coloured by cluster with PICKS marked, beside the "
        "histogram of every point's kNN density with the picks' densities marked.",
    )
    pp.add_argument("features", metavar="FEATURES", help="the features the picks were made on")
    pp.add_argument(
        "picks", metavar="PICKS", help="the picks: .npy, .txt or .csv, as usl-fast select -o writes"
    )
    pp.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="the figure; its extension sets the format: .png, .pdf or .svg",
    )
    pp.add_argument(
        "--labeled", metavar="LABELED", help="points labeled earlier, drawn as hollow squares"
    )
    pp.add_argument(
        "--info",
        metavar="INFO.npz",
        help="colour by and histogram the selection's own cluster labels and densities, from "
        "usl-fast select --save-info [default: k-means and density computed here]",
    )
    pp.add_argument("--projection", choices=plot.PROJECTIONS, default="pca", help="2-D projection")
    pp.add_argument("--seed", type=int, default=0, help="k-means, background sample and t-SNE")
    pp.add_argument(
        "--defaults",
        choices=DEFAULTS_CHOICES,
        default=None,
        help="the preset the selection used: the computed density takes its k, as "
        "usl-fast select does [default: cifar10]",
    )
    pp.add_argument(
        "-k",
        "--k",
        dest="k",
        type=_positive_int,
        default=None,
        help="kNN size of the computed density, when the selection set one [default: the "
        f"--defaults preset's: cifar10 {_preset_k('cifar10')}; unused with --info, whose "
        "density and k are the selection's]",
    )
    pp.add_argument(
        "--max-points",
        type=_positive_int,
        default=None,
        help=f"most points drawn in the projection [default: {plot_default['max_points']}]",
    )
    pp.add_argument("--title", default=None, help="figure title [default: picks among points]")
    pp.add_argument("--key", help="entry holding the features in a .npz or .pt/.pth dict")
    pp.add_argument("--normalize", action="store_true", help="L2-normalise rows first")
    pp.add_argument("--threads", type=_positive_int, default=None, help="[default: all]")
    pp.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    pp.set_defaults(func=_cmd_plot)
    # The list shown by --help and by the "required" error: every registered subcommand.
    sub.metavar = "{" + ",".join(sub.choices) + "}"
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``usl-fast`` and ``python -m usl_fast``.

    Returns 0 on success; errors raise ``SystemExit(2)`` after printing
    ``usl-fast: error: <message>`` to stderr, Ctrl-C raises ``SystemExit(130)``.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports these from the top-level parser; name the subcommand instead.
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, ImportError) as exc:
        # ValueError/TypeError come from usl_fast's argument checks, whose messages
        # already name the argument and the value received; ImportError from an optional
        # dependency (torch, matplotlib, scikit-learn), whose message says what to install.
        parser.exit(2, f"{PROG}: error: {exc}\n")
    except OSError as exc:  # disk full, permission denied while writing outputs
        parser.exit(2, f"{PROG}: error: {exc}\n")
    except MemoryError as exc:
        # usl_fast's pre-check names the sizes and the limit; numpy's own names the size;
        # an allocation failing in the engine says only std::bad_alloc.
        msg = " ".join(str(exc).split())
        if not msg.startswith("usl_fast:") and "allocate" not in msg:
            msg = f"out of memory ({msg or 'MemoryError'})"
        parser.exit(2, f"{PROG}: error: {msg}\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{PROG}: interrupted\n")
    return 0  # not reached: parser.exit raises


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
