"""Output files, written safely (and ``check_npy``, the header check every command line
runs on a ``.npy`` it reads before numpy's loader sees it, and ``read_index_file``, the one
reader of index files): every output of a command is checked before any work,
written to a temporary file beside its final path, and renamed into place only once all
of the command's outputs were written (all or nothing). A symbolic link at an output path
is refused, dangling or not: writing through it would create or clobber a file the user
never named. Errors name the user's path, never a temporary file.

Typical use (the CLI's ``select``)::

    outs = Outputs(force=args.force, inputs=[args.features])
    outs.check(args.output, "-o/--output")      # before any work
    ...                                          # the work
    with outs:                                   # on an error: every temporary removed
        outs.stage(args.output, lambda f: np.save(f, picks), binary=True)
        outs.commit()
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
import tempfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

__all__ = [
    "OutputError",
    "Outputs",
    "check_directory",
    "check_npy",
    "open_append",
    "write_atomic",
]


class OutputError(ValueError):
    """An output path that cannot be written, or a write that failed. A ``ValueError``
    (like the other argument checks) so callers that report bad arguments report it too;
    the message names the option (``what``) and the path the user gave."""


#: At most this many bytes of an output's name go into its temporary's name
#: (".NAME.<8 hex digits>.tmp", plus ".old" for the undo link of a replaced file): a
#: valid NAME can be NAME_MAX (255) bytes long, and the temporary's must fit too. The
#: random part keeps truncated names unique; the kept part only helps a person see whose
#: it is.
_TMP_NAME_BYTES = 128


def _tmp_prefix(path: str) -> str:
    name = os.path.basename(path)
    while len(os.fsencode(name)) > _TMP_NAME_BYTES:  # whole characters, never half one
        name = name[:-1]
    return f".{name}."


def _create_temporary(parent: str, path: str) -> Tuple[int, str]:
    """A new, empty temporary file beside ``path``, opened for writing.

    Created with ``O_CREAT | O_EXCL`` (never through a link planted at its name) and mode
    0o666, which the kernel reduces by the process umask: the file gets the permissions
    ``open()`` gives a new file. mkstemp's 0o600 would make every output private, and
    fixing that afterwards needs the umask, which can only be read by setting it, which
    changes the mode of files other threads create meanwhile (this runs inside training
    processes: plot_picks(path=), FixMatch.save)."""
    prefix = _tmp_prefix(path)
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(parent, f"{prefix}{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # a name taken, by chance or by someone planting one: draw another
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", parent)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Target:
    __slots__ = ("path", "what", "force", "real", "existed")

    def __init__(self, path: str, what: str, force: bool, real: str, existed: bool) -> None:
        self.path, self.what, self.force, self.real, self.existed = path, what, force, real, existed


class Outputs:
    """The output files of one command.

    Parameters
    ----------
    force : bool
        Default for ``check``: whether an existing regular file may be replaced.
    inputs : iterable of str
        Files the command reads; an output resolving to one of them is refused.

    Notes
    -----
    ``check`` every output before any work; after the work, ``stage`` each one (its
    writer fills a temporary file in the output's directory) and ``commit`` (renames all
    of them). Used as a context manager, an exception removes every temporary file;
    ``commit`` itself undoes its renames if one fails. Nothing is ever written through a
    symbolic link: temporaries are created exclusively (``O_EXCL``) and a link at an
    output path is refused at ``check`` and again at ``commit``.
    """

    def __init__(self, force: bool = False, inputs: Iterable[Optional[str]] = ()) -> None:
        self.force = bool(force)
        self._inputs = {os.path.realpath(os.fspath(p)) for p in inputs if p is not None}
        self._targets: Dict[str, _Target] = {}
        self._staged: List[Tuple[_Target, str]] = []

    # ------------------------------------------------------------------ checks

    def check(self, path: Any, what: str, force: Optional[bool] = None) -> Optional[str]:
        """Refuse, before any work, an output that could not be written at the end.

        Parameters
        ----------
        path : str, os.PathLike or None
            The output path as the user gave it (None: no such output, nothing checked).
        what : str
            The option or argument that named it, for messages (``"-o/--output"``).
        force : bool, optional
            Whether an existing regular file may be replaced (default: the object's).

        Returns
        -------
        str or None
            ``path`` as a str.

        Raises
        ------
        OutputError
            The directory does not exist, is not a directory or does not accept new files
            (probed by creating and removing a file there: permissions, read-only mounts
            and pseudo file systems such as /proc all show); the path is a symbolic link
            (dangling or not), a directory or another non-regular file; it exists and
            ``force`` is off; it is an input file or the same file as another output.
        """
        if path is None:
            return None
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        force = self.force if force is None else bool(force)
        name = os.path.basename(path)
        if name in ("", ".", ".."):
            raise OutputError(f"{what} {path!r} names a directory, not a file")
        # The directory as given, not os.path.abspath's lexical version: "nodir/../x"
        # must fail here as it would when the file is created, not pass as "./x".
        parent = os.path.dirname(path) or "."
        check_directory(parent, what, path)
        try:
            st = os.lstat(path)
            existed = True
        except FileNotFoundError:
            existed = False
        except OSError as exc:
            raise OutputError(f"{what} {path!r}: cannot use this path ({_reason(exc)})") from None
        if existed:
            _refuse_kind(path, what, st.st_mode)
            if not force:
                raise OutputError(
                    f"{what}: refusing to overwrite existing file {path!r} (use --force)"
                )
        real = os.path.join(os.path.realpath(parent), name)
        if real in self._inputs:
            raise OutputError(f"{what} {path!r} is also an input file")
        # Compared by resolved path, whether or not the strings match: "-o x.csv --csv
        # x.csv" would otherwise stage the same file twice and the last writer would win.
        for other in self._targets.values():
            if other.real == real:
                raise OutputError(
                    f"output files must be distinct ({other.what} {other.path!r} and "
                    f"{what} {path!r} are the same file)"
                )
        self._targets[path] = _Target(path, what, force, real, existed)
        return path

    # ------------------------------------------------------------------ writing

    def stage(self, path: Any, writer: Callable[[Any], Any], binary: bool = True) -> None:
        """Write an output to a temporary file beside ``path`` (``commit`` renames it).

        Parameters
        ----------
        path : str or os.PathLike
            An output given to ``check`` (one that was not is checked now).
        writer : callable
            Called with the open temporary file (binary, or text: UTF-8 with
            ``newline=""``, the csv module writing its own line ends); writes the content.
        binary : bool
            The file object's mode.

        Raises
        ------
        OutputError
            The temporary file could not be created or written (disk full, ...): every
            temporary of this object is removed; the message names ``path``.
        """
        path = os.fspath(path)
        target = self._targets.get(path)
        if target is None:
            self.check(path, "output")
            target = self._targets[path]
        parent = os.path.dirname(path) or "."
        try:
            # A replaced file (--force) gets a new file's mode, not its old one: the
            # temporary is a new file renamed over it. Kept so, as it always was here.
            fd, tmp = _create_temporary(parent, path)
            self._staged.append((target, tmp))
            if binary:
                f = os.fdopen(fd, "wb")
            else:
                f = os.fdopen(fd, "w", newline="", encoding="utf-8")
            with f:
                writer(f)
                f.flush()
                # On disk before commit's rename: without it a crash after the rename can
                # leave the output's name on an empty or partly written file (delayed
                # allocation), which is not the all-or-nothing promised.
                os.fsync(f.fileno())
        except OSError as exc:
            self.discard()
            why = _reason(exc)
            raise OutputError(f"{target.what} {path!r}: could not write it ({why})") from exc
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        """Rename every staged temporary onto its output path, all or nothing.

        Each path is checked again first (a link, directory or, without ``force``, a file
        that appeared during the work is refused). If a rename fails, the outputs already
        renamed are undone: a new one removed, a replaced one restored from a hard link
        kept aside for that purpose (where the file system allows hard links).

        Raises
        ------
        OutputError
            Naming the output that could not be put in place; no temporary is left.
        """
        staged, self._staged = self._staged, []
        backups: List[Optional[str]] = []
        present: List[bool] = []  # whether each output exists just before its rename
        try:
            for target, tmp in staged:
                try:
                    st = os.lstat(target.path)
                except FileNotFoundError:
                    backups.append(None)
                    present.append(False)
                    continue
                _refuse_kind(target.path, target.what, st.st_mode)
                if not target.force and not target.existed:
                    raise OutputError(
                        f"{target.what} {target.path!r} was created by something else while "
                        "this command ran; refusing to overwrite it (use --force)"
                    )
                backups.append(_link_aside(target.path, tmp))
                present.append(True)
        except BaseException:
            self._staged = staged
            self.discard()
            for b in backups:
                _unlink(b)
            raise
        done = 0
        try:
            for target, tmp in staged:
                os.replace(tmp, target.path)
                done += 1
        except BaseException as exc:
            for (target, _), b, was in zip(staged[:done], backups[:done], present):
                if b is not None:
                    _replace_quietly(b, target.path)
                elif not was:
                    _unlink(target.path)
                # else: replaced where no hard link could be kept; nothing to restore from
            for (_, tmp), b in zip(staged[done:], backups[done:]):
                _unlink(tmp)
                _unlink(b)
            if isinstance(exc, OSError):
                t = staged[done][0]
                why = _reason(exc)
                raise OutputError(f"{t.what} {t.path!r}: could not write it ({why})") from exc
            raise
        for b in backups:
            _unlink(b)
        # The renames themselves reach the disk with their directories' metadata.
        for d in sorted({os.path.dirname(t.real) for t, _ in staged}):
            _sync_directory(d)

    def discard(self) -> None:
        """Remove every temporary staged and not committed."""
        staged, self._staged = self._staged, []
        for _, tmp in staged:
            _unlink(tmp)

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()


def check_directory(directory: str, what: str, path: Optional[str] = None) -> None:
    """Refuse a directory that does not exist, is not a directory or does not accept new
    files (probed by creating and removing a file there: permissions, read-only mounts and
    pseudo file systems such as /proc all show).

    Parameters
    ----------
    directory : str
        Checked as given (a symbolic link to a directory is fine).
    what : str
        The option naming it, for messages.
    path : str, optional
        The path the user gave, named in messages (default: ``directory``).

    Raises
    ------
    OutputError
    """
    shown = f"{what} {directory if path is None else path!r}"
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        raise OutputError(f"{shown}: no such directory {directory!r}") from None
    except OSError as exc:
        why = _reason(exc)
        raise OutputError(f"{shown}: cannot use directory {directory!r} ({why})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{shown}: {directory!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".usl-fast-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{shown}: cannot create files in directory {directory!r} ({_reason(exc)})"
        ) from None


def _refuse_kind(path: str, what: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise OutputError(
            f"{what} {path!r} is a symbolic link; refusing to write through or replace it "
            "(remove the link or give another path)"
        )
    if stat.S_ISDIR(mode):
        raise OutputError(f"{what} {path!r} is a directory")
    if not stat.S_ISREG(mode):
        raise OutputError(f"{what} {path!r} exists and is not a regular file")


def _sync_directory(directory: str) -> None:
    """fsync a directory, best effort: the outputs are already in place, and some file
    systems cannot open or sync a directory; a crash there may only lose the renames."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Optional[str]) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _replace_quietly(src: str, dst: str) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        pass  # best effort while already reporting the failure that made it necessary


def _link_aside(path: str, tmp: str) -> Optional[str]:
    """A hard link to the file about to be replaced, to restore it if a later rename
    fails; None where hard links are not allowed (the rename then cannot be undone)."""
    aside = tmp + ".old"
    try:
        os.link(path, aside, follow_symlinks=False)
    except OSError:
        return None
    return aside


def write_atomic(
    path: Any, writer: Callable[[Any], Any], what: str, binary: bool = True, force: bool = True
) -> None:
    """One output, checked and written through a temporary file and a rename.

    Parameters
    ----------
    path : str or os.PathLike
    writer : callable
        Called with the open temporary file.
    what : str
        The argument naming ``path``, for messages.
    binary : bool
        Binary or text (UTF-8) file object.
    force : bool
        Whether an existing regular file may be replaced.

    Raises
    ------
    OutputError
        As ``Outputs.check``, ``stage`` and ``commit``.
    """
    with Outputs(force=force) as outs:
        outs.check(path, what)
        outs.stage(path, writer, binary=binary)
        outs.commit()


def open_append(path: Any, what: str) -> Any:
    """Open a log file for appending (created if missing), never through a symbolic link.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        The argument naming ``path``, for messages.

    Returns
    -------
    io.TextIOWrapper
        UTF-8, append mode.

    Raises
    ------
    OutputError
        ``path`` is a symbolic link (``O_NOFOLLOW``), not a regular file, or cannot be
        opened.
    """
    path = os.fspath(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    # O_NONBLOCK: a FIFO planted at the path fails the regular-file check below instead of
    # blocking the open until some reader appears.
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        try:
            mode: Optional[int] = os.lstat(path).st_mode
        except OSError:
            mode = None
        if mode is not None:
            _refuse_kind(path, what, mode)
        raise OutputError(f"{what} {path!r}: cannot open it for writing ({_reason(exc)})") from exc
    try:
        mode = os.fstat(fd).st_mode
        _refuse_kind(path, what, mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def check_npy(path: Any, what: str) -> Tuple[Optional[Tuple[int, ...]], Any]:
    """The shape and dtype in a ``.npy`` file's header, read without loading the array.

    numpy's own loader takes a file without the ``.npy`` signature for a pickle (and says
    to load it with ``allow_pickle``), and maps a truncated one into "mmap length is
    greater than file size"; every reader of a user's ``.npy`` calls this first, so that
    such a file gets a message saying what is wrong with it and none suggests unpickling.

    Parameters
    ----------
    path : str or os.PathLike
        An existing file.
    what : str
        How messages name the file, e.g. ``"FEATURES file"``, ``"--labeled file"``.

    Returns
    -------
    (shape, dtype)
        Both None for format 3.0 (utf-8 field names), left to numpy's checks.

    Raises
    ------
    ValueError
        Not a ``.npy`` file (no ``\\x93NUMPY`` signature, unreadable header), an array of
        Python objects (loading it would unpickle), or shorter than its header says.
    """
    import numpy as np

    path = os.fspath(path)
    fmt = np.lib.format
    with open(path, "rb") as f:
        if f.read(len(fmt.MAGIC_PREFIX)) != fmt.MAGIC_PREFIX:
            raise ValueError(
                f"{what} {path!r} is not a valid .npy file: it does not start with the "
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
                return None, None  # format 3.0 (utf-8 field names): numpy's own checks
        except ValueError as exc:
            raise ValueError(
                f"{what} {path!r} is not a valid .npy file: its header cannot be read "
                f"({' '.join(str(exc).split())})"
            ) from exc
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(
            f"{what} {path!r} holds Python objects (dtype {dtype}), which usl-fast never "
            "loads (unpickling can run code); save a numeric array"
        )
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = os.stat(path).st_size
    if actual < expected:
        raise ValueError(
            f"{what} {path!r} is truncated: its header describes a {dtype} array of "
            f"shape {tuple(shape)}, {expected:,} bytes in all, but the file has {actual:,} bytes"
        )
    return tuple(shape), dtype


#: What an index file may be, as every message about one says it.
INDEX_FORMATS = (
    "a .npy, .txt or .csv file of indices (as usl-fast select writes: -o PICKS.npy, "
    "-o PICKS.txt with one index per line, --csv PICKS.csv with an Index column first)"
)


def not_a_file(path: str, what: str, must_be: str) -> Optional[str]:
    """Why ``path`` is no file to read, found without opening it, or None if it is a regular
    file: "<what> <path> is a directory", "... is not a regular file (a pipe, device or
    socket)" (never opened: reading a pipe or a terminal could wait forever) or "...: no
    such file", each followed by "; it must be <must_be>"."""
    if os.path.isdir(path):
        return f"{what} {path!r} is a directory; it must be {must_be}"
    if os.path.exists(path) and not os.path.isfile(path):
        return f"{what} {path!r} is not a regular file (a pipe, device or socket); it must be {must_be}"
    if not os.path.isfile(path):
        return f"{what} {path!r}: no such file; it must be {must_be}"
    return None


def read_index_file(path: Any, what: str) -> Any:
    """Point indices from a file in a format ``usl-fast select`` writes, in file order.

    The one reader of index files (``usl-fast select --labeled``, ``usl-fast plot PICKS
    --labeled``, ``usl-fast fixmatch --labeled``, ``python -m usl_fast.distributed select
    --labeled`` and ``usl_fast.ssl.read_labeled``):

    - ``.npy``: integers of shape (n,), or one column (n, 1) as ``numpy.argwhere`` returns;
      the header is checked first (``check_npy``) and nothing is ever unpickled. Any other
      shape, (1, n) included, is refused: which axis holds the indices is a guess.
    - ``.txt``: one integer per line; blank lines and lines starting with ``#`` (the header
      ``numpy.savetxt`` writes) are skipped.
    - ``.csv``: a header row whose first cell is ``Index`` (``Index,ImageID``, or ``Index``
      alone, as ``--csv`` writes), then one row per index, the index first.

    Text files are UTF-8, with or without a byte-order mark.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        How messages name the file's source, e.g. ``"--labeled"``, ``"PICKS"`` or
        ``"`labeled`"``.

    Returns
    -------
    (n,) int64 numpy array
        Not checked against any number of points (range and repeats are the caller's:
        what is allowed differs between them); n may be 0.

    Raises
    ------
    ValueError
        Another extension, no such file, a directory, a path that is not a regular file (a
        pipe, a device: never opened), an unreadable file, a value that is
        not an integer (naming the line), a .csv without its header, or a .npy that is not
        a numeric array of an allowed shape (naming the shape), or an integer beyond int64
        in a .txt/.csv line or an unsigned .npy (naming it). Every message names ``what``
        and the path.
    """
    import csv

    import numpy as np

    path = os.fspath(path)
    # A missing file's message names the formats too, so a wrong extension is seen there.
    problem = not_a_file(path, what, INDEX_FORMATS)
    if problem:
        raise ValueError(problem)
    fmt = os.path.splitext(path)[1].lower()
    if fmt not in (".npy", ".txt", ".csv"):
        got = f"extension {fmt!r}" if fmt else "no extension"
        raise ValueError(f"{what} {path!r}: must be {INDEX_FORMATS}; got {got}")
    try:
        if fmt == ".npy":
            # The header first: numpy alone calls a file that is not a .npy "pickled data"
            # and suggests allow_pickle; and a wrong array (a feature matrix given by
            # mistake) is refused before it is read.
            shape, dtype = check_npy(path, f"{what} file")
            if shape is not None:
                _index_array_shape(shape, dtype, what, path)
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError as exc:  # format 3.0 headers: numpy's own checks
                raise ValueError(
                    f"{what} file {path!r} is not an array of integers numpy can load "
                    "without unpickling (usl-fast never unpickles a file: it can run code)"
                ) from exc
            _index_array_shape(arr.shape, arr.dtype, what, path)
            # astype would wrap a uint64 above 2**63 - 1 to a negative index in silence, and
            # the caller's range message would then name a value the file does not hold.
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) > 2**63 - 1:
                raise ValueError(
                    f"{what} {path!r} holds the index {int(arr.max())}; indices must be at "
                    f"most {2**63 - 1} (int64)"
                )
            return arr.reshape(-1).astype(np.int64)
        values: List[int] = []
        # newline="" for .csv: the csv module reads the line ends itself (a quoted ImageID
        # may hold one); .txt gets Python's universal newlines (\n, \r\n or \r).
        with open(path, newline="" if fmt == ".csv" else None, encoding="utf-8-sig") as f:
            if fmt == ".txt":
                for no, line in enumerate(f, 1):
                    text = line.strip()
                    if text and not text.startswith("#"):
                        values.append(_index_value(text, what, path, no, "one integer index"))
            else:
                reader = csv.reader(f)
                # Blank rows before the header are skipped, as the CLI's reader before
                # read_index_file did (csv yields [] for each).
                header = next((row for row in reader if row), None)
                if header is None or header[0].strip() != "Index":
                    got = "an empty file" if header is None else _shown(",".join(header), 60)
                    raise ValueError(
                        f"{what} {path!r}: a .csv must start with the header Index,ImageID "
                        f"(or Index alone), as usl-fast select --csv writes; got {got}"
                    )
                expected = "an integer index first (then, optionally, the ImageID)"
                for row in reader:
                    if row:
                        values.append(_index_value(row[0], what, path, reader.line_num, expected))
    except UnicodeDecodeError:
        raise ValueError(
            f"cannot read {what} file {path!r}: it is not UTF-8 text; it must be {INDEX_FORMATS}"
        ) from None
    except (OSError, csv.Error) as exc:
        why = _reason(exc) if isinstance(exc, OSError) else str(exc)
        raise ValueError(f"cannot read {what} file {path!r}: {why}") from None
    return np.array(values, dtype=np.int64)


def _index_array_shape(shape: Tuple[int, ...], dtype: Any, what: str, path: str) -> None:
    """A ValueError unless a .npy of this shape and dtype is an index list (see
    ``read_index_file``)."""
    if dtype.kind not in "iu" or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ValueError(
            f"{what} {path!r} must hold a 1-D array of integer indices, shape (n,), or one "
            f"column of them, shape (n, 1) (got shape {tuple(shape)}, dtype {dtype})"
        )


def check_index_range(idx: Any, n: int, what: str, path: str, within: str) -> None:
    """A ValueError naming ``what`` and ``path`` unless the indices ``idx`` (from
    ``read_index_file``) are distinct and lie in [0, n), ``n`` being the number of points
    of ``within`` ("these features", "this data set"): the one wording of these checks for
    every reader of an index file."""
    import numpy as np

    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(
            f"{what} {path!r}: indices must lie in [0, {n}) for {within} "
            f"(got values in [{idx.min()}, {idx.max()}])"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError(f"{what} {path!r}: indices must be distinct (some repeat)")


def _shown(text: str, limit: int) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters; a cut one ends in
    "..." outside the quotes, so the quoted part is not taken for the whole line."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


_INDEX_TEXT = re.compile(r"[+-]?[0-9]+")


def _index_value(text: str, what: str, path: str, line: int, expected: str) -> int:
    """``text`` as an int64 index, or a ValueError naming the file, the line (from 1) and
    what a line must hold (int() alone says "invalid literal for int() with base 10")."""
    # ASCII digits only: int() also takes "1_000" and other scripts' digits ("\u0663" is 3),
    # which no index file usl-fast writes holds.
    text = text.strip()
    if not _INDEX_TEXT.fullmatch(text):
        raise ValueError(
            f"{what} file {path!r}, line {line}: {_shown(text, 40)} is not an integer "
            f"index; each line must hold {expected}, as usl-fast select writes"
        )
    # An integer all the same, only beyond int64: said as the .npy reader says it. Past
    # 4300 digits int() raises (Python's limit on str-to-int conversion), so the value
    # is shown from its text.
    digits = text.lstrip("+-")
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is not None and -(2**63) <= value < 2**63:
        return value
    shown = digits if len(digits) <= 40 else f"{digits[:40]}... ({len(digits)} digits)"
    if text.startswith("-"):
        bound = f"at least {-(2**63)}"
        shown = "-" + shown
    else:
        bound = f"at most {2**63 - 1}"
    raise ValueError(
        f"{what} file {path!r}, line {line} holds the index {shown}; indices must be "
        f"{bound} (int64)"
    )
