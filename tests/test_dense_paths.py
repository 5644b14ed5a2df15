"""The register-blocked exact kernel (exact_block, csrc/cpu/exact.cpp), the scan's kernel of
independent pairs (exact_pairs, behind _cpu.exact_l2_pairs), the regularizer's
masked power-sum built on it, and the range pass's SIMD filter (csrc/cpu/range_count.cpp),
held to the float64 transcription of exact_l2 (tests/oracles.py) bit for bit on every SIMD
path, each in a fresh process (USL_FAST_ISA=portable|avx2|avx512). Adversarial shapes:
d = 1..9 and around multiples of 8 and 16, column counts that are not multiples of the
register block or of the 16-lane filter step, pairs exactly at the horizon or the radius,
duplicate rows, tiny and huge norms; and for the regularizer the filter both paying and
switched off (whether it runs must never change a bit), and the distance memo of the
selection rounds over two rounds (the second reads the kept columns, evaluates the rest)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import oracles
import pytest
from test_cli import subprocess_env

from usl_fast._dispatch import FAR

#: USL_FAST_ISA value -> the path number the engine reports (0 portable, 1 AVX2, 2 AVX-512)
_ISAS = {"portable": 0, "avx2": 1, "avx512": 2}

_CHILD = r"""
import sys, numpy as np
from usl_fast import _dispatch
from usl_fast._backend import _cpu
data = dict(np.load(sys.argv[1], allow_pickle=False))
out = {"isa": np.array([_cpu.active_isa()])}
for key in sorted(data):
    if key.startswith("blk_a_"):
        name = key[6:]
        a, b, skip = data["blk_a_" + name], data["blk_b_" + name], data["blk_s_" + name]
        got = np.full(a.shape[0] * b.shape[0], np.float32(-7.0))
        n = _cpu.exact_l2_block(a, b, got)
        assert n == a.shape[0] * b.shape[0]
        out["blk_" + name] = got
        got = np.full(a.shape[0] * b.shape[0], np.float32(-7.0))
        out["blkn_" + name] = np.array([_cpu.exact_l2_block(a, b, got, skip)])
        out["blks_" + name] = got
    if key.startswith("prs_a_"):
        name = key[6:]
        a, b = data["prs_a_" + name], data["prs_b_" + name]
        got = np.full(a.shape[0], np.float32(-7.0))
        _cpu.exact_l2_pairs(a, b, got)
        out["prs_" + name] = got
    if key.startswith("reg_x_"):
        name = key[6:]
        x, p = data["reg_x_" + name], data["reg_p_" + name]
        lab, tag = data["reg_l_" + name], data["reg_t_" + name]
        alpha, hd, mz = (float(v) for v in data["reg_k_" + name])
        for th in (1, 2):
            out[f"reg{th}_" + name] = _dispatch.regularizer(
                x, p, lab, tag, alpha, hd, 0, bool(mz), th)
        # The distance memo over two rounds: every column fresh, then the picks of reg_q_
        # (some replaced), only the replaced ones fresh. NaN where nothing was stored yet.
        memo = np.full((x.shape[0], p.shape[0]), np.nan, np.float32)
        out["regm1_" + name] = _dispatch.regularizer(
            x, p, lab, tag, alpha, hd, 0, bool(mz), 2, memo=memo,
            fresh=np.ones(p.shape[0], np.uint8))
        q = data["reg_q_" + name]
        out["regm2_" + name] = _dispatch.regularizer(
            x, q, lab, tag, alpha, hd, 0, bool(mz), 2, memo=memo,
            fresh=(q != p).any(axis=1).astype(np.uint8))
    if key.startswith("rng_x_"):
        name = key[6:]
        x, q, r = data["rng_x_" + name], data["rng_q_" + name], float(data["rng_r_" + name][0])
        for th in (1, 2):
            out[f"rngc{th}_" + name] = _dispatch.range_count(q, x, r, th, False)
            off, nbr = _dispatch.range_search(q, x, r, th, False)
            out[f"rngo{th}_" + name], out[f"rngn{th}_" + name] = off, nbr
