"""``usl-fast demo``: the bundled comparison on scikit-learn's digits (``usl_fast.demo``)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import CLIError, _positive_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on ``sub`` (the ``add_subparsers`` action of ``usl-fast``)."""
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
    dp.set_defaults(func=run)
    return dp


def run(args: argparse.Namespace) -> int:
    from .. import demo

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
