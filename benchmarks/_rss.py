"""Resident-memory readings for the benchmarks' child processes (Linux /proc): imported by
the CHILD scripts of bench_memory.py and bench_methods.py, which run with this folder last
on sys.path."""

from __future__ import annotations

import os


def status(key: str) -> int:
    """A /proc/self/status field (VmHWM, VmRSS, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss() -> int:
    """Current resident set size, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """VmHWM := current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
