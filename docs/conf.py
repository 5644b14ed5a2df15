"""Sphinx configuration of the usl_fast site (built by ``bash tools/build_docs.sh``).

The pages are the Markdown guides in this folder (MyST) and the API reference, which
autodoc takes from the docstrings (numpydoc style, read by napoleon). The CLI reference is
rendered from the argparse parsers at build time (``_ext/cli_reference.py``).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

# Which usl_fast autodoc imports. A checkout with the compiled engine in place (a developer
# tree after an in-place build) documents itself; a clean checkout (CI) has no engine in
# usl_fast/, so the installed package of the same source is used and the tree must not
# shadow it. USL_FAST_DOCS_TREE=1 / 0 forces one or the other.
_tree_has_engine = bool(glob.glob(str(ROOT / "usl_fast" / "_cpu*.so")))
_use_tree = os.environ.get("USL_FAST_DOCS_TREE", "1" if _tree_has_engine else "0") == "1"
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
if _use_tree:
    sys.path.insert(0, str(ROOT))

import usl_fast  # noqa: E402  (after the path decision above)

print(f"usl_fast {usl_fast.__version__} from {Path(usl_fast.__file__).parent}")

project = "usl_fast"
author = "usl_fast developers"
copyright = "usl_fast developers"
version = release = usl_fast.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cli_reference",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "requirements.txt"]

# Markdown: heading anchors (three levels) so that `page.md#a-heading` links resolve and
# are checked; the README-style relative links to other pages become document references.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
# A link to a repository file outside docs/ (benchmarks/README.md, csrc/...) is not a page
# of the site; those are checked by tests/test_readme.py, not turned into references.
suppress_warnings: list = []

# API pages.
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections carry the types
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = False  # free-text types ("(n, d) float32") are not cross-references

# Every cross-reference must resolve (nitpicky), with two exceptions. References to other
# projects' objects (numpy, torch, the standard library) cannot: there is no network to
# fetch their inventories. And the docstrings' types are free text for readers ("(n, d)
# float32", "1-D int64 or None"), which napoleon turns into class references; a type that
# names a usl_fast object must still resolve.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|torch|typing|collections|argparse|pathlib|os|datetime)(\..*)?"),
    (r"py:class", r"(?!usl_fast\.).*"),
]

nitpick_ignore = [
    # torch.nn.Module.forward's inherited docstring refers to its own class
    ("py:class", "Module"),
]

# The docstrings are written for help() as much as for this site: fitted attributes are
# named as in scikit-learn (``labels_``), sizes as |labeled| and norms as ||x||. In
# reStructuredText a word ending in "_" is a hyperlink reference and |x| a substitution, so
# outside ``literals`` both are escaped before napoleon and docutils read them.
_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")
_TRAILING_UNDERSCORE = re.compile(r"(?<![\w\\])([A-Za-z][A-Za-z0-9_]*?)_(?![\w`])")


def _escape_plain_text(line: str) -> str:
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):  # even parts are outside literals
        text = _TRAILING_UNDERSCORE.sub(r"\1\\_", parts[i])
        parts[i] = text.replace("|", r"\|")
    return "".join(parts)


def _escape_docstring(app, what, name, obj, options, lines) -> None:
    lines[:] = [_escape_plain_text(line) for line in lines]


def _check_api_complete(app, env) -> None:
    """Every public name of ``usl_fast`` (its ``__all__``) has an entry in the API pages,
    so a function added to the package cannot go undocumented (api/usl_fast.rst lists
    them by hand, grouped; the submodules' pages take their ``__all__`` automatically)."""
    from sphinx.util import logging

    documented = set(env.get_domain("py").objects)
    missing = [n for n in usl_fast.__all__ if f"usl_fast.{n}" not in documented]
    if missing:
        logging.getLogger(__name__).warning(
            "usl_fast.%s: in usl_fast.__all__ but on no API page (docs/api/usl_fast.rst)",
            ", usl_fast.".join(missing),
        )


def setup(app):
    # before napoleon (priority 500) turns "Parameters" sections into fields
    app.connect("autodoc-process-docstring", _escape_docstring, priority=400)
    app.connect("env-check-consistency", _check_api_complete)


html_theme = "alabaster"
# wide enough for the 90-column --help blocks and the 100-column code
html_theme_options = {"page_width": "1240px", "sidebar_width": "250px"}
html_title = f"usl_fast {release}"
html_static_path: list = []
html_show_sourcelink = False
