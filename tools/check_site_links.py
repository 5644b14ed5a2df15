"""Check every link of the built documentation site (tools/build_docs.sh runs it).

    python tools/check_site_links.py docs/_build/html

For each ``href`` and ``src`` in every HTML page:

- a link inside the site must name a file that exists, and its ``#fragment`` (if any) an
  ``id`` in that file (so a renamed heading breaks the build, not the reader);
- a link to another site (``http(s)://``) is checked for its form only: a scheme, a host
  and no white space. CI reaches no network beyond the package registries, so whether the
  page exists is not checked; the ones found are listed.

Sphinx already refuses a MyST link to a missing page or heading (``myst.xref_missing``
under ``-W``); this pass checks what it does not see: the HTML as written, including the
API pages, the theme's navigation and raw links.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Set, Tuple
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: Set[str] = set()
        self.links: List[Tuple[str, int]] = []

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif name in ("href", "src"):
                self.links.append((value, self.getpos()[0]))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def check(site: Path) -> Tuple[List[str], List[str]]:
    """(problems, external links) of the site rooted at ``site``."""
    pages: Dict[Path, _Page] = {p.resolve(): _parse(p) for p in sorted(site.rglob("*.html"))}
    if not pages:
        return [f"{site}: no HTML pages (was the site built?)"], []
    problems: List[str] = []
    external: Set[str] = set()
    for path, page in pages.items():
        where = path.relative_to(site.resolve())
        for link, line in page.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https"):
                if not parts.netloc or any(c.isspace() for c in link):
                    problems.append(f"{where}:{line}: malformed external link {link!r}")
                external.add(link)
                continue
            if parts.scheme in ("mailto", "data", "javascript"):
                continue
            if parts.scheme or parts.netloc:
                problems.append(f"{where}:{line}: link with unexpected scheme {link!r}")
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{where}:{line}: {link!r}: no such file {target}")
                continue
            frag = unquote(parts.fragment)
            if frag and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if frag not in ids:
                    problems.append(f"{where}:{line}: {link!r}: no id {frag!r} in {target.name}")
    return problems, sorted(external)


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: check_site_links.py SITE_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    problems, external = check(site)
    n_pages = len(list(site.rglob("*.html")))
    for p in problems:
        print(f"check_site_links: {p}", file=sys.stderr)
    print(
        f"check_site_links: {n_pages} pages, {len(problems)} broken link(s); "
        f"{len(external)} external link(s) checked for form only (no network)"
    )
    for link in external:
        print(f"  external: {link}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
