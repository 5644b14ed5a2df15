"""usl_fast.distributed on this machine: P ranks x T threads against one process with the
same cores (2 ranks x 1 thread vs 1 rank x 2 threads), the picks of both (identical), and
the bytes each rank sent per phase against the formula of docs/distributed.md.

Ranks are real gloo process groups of spawned processes that memory-map one .npy file and
read only their rows (as under torchrun); the one-process run is usl_fast.select in a
spawned process too. Times are the select() call only (after a barrier), the slowest rank.
At --scale=full (200,000 x 128 clustered unit vectors, CIFAR-10 preset, m = 40 and 400)
writes results/distributed.{json,md}:

    python -m pytest benchmarks/bench_distributed.py --scale=full
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import platform
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from conftest import clustered_vectors

torch = pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(n=4_000, d=32, budgets=[40], kw=dict(k=50, kmeans_iter=30)),
    "full": dict(n=200_000, d=128, budgets=[40, 400], kw={}),
}
_ROWS: List[Dict[str, Any]] = []


def _run_rank(rank, P, threads, path, m, kw, init, out):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch.distributed as dist

    import usl_fast
    import usl_fast.distributed as ud

    if P == 0:  # one plain process
        x = np.load(path, mmap_mode="r")
        t0 = time.perf_counter()
        r = usl_fast.select(x, m, threads=threads, return_info=True, **kw)
        res = dict(secs=time.perf_counter() - t0, picks=r.indices, timings=r.timings)
    else:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init}",
            rank=rank,
            world_size=P,
            timeout=timedelta(seconds=3600),
        )
        x = ud.load_shard(path)
        dist.barrier()
        t0 = time.perf_counter()
        r = ud.select(x, m, threads=threads, return_info=True, **kw)
        res = dict(
            secs=time.perf_counter() - t0,
            picks=r.indices,
            timings=r.timings,
            sent=r.params["sent_bytes"],
            rows=r.params["rows"],
        )
        dist.destroy_process_group()
    with open(out, "wb") as f:
        pickle.dump(res, f)


def run(P, threads, path, m, kw):
    """P ranks (P = 0: one plain process) of `threads` threads each; per-rank results."""
    tmp = tempfile.mkdtemp(prefix="usl_fast_bench_")
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_run_rank,
            args=(r, P, threads, path, m, kw, f"{tmp}/init", f"{tmp}/{r}.pkl"),
        )
        for r in range(max(P, 1))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [pickle.loads(Path(f"{tmp}/{r}.pkl").read_bytes()) for r in range(max(P, 1))]


def density_bytes(sizes, r, d, k):
    """Bytes rank r sends in the kNN density phase (docs/distributed.md): floor(P/2)
    shards with their bounds, 4 (d + 1) bytes a row, and the other side's k distances of
    every block it computes, 4 k bytes a row."""
    P = len(sizes)
    S = P // 2
    shards = sum(sizes[(r - j) % P] for j in range(S)) * 4 * (d + 1)
    lists = 0
    for s in range(1, S + 1):
        q = (r - s) % P
        nq = sizes[q]
        if P % 2 == 0 and s == S and r > q:
            nq = nq - nq // 2
        lists += nq * 4 * k
    return shards + lists


@pytest.fixture(scope="module")
def size(scale):
    if scale not in SIZES:
        pytest.skip(f"no distributed benchmark at --scale={scale}")
    return SIZES[scale]


@pytest.fixture(scope="module")
def feats(size, tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "feats.npy"
    np.save(path, clustered_vectors(size["n"], size["d"], seed=0))
    return str(path)


@pytest.fixture(scope="module", autouse=True)
def _write(scale):
    yield
    if scale != "full" or not _ROWS:
        return
    doc = dict(
        command="python -m pytest benchmarks/bench_distributed.py --scale=full",
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        date=time.strftime("%Y-%m-%dT%H:%M:%S"),
        rows=_ROWS,
    )
    (HERE / "results" / "distributed.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# usl_fast.distributed: 2 ranks x 1 thread vs 1 process x 2 threads",
        "",
        f"`{doc['command']}`, {doc['date']}, {doc['machine']}. "
        f"{_ROWS[0]['n']:,} x {_ROWS[0]['d']} clustered unit vectors, CIFAR-10 preset "
        "(k = 400, 200 Lloyd iterations at most, 10 rounds). Seconds of the select() call "
        "(slowest rank); picks identical in every row.",
        "",
        "| m | 1 x 2 threads (s) | 2 x 1 thread (s) | ratio | phases, 2 ranks (s) | "
        "kNN bytes sent per rank (measured = formula) | k-means bytes per rank |",
        "| ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in _ROWS:
        ph = ", ".join(f"{k} {v:.1f}" for k, v in r["timings_2"].items())
        kb = " / ".join(f"{b / 2**20:.1f} MiB" for b in r["knn_bytes"])
        km = " / ".join(f"{b / 2**20:.1f} MiB" for b in r["kmeans_bytes"])
        lines.append(
            f"| {r['m']} | {r['secs_1x2']:.1f} | {r['secs_2x1']:.1f} | {r['ratio']:.2f} | {ph} "
            f"| {kb} | {km} ({r['kmeans_iters']} updates) |"
        )
    (HERE / "results" / "distributed.md").write_text("\n".join(lines) + "\n")


def test_two_ranks_against_one_process(size, feats, scale):
    import usl_fast

    kw = dict(size["kw"])
    k = kw.get("k", usl_fast.PRESETS["cifar10"]["k"])
    for m in size["budgets"]:
        one = run(0, 2, feats, m, kw)[0]
        two = run(2, 1, feats, m, kw)
        for r in two:  # exact parity at this size too
            np.testing.assert_array_equal(r["picks"], one["picks"])
        sizes = [r["rows"][1] - r["rows"][0] for r in two]
        knn_bytes = [r["sent"]["kNN density"] for r in two]
        assert knn_bytes == [density_bytes(sizes, i, size["d"], k) for i in range(2)]
        # k-means, a rank and iteration: 8 K d (the chained / broadcast sums) + 8 K (counts)
        # per update, 16 per assignment (fixed-point flag and inertia; the last assignment
        # of a run that stops at a fixed point has no update).
        K = m
        per_update = 8 * K * size["d"] + 8 * K
        km = [r["sent"]["k-means"] for r in two]
        assert len(set(km)) == 1, km
        updates, rest = divmod(km[0], per_update)
        assert rest in (16 * updates, 16 * (updates + 1)), (km, per_update)
        iters = updates
        secs2 = max(r["secs"] for r in two)
        _ROWS.append(
            dict(
                n=size["n"],
                d=size["d"],
                m=m,
                secs_1x2=one["secs"],
                secs_2x1=secs2,
                ratio=secs2 / one["secs"],
                timings_1=one["timings"],
                timings_2=max((r["timings"] for r in two), key=lambda t: sum(t.values())),
                knn_bytes=knn_bytes,
                kmeans_bytes=km,
                kmeans_iters=int(iters),
                sent=[r["sent"] for r in two],
                load=os.getloadavg()[0],
            )
        )
