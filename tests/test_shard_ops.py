"""The engine ops and helpers that usl_fast.distributed rests on, in one process (no
process group, no torch): the two-sided kNN block, the continued segment sums, the list
merge and density arithmetic, the shard ranges. Checked against float64 oracles and the
one-process ops bit for bit; run by CI's portable and sanitizer builds too."""

from __future__ import annotations

import numpy as np
import pytest

import usl_fast
from usl_fast import _dispatch


def blobs(n=500, d=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((9, d))
    x = c[rng.integers(0, 9, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_shard_range_and_load_shard(tmp_path):
    from usl_fast.distributed import load_shard, shard_range

    spans = [shard_range(10, r, 4) for r in range(4)]
    assert spans == [(0, 3), (3, 6), (6, 8), (8, 10)]
    x = blobs(10, 4)
    np.save(tmp_path / "x.npy", x)
    parts = [load_shard(str(tmp_path / "x.npy"), r, 4) for r in range(4)]
    assert isinstance(parts[0], np.memmap)
    np.testing.assert_array_equal(np.concatenate(parts), x)
    with pytest.raises(ValueError, match="at least one row"):
        load_shard(str(tmp_path / "x.npy"), 0, 11)


def test_knn_cross_is_both_sides_of_the_block_exactly():
    x = blobs(1300, 10, seed=2)
    x[17] = x[1100]  # a duplicate across the two blocks
    a, b = x[:700], x[700:]
    k = 25
    da, db = _dispatch.knn_cross(a, b, k, None, None, 2)
    D = ((a.astype(np.float64)[:, None] - b.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(da, np.sort(D, 1)[:, :k], atol=1e-6)
    np.testing.assert_allclose(db, np.sort(D.T, 1)[:, :k], atol=1e-6)
    # with the own blocks merged in: the self kNN lists, bit for bit (one distance everywhere)
    from usl_fast.backends.shard import density_of_lists, merge_lists

    own_a = _dispatch.knn(a, k, None, 2, False, indices=False)[0]
    own_b = _dispatch.knn(b, k, None, 2, False, indices=False)[0]
    full, _ = usl_fast.knn(x, k)
    merged = np.concatenate([merge_lists(own_a, da), merge_lists(own_b, db)])
    np.testing.assert_array_equal(merged, full)
    np.testing.assert_array_equal(density_of_lists(merged), usl_fast.density(x, k))
    # starting bounds (the k-th distance already known) leave the merged result unchanged
    da2, db2 = _dispatch.knn_cross(a, b, k, own_a[:, -1].copy(), own_b[:, -1].copy(), 1)
    assert np.isinf(da2).any()  # pairs beyond the bounds were left out
    merged2 = np.concatenate([merge_lists(own_a, da2), merge_lists(own_b, db2)])
    np.testing.assert_array_equal(merged2, full)


def test_merge_lists_keeps_the_k_smallest():
    rng = np.random.default_rng(0)
    a = np.sort(rng.random((50, 7)).astype(np.float32), 1)
    b = np.sort(rng.random((50, 7)).astype(np.float32), 1)
    b[:, 5:] = np.inf
    from usl_fast.backends.shard import merge_lists

    np.testing.assert_array_equal(merge_lists(a, b), np.sort(np.hstack([a, b]), 1)[:, :7])


def test_segment_sum_continued_across_row_ranges_has_the_one_pass_bits():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3001, 9)) * 10.0 ** rng.integers(-6, 6, (3001, 1))).astype(np.float32)
    lab = rng.integers(0, 11, 3001).astype(np.int32)
    full, counts = _dispatch.segment_sum(x, lab, 11, 2)
    cuts = [0, 5, 1200, 1201, 3001]
    sums = np.zeros((11, 9))
    total = np.zeros(11, np.int64)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        for c_lo, c_hi in ((0, 4), (4, 4), (4, 11)):  # cluster blocks, an empty one too
            _, cnt = _dispatch.segment_sum(
                x[lo:hi], lab[lo:hi], 11, 1 + (lo % 2), sums=sums, c_lo=c_lo, c_hi=c_hi
            )
        total += cnt
    np.testing.assert_array_equal(sums, full)
    np.testing.assert_array_equal(total, counts)
    # float64 oracle (the sums are float64 sums of float32 values in row order)
    oracle = np.zeros((11, 9))
    for i in range(3001):
        oracle[lab[i]] += x[i].astype(np.float64)
    np.testing.assert_array_equal(full, oracle)


def test_segment_sum_over_a_sorted_row_subset_per_block():
    # What each rank does per k-means update: sort its rows by label once, then one call
    # per block of clusters over that block's members only.
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2000, 6)).astype(np.float32)
    lab = rng.integers(0, 9, 2000).astype(np.int32)
    full, counts = _dispatch.segment_sum(x, lab, 9, 2)
    order = np.argsort(lab, kind="stable").astype(np.int64)
    first = np.concatenate([[0], np.cumsum(counts)])
    sums = np.zeros((9, 6))
    for lo, hi in ((0, 2), (2, 2), (2, 9)):
        _, c = _dispatch.segment_sum(
            x, lab, 9, 2, sums=sums, c_lo=lo, c_hi=hi, rows=order[first[lo] : first[hi]]
        )
        np.testing.assert_array_equal(c[lo:hi], counts[lo:hi])
    np.testing.assert_array_equal(sums, full)
    # without `sums`, the clusters outside the range are zero, not left over memory
    part, _ = _dispatch.segment_sum(x, lab, 9, 1, c_lo=3, c_hi=5)
    np.testing.assert_array_equal(part[3:5], full[3:5])
    assert not part[:3].any() and not part[5:].any()
    with pytest.raises(ValueError, match="rows"):
        _dispatch.segment_sum(x, lab, 9, 1, rows=np.array([0, 2000], np.int64))
