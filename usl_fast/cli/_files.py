"""The files ``usl-fast`` reads and writes: feature matrices (``.npy``, ``.npz``,
``.pt``/``.pth``) opened without copying and without unpickling, image-id and index files,
and the picks, CSVs and ``--save-info`` archive, all written atomically through
``usl_fast._io.Outputs``. Every problem a user can cause is a ``CLIError`` naming the
option and the path."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._io import (
    Outputs,
    check_index_range,
    check_npy,
    not_a_file,
    read_index_file,
    write_atomic,
)
from ._common import CLIError

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
    problem = not_a_file(path, "FEATURES", "a .npy, .npz, .pt or .pth file")
    if problem:
        raise CLIError(problem if p.exists() else f"FEATURES file not found: {path!r}")
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


def _check_npy(p: Path, path: str, what: str = "FEATURES file") -> None:
    """A CLIError before numpy's loader runs unless ``p`` is a .npy file of a numeric
    array whose data is all there (``usl_fast._io.check_npy``: numpy would take a file
    without the .npy signature for a pickle and suggest loading it with allow_pickle)."""
    try:
        check_npy(p, what)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _load_torch(p: Path, key: Optional[str]) -> np.ndarray:
    try:
        import torch
    except ImportError as exc:
        raise CLIError(
            f"reading {p.suffix} files needs PyTorch: pip install usl_fast[torch] "
            "(or save the features with numpy.save and pass the .npy file)"
        ) from exc
    from .._safe_torch import check_torch_load

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
    if not arrays and len(entries) <= 1:
        # "several entries; choose one" would be wrong: there is nothing to choose from.
        held = (
            f"one entry, {next(iter(entries))!r} (a Python "
            f"{type(next(iter(entries.values()))).__name__})"
            if entries
            else "an empty dict"
        )
        raise CLIError(
            f"{path!r} holds {held}, not a tensor or array; it must hold the (n, d) features: "
            "a tensor, or a dict with one (chosen with --key when there are several)"
        )
    raise CLIError(
        f"{path!r} holds several entries; choose one with --key (available: {_keys(entries)})"
    )


def _keys(entries: Dict[Any, Any]) -> str:
    names = [str(k) for k in entries]
    return ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def l2_normalize(x: Any) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a new float32 array (the input is not modified), by
    the library's own ``unit_rows``: ``--normalize`` gives the picks of ``normalize=True``,
    rows of tiny norm included (an all-zero row stays zero). It works in row chunks, so a
    memory-mapped input is streamed, with float64 norms for accuracy."""
    from .._validate import unit_rows

    arr = np.asarray(x)
    if arr.ndim != 2:
        raise CLIError(
            f"features must be 2-D (n_points, dim) to --normalize, got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise CLIError(f"features must be numeric to --normalize, got dtype {arr.dtype}")
    return unit_rows(arr)


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


def read_indices(path: str, option: str) -> np.ndarray:
    """Point indices from a file in a format ``usl-fast select`` writes: ``.npy``
    (integers, shape (n,) or (n, 1)), ``.txt`` (one per line) or ``.csv`` (an ``Index``
    column first), read by ``usl_fast._io.read_index_file``, the one reader of index files.

    Raises
    ------
    CLIError
        Missing file, another extension, unreadable content, values that are not
        integers (naming the line) or a .npy of another shape; the message names
        ``option`` and ``path``.
    """
    try:
        return read_index_file(path, option)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def check_indices(idx: np.ndarray, n: int, option: str, path: str) -> None:
    """Indices must be distinct and lie in [0, n): a CLIError naming ``option`` if not
    (``usl_fast._io.check_index_range``, whose words ``python -m usl_fast.distributed``
    uses too)."""
    try:
        check_index_range(idx, n, option, path, "these features")
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def require_file(path: Optional[str], option: str, what: str) -> None:
    """A CLIError naming ``option`` and ``path`` unless ``path`` (when given) is a file."""
    if path is None:
        return
    problem = not_a_file(path, option, what)
    if problem:
        raise CLIError(problem)


def require_suffix(path: Optional[str], option: str, suffix: str, what: str) -> None:
    if path is not None and Path(path).suffix.lower() != suffix:
        raise CLIError(f"{option} {path!r}: must end in {suffix} ({what})")


# -------------------------------------------------------------------------- output


def check_outputs(
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
