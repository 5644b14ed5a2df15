"""Memory limits (issue 22, item 5): an op that cannot fit under RLIMIT_AS, the cgroup's
memory limit or MemAvailable raises MemoryError before any work, naming what needs how
much and which limit allows how much; the process is not killed (OpenBLAS's "Memory
allocation still failed", libgomp's "Thread creation failed", the OOM killer).

Every case that sets a limit runs in its own process (the limit is set by the child
before it imports anything), with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import usl_fast
from usl_fast import _memory

from test_cli import subprocess_env  # noqa: E402

MiB = 2**20


def run_child(code: str, tmp_path: Path, env_extra=None, rlimit_as=None, timeout=120):
    """Run ``code`` in a fresh Python; ``rlimit_as``: RLIMIT_AS (soft and hard), set by the
    child before it imports anything."""
    env = subprocess_env()
    env.update(env_extra or {})
    prologue = ""
    if rlimit_as is not None:
        prologue = (
            "import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({rlimit_as}, {rlimit_as}))\n"
        )
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------------------ RLIMIT_AS


def test_rlimit_as_raises_memoryerror_before_any_work_and_finally_runs(tmp_path):
    # The reproduction: OpenBLAS printed "Memory allocation still failed" and the
    # process exited 1 with the script's `finally` not run (here: std::bad_alloc after
    # the allocation was tried).
    code = """
    import numpy as np, usl_fast
    from usl_fast import _progress
    x = np.random.default_rng(0).standard_normal((100_000, 16)).astype(np.float32)
    try:
        # threads=2: the estimate (and so "about 1.x GiB" below) grows with the thread
        # count, which otherwise follows the machine's cores (2.18 GiB with 12 threads).
        usl_fast.knn(x, 2000, queries=x[:50_000], threads=2)
    finally:
        print("FINALLY engine_started=%s" % (getattr(_progress, "last_control", None) is not None))
    """
    r = run_child(code, tmp_path, rlimit_as=1_500_000_000)
    assert r.returncode == 1, r.stderr
    assert "FINALLY engine_started=False" in r.stdout, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("MemoryError: usl_fast: the kNN lists (50000 x 2000)"), last
    assert "would need about 1." in last and "GiB" in last
    assert "available under RLIMIT_AS (limit 1.4 GiB" in last
    assert "already mapped (VmSize)" in last
    assert "Memory allocation still failed" not in r.stderr
    assert "bad_alloc" not in r.stderr


def test_a_generous_rlimit_changes_nothing(tmp_path):
    x = np.random.default_rng(1).standard_normal((20_000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(tmp_path / "x.npy", x)
    code = """
    import numpy as np, usl_fast
    x = np.load("x.npy")
    d, i = usl_fast.knn(x, 20, threads=2)
    np.save("i.npy", i); np.save("d.npy", d)
    np.save("dens.npy", usl_fast.density(x, 50, threads=2))
    np.save("picks.npy", usl_fast.select(x, 30, k=20, kmeans_iter=10, threads=2))
    """
    r = run_child(code, tmp_path, rlimit_as=4_000_000_000)
    assert r.returncode == 0, r.stderr
    d, i = usl_fast.knn(x, 20, threads=2)
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), i)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), d)
    np.testing.assert_array_equal(np.load(tmp_path / "dens.npy"), usl_fast.density(x, 50))
    np.testing.assert_array_equal(
        np.load(tmp_path / "picks.npy"), usl_fast.select(x, 30, k=20, kmeans_iter=10)
    )


def test_thread_stacks_count_against_rlimit_as(tmp_path):
    # 1,000 threads under a 3 GB limit: libgomp could not map their stacks and aborted
    # the process ("libgomp: Thread creation failed"). Now: MemoryError, and a thread count
    # that fits still works in the same process. OMP_NUM_THREADS reaches the same check.
    code = """
    import numpy as np, usl_fast
    x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    try:
        usl_fast.knn(x, 5, threads=1000)
    except MemoryError as e:
        print("ERR1", e)
    print("OK", usl_fast.knn(x, 5, threads=4)[1][0].tolist())
    """
    r = run_child(code, tmp_path, rlimit_as=3_000_000_000)
    assert r.returncode == 0, r.stderr
    err = next(line for line in r.stdout.splitlines() if line.startswith("ERR1"))
    assert "1000 threads" in err and "thread stacks" in err and "RLIMIT_AS" in err
    assert "OK [0," in r.stdout
    r = run_child(
        code.replace("threads=1000", "threads=None"),
        tmp_path,
        {"OMP_NUM_THREADS": "5000"},
        rlimit_as=3_000_000_000,
    )
    assert r.returncode == 0, r.stderr
    assert "5000 threads" in r.stdout and "RLIMIT_AS" in r.stdout


def test_repeated_calls_that_fit_keep_running_under_rlimit_as(tmp_path):
    # glibc's malloc arenas (64 MiB of address space each, one per thread that allocates,
    # at most 8 per core) and OpenBLAS's buffers are never unmapped: after the first call
    # they are part of VmSize. Counting them again on every call refused the second of two
    # identical calls ("would need about 1.18 GiB ... only 182 MiB is available": 16
    # threads, 2 cores) under a limit with room for the first call's estimate and 64 MiB.
    # (The stacks of the first call's OpenMP team, still mapped for a few ms after it
    # returns, are waited out rather than counted twice.)
    code = """
    import os, resource
    import numpy as np, usl_fast
    from usl_fast import _memory

    def vmsize():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    want = usl_fast.knn(x, 5, threads=1)[1]  # before any limit
    # The first call's estimate, as the check would make it, without running the call.
    seen = []
    real_check = _memory.check
    _memory.check = lambda estimate, what, found=None: seen.append(estimate) or 1 / 0
    try:
        usl_fast.knn(x, 5, threads=16)
    except ZeroDivisionError:
        pass
    _memory.check = real_check
    need = seen[0].reserved(_memory._uses_blas())[0]
    limit = int(vmsize() + need + 64 * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for i in range(5):
        d, idx = usl_fast.knn(x, 5, threads=16)
        print("CALL", i, (idx == want).all(), flush=True)
    # a forked child inherits the arenas (mapped, on glibc's free list): it runs too
    pid = os.fork()
    if pid == 0:
        try:
            usl_fast.knn(x, 5, threads=16)
            usl_fast.knn(x, 5, threads=16)
            os._exit(0)
        except BaseException as e:
            print("CHILD", type(e).__name__, e, flush=True)
            os._exit(3)
    print("CHILD EXIT", os.waitpid(pid, 0)[1] >> 8, flush=True)
    """
    r = run_child(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("CALL")]
    assert calls == [[str(i), "True"] for i in range(5)], r.stdout + r.stderr
    assert "CHILD EXIT 0" in r.stdout, r.stdout


def test_the_first_call_still_counts_the_arenas_it_will_create(tmp_path):
    # Under a limit with room for the arrays and stacks of 16 threads but not for their
    # 16 new arenas, the first such call is refused before any work, naming the
    # reservations; one thread (whose arena exists after a first one-thread call) runs.
    code = """
    import os, resource
    import numpy as np, usl_fast
    from usl_fast import _progress

    def vmsize():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    usl_fast.knn(x, 5, threads=1)
    _progress.last_control = None
    limit = vmsize() + 16 * 8 * 2**20 + 256 * 2**20  # stacks of 16 threads + 256 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        usl_fast.knn(x, 5, threads=16)
        print("RAN")
    except MemoryError as e:
        print("ERR", _progress.last_control is None, e)
    print("ONE", usl_fast.knn(x, 5, threads=1)[1][0].tolist())
    """
    r = run_child(code, tmp_path)
    assert r.returncode == 0, r.stderr
    err = next(line for line in r.stdout.splitlines() if line.startswith("ERR"))
    assert err.startswith("ERR True ") and "16 threads" in err and "RLIMIT_AS" in err
    assert "thread stacks and allocator reservations" in err
    assert "ONE [0," in r.stdout


# ------------------------------------------------------------------------ cgroups


def own_cgroup_paths():
    """(v2 path, v1 memory path) of this process (a child inherits them)."""
    return _memory._proc_cgroup_paths()


def fake_v2(root: Path, path: str, limit, current: int, inactive: int = 0) -> Path:
    d = root / path.strip("/") if path.strip("/") else root
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(f"{limit}\n")
    (d / "memory.current").write_text(f"{current}\n")
    (d / "memory.stat").write_text(f"anon {current}\ninactive_file {inactive}\nactive_file 0\n")
    return d


def test_a_cgroup_v2_memory_max_is_honoured(tmp_path):
    v2, _ = own_cgroup_paths()
    if v2 is None:
        pytest.skip("this process has no cgroup v2 path (/proc/self/cgroup has no 0:: line)")
    root = tmp_path / "cg"
    # 256 MiB limit, 160 MiB charged of which 32 MiB reclaimable page cache: 128 MiB free
    d = fake_v2(root, v2, 256 * MiB, 160 * MiB, 32 * MiB)
    code = """
    import numpy as np, usl_fast
    from usl_fast import _progress
    x = np.random.default_rng(0).standard_normal((100_000, 16)).astype(np.float32)
    try:
        usl_fast.density(x, 400)  # ~650 MB of candidate buffers
    except MemoryError as e:
        print("ERR", e)
    print("STARTED", getattr(_progress, "last_control", None) is not None)
    print("SMALL", usl_fast.knn(x[:3000], 5)[1][0].tolist())
    """
    r = run_child(code, tmp_path, {_memory.CGROUP_ROOT_ENV: str(root)})
    assert r.returncode == 0, r.stderr
    err = next(line for line in r.stdout.splitlines() if line.startswith("ERR"))
    assert "the kNN density of 100000 points" in err
    assert f"available under cgroup memory.max ({d / 'memory.max'} = 256 MiB, 128 MiB in use)" in err
    assert "but only 128 MiB is available" in err
    assert "STARTED False" in r.stdout
    assert "SMALL [0," in r.stdout


def test_a_cgroup_v1_limit_is_honoured(tmp_path):
    _, v1 = own_cgroup_paths()
    if v1 is None:
        pytest.skip("this process has no cgroup v1 memory controller path")
    root = tmp_path / "cg"
    d = root / "memory" / v1.strip("/") if v1.strip("/") else root / "memory"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(f"{200 * MiB}\n")
    (d / "memory.usage_in_bytes").write_text(f"{100 * MiB}\n")
    (d / "memory.stat").write_text(f"cache 0\ntotal_inactive_file {20 * MiB}\n")
    code = """
    import numpy as np, usl_fast
    x = np.random.default_rng(0).standard_normal((100_000, 16)).astype(np.float32)
    try:
        usl_fast.knn(x, 200)
    except MemoryError as e:
        print("ERR", e)
    """
    r = run_child(code, tmp_path, {_memory.CGROUP_ROOT_ENV: str(root)})
    assert r.returncode == 0, r.stderr
    assert "available under cgroup v1 memory.limit_in_bytes" in r.stdout, r.stdout
    assert "but only 120 MiB is available" in r.stdout


def test_the_limit_is_found_on_a_parent_cgroup(tmp_path):
    # "max" on the process's own cgroup, a number on its grandparent: the grandparent's
    # limit applies (the kernel charges every ancestor); v1's "unlimited" is no limit.
    top = tmp_path / "fs"
    leaf = top / "a" / "b" / "c"
    fake_v2(top / "a", "", 1 * 2**30, 600 * MiB, 100 * MiB)
    fake_v2(top / "a" / "b", "", "max", 5 * MiB)
    fake_v2(leaf, "", "max", 5 * MiB)
    v1 = tmp_path / "v1" / "x"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    found = _memory.limited_cgroups((str(leaf), str(top)), (str(v1), str(tmp_path / "v1")))
    assert found == [(2, str(top / "a"))]
    (lim,) = _memory.cgroup_limits(found)
    assert lim.name == "cgroup memory.max" and not lim.address_space
    assert lim.free == 2**30 - 500 * MiB
    # The path translation of /proc/self/cgroup through a mount's root.
    assert _memory._dir_of(("/sys/fs/cgroup", "/"), "/a/b") == ("/sys/fs/cgroup/a/b", "/sys/fs/cgroup")
    assert _memory._dir_of(("/sys/fs/cgroup", "/a"), "/a/b") == ("/sys/fs/cgroup/b", "/sys/fs/cgroup")
    assert _memory._dir_of(("/sys/fs/cgroup", "/z"), "/a/b") is None


def test_clean_file_cache_is_free_under_a_cgroup_limit(tmp_path):
    # A memory-mapped .npy read more than once is on the ACTIVE file list: charged to the
    # cgroup but clean, so the kernel reclaims it before it kills. Counting it as used
    # refused, in a pod whose limit is near the feature file's size, work that runs.
    # Dirty and under-writeback file pages, and shmem (on the anon list), stay used.
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{1024 * MiB}\n")
    (v2 / "memory.current").write_text(f"{1000 * MiB}\n")
    (v2 / "memory.stat").write_text(
        f"anon {150 * MiB}\nfile {850 * MiB}\nshmem {50 * MiB}\nfile_dirty {16 * MiB}\n"
        f"file_writeback {8 * MiB}\ninactive_file {100 * MiB}\nactive_file {700 * MiB}\n"
    )
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{1024 * MiB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{1000 * MiB}\n")
    (v1 / "memory.stat").write_text(
        f"cache {850 * MiB}\nrss {150 * MiB}\nshmem {50 * MiB}\ndirty 0\nwriteback 0\n"
        f"total_cache {850 * MiB}\ntotal_shmem {50 * MiB}\ntotal_dirty {16 * MiB}\n"
        f"total_writeback {8 * MiB}\ntotal_inactive_file {100 * MiB}\n"
        f"total_active_file {700 * MiB}\n"
    )
    lim2, lim1 = _memory.cgroup_limits([(2, str(v2)), (1, str(v1))])
    # used: 1000 - (100 + 700 - 16 - 8) = 224 MiB; free: 800 MiB
    for lim in (lim2, lim1):
        assert lim.free == 800 * MiB, (lim.name, lim.free / MiB)
        assert "224 MiB in use" in lim.detail
    # An op of ~500 MiB runs under it (it was refused: "only 124 MiB is available").
    _memory.check(_memory.Estimate(arrays=500 * MiB), "the test arrays", [lim2, lim1])
    # The same through USL_FAST_CGROUP_ROOT: a ~360 MB density pass runs in a child.
    own, _ = own_cgroup_paths()
    if own is None:
        return
    root = tmp_path / "cg"
    d = root / own.strip("/") if own.strip("/") else root
    d.mkdir(parents=True)
    for f in ("memory.max", "memory.current", "memory.stat"):
        (d / f).write_text((v2 / f).read_text())
    code = """
    import numpy as np, usl_fast
    x = np.random.default_rng(0).standard_normal((100_000, 16)).astype(np.float32)
    print("OK", usl_fast.density(x[:20_000], 200).shape)
    try:
        usl_fast.density(x, 200)
        print("RAN")
    except MemoryError as e:
        print("ERR", e)
    """
    r = run_child(code, tmp_path, {_memory.CGROUP_ROOT_ENV: str(root)})
    assert r.returncode == 0, r.stderr
    assert "RAN" in r.stdout, r.stdout


def test_the_check_names_the_tightest_limit():
    est = _memory.Estimate(arrays=900 * MiB, threads=2, per_thread=MiB)
    lims = [
        _memory.Limit("MemAvailable", 64 * 2**30, "/proc/meminfo", False),
        _memory.Limit("cgroup memory.max", 700 * MiB, "f = 1 GiB, 300 MiB in use", False),
        _memory.Limit("RLIMIT_AS", 8 * 2**30, "limit 9 GiB", True),
    ]
    with pytest.raises(MemoryError, match=r"but only 700 MiB is available under cgroup memory"):
        _memory.check(est, "the test arrays", lims)
    _memory.check(_memory.Estimate(arrays=100 * MiB), "the test arrays", lims)  # fits
    # Against an address-space limit the threads' stacks and arenas count too.
    tight_as = [_memory.Limit("RLIMIT_AS", 1000 * MiB, "limit 1.2 GiB", True)]
    with pytest.raises(MemoryError, match="thread stacks and allocator reservations"):
        _memory.check(est, "the test arrays", tight_as)


# ------------------------------------------------------------------------ the CLI


def test_cli_memory_error_is_one_line_exit_2(tmp_path):
    v2, _ = own_cgroup_paths()
    if v2 is None:
        pytest.skip("this process has no cgroup v2 path")
    root = tmp_path / "cg"
    fake_v2(root, v2, 128 * MiB, 64 * MiB)
    x = np.random.default_rng(0).standard_normal((20_000, 16)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    r = subprocess.run(
        [sys.executable, "-m", "usl_fast", "select", "f.npy", "-m", "20", "-k", "400"]
        + ["-o", "p.npy", "--no-progress"],
        cwd=tmp_path,
        env=dict(subprocess_env(), **{_memory.CGROUP_ROOT_ENV: str(root)}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("usl-fast: error: usl_fast: USL on 20000 points (k=400"), lines[0]
    assert "cgroup memory.max" in lines[0]
    assert not (tmp_path / "p.npy").exists()


def test_environment_variable_is_documented():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert _memory.CGROUP_ROOT_ENV in readme
    assert os.environ.get("USL_FAST_CGROUP_ROOT") is None  # the tests' own runs see the real tree
