"""How much memory a new allocation can still take, and the check every op runs first.

A process can be under several limits at once, and each fails differently when exceeded:

- the address-space limits ``RLIMIT_AS`` (``ulimit -v``, ``prlimit --as``) and
  ``RLIMIT_DATA``: they count reserved address space whether or not it is touched (thread
  stacks, malloc's per-thread arenas, OpenBLAS's per-thread buffer). Past them ``mmap``
  fails: a numpy allocation raises, but OpenBLAS exits the process ("Memory allocation
  still failed") and libgomp aborts when it cannot map a thread's stack;
- the memory controller of the process's cgroup and of each of its ancestors (a
  container's limit: cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``): it counts
  touched pages, and past it the kernel kills the process with no error at all;
- the machine's free memory (``MemAvailable`` in ``/proc/meminfo``).

So an op estimates what it will allocate and checks it against the smallest of these
before any work, and a ``MemoryError`` names the sizes and the limit.

The cgroup files are found from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``. The
environment variable ``USL_FAST_CGROUP_ROOT`` replaces the mount point: the v2 files are
then read under ``$USL_FAST_CGROUP_ROOT/<the 0:: path>``, the v1 ones under
``$USL_FAST_CGROUP_ROOT/memory/<the memory controller's path>`` (for a container that
mounts its cgroup tree elsewhere, or a test that points it at a fake tree).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

GiB = float(2**30)
MiB = 2**20

#: Environment variable naming the directory the cgroup hierarchy is mounted at.
CGROUP_ROOT_ENV = "USL_FAST_CGROUP_ROOT"

#: What the engine allocates per OpenMP thread whatever the op: a 256 x 256 float32 tile
#: (256 KiB), the float32 GEMM's packed B panels (256 KiB), the AMX bfloat16 operands (up
#: to 528 KiB) or the AVX2 int16 ones (520 KiB), and small per-tile vectors; rounded up.
ENGINE_THREAD_BYTES = 5 * MiB // 4
#: OpenBLAS (the portable path, or USL_FAST_GEMM=blas) maps a buffer per thread
#: that calls it: measured 32 MiB of address space a thread with the scipy-openblas32
#: build, of which the packing of one tile's operands touches a few MiB (counted as 8).
BLAS_THREAD_RESERVED = 32 * MiB
BLAS_THREAD_TOUCHED = 8 * MiB
#: glibc gives each new thread that allocates its own malloc arena, a 64 MiB reservation
#: on 64-bit Linux (measured: +72 MiB of address space per first-time thread with its
#: stack), and keeps at most 8 arenas per core.
ARENA_BYTES = 64 * MiB
#: What stays mapped after an op, and what does not (VmSize measured around repeated
#: ``knn(x, 5, threads=16)`` calls, 2 cores): glibc never unmaps an arena (a thread that
#: exits leaves its arena on a free list for the next new thread), and OpenBLAS keeps its
#: buffers in a pool for the next caller; so the first call grew VmSize by ~1 GiB (15
#: arenas, 2 cores' cap of 16 with the main one) and identical later calls by nothing.
#: Thread stacks do not stay: each call's worker thread and its OpenMP team exit with it
#: and glibc unmaps their stacks (bar a 40 MiB cache), so every call maps them again.
#: Hence the arenas and OpenBLAS buffers of an estimate are those of threads beyond the
#: most that an earlier op of this process ran (``_TILE_THREADS_SEEN``, raised once an
#: op's check has passed), while its stacks always count. A forked child inherits the
#: mappings, glibc's arena list and this mark alike (measured: no growth in the child), so
#: the mark is not reset at fork. It undercounts only when ops run concurrently from
#: several Python threads after a larger sequential one; glibc then falls back to an
#: existing arena or a plain mmap when it cannot map a new arena, not an abort.
_TILE_THREADS_SEEN = 0
#: Safety margin on every estimate, for what it does not itemise (Python objects, the
#: validation's row-block temporaries, small engine vectors, allocator rounding): 1/16 of
#: it plus 32 MiB.
MARGIN_FRACTION = 1.0 / 16.0
MARGIN_BYTES = 32 * MiB
#: A cgroup v1 limit at or above this is "no limit" (the kernel reports ~2^63 rounded down).
_V1_UNLIMITED = 2**60


@dataclass(frozen=True)
class Limit:
    """One limit on new allocations.

    Attributes
    ----------
    name : str
        ``"RLIMIT_AS"``, ``"RLIMIT_DATA"``, ``"cgroup memory.max"``, ``"cgroup v1
        memory.limit_in_bytes"`` or ``"MemAvailable"``.
    free : int
        Bytes a new allocation can still take under it.
    detail : str
        Where the figures come from, for the error message.
    address_space : bool
        True when the limit counts reserved address space (the rlimits), False when it
        counts touched memory.
    """

    name: str
    free: int
    detail: str
    address_space: bool


def _gib(b: float) -> str:
    """Bytes for a message: GiB from 1 GiB up, else MiB (3 significant digits)."""
    if b >= GiB:
        return f"{b / GiB:.3g} GiB"
    return f"{b / MiB:.3g} MiB"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> Optional[int]:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


# ------------------------------------------------------------------------------ rlimits


def rlimit_limits() -> List[Limit]:
    """RLIMIT_AS against the current address-space size (VmSize) and RLIMIT_DATA against
    the current data size (VmData), from ``/proc/self/status``; none when unlimited."""
    try:
        import resource
    except ImportError:  # not on a Unix
        return []
    finite = []
    for name, res, field in (
        ("RLIMIT_AS", resource.RLIMIT_AS, "VmSize"),
        ("RLIMIT_DATA", getattr(resource, "RLIMIT_DATA", None), "VmData"),
    ):
        if res is None:
            continue
        soft = resource.getrlimit(res)[0]
        if soft != resource.RLIM_INFINITY and soft >= 0:
            finite.append((name, int(soft), field))
    if not finite:  # the usual case: two system calls, no file read
        return []
    # The previous op's OpenMP team may still be exiting, its stacks still mapped.
    from ._progress import wait_for_last_worker

    wait_for_last_worker()
    used: Dict[str, int] = {}
    for line in (_read("/proc/self/status") or "").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmSize", "VmData"):
            try:
                used[key] = int(rest.split()[0]) * 1024
            except (ValueError, IndexError):
                pass
    out = []
    for name, soft, field in finite:
        if field not in used:
            # Without /proc the use is unknown; the limit itself still bounds a request.
            out.append(Limit(name, soft, f"limit {_gib(soft)}, use unknown", True))
            continue
        out.append(
            Limit(
                name,
                max(0, soft - used[field]),
                f"limit {_gib(soft)}, {_gib(used[field])} already mapped ({field})",
                True,
            )
        )
    return out


# ------------------------------------------------------------------------------ cgroups


def _proc_cgroup_paths() -> Tuple[Optional[str], Optional[str]]:
    """(the cgroup v2 path, the v1 memory controller's path) of this process, from
    ``/proc/self/cgroup`` ("0::/path" and "N:...memory...:/path" lines)."""
    v2 = v1 = None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _cgroup_mounts() -> Tuple[Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """((mount point, root within the hierarchy) of the cgroup2 mount, the same of the v1
    memory controller's mount), from ``/proc/self/mountinfo``."""
    v2 = v1 = None
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = fields[3], fields[4]
        fstype, options = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = (mount_point, root)
        elif fstype == "cgroup" and "memory" in options and v1 is None:
            v1 = (mount_point, root)
    return v2, v1


def _dir_of(mount: Optional[Tuple[str, str]], path: Optional[str]) -> Optional[Tuple[str, str]]:
    """(the directory of cgroup ``path`` under ``mount``, the mount point), or None when
    the path is not visible there."""
    if mount is None or path is None:
        return None
    mount_point, root = mount
    root = root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None
    rel = path[len(root) :].strip("/")
    return os.path.join(mount_point, rel) if rel else mount_point, mount_point


def cgroup_dirs() -> Tuple[Optional[Tuple[str, str]], Optional[Tuple[str, str]]]:
    """((leaf directory, top directory) of this process's cgroup v2, the same of its v1
    memory cgroup); each None when absent. ``USL_FAST_CGROUP_ROOT`` replaces the mount
    points (module docstring)."""
    v2_path, v1_path = _proc_cgroup_paths()
    override = os.environ.get(CGROUP_ROOT_ENV)
    if override:
        v2_mount: Optional[Tuple[str, str]] = (override, "/")
        v1_mount: Optional[Tuple[str, str]] = (os.path.join(override, "memory"), "/")
    else:
        v2_mount, v1_mount = _cgroup_mounts()
    return _dir_of(v2_mount, v2_path), _dir_of(v1_mount, v1_path)


def _ancestors(leaf: str, top: str) -> List[str]:
    """``leaf`` and each parent directory up to and including ``top``."""
    leaf, top = os.path.normpath(leaf), os.path.normpath(top)
    out = [leaf]
    while leaf != top and leaf.startswith(top + os.sep):
        leaf = os.path.dirname(leaf)
        out.append(leaf)
    return out


def _v2_limit(d: str) -> Optional[int]:
    text = _read(os.path.join(d, "memory.max"))
    if text is None or text.strip() in ("", "max"):
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def _v1_limit(d: str) -> Optional[int]:
    limit = _read_int(os.path.join(d, "memory.limit_in_bytes"))
    return None if limit is None or limit >= _V1_UNLIMITED else limit


def limited_cgroups(
    v2: Optional[Tuple[str, str]], v1: Optional[Tuple[str, str]]
) -> List[Tuple[int, str]]:
    """The directories, from the cgroup up to the mount point, that set a memory limit:
    (2, dir) where v2 ``memory.max`` is a number ("max" means none), (1, dir) where v1
    ``memory.limit_in_bytes`` is below ~2^60 (the kernel's "unlimited" is ~2^63).
    ``v2``, ``v1``: (leaf directory, top directory) or None."""
    out = []
    if v2 is not None:
        out += [(2, d) for d in _ancestors(*v2) if _v2_limit(d) is not None]
    if v1 is not None:
        out += [(1, d) for d in _ancestors(*v1) if _v1_limit(d) is not None]
    return out


def _clean_file_cache(stat_path: str, v1: bool) -> int:
    """Bytes of clean page cache charged to a cgroup (its ``memory.stat``): the file LRU
    lists, inactive AND active, less the dirty pages and those under writeback. Clean
    file pages are dropped without any I/O before the kernel resorts to killing, whether
    inactive or active: a memory-mapped feature file read more than once sits on the
    active list, and counting it as used refused work in a pod whose limit is near the
    file's size. (``file`` / ``total_cache`` would also count shmem and tmpfs pages,
    which are on the anon lists and cannot be dropped.)"""
    text = _read(stat_path) or ""
    fields = dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)

    def get(name: str) -> int:
        # v1: the hierarchical total_ figure (children included) where the kernel has it
        for key in (("total_" + name, name) if v1 else (name,)):
            try:
                return int(fields[key])
            except (KeyError, ValueError):
                pass
        return 0

    busy = ("dirty", "writeback") if v1 else ("file_dirty", "file_writeback")
    lru = get("inactive_file") + get("active_file")
    return max(0, lru - get(busy[0]) - get(busy[1]))


def cgroup_limits(dirs: List[Tuple[int, str]]) -> List[Limit]:
    """The limits of ``limited_cgroups``, re-read now: v2 ``memory.max`` less
    ``memory.current``, v1 ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``. The
    clean file cache (``memory.stat``: ``_clean_file_cache``) is not counted as used: the
    kernel reclaims it before it kills."""
    out = []
    for version, d in dirs:
        stat = os.path.join(d, "memory.stat")
        if version == 2:
            limit = _v2_limit(d)
            current = _read_int(os.path.join(d, "memory.current"))
            cache = _clean_file_cache(stat, v1=False)
            name, file = "cgroup memory.max", "memory.max"
        else:
            limit = _v1_limit(d)
            current = _read_int(os.path.join(d, "memory.usage_in_bytes"))
            cache = _clean_file_cache(stat, v1=True)
            name, file = "cgroup v1 memory.limit_in_bytes", "memory.limit_in_bytes"
        if limit is None:  # lifted since it was found
            continue
        used = 0 if current is None else max(0, current - cache)
        out.append(
            Limit(
                name,
                max(0, limit - used),
                f"{os.path.join(d, file)} = {_gib(limit)}, {_gib(used)} in use",
                False,
            )
        )
    return out


#: (pid, USL_FAST_CGROUP_ROOT) -> the limited cgroup directories found for them.
_FOUND: Dict[Tuple[int, Optional[str]], List[Tuple[int, str]]] = {}


def _limited_cgroups_cached() -> List[Tuple[int, str]]:
    """``limited_cgroups`` of this process, found once per process (and value of
    USL_FAST_CGROUP_ROOT): walking /proc and the tree costs ~0.3 ms, the reads of the
    limited directories' use each call need only a few files. A limit first set on a
    cgroup after this process's first check is not seen."""
    key = (os.getpid(), os.environ.get(CGROUP_ROOT_ENV))
    if key not in _FOUND:
        _FOUND[key] = limited_cgroups(*cgroup_dirs())
    return _FOUND[key]


# -------------------------------------------------------------------------- MemAvailable


def mem_available() -> Optional[Limit]:
    """The machine's MemAvailable (``/proc/meminfo``; else sysconf's available pages)."""
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                b = int(line.split()[1]) * 1024
            except (ValueError, IndexError):
                break
            return Limit("MemAvailable", b, "/proc/meminfo", False)
    try:
        b = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
    return Limit("MemAvailable", b, "sysconf(SC_AVPHYS_PAGES)", False)


def limits() -> List[Limit]:
    """Every limit that applies to this process now (re-read on each call: the use
    changes, and a forked child may live in another cgroup)."""
    return rlimit_limits() + touched_limits()


def touched_limits() -> List[Limit]:
    """The limits on touched memory: the cgroups', then MemAvailable."""
    out = cgroup_limits(_limited_cgroups_cached())
    avail = mem_available()
    if avail is not None:
        out.append(avail)
    return out


# -------------------------------------------------------------------------- the estimate


def _stack_bytes() -> int:
    """The stack libgomp maps for each thread: OMP_STACKSIZE / GOMP_STACKSIZE when set
    (a number with an optional B/K/M/G suffix, kilobytes by default), else glibc's default,
    RLIMIT_STACK's soft value (8 MiB when it is unlimited or unknown)."""
    for var in ("GOMP_STACKSIZE", "OMP_STACKSIZE"):
        text = os.environ.get(var, "").strip().upper()
        if not text:
            continue
        unit = {"B": 1, "K": 1024, "M": MiB, "G": 2**30}
        scale = unit.get(text[-1], None)
        num = text[:-1] if scale is not None else text
        try:
            return int(float(num.strip()) * (scale or 1024))
        except ValueError:
            break
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
        if soft != resource.RLIM_INFINITY and 0 < soft <= 2**32:
            return int(soft)
    except (ImportError, OSError, ValueError):
        pass
    return 8 * MiB


def _uses_blas() -> bool:
    """Whether the engine's tile GEMM is OpenBLAS (its per-thread buffer then counts)."""
    from ._backend import _cpu

    return int(_cpu.gemm_kind()) == 0


@dataclass(frozen=True)
class Estimate:
    """What an op will allocate, itemised for the message.

    arrays: outputs and engine buffers sized by the input; threads: the OpenMP threads it
    runs; per_thread: buffers each of them allocates beyond ``ENGINE_THREAD_BYTES``;
    tiles: whether its threads run the tile GEMM and allocate (False for the norms and the
    k-means sums, whose threads only read and add: no OpenBLAS buffer, no arena)."""

    arrays: float
    threads: int = 0
    per_thread: float = 0.0
    tiles: bool = True

    def touched(self, blas: bool) -> Tuple[float, List[str]]:
        """(bytes of memory it touches, margin included; the itemisation)."""
        per = ENGINE_THREAD_BYTES + self.per_thread + (BLAS_THREAD_TOUCHED if blas else 0)
        th = self.threads * per if self.threads else 0.0
        margin = (self.arrays + th) * MARGIN_FRACTION + MARGIN_BYTES
        parts = [f"{_gib(self.arrays)} of arrays"]
        if self.threads:
            parts.append(f"{_gib(th)} of buffers for {self.threads} threads")
        return self.arrays + th + margin, parts + [f"{_gib(margin)} safety margin"]

    def reserved(self, blas: bool) -> Tuple[float, List[str]]:
        """(bytes of address space it maps, the itemisation): what it touches plus each
        thread's stack and, for threads beyond those earlier ops already ran
        (``_TILE_THREADS_SEEN``), a malloc arena and an OpenBLAS buffer, mapped but mostly
        never touched."""
        total, parts = self.touched(blas)
        if not self.threads:
            return total, parts
        extra = float(self.threads * _stack_bytes())
        if self.tiles:
            cap = _arena_cap()
            extra += max(0, min(self.threads, cap) - min(_TILE_THREADS_SEEN, cap)) * ARENA_BYTES
            if blas:
                new = max(0, self.threads - _TILE_THREADS_SEEN)
                extra += new * (BLAS_THREAD_RESERVED - BLAS_THREAD_TOUCHED)
        parts.insert(-1, f"{_gib(extra)} of thread stacks and allocator reservations")
        return total + extra, parts


def _arena_cap() -> int:
    """The most malloc arenas glibc makes: 8 per core on 64-bit."""
    return 8 * (os.cpu_count() or 1)


def _ran(estimate: Estimate) -> None:
    """Note that an op with ``estimate`` passed its check and now runs: its threads'
    arenas and OpenBLAS buffers will be mapped from here on (``_TILE_THREADS_SEEN``)."""
    global _TILE_THREADS_SEEN
    if estimate.tiles and estimate.threads > _TILE_THREADS_SEEN:
        _TILE_THREADS_SEEN = estimate.threads


#: An op whose estimate (margin excluded) is below this is checked against the
#: address-space limits only: the touched-memory limits cost a few file reads a call (the
#: k-center loop calls the engine once a pick), and an allocation this small beside the
#: 32 MiB margin is one any numpy temporary could make as well.
SMALL_BYTES = 16 * MiB


def check(estimate: Estimate, what: str, found: Optional[List[Limit]] = None) -> None:
    """Raise MemoryError, before any allocation, when ``estimate`` does not fit under one
    of the limits (``found``, default: ``limits()``, the touched-memory ones only when the
    estimate reaches ``SMALL_BYTES``). Against each limit the need is what counts for it
    (address space for the rlimits, touched memory otherwise); the limit short by the most
    is named.

    The message says what needs how many GiB, itemised, and which limit allows how much:
    "usl_fast: the kNN lists (50000 x 2000) ... would need about 1.38 GiB (1.12 GiB of
    arrays, ...), but only 1.15 GiB is available under RLIMIT_AS (limit 1.4 GiB, 0.248 GiB
    already mapped (VmSize)); ...".
    """
    if found is None:
        found = rlimit_limits()
        per = ENGINE_THREAD_BYTES + estimate.per_thread
        if estimate.arrays + estimate.threads * per >= SMALL_BYTES:
            found = found + touched_limits()
    if not found:
        _ran(estimate)
        return
    blas = estimate.threads > 0 and estimate.tiles and _uses_blas()
    worst = None
    for lim in found:
        need, parts = estimate.reserved(blas) if lim.address_space else estimate.touched(blas)
        short = need - lim.free
        if short > 0 and (worst is None or short > worst[0]):
            worst = (short, need, parts, lim)
    if worst is None:
        _ran(estimate)
        return
    _, need, parts, lim = worst
    raise MemoryError(
        f"usl_fast: {what} would need about {_gib(need)} ({', '.join(parts)}), but only "
        f"{_gib(lim.free)} is available under {lim.name} ({lim.detail}); use smaller "
        "inputs or fewer threads, or raise the limit"
    )
