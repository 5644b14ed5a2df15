"""README.md stays short, true and runnable.

- at most 250 lines;
- its quick start runs as written (no file the reader does not have) in at most 15 lines;
- every shell command it shows in a ```bash block is exercised: run by CI (.ci/run or a
  tools/*.sh script that .ci/run calls), or checked here the way it can be without
  running for an hour (see ``_exercised``);
- every relative link in README.md and docs/*.md names a file that exists, and its
  #anchor (if any) a heading of that file;
- what README says about inputs and the test command holds.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import numpy as np
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKDOWN = [README] + sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 250
MAX_QUICK_START_LINES = 15

SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}


# ------------------------------------------------------------------ reading commands


def code_blocks(text: str, lang: str) -> List[str]:
    """The bodies of the fenced ```lang blocks (fences at the start of a line)."""
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def split_commands(script: str) -> List[List[str]]:
    """The simple commands of a shell text, each as its words: line continuations joined,
    comments dropped, split at ``&&``, ``||``, ``;``, ``|`` and ``&``; quotes removed as
    the shell would. Lines shlex cannot read (here-documents, odd quoting) are skipped:
    they hold no command README could show."""
    out: List[List[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            words = list(lex)
        except ValueError:
            continue
        current: List[str] = []
        for w in words:
            if w in SEPARATORS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(w)
        if current:
            out.append(current)
    return out


def normalise(cmd: List[str]) -> Tuple[str, ...]:
    """One spelling for commands that do the same: ``python3 -m pip`` / ``python -m pip``
    / ``pip3`` are ``pip``, ``python3`` is ``python``."""
    words = list(cmd)
    if words[:3] in (["python3", "-m", "pip"], ["python", "-m", "pip"]):
        words = ["pip"] + words[3:]
    elif words[:1] == ["pip3"]:
        words = ["pip"] + words[1:]
    elif words[:1] == ["python3"]:
        words = ["python"] + words[1:]
    return tuple(words)


def readme_commands() -> List[Tuple[str, ...]]:
    text = README.read_text(encoding="utf-8")
    return [normalise(c) for block in code_blocks(text, "bash") for c in split_commands(block)]


@lru_cache(maxsize=None)
def ci_commands() -> Set[Tuple[str, ...]]:
    """Every simple command of .ci/run and of the tools/*.sh scripts it runs (and those
    they run), normalised."""
    seen: Set[Path] = set()
    cmds: Set[Tuple[str, ...]] = set()
    todo = [ROOT / ".ci" / "run"]
    while todo:
        script = todo.pop()
        if script in seen or not script.exists():
            continue
        seen.add(script)
        for cmd in split_commands(script.read_text(encoding="utf-8")):
            cmds.add(normalise(cmd))
            if cmd[:1] == ["bash"] and len(cmd) > 1 and cmd[1].startswith("tools/"):
                todo.append(ROOT / cmd[1])
    return cmds


# ------------------------------------------------------------------ exercising commands


@lru_cache(maxsize=None)
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _ci_pip_installs() -> List[Tuple[str, ...]]:
    return [c[2:] for c in ci_commands() if c[:2] == ("pip", "install")]


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def _check_pip_install(args: Tuple[str, ...]) -> Optional[str]:
    """``pip install [pins] "."/".[extras]"``: each pin is one CI installs, and every
    requirement of each extra is installed by CI's own install of this checkout (so the
    command cannot need what CI never installs)."""
    ci_args = [a for cmd in _ci_pip_installs() for a in cmd]
    extras = _pyproject()["project"]["optional-dependencies"]
    ci_reqs = {_requirement_name(r) for r in _pyproject()["project"]["dependencies"]}
    for a in ci_args:
        m = re.fullmatch(r"\.\[([\w,\s-]+)\]", a)
        if m:
            for e in m.group(1).split(","):
                ci_reqs |= {_requirement_name(r) for r in extras.get(e.strip(), [])}
    for a in args:
        m = re.fullmatch(r"\.(?:\[([\w,\s-]+)\])?", a)
        if m:
            for e in (m.group(1) or "").split(","):
                e = e.strip()
                if not e:
                    continue
                if e not in extras:
                    return f"extra [{e}] is not in pyproject.toml"
                missing = {_requirement_name(r) for r in extras[e]} - ci_reqs
                if missing:
                    return f"extra [{e}] needs {sorted(missing)}, which CI never installs"
        elif a.startswith("-"):
            return f"pip option {a} is not exercised"
        elif a not in ci_args:
            return f"{a} is not what CI installs"
    return None


def _check_pytest(args: Tuple[str, ...]) -> Optional[str]:
    """``pytest PATHS OPTIONS``: the same collection, without running (a full-size
    benchmark run takes an hour; its tiny size runs in the default ``pytest``)."""
    r = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0 or not re.search(r"\d+ tests? collected", r.stdout):
        return f"pytest --collect-only failed ({r.returncode}): {r.stdout[-600:]}{r.stderr[-600:]}"
    return None


def _check_usl_fast(args: Tuple[str, ...]) -> Optional[str]:
    """``usl-fast SUBCOMMAND ...``: the parser accepts every option as written (what each
    subcommand then does is tested in test_cli*.py, test_output_streams.py)."""
    from usl_fast.cli import build_parser

    try:
        build_parser().parse_args(list(args))
    except SystemExit as e:
        return f"usl-fast refuses {' '.join(args)!r} (exit {e.code})"
    return None


def _check_python_script(args: Tuple[str, ...]) -> Optional[str]:
    """``python path/to/script.py``: the script exists and its ``--help`` runs (the
    scripts README names have tiny-size runs in the tests, e.g. test_fixmatch.py)."""
    script = ROOT / args[0]
    if not script.is_file():
        return f"{args[0]} does not exist"
    r = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        return f"{args[0]} --help failed: {r.stderr[-600:]}"
    return None


def _exercised(cmd: Tuple[str, ...]) -> Optional[str]:
    """None if the command is exercised, else why not."""
    if cmd in ci_commands():
        return None
    if cmd[:2] == ("pip", "install"):
        return _check_pip_install(cmd[2:])
    if cmd[:1] == ("pytest",):
        return _check_pytest(cmd[1:])
    if cmd[:1] == ("usl-fast",):
        return _check_usl_fast(cmd[1:])
    if cmd[:1] == ("python",) and len(cmd) > 1 and cmd[1].endswith(".py"):
        return _check_python_script(cmd[1:])
    return "neither CI nor this test runs it"


# ------------------------------------------------------------------ links


def _strip_code(text: str) -> str:
    text = re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(text: str) -> Iterator[str]:
    for m in re.finditer(r"\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)", _strip_code(text)):
        yield m.group(1)


def slug(heading: str) -> str:
    """The anchor of a Markdown heading as GitHub and MyST (``myst_heading_anchors``)
    write it: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    out: Set[str] = set()
    counts: Dict[str, int] = {}
    text = re.sub(r"^```.*?^```[ \t]*$", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, flags=re.M):
        s = slug(m.group(1))
        n = counts.get(s, 0)
        counts[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(path: Path) -> List[str]:
    bad = []
    for link in links(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, frag = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            bad.append(
                f"{link}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{link}: no heading #{frag} in {dest.name}")
    return bad


# ------------------------------------------------------------------ the tests


def test_readme_is_at_most_250_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; move detail to docs/ (limit {MAX_LINES})"


def test_command_extraction():
    """The reader of shell text used below, on the forms README and CI use."""
    script = (
        'pip install ".[demo]" && usl-fast demo   # a comment\n'
        "python3 -m pip install torch==2.13.0 \\\n    '.[test]'\n"
        "USL_FAST_CUDA=OFF pip install . ; bash tools/x.sh | tee log\n"
    )
    assert [normalise(c) for c in split_commands(script)] == [
        ("pip", "install", ".[demo]"),
        ("usl-fast", "demo"),
        ("pip", "install", "torch==2.13.0", ".[test]"),
        ("USL_FAST_CUDA=OFF", "pip", "install", "."),
        ("bash", "tools/x.sh"),
        ("tee", "log"),
    ]
    assert code_blocks("a\n```bash\nls\n```\n```python\nx\n```\n", "bash") == ["ls\n"]


def test_readme_shows_the_two_set_up_commands():
    cmds = readme_commands()
    for want in [
        ("pip", "install", ".[demo]"),
        ("usl-fast", "demo"),
        ("pip", "install", "torch==2.13.0", ".[test]"),
        ("pytest",),
    ]:
        assert want in cmds, f"README lost its set-up command {' '.join(want)!r}"


def test_readme_test_command_is_what_ci_runs():
    """README's test command, both halves, is literally in .ci/run."""
    for want in [("pip", "install", "torch==2.13.0", ".[test]"), ("pytest",)]:
        assert want in ci_commands(), f"{' '.join(want)!r} is no longer run by .ci/run"


def test_every_readme_command_is_exercised():
    cmds = readme_commands()
    assert cmds, "no ```bash block found in README.md"
    problems = {" ".join(c): why for c in dict.fromkeys(cmds) if (why := _exercised(c))}
    assert not problems, "README commands not exercised by CI or a test:\n" + "\n".join(
        f"  {c}: {why}" for c, why in problems.items()
    )


