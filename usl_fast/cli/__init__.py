"""The ``usl-fast`` command line: ``select`` reads a feature file and writes the picks
(``.npy``, ``.txt`` and/or the reference's ``Index,ImageID`` CSVs) with any method of
``usl_fast.select``; ``fixmatch`` trains the reference FixMatch on them; ``plot`` draws
them (``usl_fast.plot``); ``demo`` runs the bundled scikit-learn digits comparison
(``usl_fast.demo``).

Exit status: 0 on success, 2 on any error, printed on one line with no traceback: a
command-line error as ``usl-fast select: error: ...; see usl-fast select --help``, any
other as ``usl-fast: error: ...``; 130 when interrupted with Ctrl-C.

Layout: this module assembles the parser and runs a command; each subcommand is one
module that registers its options (``add_parser``) and runs them (``run``): ``_select``,
``_fixmatch``, ``_demo``, ``_plot``. ``_files`` reads the feature, index and image-id
files and writes the outputs; ``_common`` holds the parser class and ``CLIError``.
"""

from __future__ import annotations

import argparse
import csv  # noqa: F401  (tests make cli.csv.writer fail to simulate a full disk)
from typing import Optional, Sequence

from .._presets import PARAMS
from . import _demo, _fixmatch, _plot, _select
from ._common import PROG, CLIError, _Parser
from ._files import (
    PICKS_FORMATS,
    check_indices,
    complement,
    info_arrays,
    l2_normalize,
    load_features,
    picks_format,
    read_image_ids,
    read_indices,
    write_index_csv,
    write_info_npz,
    write_picks,
    write_picks_npy,
    write_picks_txt,
)
from ._files import _json_default as _json_default  # how --save-info encodes params
from ._select import method_choices

__all__ = [
    "CLIError",
    "DEFAULTS_CHOICES",
    "PICKS_FORMATS",
    "PROG",
    "build_parser",
    "check_indices",
    "complement",
    "info_arrays",
    "l2_normalize",
    "load_features",
    "main",
    "method_choices",
    "picks_format",
    "read_image_ids",
    "read_indices",
    "write_index_csv",
    "write_info_npz",
    "write_picks",
    "write_picks_npy",
    "write_picks_txt",
]

#: The --defaults names, in the order --help shows them: the presets, as declared in
#: usl_fast._presets (the options of every subcommand read the declarations there).
DEFAULTS_CHOICES = PARAMS["defaults"].choices


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``usl-fast`` (subcommands ``select``, ``fixmatch``, ``demo``,
    ``plot``, each registered by its own module)."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Unsupervised Selective Labeling (USL, Wang, Lian & Yu, ECCV 2022): "
        "choose which unlabeled instances to send for labeling.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    for command in (_select, _fixmatch, _demo, _plot):  # the order --help lists them in
        command.add_parser(sub)
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
