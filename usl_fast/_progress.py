"""Runs a long engine call in a worker thread so the caller can see progress and stop it.

The C++ op and this module share a 4-slot int64 array: [done, total, cancel, threads that
ran]. The engine counts its work units into it; on Ctrl-C the main thread sets the cancel
slot, the engine stops at the next unit, and KeyboardInterrupt reaches the caller. The
thread count is resolved in the CALLER's thread before the worker starts (see
``_dispatch.resolve_threads``), so OpenMP settings made there still apply.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import numpy as np

#: The control array of the last engine call made through ``run`` (tests read slot 3).
last_control: Optional[np.ndarray] = None


def run(
    fn: Callable[..., Any],
    *args: Any,
    desc: str = "",
    unit: str = "tile",
    progress: bool = False,
    extra: tuple = (),
) -> Any:
    """``fn(*args, control, *extra)`` in a worker thread; its result or its exception."""
    global last_control
    ctl = np.zeros(4, dtype=np.int64)
    last_control = ctl
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn(*args, ctl, *extra)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    # The work runs in a worker thread so that the caller's thread stays free to receive
    # Ctrl-C (and to draw the bar); it gets the thread count resolved in the caller's thread.
    worker = threading.Thread(target=work, name=f"usl_fast:{desc}", daemon=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=desc, total=None, unit=unit, leave=True, dynamic_ncols=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=0.1)
            if bar is not None:
                _update(bar, ctl)
    except KeyboardInterrupt:
        ctl[2] = 1
        worker.join()
        if bar is not None:
            bar.close()
        raise
    if bar is not None:
        _update(bar, ctl)
        bar.close()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _update(bar: Any, ctl: np.ndarray) -> None:
    total = int(ctl[1])
    if total and bar.total != total:
        bar.total = total
        bar.refresh()
    done = int(ctl[0])
    if total:
        done = min(done, total)
    if done > bar.n:
        bar.update(done - bar.n)
