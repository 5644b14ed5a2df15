"""USL end to end with the CIFAR-10 configuration: usl_fast.select(x, m, defaults="cifar10")
against the same pipeline assembled from faiss-cpu and NumPy (faiss exact kNN -> density ->
faiss.Kmeans -> a vectorised NumPy transcription of the regularized per-cluster argmax,
docs/parity.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

IMPLS = ["usl_fast", "faiss+numpy"]

#: The published CIFAR-10 preset (docs/parity.md; written out here, not read from usl_fast).
CIFAR10: dict[str, Any] = {
    "k": 400,
    "kmeans_iter": 200,
    "rounds": 10,
    "weight": 0.5,
    "momentum": 0.9,
    "horizon_dist": 4.0,
    "alpha": 0.5,
}
FAR = 1e10  # a masked squared distance: it still adds FAR ** -alpha to the sum
#: Elements of one (rows x picks) float32 distance block of the NumPy regularizer (16 MiB).
BLOCK_ELEMS = 1 << 22


def n_clusters_for(m: int) -> int:
    """The published K: m, except CIFAR m = 2,500 -> 2,501."""
    return 2501 if m == 2500 else m


def numpy_regularizer(x, xn, labels, picks, horizon_dist, alpha) -> np.ndarray:
    """sum_j D[i, j] ** -alpha over the picks, D masked to FAR where pick j's position is
    i's label (the reference's own-cluster test) or D >= horizon_dist. float64 (n,).
    The (n, picks) distance matrix is formed one block of rows at a time (float32 GEMM)."""
    n = x.shape[0]
    p = x[picks]
    pn = xn[picks]
    pos = np.arange(picks.size)
    far_term = FAR**-alpha
    out = np.empty(n, np.float64)
    rows = max(1, BLOCK_ELEMS // picks.size)
    with np.errstate(divide="ignore"):
        for i0 in range(0, n, rows):
            i1 = min(n, i0 + rows)
            dist = x[i0:i1] @ p.T
            dist *= -2.0
            dist += xn[i0:i1, None]
            dist += pn[None, :]
            np.maximum(dist, 0.0, out=dist)
            masked = dist >= horizon_dist
            masked |= labels[i0:i1, None] == pos[None, :]
            if alpha == 0.5:
                term = np.sqrt(dist, out=dist)
                np.reciprocal(term, out=term)
            else:
                term = np.power(dist, -alpha, out=dist)
            term[masked] = far_term
            out[i0:i1] = term.sum(axis=1, dtype=np.float64)
    return out


def numpy_regularized_select(
    x, dens, labels, K, m, rounds, weight, momentum, horizon_dist, alpha
) -> np.ndarray:
    """The published regularized selection, CIFAR flavour (docs/parity.md). The per-cluster argmax is vectorised: points
    are sorted by cluster once (stable, so ties keep the lowest index first); each round a
    segmented max (np.maximum.reduceat) and the first member reaching it."""
    n = x.shape[0]
    xn = np.einsum("ij,ij->i", x, x)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=K)
    present = np.flatnonzero(counts)  # clusters in order, empty ones skipped
    starts = np.concatenate(([0], np.cumsum(counts[present])[:-1]))
    seg = np.repeat(np.arange(present.size), counts[present])
    dens64 = dens.astype(np.float64)
    reg = np.zeros(n, np.float64)
    picks = np.empty(0, np.int64)
    for t in range(rounds):
        score = (dens64 - weight * reg)[order]
        best = np.maximum.reduceat(score, starts)
        hits = np.flatnonzero(score == best[seg])
        first = hits[np.unique(seg[hits], return_index=True)[1]]
        picks = order[first][:m]
        if t < rounds - 1:
            new = numpy_regularizer(x, xn, labels, picks, horizon_dist, alpha)
            reg = momentum * reg + (1.0 - momentum) * new
    return picks.astype(np.int64)


def faiss_numpy_pipeline(
    x: np.ndarray, m: int, kmeans_iter: int, info: dict | None = None
) -> np.ndarray:
    """The USL pipeline from faiss-cpu and NumPy, as a user would assemble it. faiss.Kmeans
    keeps its default early stop (faiss >= 1.12: once the objective stops decreasing, a
    fixed point, so the labels are those of the full iteration count);
    info["kmeans_iterations_run"] records how many it ran."""
    import faiss

    n, d = x.shape
    c = CIFAR10
    K = n_clusters_for(m)
    # 1. kNN density: k nearest (self included), 1 / mean squared distance.
    index = faiss.IndexFlatL2(d)
    index.add(x)
    dist, _ = index.search(x, c["k"])
    dens = (1.0 / np.maximum(dist.mean(axis=1), 1e-12)).astype(np.float32)
    del dist, index
    # 2. k-means from the reference's initial rows, labels by a search of the final centroids.
    km = faiss.Kmeans(d, K, niter=kmeans_iter, seed=0, max_points_per_centroid=10**9, verbose=False)
    km.train(x, init_centroids=np.ascontiguousarray(x[np.random.default_rng(0).permutation(n)[:K]]))
    if info is not None:
        info["kmeans_iterations_run"] = len(km.obj)
    _, lab = km.index.search(x, 1)
    labels = lab[:, 0].astype(np.int64)
    # 3. Regularized per-cluster argmax.
    return numpy_regularized_select(
        x,
        dens,
        labels,
        K,
        m,
        c["rounds"],
        c["weight"],
        c["momentum"],
        c["horizon_dist"],
        c["alpha"],
    )


def select_usl_fast(usl, x, m, kmeans_iter, threads):
    return np.asarray(
        usl.select(x, m, defaults="cifar10", kmeans_iter=kmeans_iter, seed=0, threads=threads)
    )


def test_cifar10_preset_matches_reference(usl):
    """The peer pipeline uses the published numbers (docs/parity.md); usl_fast must mean the same ones."""
    p = usl.PRESETS["cifar10"]
    for key, val in CIFAR10.items():
        assert p[key] == val, f"PRESETS['cifar10'][{key!r}] = {p[key]!r}, reference {val!r}"
    assert p["own_cluster"] == "position" and p["horizon_num"] is None
    assert usl.default_n_clusters("cifar10", 2500) == 2501


@pytest.mark.parametrize("impl", IMPLS)
def test_select(bench, usl, data, cfg, threads, results_cache, select_m, impl):
    n, d = cfg["select"]["n"], cfg["select"]["d"]
    kmeans_iter = cfg["select"]["kmeans_iter"]  # 200 (CIFAR-10 default) at full scale
    m = select_m
    peer_info: dict = {}
    x = data(n, d, "clustered")
    bench.group = f"select cifar10 n={n} d={d} m={m}"
    runs = {
        "usl_fast": lambda: select_usl_fast(usl, x, m, kmeans_iter, threads),
        "faiss+numpy": lambda: faiss_numpy_pipeline(x, m, kmeans_iter, peer_info),
    }

    # Check first: both return m distinct valid indices; report how many picks they share.
    for name in IMPLS:
        if (name, m) not in results_cache:
            results_cache[(name, m)] = runs[name]()
    for name in IMPLS:
        picks = results_cache[(name, m)]
        assert picks.shape == (m,), f"{name} returned shape {picks.shape}, expected ({m},)"
        assert np.unique(picks).size == m, f"{name} returned repeated indices"
        assert picks.min() >= 0 and picks.max() < n
    shared = np.intersect1d(results_cache[("usl_fast", m)], results_cache[("faiss+numpy", m)])

    # Then time.
    bench.extra_info.update(
        impl=impl,
        n=n,
        d=d,
        m=m,
        K=n_clusters_for(m),
        k=CIFAR10["k"],
        kmeans_iter=kmeans_iter,
        rounds=CIFAR10["rounds"],
        data="clustered unit vectors (100 centres), seed 0",
        picks_shared_with_peer=int(shared.size),
    )
    bench.time(runs[impl])
    if impl == "faiss+numpy" and "kmeans_iterations_run" in peer_info:
        bench.extra_info["kmeans_iterations_run"] = peer_info["kmeans_iterations_run"]
    if impl == "usl_fast" and m == 40:
        bench.extra_info["summary"] = {"target": "usl_fast / faiss+numpy <= 0.6"}


def test_numpy_regularizer_matches_usl_fast(usl, data):
    """The peer's regularizer is a faithful transcription: same sums as usl_fast's on the
    same picks (checked on a small problem, not timed)."""
    x = data(2_000, 16, "clustered")
    labels = np.random.default_rng(1).integers(0, 30, x.shape[0])
    picks = np.random.default_rng(2).choice(x.shape[0], 30, replace=False)
    xn = np.einsum("ij,ij->i", x, x)
    got = numpy_regularizer(x, xn, labels, picks, CIFAR10["horizon_dist"], CIFAR10["alpha"])
    want = usl.regularizer(
        x,
        labels,
        picks,
        alpha=CIFAR10["alpha"],
        horizon_dist=CIFAR10["horizon_dist"],
        own_cluster="position",
    )
    # A pick's own row has D = 0 to itself (inf unless masked): usl_fast gets exactly 0,
    # the expanded float32 form ~1e-7. Compare the other rows.
    rest = np.ones(x.shape[0], bool)
    rest[picks] = False
    np.testing.assert_allclose(got[rest], want[rest], rtol=1e-4)