np.savez(sys.argv[2], **out)
"""


def _rows(rng, n, d, scale):
    x = (rng.standard_normal((n, d)) * scale).astype(np.float32)
    if n > 3:
        x[1] = x[0]  # an exact duplicate
        x[2, 0] = -0.0
    return x


def _block_cases() -> dict:
    rng = np.random.default_rng(24)
    data = {}
    shapes = [(na, nb, d) for d in (1, 2, 3, 4, 5, 6, 7, 8, 9) for na, nb in ((1, 1), (2, 9))]
    shapes += [(3, nb, d) for d in (15, 16, 17, 31, 33) for nb in (3, 4, 5, 7, 8, 13, 17)]
    shapes += [(2, 21, 128), (1, 8, 130)]
    for s, (na, nb, d) in enumerate(shapes):
        scale = (1.0, 1e-12, 1e15, 1e-40)[s % 4]  # 1e-40: subnormal coordinates
        a = _rows(rng, na, d, scale)
        b = np.vstack([a[:1], _rows(rng, nb - 1, d, scale)]) if nb > 1 else a[:1].copy()
        name = f"{na}x{nb}x{d}"
        data["blk_a_" + name], data["blk_b_" + name] = a, np.ascontiguousarray(b)
        data["blk_s_" + name] = (rng.random(na * nb) < 0.6).astype(np.uint8)
    return data


def _pair_cases() -> dict:
    # Pair i is (a[i], b[i]), each row its own: counts around the kernel's four pairs a call,
    # d around its 8- and 16-coordinate steps, subnormal to huge coordinates, some pairs of
    # identical rows (distance exactly 0).
    rng = np.random.default_rng(31)
    data = {}
    dims = list(range(1, 18)) + [23, 24, 25, 31, 32, 33, 70, 131]
    for s, d in enumerate(dims):
        n = (1, 3, 4, 5, 7, 13, 66)[s % 7]
        scale = (1e-40, 1e-30, 1.0, 1e18)[s % 4]
        a = _rows(rng, n, d, scale)
        b = _rows(rng, n, d, scale)
        b[::3] = a[::3]
        name = f"{n}x{d}s{scale:g}"
        data["prs_a_" + name], data["prs_b_" + name] = a, b
    return data


def _reg_case(data, name, x, p, lab, tag, alpha, hd, mask_zero):
    data["reg_x_" + name], data["reg_p_" + name] = x, np.ascontiguousarray(p)
    q = np.array(p)
    q[::3] = p[::-1][::3]  # the next round's picks: every third one replaced
    data["reg_q_" + name] = q
    data["reg_l_" + name] = lab.astype(np.int32)
    data["reg_t_" + name] = tag.astype(np.int32)
    data["reg_k_" + name] = np.array([alpha, hd, float(mask_zero)])


def _reg_cases() -> dict:
    rng = np.random.default_rng(7)
    data = {}
    for d in (1, 2, 3, 5, 7, 9, 17):
        for scale in (1.0, 1e-10, 1e15):
            x = _rows(rng, 70, d, scale)
            p = x[rng.choice(70, 13, replace=False)]
            lab = rng.integers(0, 15, 70)
            D = oracles.exact_l2(x, p)
            hd = float(np.median(D))  # some pairs exactly at the horizon
            _reg_case(data, f"d{d}s{scale:g}", x, p, lab, np.arange(13), 0.5, hd, False)
    x = _rows(rng, 40, 6, 1.0)
    p = np.vstack([x[:3], x[:2]])  # zero distances, duplicate picks
    for mz in (False, True):
        for alpha in (0.5, 1.0, 1.5):
            _reg_case(
                data, f"zero{int(mz)}a{alpha}", x, p, rng.integers(-1, 3, 40),
                np.array([0, -1, 2, 5, 1]), alpha, np.inf if mz else 3.0, mz,
            )
    # Eleven column tiles of picks: the filter masks nearly everything (it pays), nothing
    # (it switches itself off, then probes again), or first everything and then nothing.
    c = rng.standard_normal((4, 5)).astype(np.float32) * 10
    x = (c[rng.integers(0, 4, 300)] + rng.standard_normal((300, 5)) * 0.1).astype(np.float32)
    near = (c[rng.integers(0, 4, 2600)] + rng.standard_normal((2600, 5)) * 0.1).astype(np.float32)
    far = (near + 1000.0).astype(np.float32)
    lab = rng.integers(0, 50, 300)
    _reg_case(data, "pays", x, far, lab, np.arange(2600), 0.5, 4.0, False)
    _reg_case(data, "off", x, near, lab, np.arange(2600), 0.5, 1e6, False)
    mixed = np.vstack([far[:2048], near[2048:]])
    _reg_case(data, "mixed", x, mixed, lab, np.arange(2600), 1.0, 4.0, False)
    _reg_case(data, "nofilter", x, near, lab, np.arange(2600), 0.5, np.inf, False)
    return data


def _range_cases() -> dict:
    rng = np.random.default_rng(11)
    data = {}
    for d in (1, 2, 3, 5, 7, 9, 17, 33):
        for scale in (1.0, 1e-10, 1e15):
            x = _rows(rng, 301, d, scale)
            q = np.vstack([x[::7], _rows(rng, 5, d, scale)])
            D = oracles.exact_l2(q, x)
            for j, quant in enumerate((0.02, 0.5, 0.98)):  # radius = some pairs' distance
                name = f"d{d}s{scale:g}r{j}"
                data["rng_x_" + name], data["rng_q_" + name] = x, np.ascontiguousarray(q)
                data["rng_r_" + name] = np.array([float(np.quantile(D, quant, method="lower"))])
    return data


def _power_sum(x, p, lab, tag, alpha, hd, mask_zero) -> np.ndarray:
    """The masked power-sum, transcribed: exact_l2 distances, masks, float64 terms, and
    every row's sum in ascending pick order (one rounding per term)."""
    D = oracles.exact_l2(x, p)
    masked = (lab[:, None] == tag[None, :]) | (D >= np.float32(hd))
    if mask_zero:
        masked |= D == 0
    v = D.astype(np.float64)
    with np.errstate(divide="ignore"):
        if alpha == 0.5:
            term = 1.0 / np.sqrt(v)
        elif alpha == 1.0:
            term = 1.0 / v
        else:
            term = v**-alpha
    far = 1.0 / np.sqrt(FAR) if alpha == 0.5 else 1.0 / FAR if alpha == 1.0 else FAR**-alpha
    term = np.where(masked, far, term)
    s = np.zeros(x.shape[0])
    for j in range(p.shape[0]):
        s = s + term[:, j]
    return s


