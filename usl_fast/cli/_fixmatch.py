"""``usl-fast fixmatch``: train the reference FixMatch (``usl_fast.ssl``) on the picks of
``usl-fast select``, with its checkpoint and log under ``--out``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Tuple

from .._io import Outputs, check_directory, open_append
from ._common import PROG, CLIError, _positive_int
from ._files import require_file


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``fixmatch`` on ``sub`` (the ``add_subparsers`` action of ``usl-fast``)."""
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
        help="picks: .npy or .txt (usl-fast select -o) or Index[,ImageID] .csv (--csv), "
        "indices into the training split",
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
    fp.set_defaults(func=run)
    return fp


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


def run(args: argparse.Namespace) -> int:
    try:
        from ..ssl import PRESETS, FixMatch, load_cifar, load_digits_split, read_labeled
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    from dataclasses import replace

    # Paths are checked before training; the data set's own files are checked first (its
    # loader says where to put them), then --labeled, before anything is trained.
    require_file(args.resume, "--resume", "a checkpoint written by usl-fast fixmatch")
    if args.resume is None and args.labeled is None:
        raise CLIError(
            "give --labeled PICKS (.npy, .txt or .csv from usl-fast select) or --resume CKPT"
        )
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out!r} exists and is not a directory")
    ckpt, log_path = _check_fixmatch_out(args.out, args.resume is not None, args.force)
    if args.resume is not None:  # before the data set is read: torch <= 2.5.1 is refused
        from .._safe_torch import check_torch_load

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
        n_train = int(data.train_x.shape[0])
        try:
            # Read once, by the reader select and plot use: its messages name the file,
            # the line and what is allowed; the range is this data set's.
            labeled = read_labeled(args.labeled, n_train, what="--labeled")
        except ValueError as exc:
            msg = str(exc)
            if "must lie in" in msg:
                msg += f" (the {n_train} training images of --dataset {args.dataset})"
                if args.dataset == "digits":
                    msg += (
                        "; the picks must come from features of the same training split: "
                        "usl_fast.demo.digits_train_features(), see docs/fixmatch.md"
                    )
            raise CLIError(msg) from exc
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
