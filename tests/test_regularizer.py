"""The selection regularizer, the per-cluster arg-max and the regularized selection loop
(docs/parity.md) against the float64 oracles: hand tables, both flavours, every
own-cluster mode, skipped (empty) clusters, tile-crossing sizes, thread independence."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

FAR = oracles.FAR


def assert_reg_close(got, want, rtol=1e-5):
    got = np.asarray(got)
    assert got.dtype == np.float64 and got.shape == want.shape
    fin = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), fin)
    np.testing.assert_array_equal(got[~fin], want[~fin])  # +inf where D = 0 is unmasked
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=0)


# --------------------------------------------------------------------------- regularizer


def test_hand_table_cifar_flavour(usl):
    # Points 0, 1, 3 (1-D), labels 0, 1, 1, picks rows 0 and 2 (positions 0 and 1).
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    lab = np.array([0, 1, 1])
    picks = np.array([0, 2])
    # alpha 1, horizon 4: point 0: own (pos 0) -> FAR, D=9 >= 4 -> FAR; point 1: D=1 -> 1,
    # own (pos 1) -> FAR; point 2: D=9 -> FAR, own -> FAR. FAR entries still add 1e-10.
    got = usl.regularizer(x, lab, picks, alpha=1.0, horizon_dist=4.0)
    np.testing.assert_allclose(got, [2e-10, 1 + 1e-10, 2e-10], rtol=1e-12)
    # alpha 0.5: a masked entry adds FAR**-0.5 = 1e-5
    got = usl.regularizer(x, lab, picks, alpha=0.5, horizon_dist=4.0)
    np.testing.assert_allclose(got, [2e-5, 1 + 1e-5, 2e-5], rtol=1e-12)
    # no horizon: D = 9 counts as 1/9; own cluster excluded "none": D = 0 -> inf
    got = usl.regularizer(x, lab, picks, alpha=1.0, own_cluster="none")
    np.testing.assert_allclose(got, [np.inf, 1 + 1 / 4, np.inf], rtol=1e-7)


def test_hand_table_imagenet_flavour_masks_after_choosing(usl):
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    lab = np.array([0, 1, 1])
    picks = np.array([0, 2])
    # horizon_num 1 + mask_zero: point 0's nearest pick is itself (D=0): it is chosen, THEN
    # masked -> 1e-10 (the farther pick at D=9 does not take its place).
    got = usl.regularizer(
        x, lab, picks, alpha=1.0, horizon_num=1, own_cluster="none", mask_zero=True
    )
    np.testing.assert_allclose(got, [1e-10, 1.0, 1e-10], rtol=1e-12)
    # own cluster by position: point 2 (label 1) vs its nearest pick (position 1) -> masked;
    # point 0 (label 0) vs pick position 0 -> masked
    got = usl.regularizer(x, lab, picks, alpha=1.0, horizon_num=1, own_cluster="position")
    np.testing.assert_allclose(got, [1e-10, 1.0, 1e-10], rtol=1e-12)
    # horizon 2 = all picks: sum over both
    got = usl.regularizer(
        x, lab, picks, alpha=1.0, horizon_num=2, own_cluster="none", mask_zero=True
    )
    np.testing.assert_allclose(got, [1e-10 + 1 / 9, 1 + 1 / 4, 1 / 9 + 1e-10], rtol=1e-7)


def test_position_quirk_hand_case(usl):
    # Cluster 0 is empty, so pick 0 belongs to cluster 1 and pick 1 to cluster 2. By
    # POSITION, a point of cluster 1 masks pick 1 (cluster 2's pick) and not its own.
    x = np.array([[0.0], [1.0], [5.0], [6.0]], np.float32)
    lab = np.array([1, 1, 2, 2])
    picks = np.array([1, 2])  # cluster 1's pick, cluster 2's pick
    pos = usl.regularizer(x, lab, picks, alpha=1.0)
    # point 0: pick 0 at D=1 counts, pick 1 masked; points 1 and 2 ARE the picks but
    # their label differs from the pick's position: D = 0 unmasked -> inf; point 3: both.
    np.testing.assert_allclose(pos, [1.0 + 1e-10, np.inf, np.inf, 1 / 25 + 1 / 1], rtol=1e-7)
    clu = usl.regularizer(x, lab, picks, alpha=1.0, own_cluster="cluster", pick_clusters=[1, 2])
    np.testing.assert_allclose(
        clu, [1e-10 + 1 / 25, 1e-10 + 1 / 16, 1 / 16 + 1e-10, 1 / 25 + 1e-10], rtol=1e-7
    )
    for got, mode in ((pos, "position"), (clu, "cluster")):
        want = oracles.regularizer(x, lab, picks, alpha=1.0, own_cluster=mode, pick_clusters=[1, 2])
        assert_reg_close(got, want)


REG_CASES = [
    dict(alpha=0.5, horizon_dist=4.0),
    dict(alpha=1.0, horizon_dist=1.0),
    dict(alpha=1.0, horizon_dist=0.5, own_cluster="cluster"),
    dict(alpha=0.7),
    dict(alpha=1.0, own_cluster="none"),
    dict(alpha=0.5, horizon_num=128, own_cluster="none", mask_zero=True),
    dict(alpha=1.0, horizon_num=32, own_cluster="position"),
    dict(alpha=1.0, horizon_num=5, own_cluster="cluster"),
    dict(alpha=0.5, horizon_num=1, own_cluster="none", mask_zero=True),
    dict(alpha=0.3, horizon_num=299),
    dict(alpha=1.0, horizon_num=1000),  # more than the picks: all of them
]


def _case_id(kw):
    return "-".join(f"{k}={v}" for k, v in kw.items())


@pytest.mark.parametrize("kw", REG_CASES, ids=_case_id)
@pytest.mark.parametrize("n,n_picks", [(600, 300), (257, 20)])
def test_regularizer_matches_oracle(usl, make_unit, make_sparse_labels, kw, n, n_picks):
    x = make_unit(n, 16, seed=n + n_picks)
    K = n_picks + 60
    lab = make_sparse_labels(x, n_picks + 20, K, seed=n)
    picks = np.random.default_rng(n).choice(n, n_picks, replace=False)
    kw = dict(kw)
    if kw.get("own_cluster") == "cluster":
        kw["pick_clusters"] = lab[picks]
    got = usl.regularizer(x, lab, picks, **kw)
    assert_reg_close(got, oracles.regularizer(x, lab, picks, **kw))


def test_regularizer_duplicate_points_are_exact_zeros(usl, make_unit):
    # Rows identical to a pick must be at D = exactly 0 so that mask_zero masks them.
    base = make_unit(300, 12, seed=4)
    x = np.concatenate([base, base[:50]])
    lab = np.zeros(350, np.int64)
    picks = np.arange(0, 50, 2)
    kw = dict(alpha=0.5, horizon_num=3, own_cluster="none", mask_zero=True)
    got = usl.regularizer(x, lab, picks, **kw)
    assert_reg_close(got, oracles.regularizer(x, lab, picks, **kw))
    # and without mask_zero they are infinite
    got = usl.regularizer(x, lab, picks, alpha=0.5, own_cluster="none")
    assert np.all(np.isinf(got[picks])) and np.all(np.isinf(got[300 + picks]))
    assert np.isfinite(got[1])


def test_regularizer_threads_identical(usl, make_unit, make_sparse_labels):
    x = make_unit(900, 24, seed=3)
    lab = make_sparse_labels(x, 300, 320, seed=3)
    picks = np.random.default_rng(1).choice(900, 300, replace=False)
    for kw in (dict(alpha=0.5, horizon_dist=4.0), dict(alpha=1.0, horizon_num=32)):
        a = usl.regularizer(x, lab, picks, threads=1, **kw)
        b = usl.regularizer(x, lab, picks, threads=2, **kw)
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------- cluster_argmax


def test_cluster_argmax_hand_table(usl):
    dens = np.array([0.5, 2.0, 2.0, 1.0, 3.0], np.float32)
    lab = np.array([0, 0, 0, 2, 2])
    # cluster 0: tie between 1 and 2 -> first (1); clusters 1 and 3 empty -> -1
    got = usl.cluster_argmax(dens, lab, 4)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [1, -1, 4, -1])
    # with a regularizer: scores 0.5, 2, 1, 1, -2 -> cluster 2 now picks 3
    reg = np.array([0.0, 0.0, 1.0, 0.0, 5.0])
    np.testing.assert_array_equal(
        usl.cluster_argmax(dens, lab, 4, reg=reg, weight=1.0), [1, -1, 3, -1]
    )
    # weight scales it: 0.1 -> scores 0.5, 2, 1.9, 1, 2.5
    np.testing.assert_array_equal(
        usl.cluster_argmax(dens, lab, 4, reg=reg, weight=0.1), [1, -1, 4, -1]
    )
    # tie created by the regularizer: 2 - 0 == 3 - 1 -> first (index 1)
    dens2 = np.array([2.0, 3.0], np.float32)
    np.testing.assert_array_equal(
        usl.cluster_argmax(dens2, [0, 0], 1, reg=np.array([0.0, 1.0]), weight=1.0), [0]
    )


def test_cluster_argmax_all_minus_inf_takes_first_member(usl):
    dens = np.array([1.0, 5.0, 2.0, 4.0], np.float32)
    lab = np.array([1, 0, 1, 0])
    reg = np.array([np.inf, 0.0, np.inf, np.inf])
    got = usl.cluster_argmax(dens, lab, 2, reg=reg, weight=0.5)
    np.testing.assert_array_equal(got, [1, 0])
    np.testing.assert_array_equal(got, oracles.cluster_argmax(dens, lab, 2, reg, 0.5))


def test_cluster_argmax_matches_oracle_random(usl):
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        K = int(rng.integers(1, 60))
        dens = rng.integers(0, 5, n).astype(np.float32)  # many exact ties
        lab = rng.integers(0, K, n)
        reg = rng.integers(0, 3, n).astype(np.float64)
        w = float(rng.choice([0.0, 0.5, 1.0]))
        np.testing.assert_array_equal(
            usl.cluster_argmax(dens, lab, K, reg=reg, weight=w),
            oracles.cluster_argmax(dens, lab, K, reg, w),
        )


# --------------------------------------------------------------------------- selection loop


def oracle_picks(x, dens, lab, K, m, **params):
    """The oracle's picks and whether the case is fragile (a decision within float32
    error of the float64 one, see oracles._regularizer)."""
    picks, _, fragile = oracles.regularized_select_state(x, dens, lab, K, m, **params)
    return picks, fragile


def assert_same_picks(got, want, fragile, msg=""):
    got = np.asarray(got)
    if fragile and not np.array_equal(got, want):
        pytest.skip(f"{msg}: a decision lies within float32 error of the float64 oracle's")
    np.testing.assert_array_equal(got, want, err_msg=msg)


def selection_case(seed, make_unit, make_sparse_labels):
    """A random selection problem: unit vectors, oracle densities (float32 as the package
    stores them), spatially coherent labels with empty (skipped) ids, n_clusters > m."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 700))
    d = int(rng.integers(2, 33))
    x = make_unit(n, d, seed=seed)
    k = int(rng.integers(2, 21))
    dens = oracles.density(x, k).astype(np.float32)
    m = int(rng.integers(2, max(3, n // 5)))
    n_used = m + int(rng.integers(0, 15))  # non-empty clusters >= m
    K = n_used + 2 + int(rng.integers(0, 20))  # some ids empty, always 0 and 1
    lab = make_sparse_labels(x, n_used, K, seed=seed)
    return x, dens, lab, K, m


PRESET_NAMES = ["cifar10", "cifar100", "imagenet-moco", "imagenet-clip"]


@pytest.mark.parametrize("seed", range(32))
def test_regularized_select_matches_oracle_presets(usl, make_unit, make_sparse_labels, seed):
    x, dens, lab, K, m = selection_case(seed, make_unit, make_sparse_labels)
    for preset in PRESET_NAMES:
        want, fragile = oracle_picks(x, dens, lab, K, m, **oracles.reg_params(preset))
        assert want.size == m
        got = usl.regularized_select(x, dens, lab, m, n_clusters=K, defaults=preset)
        assert got.dtype == np.int64
        assert_same_picks(got, want, fragile, f"preset {preset}")


CUSTOM = [
    dict(
        rounds=4,
        weight=2.0,
        momentum=0.5,
        alpha=1.0,
        horizon_dist=None,
        horizon_num=3,
        own_cluster="cluster",
        mask_zero=False,
    ),
    dict(
        rounds=3,
        weight=1.5,
        momentum=0.0,
        alpha=0.5,
        horizon_dist=None,
        horizon_num=7,
        own_cluster="none",
        mask_zero=True,
    ),
    dict(
        rounds=5,
        weight=0.8,
        momentum=0.3,
        alpha=0.7,
        horizon_dist=2.0,
        horizon_num=None,
        own_cluster="cluster",
        mask_zero=False,
    ),
    dict(
        rounds=6,
        weight=3.0,
        momentum=1.0,
        alpha=1.0,
        horizon_dist=1.5,
        horizon_num=None,
        own_cluster="cluster",
        mask_zero=False,
    ),  # mu = 1: reg stays 0
    dict(
        rounds=3,
        weight=0.5,
        momentum=0.9,
        alpha=2.0,
        horizon_dist=None,
        horizon_num=None,
        own_cluster="cluster",
        mask_zero=True,
    ),
    dict(
        rounds=1,
        weight=1.0,
        momentum=0.9,
        alpha=1.0,
        horizon_dist=1.0,
        horizon_num=None,
        own_cluster="position",
        mask_zero=False,
    ),
]


@pytest.mark.parametrize("params", CUSTOM, ids=[f"custom{i}" for i in range(len(CUSTOM))])
@pytest.mark.parametrize("seed", range(100, 106))
def test_regularized_select_matches_oracle_custom(usl, make_unit, make_sparse_labels, seed, params):
    x, dens, lab, K, m = selection_case(seed, make_unit, make_sparse_labels)
    want, fragile = oracle_picks(x, dens, lab, K, m, **params)
    got = usl.regularized_select(x, dens, lab, m, n_clusters=K, **params)
    assert_same_picks(got, want, fragile)


def test_imagenet_presets_with_more_picks_than_the_horizon(usl, make_unit, make_sparse_labels):
    # m = 200 picks > horizon 128 / 32: the top-h selection is really exercised, across
    # a pick-tile boundary (more than 256 picks would need n > 1280: keep it at 200).
    x = make_unit(900, 16, seed=77)
    dens = oracles.density(x, 20).astype(np.float32)
    lab = make_sparse_labels(x, 230, 260, seed=77)
    for preset in ("imagenet-moco", "imagenet-clip"):
        want, fragile = oracle_picks(x, dens, lab, 260, 200, **oracles.reg_params(preset))
        got = usl.regularized_select(x, dens, lab, 200, n_clusters=260, defaults=preset)
        assert_same_picks(got, want, fragile, preset)


def test_one_round_is_densest_member_per_cluster(usl, make_unit, make_sparse_labels):
    x, dens, lab, K, m = selection_case(5, make_unit, make_sparse_labels)
    got = usl.regularized_select(x, dens, lab, m, n_clusters=K, rounds=1)
    best = usl.cluster_argmax(dens, lab, K)
    np.testing.assert_array_equal(got, best[best >= 0][:m])


def test_position_and_cluster_modes_differ_and_each_matches_its_oracle(
    usl, make_unit, make_sparse_labels
):
    differing = 0
    for seed in range(200, 230):
        x, dens, lab, K, m = selection_case(seed, make_unit, make_sparse_labels)
        res = {}
        for mode in ("position", "cluster"):
            params = oracles.reg_params("cifar100", own_cluster=mode)
            want, fragile = oracle_picks(x, dens, lab, K, m, **params)
            got = usl.regularized_select(
                x, dens, lab, m, n_clusters=K, defaults="cifar100", own_cluster=mode
            )
            assert not fragile, f"seed {seed}: pick another seed range"
            np.testing.assert_array_equal(got, want, err_msg=f"seed {seed} mode {mode}")
            res[mode] = got
        differing += not np.array_equal(res["position"], res["cluster"])
    assert differing >= 3, "the position quirk never changed a pick"


@pytest.mark.parametrize("preset", ["cifar10", "cifar100"])
@pytest.mark.parametrize(
    "override", [dict(weight=0.0), dict(momentum=1.0)], ids=["weight0", "momentum1"]
)
def test_regularizer_without_effect_gives_the_one_round_picks(
    usl, make_unit, make_sparse_labels, preset, override
):
    """weight = 0 (score = density - 0 * reg) or momentum = 1 (reg = 1 * 0 + 0 * new)
    leaves the scores at the densities in every round, so the picks are the one-round
    (densest member per cluster) picks. With skipped cluster ids, the position-mode
    regularizer is +inf at the previous picks (D = 0, not masked), and 0 * inf = NaN
    must not change which member wins. The oracle (NumPy argmax, like torch's argmax in
    the reference, takes a NaN score as the maximum) agrees."""
    x, dens, lab, K, m = selection_case(7, make_unit, make_sparse_labels)
    once = usl.regularized_select(x, dens, lab, m, n_clusters=K, defaults=preset, rounds=1)
    with np.errstate(invalid="ignore"):
        want = oracles.regularized_select(
            x, dens, lab, K, m, **oracles.reg_params(preset, **override)
        )
    np.testing.assert_array_equal(want, once)
    got = usl.regularized_select(x, dens, lab, m, n_clusters=K, defaults=preset, **override)
    np.testing.assert_array_equal(got, once)


def test_no_empty_cluster_position_equals_cluster(usl, make_unit):
    # When no cluster id is skipped, pick position == cluster id: the modes agree.
    x = make_unit(300, 8, seed=1)
    dens = oracles.density(x, 10).astype(np.float32)
    lab = np.argmin(oracles.sqdist(x, x[:30]), axis=1)
    a = usl.regularized_select(x, dens, lab, 30, defaults="cifar100", own_cluster="position")
    b = usl.regularized_select(x, dens, lab, 30, defaults="cifar100", own_cluster="cluster")
    np.testing.assert_array_equal(a, b)


def test_top_up_when_fewer_nonempty_clusters_than_m(usl, make_unit):
    x = make_unit(200, 6, seed=2)
    dens = oracles.density(x, 8).astype(np.float32)
    lab = np.argmin(oracles.sqdist(x, x[:5]), axis=1) * 3  # 5 non-empty of 15 ids
    # one round: the extra picks are the densest points not picked yet
    got = usl.regularized_select(x, dens, lab, 12, n_clusters=15, rounds=1)
    first = oracles.regularized_select(
        x, dens, lab, 15, 12, **oracles.reg_params("cifar10", rounds=1)
    )
    assert first.size == 5
    np.testing.assert_array_equal(got[:5], first)
    rest = np.setdiff1d(np.arange(200), first)
    order = rest[np.argsort(-dens[rest].astype(np.float64), kind="stable")]
    np.testing.assert_array_equal(got[5:], order[:7])
    # several rounds: the per-cluster part still equals the oracle, all distinct
    got = usl.regularized_select(x, dens, lab, 12, n_clusters=15)
    want = oracles.regularized_select(x, dens, lab, 15, 12, **oracles.reg_params("cifar10"))
    np.testing.assert_array_equal(got[:5], want)
    assert len(set(got.tolist())) == 12


def test_top_up_never_repeats_a_pick(usl):
    """Top-up when unpicked points score -inf. Points 1 and 2 are duplicates at x=0; one
    cluster, m=2, own_cluster='none' without mask_zero. Round 1 picks 1 (densest, first
    on the tie); its regularizer is +inf at points 1 and 2 (D = 0), so round 2 picks 0. The
    top-up then fills one place from the points not picked {1, 2} (both -inf): 1."""
    x = np.array([[5.0], [0.0], [0.0]], np.float32)
    dens = np.array([1.0, 2.0, 2.0], np.float32)
    lab = np.zeros(3, np.int64)
    params = dict(
        rounds=2,
        weight=1.0,
        momentum=0.0,
        alpha=1.0,
        horizon_dist=None,
        horizon_num=None,
        own_cluster="none",
        mask_zero=False,
    )
    first, reg, _ = oracles.regularized_select_state(x, dens, lab, 1, 2, **params)
    np.testing.assert_array_equal(first, [0])
    want = oracles.top_up(dens, reg, 1.0, first, 2)
    np.testing.assert_array_equal(want, [0, 1])
    got = usl.regularized_select(x, dens, lab, 2, n_clusters=1, **params)
    assert len(set(np.asarray(got).tolist())) == 2, f"repeated pick: {got}"
    np.testing.assert_array_equal(got, want)


def test_top_up_never_repeats_a_pick_cifar10_preset(usl):
    # The same with the published CIFAR-10 preset: two antipodal points in cluster 1
    # (cluster 0 empty, so pick position 0 != label 1 and D = 0 is not masked).
    x = np.array([[1.0], [-1.0]], np.float32)
    dens = np.array([1e12, 1e12], np.float32)
    got = usl.regularized_select(x, dens, np.array([1, 1]), 2, n_clusters=2)
    np.testing.assert_array_equal(np.sort(np.asarray(got)), [0, 1])


def test_regularized_select_threads_and_torch(usl, make_unit, make_sparse_labels):
    x, dens, lab, K, m = selection_case(9, make_unit, make_sparse_labels)
    a = usl.regularized_select(x, dens, lab, m, n_clusters=K, threads=1)
    b = usl.regularized_select(x, dens, lab, m, n_clusters=K, threads=2)
    assert np.array_equal(a, b)
    torch = pytest.importorskip("torch")
    t = usl.regularized_select(
        torch.from_numpy(x), torch.from_numpy(dens), torch.from_numpy(lab), m, n_clusters=K
    )
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64
    np.testing.assert_array_equal(t.numpy(), a)


def test_zero_momentum_forgets_an_infinite_regularizer(usl):
    # Hand case: points 0 and 1 coincide, so round 1 gives several points an infinite
    # regularizer. With momentum 0 the next round's regularizer REPLACES it (the reference's
    # 0 * inf = NaN would instead make NaN scores win the arg-max).
    # Round 1: picks [0, 3]. Round 2: reg = [inf, inf, 1 + 1/16, inf] -> picks [2, 1].
    # Round 3: reg = [inf, inf, inf, 1/9 + 1/25] -> cluster 0 all -inf -> first member 0;
    # cluster 1 -> 3 (score 2 - 0.151).
    x = np.array([[0.0], [0.0], [1.0], [5.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    dens = np.array([2.0, 1.0, 1.0, 2.0], dtype=np.float32)
    kw = dict(
        rounds=3,
        weight=1.0,
        momentum=0.0,
        alpha=1.0,
        horizon_dist=None,
        horizon_num=None,
        own_cluster="none",
        mask_zero=False,
    )
    got = usl.regularized_select(x, dens, labels, 2, n_clusters=2, **kw)
    assert got.tolist() == [0, 3]
    got2 = usl.regularized_select(x, dens, labels, 2, n_clusters=2, **dict(kw, rounds=2))
    assert got2.tolist() == [2, 1]


def test_a_horizon_at_least_the_picks_needs_no_top_h_buffer(usl, make_unit, monkeypatch):
    # The engine keeps the h nearest picks in a per-thread buffer only when h < the number
    # of picks (csrc/cpu/regularizer.cpp); otherwise it sums over every pick. The memory
    # estimate once charged 256 x 8 (2h + 16) bytes a thread whatever the picks, so
    # horizon_num=10**7 with 10 picks "needed 81.3 GiB" and raised MemoryError.
    from usl_fast import _dispatch, _memory

    x = make_unit(500, 16, seed=3)
    lab = np.arange(500) % 10
    picks = np.arange(10)
    per_thread = []
    check = _memory.check

    def spy(estimate, what, found=None):
        per_thread.append((what, estimate.per_thread))
        return check(estimate, what, found)

    monkeypatch.setattr(_memory, "check", spy)
    plain = usl.regularizer(x, lab, picks, horizon_num=None)
    for h in (10, 10**7):
        per_thread.clear()
        np.testing.assert_array_equal(usl.regularizer(x, lab, picks, horizon_num=h), plain)
        assert [p for w, p in per_thread if w.startswith("the regularizer")] == [0.0]
    per_thread.clear()
    usl.regularizer(x, lab, picks, horizon_num=9)  # 9 < 10 picks: the buffer counts
    want = 256 * _dispatch.reservoir_bytes_per_row(9) + 8.0 * 9
    assert [p for w, p in per_thread if w.startswith("the regularizer")] == [want]
    # The whole selection with such a horizon runs (it raised MemoryError).
    picks_big = usl.select(x, 10, k=10, horizon_num=10**7, weight=1)
    assert len(picks_big) == 10


# --------------------------------------------------------------------------- distance memo


@pytest.mark.parametrize("preset", ["cifar10", "cifar100"])
def test_distance_memo_keeps_every_pick_and_saves_evaluations(
    usl, make_unit, make_sparse_labels, monkeypatch, preset
):
    # The selection rounds keep the n x m distances between rounds (engine.DistanceMemo)
    # and evaluate only the positions whose pick changed; the picks must be those of the
    # rounds without it, and the memo must really have served kept columns.
    from usl_fast.backends import engine

    x, dens, lab, K, m = selection_case(5, make_unit, make_sparse_labels)
    made, fresh_counts = [], []
    real_init, real_fresh = engine.DistanceMemo.__init__, engine.DistanceMemo.fresh

    def init(self, n, cols, horizon):
        made.append((n, cols))
        real_init(self, n, cols, horizon)

    def fresh(self, keys):
        f = real_fresh(self, keys)
        fresh_counts.append((int(f.sum()), f.size))
        return f

    monkeypatch.setattr(engine.DistanceMemo, "__init__", init)
    monkeypatch.setattr(engine.DistanceMemo, "fresh", fresh)
    with_memo = usl.regularized_select(x, dens, lab, m, n_clusters=K, defaults=preset)
    rounds = oracles.reg_params(preset)["rounds"]
    assert len(made) == 1 and made[0][0] == x.shape[0]
    assert len(fresh_counts) == rounds - 1
    assert fresh_counts[0][0] == fresh_counts[0][1]  # the first round evaluates every column
    assert sum(f for f, _ in fresh_counts[1:]) < sum(c for _, c in fresh_counts[1:])
    monkeypatch.setattr(engine, "MEMO_MAX_BYTES", 0)  # too small for any memo
    made.clear()
    without = usl.regularized_select(x, dens, lab, m, n_clusters=K, defaults=preset)
    assert not made
    np.testing.assert_array_equal(with_memo, without)
    want, fragile = oracle_picks(x, dens, lab, K, m, **oracles.reg_params(preset))
    assert_same_picks(with_memo, want, fragile, f"preset {preset} with the memo")


def test_distance_memo_only_where_it_pays_and_fits(usl, make_unit, monkeypatch):
    from usl_fast import _memory
    from usl_fast.backends import engine

    x = make_unit(300, 8, seed=2)
    rows = engine.EngineRows(x, 1, False)
    p = dict(oracles.reg_params("cifar10"))
    assert isinstance(rows.regularizer_memo(40, 9, p), engine.DistanceMemo)
    assert rows.regularizer_memo(40, 1, p) is None  # one round: nothing to reuse
    assert rows.regularizer_memo(40, 9, dict(p, horizon_num=7)) is None  # top-h
    assert isinstance(rows.regularizer_memo(40, 9, dict(p, horizon_num=40)), engine.DistanceMemo)
    monkeypatch.setattr(engine, "MEMO_MAX_BYTES", 4 * 300 * 40 - 1)
    assert rows.regularizer_memo(40, 9, p) is None
    monkeypatch.setattr(engine, "MEMO_MAX_BYTES", 2**30)
    tight = [_memory.Limit("RLIMIT_AS", 4 * 4 * 300 * 40 - 1, "test", True)]
    monkeypatch.setattr(_memory, "limits", lambda: tight)
    assert rows.regularizer_memo(40, 9, p) is None  # over a quarter of what is free
    monkeypatch.setattr(_memory, "limits", lambda: [])

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(engine.np, "empty", no_memory)  # a limit the checks cannot see
    assert rows.regularizer_memo(40, 9, p) is None


def test_distance_memo_serves_only_its_own_picks_and_horizon(make_unit):
    # Pairs the filter puts beyond the horizon are kept as +inf, true only for that
    # horizon; and a memo is as wide as its picks. A call that does not match falls back to
    # evaluating every pair (and leaves the memo as it was).
    from usl_fast.backends import engine

    x = make_unit(400, 8, seed=4)
    lab = (np.arange(400) % 7).astype(np.int32)
    rows = engine.EngineRows(x, 2, False)
    keys = np.arange(0, 400, 2)  # 200 fresh picks in one column tile: the filter may run
    tag = np.arange(keys.size, dtype=np.int32)
    p = dict(oracles.reg_params("cifar100"))  # horizon 1: the filter pays on these rows
    memo = rows.regularizer_memo(keys.size, 9, p)
    first = rows.regularizer(lab, rows.rows(keys), tag, p, "r", memo=memo, keys=keys)
    assert np.isinf(memo.dist).any()  # pairs beyond the horizon, never evaluated
    wider = dict(p, horizon_dist=3.0)
    plain = rows.regularizer(lab, rows.rows(keys), tag, wider, "r")
    again = rows.regularizer(lab, rows.rows(keys), tag, wider, "r", memo=memo, keys=keys)
    assert again.tobytes() == plain.tobytes() and plain.tobytes() != first.tobytes()
    fewer = keys[:-1]
    plain = rows.regularizer(lab, rows.rows(fewer), tag[:-1], p, "r")
    got = rows.regularizer(lab, rows.rows(fewer), tag[:-1], p, "r", memo=memo, keys=fewer)
    assert got.tobytes() == plain.tobytes()
    np.testing.assert_array_equal(memo.keys, keys)


def test_engine_refuses_a_memo_it_cannot_serve(make_unit):
    from usl_fast._backend import _cpu

    x = make_unit(50, 8, seed=1)
    picks = np.ascontiguousarray(x[:10])
    lab = np.zeros(50, np.int32)
    tag = np.arange(10, dtype=np.int32)
    out = np.empty(50)
    memo = np.empty((50, 10), np.float32)
    fresh = np.ones(10, np.uint8)
    args = (x, picks, lab, tag, 0.5, 4.0)
    with pytest.raises(ValueError, match="power-sum only"):
        _cpu.regularizer(*args, 3, False, 1e10, out, 1, None, memo, fresh)
    with pytest.raises(ValueError, match="come together"):
        _cpu.regularizer(*args, 0, False, 1e10, out, 1, None, memo, None)
    with pytest.raises(ValueError, match="`memo`"):
        _cpu.regularizer(*args, 0, False, 1e10, out, 1, None, memo[:, :5].copy(), fresh)
