"""select() end to end: validity, determinism, the composition of the oracles (kNN
density -> Lloyd from the reference's random init -> regularized selection), the
presets against the published table, return_info, torch, the top-up, random_select."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

PRESETS_ALL = ["cifar10", "cifar100", "imagenet", "imagenet-moco", "imagenet-clip"]


def composition_oracle(x, m, preset, seed=0, k=None, kmeans_iter=None, n_clusters=None):
    """USL from the oracles alone: density from the brute-force kNN, Lloyd (float64) from
    the rows at the first K positions of default_rng(seed).permutation(n), selection."""
    P = oracles.PRESETS[preset]
    k = P["k"] if k is None else k
    iters = P["kmeans_iter"] if kmeans_iter is None else kmeans_iter
    K = m if n_clusters is None else n_clusters
    dens = oracles.density(x, k).astype(np.float32)
    init = x[oracles.random_init_indices(x.shape[0], K, seed)]
    labels = oracles.lloyd(x, init, iters)[0]
    params = oracles.reg_params(preset)
    picks, reg, fragile = oracles.regularized_select_state(x, dens, labels, K, m, **params)
    assert not fragile, "ill-posed case: a decision within float32 error (change the data)"
    n_filled = m - picks.size  # k-means may leave clusters empty: usl_fast tops up
    picks = oracles.top_up(dens, reg, params["weight"], picks, m)
    return picks, labels, dens, n_filled


def assert_valid(picks, n, m):
    picks = np.asarray(picks)
    assert picks.dtype == np.int64 and picks.shape == (m,)
    assert picks.min() >= 0 and picks.max() < n
    assert len(np.unique(picks)) == m


def test_presets_match_the_published_table(usl):
    for name in PRESETS_ALL:
        ours = usl.PRESETS[name]
        for key, value in oracles.PRESETS[name].items():
            assert ours[key] == value, f"{name}.{key}: {ours[key]!r} != {value!r}"
    assert usl.default_n_clusters("cifar10", 2500) == 2501
    assert usl.default_n_clusters("cifar100", 2500) == 2501
    assert usl.default_n_clusters("imagenet-clip", 12820) == 12900
    assert usl.default_n_clusters("imagenet", 12820) == 12900
    assert usl.default_n_clusters("cifar10", 40) == 40
    assert usl.default_n_clusters("imagenet", 2911) == 2911


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "imagenet-moco", "imagenet-clip"])
def test_select_equals_composition_oracle(usl, make_unit_blobs, preset):
    # Well-separated unit-vector blobs; the presets' own k (400 / 20) and iterations.
    x = make_unit_blobs(600, 16, 25, seed=3, spread=0.05)
    m = 20
    want, labels, dens, n_filled = composition_oracle(x, m, preset, seed=0)
    info = usl.select(x, m, defaults=preset, return_info=True)
    np.testing.assert_array_equal(info.labels, labels)
    np.testing.assert_allclose(info.density, dens, rtol=1e-5)
    np.testing.assert_array_equal(info.indices, want)
    assert info.n_filled == n_filled


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_select_custom_parameters_equal_composition(usl, make_unit_blobs, seed):
    x = make_unit_blobs(450, 12, 30, seed=seed)
    m, K = 15, 24  # n_clusters > m: the selection stops after m clusters
    info = usl.select(
        x, m, defaults="cifar100", k=12, n_clusters=K, kmeans_iter=30, seed=seed, return_info=True
    )
    want, labels, _, n_filled = composition_oracle(
        x, m, "cifar100", seed=seed, k=12, kmeans_iter=30, n_clusters=K
    )
    assert n_filled == info.n_filled == 0
    np.testing.assert_array_equal(info.labels, labels)
    np.testing.assert_array_equal(info.indices, want)
    # and the pipeline equals its own parts: kmeans + regularized_select
    km = usl.kmeans(x, K, n_iter=30, seed=seed)
    part = usl.regularized_select(
        x, usl.density(x, 12), km.labels, m, n_clusters=K, defaults="cifar100"
    )
    np.testing.assert_array_equal(info.indices, part)


@pytest.mark.parametrize("preset", PRESETS_ALL)
def test_each_preset_runs(usl, make_unit, preset):
    x = make_unit(300, 8, seed=1)
    picks = usl.select(x, 12, defaults=preset, k=10, kmeans_iter=20)
    assert_valid(picks, 300, 12)
    # defaults untouched (k = 400 needs n > 400)
    x = make_unit(420, 6, seed=2)
    assert_valid(usl.select(x, 5, defaults=preset, kmeans_iter=5), 420, 5)


def test_imagenet_is_imagenet_moco(usl, make_unit):
    x = make_unit(200, 8, seed=3)
    a = usl.select(x, 10, defaults="imagenet", k=8, kmeans_iter=10)
    b = usl.select(x, 10, defaults="imagenet-moco", k=8, kmeans_iter=10)
    np.testing.assert_array_equal(a, b)


def test_deterministic_for_a_seed_and_seed_matters(usl, make_unit):
    x = make_unit(500, 10, seed=4)
    a = usl.select(x, 25, k=15, kmeans_iter=30, seed=7)
    b = usl.select(x, 25, k=15, kmeans_iter=30, seed=7)
    np.testing.assert_array_equal(a, b)
    c = usl.select(x, 25, k=15, kmeans_iter=30, seed=8)
    assert not np.array_equal(a, c)
    for init in ("random", "k-means++"):
        p = usl.select(x, 25, k=15, kmeans_iter=30, kmeans_init=init, seed=3)
        q = usl.select(x, 25, k=15, kmeans_iter=30, kmeans_init=init, seed=3)
        np.testing.assert_array_equal(p, q)
        assert_valid(p, 500, 25)


def test_threads_do_not_change_the_picks(usl, make_unit):
    x = make_unit(800, 16, seed=5)
    for preset in ("cifar10", "imagenet-clip"):
        a = usl.select(x, 30, defaults=preset, k=20, kmeans_iter=20, threads=1)
        b = usl.select(x, 30, defaults=preset, k=20, kmeans_iter=20, threads=2)
        assert np.array_equal(a, b)


def test_return_info_fields(usl, make_unit):
    x = make_unit(300, 8, seed=6)
    info = usl.select(x, 10, k=9, kmeans_iter=15, return_info=True)
    assert isinstance(info, usl.SelectResult)
    np.testing.assert_array_equal(info.indices, usl.select(x, 10, k=9, kmeans_iter=15))
    assert info.labels.shape == (300,) and info.labels.dtype == np.int64
    assert info.labels.min() >= 0 and info.labels.max() < 10
    assert info.density.shape == (300,) and info.density.dtype == np.float32
    np.testing.assert_allclose(info.density, oracles.density(x, 9), rtol=1e-5)
    assert set(info.timings) >= {"density", "kmeans", "selection"}
    assert all(v >= 0 for v in info.timings.values())
    assert info.n_filled == 0
    assert info.params["k"] == 9 and info.params["n_clusters"] == 10
    # every pick is the member of its own cluster
    assert len(set(info.labels[info.indices].tolist())) == 10


def test_torch_in_torch_out(usl, make_unit):
    torch = pytest.importorskip("torch")
    x = make_unit(200, 8, seed=7)
    t = torch.from_numpy(x.copy())
    picks = usl.select(t, 10, k=8, kmeans_iter=10)
    assert isinstance(picks, torch.Tensor) and picks.dtype == torch.int64
    np.testing.assert_array_equal(picks.numpy(), usl.select(x, 10, k=8, kmeans_iter=10))
    info = usl.select(t.double(), 10, k=8, kmeans_iter=10, return_info=True)
    assert isinstance(info.indices, torch.Tensor)
    assert isinstance(info.labels, torch.Tensor) and isinstance(info.density, torch.Tensor)


def test_top_up_when_kmeans_leaves_clusters_empty(usl):
    # 6 distinct points, each repeated 20 times: many of the random initial rows are
    # copies of each other, the copies' clusters die, fewer than m clusters survive.
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 4)).astype(np.float32)
    x = np.repeat(base, 20, axis=0)[rng.permutation(120)]
    info = usl.select(x, 10, k=5, kmeans_iter=10, return_info=True)
    assert_valid(info.indices, 120, 10)
    labels = np.asarray(info.labels)
    n_nonempty = len(np.unique(labels))
    assert n_nonempty <= 6
    assert info.n_filled == 10 - n_nonempty > 0
    # the per-cluster part is the oracle's selection on these labels and densities,
    # the rest the best-scoring points left
    params = oracles.reg_params("cifar10")
    first, reg, _ = oracles.regularized_select_state(x, info.density, labels, 10, 10, **params)
    assert first.size == n_nonempty
    want = oracles.top_up(info.density, reg, params["weight"], first, 10)
    np.testing.assert_array_equal(info.indices, want)


def test_m_equals_n(usl, make_unit):
    x = make_unit(50, 4, seed=8)
    picks = usl.select(x, 50, k=5, kmeans_iter=3, rounds=2)
    assert_valid(picks, 50, 50)


def test_published_k_for_m_2500_is_clamped_to_n(usl):
    """m = 2,500 on CIFAR uses K = 2,501 by default (docs/parity.md); with exactly
    2,500 points the default K cannot exceed n and must fall back to n (the user gave no
    n_clusters, and m <= n is a valid budget)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2500, 4)).astype(np.float32)
    picks = usl.select(x, 2500, defaults="cifar10", k=5, kmeans_iter=1, rounds=1)
    assert_valid(picks, 2500, 2500)


