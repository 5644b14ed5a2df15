"""Output that reaches the user while the work runs, and warnings that point at the user's
code (issue 25): the demo's rows arrive through a pipe one by one, USL-T shows a bar on
stderr when asked (the CLI asks), and the far-from-unit-norm warning is one line, once per
call, attributed to the caller's line for every public entry point."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import pytest
from test_cli import run_cli, subprocess_env

import usl_fast

HERE = os.path.abspath(__file__)
NOTE = "far from 1"  # the unit-norm warning's words (usl_fast/_pipeline.py)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ the demo streams


def _lines_with_times(stream: Any) -> "queue.Queue[Tuple[float, Optional[str]]]":
    """A queue receiving (monotonic time, line) for each line read from ``stream``, and
    (time, None) at its end, filled by a daemon thread."""
    q: "queue.Queue[Tuple[float, Optional[str]]]" = queue.Queue()

    def pump() -> None:
        for raw in iter(stream.readline, b""):
            q.put((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
        q.put((time.monotonic(), None))

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_demo_rows_arrive_through_a_pipe_before_the_run_ends() -> None:
    """``usl-fast demo > log`` wrote nothing until the end (stdout block-buffered through a
    pipe). Here the demo runs in a child whose stdout is a pipe, and the child stops before
    its second row until the test has READ the first one: unless the first row is flushed
    when it is produced, the test never sees it and fails after the deadline (a buffered
    report would come only at exit, which the child never reaches)."""
    pytest.importorskip("sklearn")
    code = """
        import sys
        import usl_fast.demo as demo
        from usl_fast import cli

        real, calls = demo.evaluate_picks, []

        def gated(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the second row begins: wait for the test's go-ahead
                sys.stdin.readline()
            return real(*args, **kwargs)

        demo.evaluate_picks = gated
        sys.exit(cli.main(["demo", "--seeds", "1", "--budgets", "10", "20",
                           "--methods", "random"]))
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
        cwd=tempfile.gettempdir(),  # outside the checkout: its sources have no engine
    )
    try:
        lines = _lines_with_times(proc.stdout)
        got: List[Tuple[float, Optional[str]]] = []
        deadline = time.monotonic() + 120
        while not any(re.match(r"\s+10 \| random\s+\|", s or "") for _, s in got):
            try:
                got.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"the first row did not arrive while the demo waited: {got}")
            assert got[-1][1] is not None, f"the demo ended early: {got}"
        released = time.monotonic()
        assert proc.poll() is None  # the row came while the child was still working
        assert got[0][1].startswith("random picks on scikit-learn digits")  # header first
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        while got[-1][1] is not None:  # the rest, up to the end of the stream
            got.append(lines.get(timeout=120))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = [s for _, s in got[:-1]]
    second = [t for t, s in got[:-1] if re.match(r"\s+20 \| random\s+\|", s)]
    assert len(second) == 1 and second[0] >= released, text
    assert any(s.startswith("total ") for s in text), text


def test_run_demo_prints_each_row_when_it_is_computed() -> None:
    """run_demo's print_fn gets the header before any selection and each row before the
    next row's selections start; the lines are format_table's."""
    pytest.importorskip("sklearn")
    from usl_fast import demo

    events: List[str] = []
    real = usl_fast.random_select

    def counted(*args: Any, **kwargs: Any) -> Any:
        events.append("select")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(usl_fast, "random_select", counted)
        rows = demo.run_demo(
            budgets=(10, 20), seeds=range(2), print_fn=events.append, methods=("random",)
        )
    first_row = next(i for i, e in enumerate(events) if re.match(r"\s+10 \| random", e))
    header_end = next(i for i, e in enumerate(events) if e.startswith("budget | method"))
    assert "select" not in events[:header_end]  # the header comes before any work
    assert events[:first_row].count("select") == 2  # two seeds of the first row, no more
    assert events[first_row + 1 : first_row + 3] == ["select", "select"]
    printed = [e for e in events if e != "select"]
    table = demo.format_table(rows, n=1797, elapsed=0.0)
    assert printed[:-1] == table[:-1]  # all but the elapsed time
    assert printed[-1].startswith("total ")


# ------------------------------------------------------------------- USL-T's bar


def test_uslt_fit_shows_a_bar_on_stderr_only_when_asked(
    capsys: pytest.CaptureFixture,
) -> None:
    uslt = pytest.importorskip("usl_fast.uslt")
    x = _unit(200, 8, 0)
    uslt.USLT(5, epochs=3, batch_size=64, n_neighbors=10, progress=True).fit(x)
    out, err = capsys.readouterr()
    assert out == ""
    frames = [f for f in re.split(r"[\r\n]", err) if f.startswith("USL-T training")]
    assert frames and "3/3 epochs" in frames[-1], err
    uslt.USLT(5, epochs=3, batch_size=64, n_neighbors=10).fit(x)
    assert capsys.readouterr() == ("", "")  # progress=False: silent


