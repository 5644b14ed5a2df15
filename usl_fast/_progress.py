"""Runs a long engine call in a worker thread so the caller can see progress and stop it.

The C++ op and this module share a 3-slot int64 array: [done, total, cancel]. The
engine counts its work units into it; on Ctrl-C the main thread sets the cancel slot,
the engine stops at the next unit, and KeyboardInterrupt reaches the caller.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np


def run(fn: Callable[..., Any], *args: Any, desc: str = "", progress: bool = False) -> Any:
    ctl = np.zeros(3, dtype=np.int64)
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn(*args, ctl)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"usl_fast:{desc}", daemon=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc=desc, total=None, leave=True, dynamic_ncols=True)
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
    done = int(ctl[0])
    if done > bar.n:
        bar.update(done - bar.n)