def test_an_unexercised_command_is_reported():
    assert _exercised(("rm", "-rf", "/nowhere")) == "neither CI nor this test runs it"
    assert "not in pyproject" in _check_pip_install((".[no-such-extra]",))
    assert "refuses" in _check_usl_fast(("select", "--no-such-option"))
    assert "does not exist" in _check_python_script(("benchmarks/no_such.py",))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    bad = broken_links(path)
    assert not bad, f"{path.relative_to(ROOT)}: broken links:\n" + "\n".join(bad)


def test_link_checker_finds_broken_links(tmp_path: Path):
    (tmp_path / "b.md").write_text("# Which method when\n\n## Memory (`k`)\n", encoding="utf-8")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#which-method-when) [ok](b.md#memory-k) [x](b.md#nope) [y](c.md)\n"
        "`[not a link](nowhere.md)` [web](https://example.org)\n",
        encoding="utf-8",
    )
    assert broken_links(page) == [
        "b.md#nope: no heading #nope in b.md",
        f"c.md: no file {tmp_path / 'c.md'}",
    ]


def test_quick_start_runs_as_written():
    """README's Python quick start, exactly as shown: no file the reader lacks."""
    pytest.importorskip("sklearn")
    blocks = [b for b in code_blocks(README.read_text(encoding="utf-8"), "python")]
    assert blocks, "README.md has no ```python block"
    quick = blocks[0]
    assert len(quick.splitlines()) <= MAX_QUICK_START_LINES
    assert "np.load(" not in quick and "torch.load(" not in quick
    env: dict = {}
    exec(compile(quick, str(README), "exec"), env)
    picks = np.asarray(env["picks"])
    assert picks.dtype == np.int64 and picks.shape == (20,) and len(set(picks.tolist())) == 20
    more = np.asarray(env["more"])
    assert not set(more.tolist()) & set(picks.tolist())


