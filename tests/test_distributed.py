"""usl_fast.distributed on real gloo process groups (spawned processes on this machine,
1 to 4 ranks, uneven shards): every result must equal the one-process result on the
concatenated rows bit for bit; failures on one rank must reach every rank as a clear
error within the timeout. Plus the engine ops the distributed steps rest on, against
float64 oracles."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest

import usl_fast

torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

TIMEOUT = 30  # seconds: the process group's timeout in every spawned group

# Uneven shards, a one-row shard included (rows of the first and second data sets).
SPLITS = {
    1: ([500], [240]),
    2: ([180, 320], [100, 140]),
    3: ([1, 299, 200], [80, 80, 80]),
    4: ([200, 1, 150, 149], [10, 70, 100, 60]),
    5: ([120, 1, 200, 100, 79], [50, 50, 1, 100, 39]),
}


def blobs(n=500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((9, d))
    x = c[rng.integers(0, 9, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def few_distinct(n=240, distinct=30, d=8, seed=1):
    """Only 30 distinct rows: k-means with K = 40 must leave clusters empty."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((distinct, d))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return base[rng.integers(0, distinct, n)].astype(np.float32)


def _shard(x, sizes, rank):
    st = np.concatenate([[0], np.cumsum(sizes)])
    return x[st[rank] : st[rank + 1]]


# ---------------------------------------------------------------------- the rank jobs
def job_parity(rank, P):
    import usl_fast.distributed as ud

    s1, s2 = SPLITS[P]
    x = _shard(blobs(), s1, rank)
    out = {}
    r = ud.select(x, 12, k=10, kmeans_iter=25, rounds=3, threads=1, return_info=True)
    out["cifar10"] = (r.indices, r.labels, r.density, r.scores, r.n_filled)
    r = ud.select(x, 10, defaults="imagenet", k=8, kmeans_iter=25, threads=1, return_info=True)
    out["imagenet"] = (r.indices, r.labels, r.density, r.scores, r.n_filled)
    idx = ud.select(x, 9, defaults="cifar100", k=10, kmeans_iter=25, labeled=[3, 77, 400])
    out["later_round"] = idx
    out["density"] = ud.knn_density(x, 40, threads=1)
    # k above a shard's rows and above the 256-row tile; two threads per rank
    out["density300"] = ud.knn_density(x, 300, threads=2)
    km = ud.kmeans(x, 9, n_iter=30, seed=3, threads=1)
    out["kmeans"] = (km.labels, km.centroids, km.counts, km.n_iter_run, km.inertia)
    out["regularized"] = ud.regularized_select(
        x, out["density"], km.labels, 9, defaults="imagenet-clip", threads=1
    )
    y = _shard(few_distinct(), s2, rank)
    r = ud.select(y, 40, k=5, kmeans_iter=10, rounds=2, threads=1, return_info=True)
    out["empty"] = (r.indices, r.labels, r.n_filled)
    t = torch.from_numpy(x.copy())
    out["torch"] = ud.select(t, 6, k=10, kmeans_iter=5, rounds=2, threads=1)
    return out


def job_exit_first(rank, P):
    import torch.distributed as dist

    import usl_fast.distributed as ud

    dist.barrier()  # the group is fully connected: what fails next is usl_fast's call
    if rank == P - 1:
        os._exit(3)
    return ud.select(_shard(blobs(), SPLITS[P][0], rank), 12, k=10, threads=1)


def job_exit_in_kmeans(rank, P):
    import usl_fast.distributed as ud
    from usl_fast.backends import shard as sh

    if rank == 1:
        sh.ShardRows.kmeans_labels = lambda self, cent, n_iter: os._exit(4)
    return ud.select(_shard(blobs(), SPLITS[P][0], rank), 12, k=10, threads=1)


def job_disagree_columns(rank, P):
    import usl_fast.distributed as ud

    x = _shard(blobs(), SPLITS[P][0], rank)
    if rank == 1:
        x = np.ascontiguousarray(np.hstack([x, x[:, :1]]))
    return ud.select(x, 12, k=10, threads=1)


def job_nan_rows(rank, P):
    import usl_fast.distributed as ud

    x = _shard(blobs(), SPLITS[P][0], rank).copy()
    if rank == 0:
        x[0, 0] = np.nan
    return ud.select(x, 12, k=10, threads=1)


