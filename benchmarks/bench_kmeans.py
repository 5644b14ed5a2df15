"""Lloyd's k-means, a fixed number of iterations from the same initial rows (the first K
of a permutation drawn by numpy.random.default_rng(0), usl_fast's "random" init):
usl_fast.kmeans against faiss.Kmeans and scikit-learn's KMeans(algorithm="lloyd").

The reference runs a fixed iteration count. Each implementation runs as a user would run
it: usl_fast stops at an exact fixed point (an assignment equal to the previous one, after
which every iteration would repeat it bit for bit, so its result IS the n_iter-iteration
result); scikit-learn (tol=0) stops when the labels stop changing, the same criterion;
faiss >= 1.12 stops once the objective stops decreasing by its default threshold. Every
case records the iterations it ran, and the summary gives usl_fast / peer per iteration
as well.
"""

from __future__ import annotations

import numpy as np
import pytest

IMPLS = ["usl_fast", "faiss", "sklearn"]
#: Largest relative difference allowed between the final inertias (same algorithm, same
#: start; float32 rounding and faiss's split of empty clusters make them drift slightly).
INERTIA_RTOL = 0.03


def init_rows(n: int, K: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)[:K]


def kmeans_usl_fast(usl, x, K, n_iter, threads):
    r = usl.kmeans(x, K, n_iter=n_iter, init="random", seed=0, threads=threads)
    return {
        "centroids": np.asarray(r.centroids),
        "reported_inertia": float(r.inertia[-1]),
        "n_iter": int(r.n_iter_run),
    }


def kmeans_faiss(x, K, n_iter, init):
    import faiss

    km = faiss.Kmeans(
        x.shape[1], K, niter=n_iter, seed=0, max_points_per_centroid=10**9, verbose=False
    )
    km.train(x, init_centroids=init)
    return {
        "centroids": km.centroids,
        "reported_inertia": float(km.obj[-1]),
        "n_iter": len(km.obj),
    }


def kmeans_sklearn(x, K, n_iter, init):
    from sklearn.cluster import KMeans

    km = KMeans(
        n_clusters=K,
        init=init,
        n_init=1,
        max_iter=n_iter,
        tol=0,
        algorithm="lloyd",
        random_state=0,
    ).fit(x)
    return {
        "centroids": km.cluster_centers_.astype(np.float32),
        "reported_inertia": float(km.inertia_),
        "n_iter": int(km.n_iter_),  # < n_iter when the labels stopped changing
    }


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of every point to its nearest centroid (faiss exact search)."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, _ = index.search(x, 1)
    return float(dist.sum(dtype=np.float64))


@pytest.mark.parametrize("impl", IMPLS)
def test_kmeans(bench, usl, data, cfg, threads, results_cache, impl):
    n, d, K, n_iter = (cfg["kmeans"][key] for key in ("n", "d", "K", "n_iter"))
    x = data(n, d, "unit")
    init = np.ascontiguousarray(x[init_rows(n, K)])
    bench.group = f"kmeans n={n} d={d} K={K} iters={n_iter}"
    runs = {
        "usl_fast": lambda: kmeans_usl_fast(usl, x, K, n_iter, threads),
        "faiss": lambda: kmeans_faiss(x, K, n_iter, init),
        "sklearn": lambda: kmeans_sklearn(x, K, n_iter, init),
    }

    # Check first: the final centroids of every implementation, scored the same way.
    for name in IMPLS:
        if name not in results_cache:
            res = runs[name]()
            res["inertia"] = inertia(x, res["centroids"])
            results_cache[name] = res
    ref = results_cache["usl_fast"]["inertia"]
    rel = {name: results_cache[name]["inertia"] / ref - 1.0 for name in IMPLS}
    for name, r in rel.items():
        assert abs(r) <= INERTIA_RTOL, (
            f"final inertia of {name} differs from usl_fast's by {100 * r:.2f}% "
            f"({results_cache[name]['inertia']:.6g} vs {ref:.6g})"
        )

    # Then time.
    mine = results_cache[impl]
    bench.extra_info.update(
        impl=impl,
        n=n,
        d=d,
        K=K,
        n_iter=n_iter,
        init="rows default_rng(0).permutation(n)[:K]",
        final_inertia=mine["inertia"],
        reported_inertia=mine["reported_inertia"],
        inertia_rel_diff_vs_usl_fast=rel[impl],
    )
    bench.extra_info["iterations_run"] = mine["n_iter"]
    bench.time(runs[impl])
    t = float(bench.stats.stats.min)
    per_iter = t / mine["n_iter"]
    results_cache[("seconds_per_iteration", impl)] = per_iter
    # Assignment GEMM per iteration: 2 n K d flops (the centroid update is O(n d)).
    bench.extra_info["seconds_per_iteration"] = per_iter
    bench.extra_info["gflops_assign"] = 2.0 * n * K * d / per_iter / 1e9
    ours = results_cache.get(("seconds_per_iteration", "usl_fast"))
    if impl != "usl_fast" and ours is not None:
        note = f"usl_fast / {impl} per iteration"
        if mine["n_iter"] < n_iter:
            note += f" ({impl} stopped at convergence after {mine['n_iter']} of {n_iter})"
        bench.extra_info["summary"] = {note: f"{ours / per_iter:.3f}"}
