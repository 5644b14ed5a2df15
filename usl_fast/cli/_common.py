"""What every ``usl-fast`` subcommand shares: the program name, the user-facing error
and the argparse parser that prints one-line errors and states each option's default."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

PROG = "usl-fast"


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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v
