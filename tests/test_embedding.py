"""usl_fast inside someone else's process: Ctrl-C, fork, a cancellable k-means, a dying rank.

Each case runs in a child process of its own, with a timeout, because the failures being
guarded against are a process abort (SIGABRT from ``std::terminate``) or a hang, which no
in-process assertion could catch."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import subprocess_env

import usl_fast

TIMEOUT = 120  # seconds a child may take before the test calls it a hang
# Children run outside the checkout: with the repository root as the working directory,
# `python -c` / `python -m` would import the sources (no compiled engine) first.
CHILD_CWD = tempfile.gettempdir()


def _child(code: str, timeout: float = TIMEOUT, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter importing the usl_fast under test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=subprocess_env(),
        cwd=CHILD_CWD,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _default_sigint() -> None:
    # A child started from a shell job or a test runner may inherit SIGINT ignored, and
    # Python installs its KeyboardInterrupt handler only over the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_when(argv: list, marker: bytes, delay: float, limit: float = 60):
    """Start ``argv`` (a Python child importing the usl_fast under test, SIGINT at its
    default), read its stderr until ``marker`` shows, wait ``delay`` s, send SIGINT;
    returns (exit status, everything read from stderr) once the process has ended."""
    proc = subprocess.Popen(
        argv,
        env=subprocess_env(),
        cwd=CHILD_CWD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    buf = _read_until(proc, marker, limit)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    err = (buf + _read_rest(proc)).decode(errors="replace")
    return proc.returncode, err


def _read_until(proc: subprocess.Popen, marker: bytes, limit: float = 60) -> bytes:
    """``proc``'s stderr (raw reads, no buffering) until ``marker`` shows or it exits."""
    fd = proc.stderr.fileno()
    os.set_blocking(fd, False)
    buf, t0 = b"", time.monotonic()
    while marker not in buf and time.monotonic() - t0 < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
        elif chunk == b"" or proc.poll() is not None:
            break  # end of file: the process is gone
        else:
            time.sleep(0.005)
    return buf


def _read_rest(proc: subprocess.Popen) -> bytes:
    """The rest of ``proc``'s stderr once it exits; fails the test if it hangs."""
    fd = proc.stderr.fileno()
    os.set_blocking(fd, True)
    deadline = time.monotonic() + TIMEOUT
    buf = b""
    while time.monotonic() < deadline:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the process did not end within {TIMEOUT} s (a hang)")
    proc.stderr.close()
    return buf


@pytest.fixture(scope="module")
def feats_npy(tmp_path_factory) -> Path:
    # Large enough that select runs for seconds on any machine, so every random moment
    # below falls inside the work (the kNN density pass and k-means).
    p = tmp_path_factory.mktemp("embed") / "feats.npy"
    np.save(p, _unit(30_000, 128, 0))
    return p


# ------------------------------------------------------------------------------ Ctrl-C
# Before the fix, 12 of 20 such runs ended in SIGABRT ("terminate called without an active
# exception"): on CPython < 3.12 a Thread.join interrupted by Ctrl-C marks the worker
# thread stopped while it is still inside the engine, so the interpreter exited under it.

N_INTERRUPTS = 20


@pytest.mark.slow  # 20 interpreters, each interrupted
def test_ctrl_c_in_cli_select_exits_130_every_time(feats_npy, tmp_path):
    rng = random.Random(0)
    for i in range(N_INTERRUPTS):
        out = tmp_path / f"p{i}.npy"
        argv = [sys.executable, "-m", "usl_fast", "select", str(feats_npy), "-m", "40",
                "-o", str(out)]  # fmt: skip
        rc, err = _interrupt_when(argv, b"kNN", rng.uniform(0.0, 0.6))
        assert rc == 130, (i, rc, err[-500:])
        assert "usl-fast: interrupted" in err
        assert "terminate called" not in err
        assert not out.exists()


@pytest.mark.slow  # 20 interpreters, each interrupted
def test_ctrl_c_in_api_select_raises_keyboardinterrupt_every_time(feats_npy):
    code = f"""
        import sys, numpy as np, usl_fast
        x = np.load({str(feats_npy)!r})
        print("ready", file=sys.stderr, flush=True)
        try:
            usl_fast.select(x, 40, progress=True)
        except KeyboardInterrupt:
            print("caught KeyboardInterrupt", file=sys.stderr, flush=True)
            sys.exit(7)
        """
    rng = random.Random(1)
    for i in range(N_INTERRUPTS):
        # Anywhere from the start of the work to well inside k-means.
        argv = [sys.executable, "-c", textwrap.dedent(code)]
        rc, err = _interrupt_when(argv, b"ready", rng.uniform(0.05, 1.5))
        assert rc == 7, (i, rc, err[-500:])
        assert "terminate called" not in err