def test_cli_select_uslt_turns_the_bar_on(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torch")
    npy = tmp_path / "f.npy"
    np.save(npy, _unit(200, 8, 1))
    argv = ["select", npy, "-m", 5, "--method", "uslt", "--epochs", 2, "--batch-size", 64,
            "--n-neighbors", 10, "-o", tmp_path / "p.npy"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert re.search(r"USL-T training: 100%.*2/2 epochs", err), err
    assert "USL-T training" not in out
    code, out, err = run_cli(argv + ["--force", "--no-progress"], capsys)
    assert code == 0 and "USL-T training" not in err, err


# ------------------------------------------------------- the unit-norm warning


def _warnings_of(call: Callable[[], Any]) -> List[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if NOTE in str(w.message)]


def _check_one_line_at(caught: List[warnings.WarningMessage], line: int, what: str) -> None:
    assert len(caught) == 1, f"{what}: {[str(w.message) for w in caught]}"
    (w,) = caught
    assert (w.filename, w.lineno) == (HERE, line), f"{what}: {w.filename}:{w.lineno}"
    msg = str(w.message)
    assert "\n" not in msg and len(msg) <= 200, f"{what}: {len(msg)} characters: {msg}"
    assert "normalize=True" in msg and "--normalize" in msg  # what to do
    assert issubclass(w.category, UserWarning)


def _line() -> int:
    """The line number of the caller's next line (where the call under test is)."""
    return sys._getframe(1).f_lineno + 1


def test_unit_norm_warning_is_one_line_at_the_callers_line() -> None:
    x = 50 * _unit(500, 8, 2)
    kw: dict = dict(k=10, kmeans_iter=5, rounds=2)

    def select():
        return usl_fast.select(x, 10, **kw)

    # Each call below is on the line after `at = _line()`.
    at = _line()
    caught = _warnings_of(lambda: usl_fast.select(x, 10, **kw))
    _check_one_line_at(caught, at, "select")
    at = _line()
    caught = _warnings_of(lambda: usl_fast.select(x, 10, return_info=True, **kw))
    _check_one_line_at(caught, at, "select(return_info=True)")
    at = _line()
    caught = _warnings_of(lambda: usl_fast.USL(**kw).fit(x, 10))
    _check_one_line_at(caught, at, "USL.fit")
    at = _line()
    caught = _warnings_of(lambda: usl_fast.USL(**kw).fit_select(x, 10))
    _check_one_line_at(caught, at, "USL.fit_select")
    at = _line()
    caught = _warnings_of(lambda: usl_fast.select(x, 10, labeled=[0, 1], **kw))
    _check_one_line_at(caught, at, "select(labeled=)")
    # small features: the other effect, the same one line
    at = _line()
    caught = _warnings_of(lambda: usl_fast.select(x / 2500, 10, **kw))
    _check_one_line_at(caught, at, "select, tiny norms")
    assert "outweighs the density" in str(caught[0].message)
    # normalize=True or unit rows: no warning
    assert _warnings_of(lambda: usl_fast.select(x, 10, normalize=True, **kw)) == []
    assert _warnings_of(lambda: usl_fast.select(_unit(500, 8, 2), 10, **kw)) == []
    # Python's default filter then shows it once per calling line, as for any warning
    with warnings.catch_warnings(record=True) as caught_default:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for _ in range(3):
            select()
    assert len([w for w in caught_default if NOTE in str(w.message)]) == 1


def test_unit_norm_warning_on_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The portable back end (a GPU tensor's path; here forced on a CPU tensor)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    t = torch.from_numpy(50 * _unit(500, 8, 3))
    at = _line()
    caught = _warnings_of(lambda: usl_fast.select(t, 10, k=10, kmeans_iter=5, rounds=2))
    _check_one_line_at(caught, at, "select, portable")


def test_unit_norm_warning_in_distributed_select_and_the_clis(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """distributed.select in a one-rank gloo group (a child process: no process group is
    left in this one) names the caller's file and line; the two CLIs print it as ONE note
    line on stderr, not Python's "file:line: UserWarning" pointing into usl_fast."""
    pytest.importorskip("torch")
    feats = tmp_path / "f.npy"
    np.save(feats, 50 * _unit(400, 8, 4))
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, tempfile, warnings
            import numpy as np
            import torch.distributed as dist
            import usl_fast.distributed as ud

            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            store = os.path.join(tempfile.mkdtemp(), "store")
            dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
            x = np.load({str(feats)!r})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ud.select(x, 10, k=10, kmeans_iter=5, rounds=2)  # CALL
            dist.destroy_process_group()
            print(json.dumps([[w.filename, w.lineno, str(w.message)] for w in caught]))
            """
        )
    )
    call_line = next(
        i for i, s in enumerate(script.read_text().splitlines(), 1) if s.endswith("# CALL")
    )
    r = subprocess.run(
        [sys.executable, str(script)],
        env=subprocess_env(),
        cwd=tempfile.gettempdir(),  # outside the checkout: its sources have no engine
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    got = [w for w in json.loads(r.stdout.splitlines()[-1]) if NOTE in w[2]]
    assert len(got) == 1, got
    assert got[0][:2] == [str(script), call_line], got
    assert "\n" not in got[0][2] and len(got[0][2]) <= 200

    # python -m usl_fast.distributed (one rank, no torchrun)
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast.distributed", "select", str(feats), "-m", "10",
         "-k", "10", "--kmeans-iter", "5", "-o", str(tmp_path / "d.npy"), "--no-progress"],
        env=subprocess_env(),
        cwd=tempfile.gettempdir(),  # outside the checkout: its sources have no engine
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    notes = [s for s in r.stderr.splitlines() if NOTE in s]
    assert len(notes) == 1 and notes[0].startswith("python -m usl_fast.distributed: note: ")
    assert "UserWarning" not in r.stderr and "__main__.py" not in r.stderr, r.stderr

    # usl-fast select
    code, _, err = run_cli(
        ["select", feats, "-m", 10, "-k", 10, "--kmeans-iter", 5, "--no-progress",
         "-o", tmp_path / "p.npy"], capsys)  # fmt: skip
    assert code == 0, err
    notes = [s for s in err.splitlines() if NOTE in s]
    assert len(notes) == 1 and notes[0].startswith("usl-fast: note: "), err