@pytest.mark.parametrize("n,m,seed", [(100, 10, 0), (50000, 40, 1), (7, 7, 123), (1000, 1, 5)])
def test_random_select_is_the_legacy_global_generator(usl, n, m, seed):
    np.random.seed(999)
    before = np.random.get_state()
    got = usl.random_select(n, m, seed)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    np.random.seed(seed)
    want = np.random.choice(n, m, replace=False)
    np.testing.assert_array_equal(got, want)
    assert np.asarray(got).dtype == np.int64
    np.testing.assert_array_equal(got, oracles.random_select(n, m, seed))


# ------------------------------------------------------------------ random: no global state
# The random baseline once seeded NumPy's global generator (saved and restored around the
# draw): two threads interleaving seed/choice got each other's picks. These pin the picks
# to the global-seed recipe while the global generator stays out of it.

RANDOM_CASES = [(100, 10, 0), (50000, 40, 1), (7, 7, 123), (1000, 1, 5), (3000, 500, 2**32 - 1)]


def test_random_select_matches_the_global_recipe_run_in_a_fresh_process(usl):
    """Oracle: the published recipe, literally `np.random.seed(s); np.random.choice(...)`
    on the global generator, in a process of its own (nothing here to save or restore)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, numpy as np\n"
        "out = []\n"
        "for n, m, s in json.loads(sys.argv[1]):\n"
        "    np.random.seed(s)\n"
        "    out.append(np.random.choice(n, m, replace=False).tolist())\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(RANDOM_CASES)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    want = json.loads(res.stdout)
    for (n, m, s), w in zip(RANDOM_CASES, want):
        np.testing.assert_array_equal(usl.random_select(n, m, s), np.array(w))


@pytest.mark.parametrize("how", ["random_select", "RandomSelect", "select", "labeled"])
def test_random_leaves_the_global_generator_alone(usl, how):
    x = np.zeros((200, 2), np.float32)
    np.random.seed(31337)
    np.random.random(3)  # a state mid-stream, not just after seeding
    before = np.random.get_state()
    if how == "random_select":
        usl.random_select(200, 20, 9)
    elif how == "RandomSelect":
        usl.RandomSelect(seed=9).fit(x, 20)
    elif how == "select":
        usl.select(x, 20, method="random", seed=9)
    else:
        usl.RandomSelect(seed=9).fit(x, 20, labeled=np.arange(0, 200, 3))
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1])
    assert before[2:] == after[2:]
    # and the next global draw is the one the caller would have had anyway
    np.random.set_state(before)
    a = np.random.random(5)
    np.random.set_state(after)
    np.testing.assert_array_equal(np.random.random(5), a)


def test_random_from_four_threads_equals_sequential_calls(usl):
    """~1,200 calls with mixed seeds, sizes and entry points from 4 threads; a fifth thread
    keeps reseeding and drawing from the global generator meanwhile. Every result must be
    the one the same call gives alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    x = np.zeros((300, 2), np.float32)
    lab = np.arange(0, 300, 7)
    calls = []
    for i in range(1200):
        seed = (i * 7919) % 97
        kind = i % 4
        calls.append((kind, seed, 5 + i % 40))

    def run(call):
        kind, seed, m = call
        if kind == 0:
            return usl.random_select(300, m, seed)
        if kind == 1:
            return usl.RandomSelect(seed=seed).fit(x, m).indices_
        if kind == 2:
            return usl.select(x, m, method="random", seed=seed)
        return usl.RandomSelect(seed=seed).fit(x, m, labeled=lab).indices_

    want = [run(c) for c in calls]
    stop = threading.Event()

    def disturb():
        while not stop.is_set():
            np.random.seed(12345)
            np.random.choice(300, 50, replace=False)

    t = threading.Thread(target=disturb, daemon=True)
    t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(run, calls))
    finally:
        stop.set()
        t.join(timeout=10)
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if not np.array_equal(g, w)]
    assert not bad, f"{len(bad)} of {len(calls)} calls differ from sequential, e.g. {bad[:5]}"
    # and the sequential results are the recipe's
    np.testing.assert_array_equal(want[0], oracles.random_select(300, calls[0][2], calls[0][1]))