def _run(isa: str, data_path: str, out_path: str, cwd: str) -> dict:
    env = subprocess_env()
    env["USL_FAST_ISA"] = isa
    subprocess.run(
        [sys.executable, "-c", _CHILD, data_path, out_path], check=True, env=env, cwd=cwd,
        timeout=600,
    )
    with np.load(out_path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    data = {**_block_cases(), **_pair_cases(), **_reg_cases(), **_range_cases()}
    np.savez(tmp / "data.npz", **data)
    runs = {}
    for isa in _ISAS:
        got = _run(isa, str(tmp / "data.npz"), str(tmp / f"{isa}.npz"), str(tmp))
        if got["isa"][0] == _ISAS[isa]:
            runs[isa] = got
    return data, runs


@pytest.mark.parametrize("isa", list(_ISAS))
def test_block_kernel_is_the_transcription(dense_runs, isa):
    data, runs = dense_runs
    if isa not in runs:
        pytest.skip(f"this build or CPU cannot run the {isa} path")
    got = runs[isa]
    for key in data:
        if not key.startswith("blk_a_"):
            continue
        name = key[6:]
        a, b, skip = data["blk_a_" + name], data["blk_b_" + name], data["blk_s_" + name]
        want = oracles.exact_l2(a, b).ravel()
        assert np.array_equal(got["blk_" + name].view(np.int32), want.view(np.int32)), name
        # With skip flags: every pair not flagged is exact; a flagged one is either left
        # alone or exact (evaluated with a neighbour of its register block).
        s = got["blks_" + name]
        need = skip == 0
        assert np.array_equal(s[need].view(np.int32), want[need].view(np.int32)), name
        untouched = s[~need] == np.float32(-7.0)
        exact = s[~need].view(np.int32) == want[~need].view(np.int32)
        assert np.all(untouched | exact), name
        n_eval = int(got["blkn_" + name][0])
        assert need.sum() <= n_eval <= need.size and n_eval == need.sum() + exact.sum(), name


@pytest.mark.parametrize("isa", list(_ISAS))
def test_pair_kernel_is_the_transcription(dense_runs, isa):
    data, runs = dense_runs
    if isa not in runs:
        pytest.skip(f"this build or CPU cannot run the {isa} path")
    names = [key[6:] for key in data if key.startswith("prs_a_")]
    assert names
    for name in names:
        a, b = data["prs_a_" + name], data["prs_b_" + name]
        want = np.array([oracles.exact_l2(a[i : i + 1], b[i : i + 1])[0, 0] for i in range(len(a))])
        got = runs[isa]["prs_" + name]
        assert np.array_equal(got.view(np.int32), want.astype(np.float32).view(np.int32)), name


@pytest.mark.parametrize("isa", list(_ISAS))
def test_power_sum_is_the_transcription(dense_runs, isa):
    data, runs = dense_runs
    if isa not in runs:
        pytest.skip(f"this build or CPU cannot run the {isa} path")
    got = runs[isa]
    for key in data:
        if not key.startswith("reg_x_"):
            continue
        name = key[6:]
        x, p = data["reg_x_" + name], data["reg_p_" + name]
        lab, tag = data["reg_l_" + name], data["reg_t_" + name]
        alpha, hd, mz = (float(v) for v in data["reg_k_" + name])
        from usl_fast._dispatch import _float32_at_least

        want = _power_sum(x, p, lab, tag, alpha, _float32_at_least(hd), bool(mz))
        q = data["reg_q_" + name]
        want_q = _power_sum(x, q, lab, tag, alpha, _float32_at_least(hd), bool(mz))
        runs_of = [(got[f"reg{th}_" + name], want, th) for th in (1, 2)]
        runs_of += [(got["regm1_" + name], want, "memo"), (got["regm2_" + name], want_q, "memo 2")]
        for r, want, th in runs_of:
            if alpha in (0.5, 1.0):  # IEEE square root and division: bit for bit
                assert np.array_equal(r.view(np.int64), want.view(np.int64)), (name, th)
            else:  # std::pow is not correctly rounded; the paths agree with each other below
                np.testing.assert_allclose(r, want, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("isa", list(_ISAS))
def test_range_pass_is_the_transcription(dense_runs, isa):
    data, runs = dense_runs
    if isa not in runs:
        pytest.skip(f"this build or CPU cannot run the {isa} path")
    got = runs[isa]
    for key in data:
        if not key.startswith("rng_x_"):
            continue
        name = key[6:]
        x, q = data["rng_x_" + name], data["rng_q_" + name]
        r = np.float32(data["rng_r_" + name][0])
        inside = oracles.exact_l2(q, x) <= r
        assert inside.any() and not inside.all(), name  # the radius is some pair's distance
        for th in (1, 2):
            np.testing.assert_array_equal(got[f"rngc{th}_" + name], inside.sum(axis=1), name)
            off, nbr = got[f"rngo{th}_" + name], got[f"rngn{th}_" + name]
            np.testing.assert_array_equal(np.diff(off), inside.sum(axis=1), name)
            np.testing.assert_array_equal(nbr, np.nonzero(inside)[1], name)


def test_every_path_gives_the_same_bits(dense_runs):
    _, runs = dense_runs
    if len(runs) < 2:
        pytest.skip("only one SIMD path runs here")
    ref = runs["portable"]
    for isa, got in runs.items():
        for key in ref:
            # (how many pairs were evaluated, and so which flagged ones were, follows the
            # path's register block)
            if key != "isa" and not key.startswith(("blkn_", "blks_")):
                assert np.array_equal(ref[key].view(np.uint8), got[key].view(np.uint8)), (isa, key)
