"""``torchrun --nproc-per-node P -m usl_fast.distributed select FEATS.npy -m M -o OUT.npy``:
USL over a ``.npy`` file that every rank memory-maps, reading only its own rows. Rank 0
shows progress and writes the result. On an error every rank prints a message and exits:
2 for a bad ``--labeled`` file (read and checked against FEATS's row count before the
process group forms, as usl-fast's commands refuse their files) or option, 1 otherwise."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._io import INDEX_FORMATS, Outputs, check_index_range, check_npy, read_index_file
from .._presets import PARAMS

PROG = "python -m usl_fast.distributed"

# The USL parameters this command takes besides --defaults, with their declared types and
# doc lines (usl_fast._presets); each is forwarded only when given, so the rest come from
# the preset.
_USL_OPTIONS = ("k", "n_clusters", "kmeans_iter", "rounds", "weight")


class _FileError(ValueError):
    """A bad ``--labeled`` file: exit status 2, as every ``usl-fast`` command gives it."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="USL selection over features sharded across torch.distributed ranks "
        "(run under torchrun; without it, one rank). Every rank reads only its own rows of "
        "FEATS; the picks equal `usl-fast select` on the whole file.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("select", help="choose M points to label")
    sp.add_argument("features", metavar="FEATS.npy", help="(n, d) features, memory-mapped")
    sp.add_argument("-m", type=int, required=True, help="labeling budget")
    sp.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="picks (rank 0)")
    sp.add_argument(
        "--labeled",
        metavar="PICKS",
        help=f"indices labeled in earlier rounds: {INDEX_FORMATS}",
    )
    sp.add_argument("--force", action="store_true", help="overwrite an existing OUT.npy")
    preset = PARAMS["defaults"]
    sp.add_argument("--defaults", choices=preset.choices, default=preset.default)
    for name in _USL_OPTIONS:
        p = PARAMS[name]
        flags = ("-k", "--k") if p.name == "k" else (p.option,)
        sp.add_argument(*flags, dest=p.name, type=p.type, default=None, help=p.doc)
    sp.add_argument("--normalize", action="store_true", help="L2-normalise the rows first")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None, help="threads per rank")
    sp.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds a rank waits for another before failing [default: 600]",
    )
    sp.add_argument("--no-progress", action="store_true", help="hide rank 0's progress bars")
    return ap


def _init(timeout: float) -> None:
    """A gloo group (the engine computes on the CPU): torchrun's ranks, or one rank."""
    import torch.distributed as dist

    backend = "gloo"
    if dist.is_initialized():
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    else:  # not under torchrun: one rank
        import tempfile

        store = os.path.join(tempfile.mkdtemp(prefix="usl_fast_pg_"), "store")
        dist.init_process_group(
            backend,
            init_method=f"file://{store}",
            rank=0,
            world_size=1,
            timeout=timedelta(seconds=timeout),
        )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        out = Path(args.output)
        if out.suffix != ".npy":
            raise ValueError(f"-o/--output must end in .npy (got {args.output})")
        if args.timeout <= 0:
            raise ValueError(f"--timeout must be > 0 seconds (got {args.timeout})")
        if Path(args.features).exists() and not Path(args.features).is_file():
            raise ValueError(
                "FEATS.npy: not a regular file (a directory, pipe, device or socket): "
                f"{args.features}"
            )
        if not Path(args.features).is_file():
            raise ValueError(f"FEATS.npy: no such file: {args.features}")
        # Every rank memory-maps FEATS and reads only its rows, which only a .npy allows;
        # numpy would open a .npz as an archive object ("'NpzFile' object has no
        # attribute 'ndim'") and call a file that is not a .npy "pickled data".
        if Path(args.features).suffix.lower() != ".npy":
            raise ValueError(
                f"FEATS.npy {args.features!r}: must be a .npy file (numpy.save); this command "
                "memory-maps it on every rank (usl-fast select also reads .npz/.pt/.pth)"
            )
        shape, _ = check_npy(args.features, "FEATS.npy file")
        if shape is not None and len(shape) != 2:
            raise ValueError(
                f"FEATS.npy {args.features!r}: must hold a 2-D (n_points, dim) array of "
                f"features (got shape {shape})"
            )
        # Read on every rank, before the process group forms, by the reader every command
        # uses (.npy, .txt or .csv as usl-fast select writes them), and checked against the
        # global row count from FEATS's header in usl-fast select's words, which name the
        # file (select's own check later could only say `labeled`).
        labeled = None
        if args.labeled is not None:
            try:
                labeled = read_index_file(args.labeled, "--labeled")
                if shape is not None:  # None: a format 3.0 header, left to select's check
                    check_index_range(
                        labeled, shape[0], "--labeled", args.labeled, "these features"
                    )
            except ValueError as exc:
                raise _FileError(str(exc)) from exc
        # Before any work, on every rank (each reports it and exits 1): the directory
        # exists and accepts files, no symbolic link or directory at OUT, no existing
        # file without --force. Rank 0 writes through a temporary file and a rename.
        outs = Outputs(force=args.force, inputs=[args.features, args.labeled])
        outs.check(args.output, "-o/--output")
        _init(args.timeout)
        import torch.distributed as dist

        import usl_fast.distributed as ud

        rank = dist.get_rank()
        x = ud.load_shard(args.features)
        kw = {key: getattr(args, key) for key in _USL_OPTIONS if getattr(args, key) is not None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx = ud.select(
                x,
                args.m,
                labeled=labeled,
                defaults=args.defaults,
                normalize=True if args.normalize else None,
                seed=args.seed,
                threads=args.threads,
                progress=not args.no_progress,
                **kw,
            )
        # As usl-fast select does: a warning (features far from unit norm) is a one-line
        # note, not Python's "file:line: UserWarning" pointing into this module.
        for w in caught:
            _say(f"{PROG}: note: {w.message}")
        if rank == 0:
            picks = np.asarray(idx, np.int64)
            with outs:
                outs.stage(args.output, lambda f: np.save(f, picks, allow_pickle=False))
                outs.commit()
            print(f"{PROG}: {len(idx)} picks from {dist.get_world_size()} ranks -> {out}")
        dist.destroy_process_group()
        return 0
    except KeyboardInterrupt:
        _say(f"{PROG}: rank {rank}: interrupted")
        return 130
    except _FileError as exc:
        _say(f"{PROG}: rank {rank}: error: {exc}")
        return 2
    except Exception as exc:  # every rank reports and exits 1; no traceback for users
        _say(f"{PROG}: rank {rank}: error: {exc}")
        return 1


def _say(line: str) -> None:
    """``line`` on stderr as ONE write of the line and its newline. print() writes the
    text and the newline separately, and stderr writes through, so the ranks' lines
    interleaved ("...nope.npypython -m ..."); one write(2) of up to PIPE_BUF (4096) bytes
    to a pipe is atomic, and the text is on one line."""
    data = (" ".join(line.split()) + "\n").encode("utf-8", "replace")
    try:
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), data)
    except (AttributeError, OSError, ValueError):  # stderr replaced (no file descriptor)
        sys.stderr.write(data.decode("utf-8"))
        sys.stderr.flush()


def _exit(code: int) -> None:
    """Exit with ``code``. After a failure the process group may be broken (a peer died
    with sends and receives posted to it), and tearing it down at interpreter exit can
    abort the process inside gloo's destructors instead of exiting with ``code``. The
    message is printed and no output is half-written, so leave without running them."""
    if code == 0:
        sys.exit(0)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    _exit(main())