def test_input_types_readme_claims():
    """README: "numpy arrays or torch CPU tensors, float16/32/64 or integers (numpy or
    torch)", results in the caller's library."""
    import usl_fast

    rng = np.random.default_rng(0)
    base = rng.integers(-8, 9, size=(200, 6))
    want = usl_fast.select(base.astype(np.float32), 5, k=10, normalize=True)
    for dtype in (np.int32, np.int64, np.float16, np.float64):
        np.testing.assert_array_equal(
            usl_fast.select(base.astype(dtype), 5, k=10, normalize=True), want
        )
    torch = pytest.importorskip("torch")
    for dtype in (torch.int32, torch.int64, torch.float32):
        got = usl_fast.select(torch.from_numpy(base).to(dtype), 5, k=10, normalize=True)
        assert isinstance(got, torch.Tensor)
        np.testing.assert_array_equal(got.numpy(), want)


def test_no_python_m_pytest_in_instructions():
    """README says to use ``pytest``, not ``python -m pytest`` (which, in the repository
    root, imports the source tree without its compiled engine). Nothing in README, docs/
    or pyproject.toml's comments says otherwise: every mention is that warning."""
    for path in MARKDOWN + [ROOT / "pyproject.toml"]:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"python3? -m pytest", text):
            before = text[max(0, m.start() - 5) : m.start()]
            assert before.endswith(("not `", "not ")), (
                f"{path.relative_to(ROOT)}: {text[m.start() : m.start() + 60]!r}: use `pytest`"
            )


def test_python_blocks_in_docs_parse():
    """Every ```python block of README and docs/ is valid Python (those that can run
    without data or a GPU are run above and in test_docs.py)."""
    for path in MARKDOWN:
        for block in code_blocks(path.read_text(encoding="utf-8"), "python"):
            ast.parse(block, filename=str(path))