def test_ctrl_c_reaches_a_single_long_kmeans_assign():
    # One assign of 100,000 x 256 rows against 10,000 centroids takes seconds; it used to run
    # in the caller's thread with no cancel slot, so KeyboardInterrupt came 13 s late.
    r = _child(
        """
        import os, signal, sys, threading, time
        import numpy as np, usl_fast
        from usl_fast import _progress
        x = np.random.default_rng(0).standard_normal((100_000, 256)).astype(np.float32)
        sent = {}
        def interrupt():
            # Once the engine has finished a unit of the first assign, i.e. inside it.
            while _progress.last_control is None or _progress.last_control[0] < 1:
                time.sleep(0.001)
            sent["t"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=interrupt, daemon=True).start()
        t0 = time.perf_counter()
        try:
            usl_fast.kmeans(x, 10_000, n_iter=20, threads=2)
        except KeyboardInterrupt:
            print(f"late {time.perf_counter() - sent['t']:.3f}")
            sys.exit(0)
        print(f"not interrupted: finished after {time.perf_counter() - t0:.1f} s")
        sys.exit(3)
        """,
        preexec_fn=_default_sigint,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    late = float(r.stdout.split()[-1])
    assert late < 1.0, r.stdout


def test_exit_while_a_daemon_thread_is_inside_the_engine():
    # The main thread ends while a daemon thread's op runs: shutdown cancels the op (its
    # worker is not a daemon, so the interpreter waits for it) instead of waiting for the
    # whole op or tearing the worker down inside C++ (SIGABRT).
    r = _child(
        """
        import sys, threading, time
        import numpy as np, usl_fast
        from usl_fast import _progress
        x = np.random.default_rng(0).standard_normal((60000, 128)).astype(np.float32)
        _progress.last_control = None
        threading.Thread(target=lambda: usl_fast.knn(x, 400, threads=2), daemon=True).start()
        while _progress.last_control is None or _progress.last_control[0] < 1:
            time.sleep(0.001)
        print(f"{time.perf_counter():.6f}", flush=True)
        """,
        timeout=60,
    )
    ended = time.perf_counter()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "terminate called" not in r.stderr
    # perf_counter is system-wide (CLOCK_MONOTONIC) on Linux: compare across processes.
    assert ended - float(r.stdout.split()[-1]) < 5.0, "shutdown waited for the whole op"


def test_large_assign_runs_cancellable_and_small_inline(monkeypatch):
    # Which path an assign takes (the threshold is in multiply-adds).
    from usl_fast import _dispatch, _progress

    x = _unit(300, 8, 2)
    c = x[:5].copy()
    _progress.last_control = None
    small = _dispatch.assign(x, c, 1)
    assert _progress.last_control is None
    monkeypatch.setattr(_dispatch, "INLINE_ASSIGN_WORK", 1)
    large = _dispatch.assign(x, c, 1)
    assert _progress.last_control is not None
    assert np.array_equal(small[0], large[0]) and np.array_equal(small[1], large[1])


# -------------------------------------------------------------------------------- fork
# libgomp keeps each thread's OpenMP worker pool in thread-local state; a child forked after
# the engine ran in the forking thread inherited it without the threads and hung in a
# barrier (or aborted with "free(): invalid pointer").

FORK_CASES = {
    "kmeans": "usl_fast.kmeans(x, 10, n_iter=5, threads=2).labels",
    "select": "usl_fast.select(x, 20, k=10, n_clusters=20, kmeans_iter=10, threads=2)",
    "typiclust": "usl_fast.TypiClust(threads=2).fit(x, 15).indices_",
    "knn": "usl_fast.knn(x, 7, threads=2)[1]",
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("case", sorted(FORK_CASES))
def test_fork_after_the_engine_ran(case):
    expr = FORK_CASES[case]
    r = _child(
        f"""
        import os, sys, warnings
        import numpy as np, usl_fast
        warnings.simplefilter("ignore")
        x = np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        parent = np.asarray({expr})
        for child in range(3):  # several children, one after another
            pid = os.fork()
            if pid == 0:
                got = np.asarray({expr})
                os._exit(0 if np.array_equal(got, parent) else 3)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                print("child status", status)
                sys.exit(1)
        again = np.asarray({expr})  # the parent still works after its forks
        sys.exit(0 if np.array_equal(again, parent) else 4)
        """,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_is_inside_the_engine():
    r = _child(
        """
        import os, sys, threading, time
        import numpy as np, usl_fast
        x = np.random.default_rng(0).standard_normal((40000, 64)).astype(np.float32)
        ref = usl_fast.kmeans(x[:3000], 10, n_iter=5, threads=2).labels
        from usl_fast import _progress
        _progress.last_control = None
        busy = threading.Thread(target=lambda: usl_fast.knn(x, 50, threads=2))
        busy.start()
        # Fork once the other thread's engine call has begun (it announced its total).
        while _progress.last_control is None or _progress.last_control[1] < 1:
            if not busy.is_alive():
                sys.exit(5)  # it finished before the fork: the case was not exercised
            time.sleep(0.0005)
        pid = os.fork()
        if pid == 0:
            got = usl_fast.kmeans(x[:3000], 10, n_iter=5, threads=2).labels
            os._exit(0 if np.array_equal(got, ref) else 3)
        _, status = os.waitpid(pid, 0)
        busy.join()
        sys.exit(0 if status == 0 else 1)
        """,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_dataloader_fork_workers_use_the_engine():
    pytest.importorskip("torch")
    r = _child(
        """
        import sys
        import numpy as np, torch, usl_fast
        from torch.utils.data import DataLoader, Dataset
        x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
        usl_fast.kmeans(x, 8, n_iter=5, threads=2)  # the parent ran the engine first
        want = [usl_fast.kmeans(x[i * 100:], 8, n_iter=5, threads=2).labels for i in range(4)]

        class Picks(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                return torch.from_numpy(
                    usl_fast.kmeans(x[i * 100:], 8, n_iter=5, threads=2).labels.astype(np.int64)
                )

        loader = DataLoader(Picks(), batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        got = [b.numpy() for b in loader]
        ok = all(np.array_equal(g, w) for g, w in zip(got, want)) and len(got) == 4
        sys.exit(0 if ok else 3)
        """,
        timeout=90,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------- engine MemoryError text


def test_engine_memoryerror_names_the_op_and_the_size():
    from usl_fast._backend import _cpu

    x = _unit(3000, 8, 3)
    _cpu.set_alloc_limit(50_000)
    try:
        with pytest.raises(MemoryError) as info:
            usl_fast.knn(x, 40, _max_reservoir_bytes=0.0)
    finally:
        _cpu.set_alloc_limit(-1)
    msg = str(info.value)
    assert msg.startswith("usl_fast: kNN: the engine could not allocate"), msg
    assert "bytes" in msg and "RLIMIT_AS" in msg


# ---------------------------------------------------------------------- a dying rank

N_KILLS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 20 two-rank gloo runs, one rank killed in each
def test_survivor_of_a_killed_rank_exits_1_with_the_error(tmp_path):
    pytest.importorskip("torch")
    feats = tmp_path / "f.npy"
    np.save(feats, _unit(12_000, 32, 4))
    rng = random.Random(2)
    for i in range(N_KILLS):
        port = _free_port()
        procs = []
        for rank in range(2):
            env = subprocess_env()
            env.update(
                RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                GLOO_SOCKET_IFNAME="lo",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "usl_fast.distributed", "select", str(feats),
                     "-m", "20", "-o", str(tmp_path / f"o{i}.npy"), "--timeout", "30",
                     "--threads", "1", "--kmeans-iter", "300", "-k", "20"],
                    env=env,
                    cwd=CHILD_CWD,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        # Kill rank 1 at a random moment inside k-means (rank 0 draws the bars).
        buf = _read_until(procs[0], b"k-means")
        time.sleep(rng.uniform(0.0, 0.3))
        procs[1].kill()
        procs[1].wait()
        rest = _read_rest(procs[0])
        err = (buf + rest).decode(errors="replace")
        assert procs[0].returncode == 1, (i, procs[0].returncode, err[-800:])
        assert "rank 0: error:" in err and "terminate called" not in err
        assert not (tmp_path / f"o{i}.npy").exists()
