"""A Sphinx directive that renders a command line's ``--help`` at build time.

In a page::

    ```{cli-help} usl_fast.cli:build_parser select
    ```

calls the parser factory ``usl_fast.cli.build_parser`` and shows the help of its
``select`` subcommand (without a subcommand: the top-level help) as a literal block. The
reference is whatever the parser says on the day the site is built: an option added to
the parser appears without anyone editing a page, and no page can describe an option that
is gone. When the build ends, every subcommand of every parser shown must have been shown
itself, otherwise a warning (an error under ``-W``) names the missing one, so a new
subcommand cannot go undocumented.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Dict, List, Set

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.util import logging

logger = logging.getLogger(__name__)

# argparse wraps help to the terminal's width; a fixed width makes the page the same on
# every machine (CI has no terminal).
HELP_WIDTH = "80"


def _factory(spec: str) -> argparse.ArgumentParser:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"cli-help: expected 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), attr)()


def subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser by name, in the order they were added."""
    out: Dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse has no public accessor for these
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def render_help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH
    try:
        return parser.format_help().rstrip() + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class CliHelp(Directive):
    required_arguments = 1
    optional_arguments = 1
    has_content = False

    def run(self) -> List[nodes.Node]:
        spec = self.arguments[0]
        parser = _factory(spec)
        subs = subcommands(parser)
        env = self.state.document.settings.env
        # (spec, subcommand or "") -> the pages showing it, kept in the environment so that
        # an incremental build that re-reads one page still knows about the others.
        shown: Dict[tuple, Set[str]] = env.domaindata.setdefault("usl_cli", {})
        key = ""
        if len(self.arguments) == 2:
            name = self.arguments[1]
            if name not in subs:
                raise self.error(f"{spec} has no subcommand {name!r} (it has: {', '.join(subs)})")
            key = name
            parser = subs[name]
        shown.setdefault((spec, key), set()).add(env.docname)
        return [nodes.literal_block(text=render_help(parser), language="text")]


def _check_all_shown(app, env) -> None:
    shown = {key for key, pages in env.domaindata.get("usl_cli", {}).items() if pages}
    for spec in sorted({spec for spec, _ in shown}):
        missing = [n for n in subcommands(_factory(spec)) if (spec, n) not in shown]
        if missing:
            logger.warning(
                "cli-help: subcommand(s) %s of %s are not shown on any page",
                ", ".join(missing),
                spec,
            )


def _merge(app, env, docnames, other) -> None:
    mine = env.domaindata.setdefault("usl_cli", {})
    for key, pages in other.domaindata.get("usl_cli", {}).items():
        mine.setdefault(key, set()).update(pages)


def _purge(app, env, docname) -> None:
    for pages in env.domaindata.get("usl_cli", {}).values():
        pages.discard(docname)


def setup(app):
    app.add_directive("cli-help", CliHelp)
    app.connect("env-check-consistency", _check_all_shown)
    app.connect("env-merge-info", _merge)
    app.connect("env-purge-doc", _purge)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
