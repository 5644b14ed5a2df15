"""Runs a long engine call in a worker thread so the caller can see progress and stop it.

The C++ op and this module share a 4-slot int64 array: [done, total, cancel, threads that
ran]. The engine counts its work units into it; on Ctrl-C the main thread sets the cancel
slot, the engine stops at the next unit, and KeyboardInterrupt reaches the caller. The
thread count is resolved in the CALLER's thread before the worker starts (see
``_dispatch.resolve_threads``), so OpenMP settings made there still apply.

The bar (``progress=True``) is drawn only once the engine has announced its total, so it
shows ``done/total``, a percentage and an ETA from its first line, and it names its unit:
"tiles" for the distance ops, where a tile is one block of 256 points checked against
the others (a 256 x 256 block of pairs in the self-kNN pass, 256 rows against all
columns elsewhere; the kNN total also counts one sampling pass and, when needed, the
re-check of a few rows, which the engine adds to the total when it starts them).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

#: The control array of the last engine call made through ``run`` (tests read slot 3).
last_control: Optional[np.ndarray] = None

#: The worker thread of the last engine call made through ``run`` and the event it sets
#: when the engine has returned (``wait_for_last_worker``).
_last_worker: Optional[Tuple[threading.Thread, threading.Event]] = None

#: How the engine's unit names read on a bar (plural; shown after ``done/total``).
UNIT_NAMES = {"tile": "tiles", "center": "centers"}

#: tqdm's default layout with the unit after the counts: "kNN: 45%|####  | 9/20 tiles [...]".
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def run(
    fn: Callable[..., Any],
    *args: Any,
    desc: str = "",
    unit: str = "tile",
    progress: bool = False,
    extra: tuple = (),
) -> Any:
    """``fn(*args, control, *extra)`` in a worker thread; its result or its exception.

    With ``progress=True`` a tqdm bar named ``desc`` counts ``unit``s (``UNIT_NAMES``)
    on stderr, created when the engine sets its total (or when the call ends first).
    """
    global last_control, _last_worker
    ctl = np.zeros(4, dtype=np.int64)
    last_control = ctl
    box: dict = {}
    entered = threading.Event()
    finished = threading.Event()

    def work() -> None:
        entered.set()
        try:
            box["value"] = fn(*args, ctl, *extra)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
        finally:
            # Set once the engine has returned: from here on this thread runs no C++.
            _live.pop(id(ctl), None)
            finished.set()

    # The work runs in a worker thread so that the caller's thread stays free to receive
    # Ctrl-C (and to draw the bar); it gets the thread count resolved in the caller's thread.
    # Not a daemon: should anything unwind the caller past the wait below, interpreter exit
    # still waits for the engine (which the cancel flag, set at shutdown, stops within one
    # work unit) instead of tearing the thread down inside C++, which aborts the process.
    worker = threading.Thread(target=work, name=f"usl_fast:{desc}", daemon=False)
    bar = None
    _live[id(ctl)] = ctl
    _last_worker = (worker, finished)
    try:
        worker.start()
        # An Event, not Thread.join: on CPython < 3.12 a join interrupted by Ctrl-C can mark
        # the thread as stopped while it still runs (bpo-45274's fix releases the thread's
        # lock), so a second join returns at once and the process could exit with the engine
        # still inside C++ ("terminate called without an active exception").
        while not finished.wait(0.1):
            if progress:
                bar = _update(bar, ctl, desc, unit)
    except BaseException:
        # Ctrl-C (or anything else raised in this thread): stop the engine, then wait for it
        # however many more Ctrl-C arrive (it stops within one tile), then re-raise. A
        # Ctrl-C inside worker.start() may come before or after the thread was created: a
        # created thread enters `work` at once and, with the flag set, returns at the
        # engine's first check; one that never entered within a second was never created.
        ctl[2] = 1
        if _wait_out(entered, limit=1.0) or worker.is_alive():
            _wait_out(finished)
        _live.pop(id(ctl), None)
        if bar is not None:
            bar.close()
        raise
    if progress and "error" not in box:
        bar = _update(bar, ctl, desc, unit, final=True)
    if bar is not None:
        bar.close()
    if "error" in box:
        exc = box["error"]
        if isinstance(exc, MemoryError) and not str(exc).startswith("usl_fast"):
            # The engine's own text says how much it could not get; add which op it was.
            raise MemoryError(f"usl_fast: {desc or fn.__name__}: {exc}") from None
        raise exc
    return box.get("value")


def wait_for_last_worker(timeout: float = 0.1) -> None:
    """Wait, at most ``timeout`` seconds, until the worker thread of the last ``run`` has
    exited at the OS level. Its Python part ends as soon as the engine returns, but its
    OpenMP team is torn down after that (libgomp's thread-exit destructor), and until then
    the team's stacks are still mapped: ``knn(x, 5, threads=16)`` returned with 19 threads
    and 96 MiB more address space than 1-6 ms later (2 cores). A check of the address
    space (``_memory.rlimit_limits``) made in that window would count the stacks of the
    op that ended besides those of the op about to start. (An op still running, e.g.
    from another Python thread, is not waited for.)"""
    global _last_worker
    w = _last_worker
    if w is None or not w[1].is_set() or w[0].native_id is None:
        return
    tid = w[0].native_id
    path = f"/proc/self/task/{tid}"  # absent once the thread is gone (and in a forked child)
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return
        time.sleep(0.0002)
    if _last_worker is w:
        _last_worker = None


def _wait_out(event: threading.Event, limit: Optional[float] = None) -> bool:
    """Wait until ``event`` is set (or ``limit`` seconds pass); returns whether it is set.
    A KeyboardInterrupt meanwhile is held back and raised again once the wait is over (the
    cancelled engine returns within one work unit)."""
    interrupted = None
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        try:
            if event.wait(0.05):
                break
        except KeyboardInterrupt as exc:
            interrupted = exc
        if deadline is not None and time.monotonic() >= deadline:
            break
    if interrupted is not None:
        raise interrupted
    return event.is_set()


#: Control arrays of the engine calls in flight (by id), so that interpreter shutdown can
#: cancel them: a call made from a daemon thread is still running when the main thread
#: ends, and its non-daemon worker would otherwise hold the exit for the whole op.
_live: Dict[int, np.ndarray] = {}


def _cancel_all() -> None:
    for c in list(_live.values()):
        c[2] = 1


# Runs at shutdown BEFORE the interpreter joins its non-daemon threads (the hook
# concurrent.futures uses; private, hence the fallback to atexit, which runs after).
try:
    threading._register_atexit(_cancel_all)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons
    import atexit

    atexit.register(_cancel_all)


def bar(desc: str, total: int, units: str) -> Any:
    """A tqdm bar laid out like the engine's ("k-means: 45%|## | 9/20 iterations [...]"),
    for the loops that run in Python; ``units``: the plural name."""
    return _new_bar(desc, total, units)


def _new_bar(desc: str, total: int, unit: str) -> Any:
    from tqdm.auto import tqdm

    name = UNIT_NAMES.get(unit, unit)
    return tqdm(
        desc=desc,
        total=total,
        unit=" " + name,  # tqdm glues the unit to the rate: "2925.39 tiles/s"
        bar_format=BAR_FORMAT,
        leave=True,
        dynamic_ncols=True,
    )


def _update(bar: Any, ctl: np.ndarray, desc: str, unit: str, final: bool = False) -> Any:
    """Bring ``bar`` to the control array's state; create it once a total is known (or at
    the end). Returns the bar (None while there is nothing to show yet)."""
    total, done = int(ctl[1]), int(ctl[0])
    if final:
        total = max(total, done)  # never end past the total
    if bar is None:
        if total <= 0:
            return None
        bar = _new_bar(desc, total, unit)
    if total > 0 and bar.total != total:
        # The kNN adds units when it must re-check rows; the bar follows.
        bar.total = total
        bar.refresh()
    done = min(done, bar.total)
    if done > bar.n:
        bar.update(done - bar.n)
    return bar