def job_nan_in_a_later_shard(rank, P):
    # P = 3, shards of 1, 299 and 200 rows: rank 2's local row 15 is row 315 of the data.
    import usl_fast.distributed as ud

    x = _shard(blobs(), SPLITS[P][0], rank).copy()
    if rank == 2:
        x[15, 4] = np.nan
    return ud.select(x, 12, k=10, threads=1)


def job_different_m(rank, P):
    import usl_fast.distributed as ud

    return ud.select(_shard(blobs(), SPLITS[P][0], rank), 12 + rank, k=10, threads=1)


def job_bad_threads(rank, P):
    import usl_fast.distributed as ud

    return ud.select(_shard(blobs(), SPLITS[P][0], rank), 12, k=10, threads=0 if rank else 1)


def job_equivalent_args(rank, P):
    import usl_fast.distributed as ud

    k = np.int64(10) if rank else 10
    labeled = np.array([3, 77], np.int32 if rank else np.int64)
    x = _shard(blobs(), SPLITS[P][0], rank)
    return ud.select(torch.from_numpy(x.copy()) if rank else x, 12, k=k, labeled=labeled)


def job_non_integer_k(rank, P):
    import usl_fast.distributed as ud

    return ud.select(_shard(blobs(), SPLITS[P][0], rank), 12, k=10.0 if rank else 10)


def job_different_files(rank, P):
    import usl_fast.distributed as ud

    path = os.environ["USL_FAST_TEST_FILES"].split(",")[rank]
    return ud.load_shard(path)


JOBS = {
    f.__name__: f
    for f in (
        job_parity,
        job_exit_first,
        job_exit_in_kmeans,
        job_disagree_columns,
        job_nan_rows,
        job_nan_in_a_later_shard,
        job_different_m,
        job_different_files,
        job_bad_threads,
        job_equivalent_args,
        job_non_integer_k,
    )
}


def _rank_main(rank, P, init_file, out_dir, job):
    # Gloo's connections over the loopback interface (127.0.0.1), whatever the host name
    # resolves to on the test machine.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=P,
        timeout=timedelta(seconds=TIMEOUT),
    )
    t0 = time.perf_counter()
    try:
        res = ("ok", JOBS[job](rank, P))
    except BaseException as exc:
        res = ("error", type(exc).__name__, str(exc))
    res = res + (time.perf_counter() - t0,)
    with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
        pickle.dump(res, f)
    dist.destroy_process_group()


def spawn(tmp_path, P, job):
    """Run ``job`` on P spawned gloo ranks; per rank (status, ..., seconds) or None if the
    rank wrote nothing (it exited)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(r, P, str(tmp_path / "init"), str(tmp_path), job))
        for r in range(P)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT * 3)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail(f"{job}: a rank was still running after {TIMEOUT * 3} s (a hang)")
    out = []
    for r in range(P):
        f = tmp_path / f"{r}.pkl"
        out.append(pickle.loads(f.read_bytes()) if f.exists() else None)
    return out


# ---------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def one_process():
    x, y = blobs(), few_distinct()
    ref = {}
    r = usl_fast.select(x, 12, k=10, kmeans_iter=25, rounds=3, return_info=True)
    ref["cifar10"] = (r.indices, r.labels, r.density, r.scores, r.n_filled)
    r = usl_fast.select(x, 10, defaults="imagenet", k=8, kmeans_iter=25, return_info=True)
    ref["imagenet"] = (r.indices, r.labels, r.density, r.scores, r.n_filled)
    ref["later_round"] = usl_fast.select(
        x, 9, defaults="cifar100", k=10, kmeans_iter=25, labeled=[3, 77, 400]
    )
    ref["density"] = usl_fast.density(x, 40)
    ref["density300"] = usl_fast.density(x, 300)
    km = usl_fast.kmeans(x, 9, n_iter=30, seed=3)
    ref["kmeans"] = (km.labels, km.centroids, km.counts, km.n_iter_run, km.inertia)
    ref["regularized"] = usl_fast.regularized_select(
        x, ref["density"], km.labels, 9, defaults="imagenet-clip"
    )
    r = usl_fast.select(y, 40, k=5, kmeans_iter=10, rounds=2, return_info=True)
    ref["empty"] = (r.indices, r.labels, r.n_filled)
    ref["torch"] = usl_fast.select(x, 6, k=10, kmeans_iter=5, rounds=2)
    return ref


# 3 to 5 ranks (a spawned interpreter each, on 2 cores) are slow; 1 and 2 stay in the fast run.
@pytest.mark.parametrize(
    "P", [1, 2, *(pytest.param(p, marks=pytest.mark.slow) for p in (3, 4, 5))]
)
def test_same_bits_as_one_process(tmp_path, one_process, P):
    res = spawn(tmp_path, P, "job_parity")
    for r, got in enumerate(res):
        assert got is not None and got[0] == "ok", f"rank {r}: {got}"
    outs = [got[1] for got in res]
    ref = one_process

    def cat(i, key):
        return np.concatenate([np.asarray(o[key][i]) for o in outs])

    for key in ("cifar10", "imagenet"):
        for o in outs:  # the same global picks on every rank
            np.testing.assert_array_equal(o[key][0], ref[key][0])
            assert o[key][4] == ref[key][4]
        np.testing.assert_array_equal(cat(1, key), ref[key][1])  # cluster labels
        np.testing.assert_array_equal(cat(2, key), ref[key][2])  # densities
        np.testing.assert_array_equal(cat(3, key), ref[key][3])  # scores
    for o in outs:
        np.testing.assert_array_equal(o["later_round"], ref["later_round"])
        np.testing.assert_array_equal(o["regularized"], ref["regularized"])
        np.testing.assert_array_equal(o["empty"][0], ref["empty"][0])
        assert o["empty"][2] == ref["empty"][2]
        km = o["kmeans"]
        np.testing.assert_array_equal(km[1], ref["kmeans"][1])  # centroids
        np.testing.assert_array_equal(km[2], ref["kmeans"][2])  # counts
        assert km[3] == ref["kmeans"][3]  # iterations run (the fixed-point stop)
        np.testing.assert_allclose(km[4], ref["kmeans"][4], rtol=1e-12)  # inertia
        assert isinstance(o["torch"], torch.Tensor)
        np.testing.assert_array_equal(
            o["torch"].numpy(),
            ref["torch"].numpy() if isinstance(ref["torch"], torch.Tensor) else ref["torch"],
        )
    np.testing.assert_array_equal(cat(0, "kmeans"), ref["kmeans"][0])
    for key in ("density", "density300"):
        np.testing.assert_array_equal(np.concatenate([o[key] for o in outs]), ref[key])
    np.testing.assert_array_equal(cat(1, "empty"), ref["empty"][1])
    assert ref["empty"][2] > 0  # the case really has empty clusters (picks filled)
    assert len(np.unique(ref["empty"][1])) < 40


# ---------------------------------------------------------------------- failures
def _errors(res):
    return {r: got for r, got in enumerate(res) if got is not None}


def test_a_rank_that_exits_fails_the_others_clearly(tmp_path):
    res = spawn(tmp_path, 3, "job_exit_first")
    assert res[2] is None
    for r in (0, 1):
        status, name, msg, secs = res[r]
        assert (status, name) == ("error", "DistributedError"), res[r]
        assert "another rank exited" in msg and f"rank {r} of 3" in msg
        assert secs < TIMEOUT


def test_a_rank_that_dies_mid_run_fails_the_others_clearly(tmp_path):
    res = spawn(tmp_path, 3, "job_exit_in_kmeans")
    assert res[1] is None
    for r in (0, 2):
        status, name, msg, secs = res[r]
        assert (status, name) == ("error", "DistributedError"), res[r]
        assert "k-means" in msg  # the phase it was in
        assert secs < TIMEOUT / 2  # noticed at once, not at the group's timeout


def test_shards_that_disagree_fail_on_every_rank(tmp_path):
    res = spawn(tmp_path, 2, "job_disagree_columns")
    for r in (0, 1):
        status, name, msg, _ = res[r]
        assert (status, name) == ("error", "ValueError")
        assert "disagree on the number of columns: rank 0: 12, rank 1: 13" in msg


def test_a_rank_with_bad_rows_fails_every_rank(tmp_path):
    res = spawn(tmp_path, 2, "job_nan_rows")
    assert res[0][:2] == ("error", "ValueError") and "NaN" in res[0][2]
    assert res[1][:2] == ("error", "DistributedError")
    assert "rank 0 rejected its arguments" in res[1][2] and "NaN" in res[1][2]


def test_a_bad_row_is_named_by_its_global_index(tmp_path):
    # Named by the row of the whole data (the file), not of the rank's shard.
    res = spawn(tmp_path, 3, "job_nan_in_a_later_shard")
    assert res[2][:2] == ("error", "ValueError")
    assert "first at row 315 (local row 15), column 4" in res[2][2], res[2]
    for r in (0, 1):
        assert res[r][:2] == ("error", "DistributedError")
        assert "rank 2 rejected its arguments" in res[r][2] and "row 315" in res[r][2]


def test_ranks_called_with_different_arguments_fail(tmp_path):
    res = spawn(tmp_path, 2, "job_different_m")
    for r in (0, 1):
        assert res[r][:2] == ("error", "ValueError")
        assert "different arguments" in res[r][2]


def test_a_bad_thread_count_on_one_rank_fails_every_rank(tmp_path):
    res = spawn(tmp_path, 2, "job_bad_threads")
    assert res[1][:2] == ("error", "ValueError") and "threads" in res[1][2]
    assert res[0][:2] == ("error", "DistributedError") and "rank 1 rejected" in res[0][2]


def test_equivalent_arguments_agree_and_a_float_k_fails_everywhere(tmp_path):
    res = spawn(tmp_path, 2, "job_equivalent_args")
    ref = usl_fast.select(blobs(), 12, k=10, labeled=[3, 77])
    for r in (0, 1):
        assert res[r][0] == "ok", res[r]
        np.testing.assert_array_equal(np.asarray(res[r][1]), ref)
    res = spawn(tmp_path / "float", 2, "job_non_integer_k")
    assert res[1][:2] == ("error", "TypeError") or res[1][:2] == ("error", "ValueError"), res[1]
    assert res[0][:2] == ("error", "DistributedError") and "rank 1 rejected" in res[0][2]


def test_a_path_naming_different_files_fails_every_rank(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", blobs(50, 4))
    np.save(tmp_path / "b.npy", blobs(60, 4))
    files = f"{tmp_path / 'a.npy'},{tmp_path / 'b.npy'}"
    monkeypatch.setenv("USL_FAST_TEST_FILES", files)  # spawned ranks inherit it
    res = spawn(tmp_path, 2, "job_different_files")
    for r in (0, 1):
        assert res[r][:2] == ("error", "ValueError"), res[r]
        assert (
            "different files" in res[r][2]
            and "rank 0: shape (50, 4) float32, rank 1: shape (60, 4) float32" in res[r][2]
        )


def test_without_a_process_group_the_error_says_what_to_do():
    import usl_fast.distributed as ud

    with pytest.raises(RuntimeError, match="init_process_group"):
        ud.select(blobs(), 5)


# ---------------------------------------------------------------------- command line
def test_cli_under_torchrun_writes_the_one_process_picks(tmp_path):
    x = blobs(400, 16, seed=5)
    np.save(tmp_path / "f.npy", x)
    out = tmp_path / "picks.npy"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "usl_fast.distributed",
        "select",
        str(tmp_path / "f.npy"),
        "-m",
        "9",
        "-k",
        "12",
        "--kmeans-iter",
        "20",
        "-o",
        str(out),
        "--threads",
        "1",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    # cwd: not the checkout, whose usl_fast/ (no compiled engine) `-m` would import first
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[:3000] + "\n...\n" + p.stderr[-1500:]
    np.testing.assert_array_equal(np.load(out), usl_fast.select(x, 9, k=12, kmeans_iter=20))
    # rank 0 alone reports
    assert p.stdout.count("9 picks from 2 ranks") == 1


def test_cli_errors_are_messages(tmp_path, capsys):
    from usl_fast.distributed.__main__ import main

    assert (
        main(["select", str(tmp_path / "none.npy"), "-m", "3", "-o", str(tmp_path / "o.npy")]) == 1
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(["select", str(tmp_path / "none.npy"), "-m", "3", "-o", str(tmp_path / "o.txt")]) == 1
    )
    assert "must end in .npy" in capsys.readouterr().err
    np.save(tmp_path / "f.npy", blobs(20, 4))
    assert (
        main(["select", str(tmp_path / "f.npy"), "-m", "3", "-o", str(tmp_path / "no" / "o.npy")])
        == 1
    )
    assert "no such directory" in capsys.readouterr().err
