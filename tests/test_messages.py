"""Messages that misled and silent garbage (issue 22, items 8 and 10): each case gets the
error it deserves (the argument, the value, what is allowed), before any work; the CLI
ones in a subprocess, checking exit status 2 and one stderr line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import oracles
import pytest

import usl_fast
from usl_fast import _validate

from test_cli import subprocess_env  # noqa: E402


def cli(args, cwd: Path, env_extra=None, timeout=120):
    env = dict(subprocess_env(), **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "usl_fast", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(r) -> str:
    """The single stderr line of a failed CLI run (exit status 2, no traceback)."""
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("usl-fast: error: "), lines[0]
    return lines[0]


def normal(n=200, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


# ------------------------------------------------------------------ item 8: tiny scales


def scale_to(x32: np.ndarray, target_log2: float) -> np.ndarray:
    """x32 times the power of two that puts its largest squared row norm in
    [2**target_log2, 2**(target_log2 + 2)) (exact in float32)."""
    top = float(np.einsum("ij,ij->i", x32.astype(np.float64), x32.astype(np.float64)).max())
    e = int(np.ceil((target_log2 - np.log2(top)) / 2))
    out = (x32 * np.float32(2.0**e)).astype(np.float32)
    assert np.array_equal(out.astype(np.float64) / 2.0**e, x32.astype(np.float64))  # exact
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: normal() * 1e-30,  # the case (float64 in, normal float32 values)
        lambda: (normal() * 1e-41).astype(np.float32),  # float32 subnormals
        lambda: scale_to(normal().astype(np.float32), -62),  # just below 2**-60
    ],
    ids=["1e-30", "subnormal", "just-below"],
)
def test_tiny_magnitudes_are_an_error(usl, no_engine, make):
    x = make()
    for call in (
        lambda: usl.knn(x, 5),
        lambda: usl.density(x, 5),
        lambda: usl.select(x, 5, k=5),
        lambda: usl.kmeans(x, 3),
        lambda: usl.range_count(x, 1.0),
        lambda: usl.KCenterGreedy().fit(x, 5),  # (TypiClust normalises by default)
    ):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith("`features` is too small in magnitude") or msg.startswith(
            "`X` is too small in magnitude"
        ), msg
        assert "largest squared row norm is" in msg and "2**-60" in msg
        assert "multiply them by 2.0**" in msg and "keeps every neighbour order" in msg


def test_a_tiny_second_side_is_fine_when_the_other_is_not(usl):
    # Squared distances between two sets underflow only when BOTH are tiny: between
    # normal features and queries of size 1e-10 every distance is about |x|^2. The rule
    # applies to the larger of the two sides' largest squared norms.
    x = normal(200, 16, seed=5).astype(np.float32)
    q = np.full((2, 16), 1e-10)
    d, i = usl.knn(x, 5, queries=q)  # the review's case: was "`queries` is too small"
    want_d, want_i = oracles.knn(x, 5, queries=q.astype(np.float32))
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, rtol=3e-7)
    qr = (normal(30, 16, seed=6) * 1e-12).astype(np.float32)
    d, i = usl.knn(x, 7, queries=qr)
    want_d, want_i = oracles.knn(x, 7, queries=qr)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, rtol=3e-7)
    r = float(want_d[0, 3] + want_d[0, 4]) / 2  # between two distances (all about |x|^2)
    want_counts = (oracles.sqdist(qr, x) <= r).sum(axis=1)
    np.testing.assert_array_equal(usl.range_count(x, r, queries=qr), want_counts)
    # and the other way round: tiny features, normal queries
    d, i = usl.knn(qr, 3, queries=x[:20])
    want_d, want_i = oracles.knn(qr, 3, queries=x[:20])
    np.testing.assert_allclose(d, want_d, rtol=3e-7)
    # k-means from tiny initial centroids of normal features: the centroids become means
    # of the features after one step
    res = usl.kmeans(x, 3, init=np.full((3, 16), 1e-10), n_iter=5)
    assert np.isfinite(res.centroids).all() and res.counts.sum() == 200


def test_both_sides_tiny_is_an_error_naming_both(usl, no_engine):
    x = (normal(200, 16, seed=5) * 1e-30).astype(np.float32)
    q = (normal(5, 16, seed=6) * 1e-30).astype(np.float32)
    for call in (lambda: usl.knn(x, 5, queries=q), lambda: usl.range_count(x, 1e-60, queries=q)):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith("`features` and `queries` are too small in magnitude"), msg
        assert "2**-60" in msg and "multiply both by 2.0**" in msg
    # All-zero features (a legitimate input) with tiny initial centroids: the larger side
    # is the centroids, tiny: an error naming both.
    with pytest.raises(ValueError, match="`features` and `init` are too small in magnitude"):
        usl.kmeans(np.zeros((20, 16), np.float32), 2, init=q[:2])
    # k-means features stay checked on their own (the centroids become their means).
    with pytest.raises(ValueError, match="^`features` is too small in magnitude"):
        usl.kmeans(x, 2, init=normal(2, 16))


def test_the_pair_rule_on_the_portable_path(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")  # torch CPU tensors go the device way
    x = torch.from_numpy(normal(200, 16, seed=5).astype(np.float32))
    q = torch.full((2, 16), 1e-10)
    d, i = usl_fast.knn(x, 5, queries=q)
    want_d, want_i = oracles.knn(x.numpy(), 5, queries=q.numpy())
    np.testing.assert_array_equal(i.numpy(), want_i)
    np.testing.assert_allclose(d.numpy(), want_d, rtol=3e-7)
    res = usl_fast.kmeans(x, 3, init=torch.full((3, 16), 1e-10), n_iter=5)
    assert bool(torch.isfinite(res.centroids).all()) and int(res.counts.sum()) == 200
    tiny = x * 1e-30
    with pytest.raises(ValueError, match="^`features` and `queries` are too small"):
        usl_fast.knn(tiny, 5, queries=tiny[:3])
    with pytest.raises(ValueError, match="^`features` is too small"):
        usl_fast.knn(tiny, 5)
    with pytest.raises(ValueError, match="^`features` is too small"):
        usl_fast.kmeans(tiny, 2, init=x[:2])
    with pytest.raises(ValueError, match="^`features` and `init` are too small"):
        usl_fast.kmeans(torch.zeros(20, 16), 2, init=tiny[:2])


def test_float64_values_that_vanish_in_float32_are_an_error(usl, no_engine):
    x = normal() * 1e-300
    with pytest.raises(ValueError, match=r"largest absolute value 3.9e-300 becomes 0 in float32"):
        usl.knn(x, 5)


def test_the_suggested_power_of_two_fixes_it(usl):
    x = normal() * 1e-30
    with pytest.raises(ValueError) as info:
        usl.knn(x, 5)
    e = int(str(info.value).split("2.0**")[1].split()[0])
    d, i = usl.knn(x * 2.0**e, 5)
    _, want = oracles.knn(x, 5)  # float64 brute force on the original values
    np.testing.assert_array_equal(i, want)
    assert i[3].tolist() == [3, 102, 174, 30, 96]  # the float64 answer for row 3


def test_just_above_the_bound_matches_the_float64_oracle(usl):
    base = normal(300, 16, seed=4).astype(np.float32)
    x = scale_to(base, -60)  # largest squared norm in [2**-60, 2**-58)
    d, i = usl.knn(x, 10)
    want_d, want_i = oracles.knn(x, 10)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, rtol=3e-7)
    # The same bits as the unit-scale data, scaled: the power of two is exact throughout.
    d1, i1 = usl.knn(base, 10)
    np.testing.assert_array_equal(i, i1)
    s = (x[0, 0] / base[0, 0]).astype(np.float64) ** 2
    np.testing.assert_array_equal(d.astype(np.float64), d1.astype(np.float64) * s)
    # k-means and range counts follow the same distances.
    np.testing.assert_array_equal(
        usl.kmeans(x, 5, n_iter=20).labels, usl.kmeans(base, 5, n_iter=20).labels
    )
    r = float(np.median(d1[:, 5]))
    np.testing.assert_array_equal(usl.range_count(x, r * s), usl.range_count(base, r))


@pytest.mark.filterwarnings("ignore:usl_fast.select. the features' median row norm")
def test_zeros_still_work(usl):
    z = np.zeros((50, 4), np.float32)
    d, i = usl.knn(z, 3)
    np.testing.assert_array_equal(d, 0)
    np.testing.assert_array_equal(i, np.tile([0, 1, 2], (50, 1)))  # ties by index
    np.testing.assert_allclose(usl.density(z, 3), 1e12, rtol=1e-6)
    # One live cluster (every centroid ties, the lowest wins), topped up by score, ties to
    # the lower index.
    res = usl.select(z, 3, k=3, return_info=True)
    assert res.indices.tolist() == [0, 1, 2] and res.n_filled == 2
    assert usl.kmeans(z, 2, n_iter=3).labels.tolist() == [0] * 50


def test_normalize_rescues_tiny_features(usl):
    # select(normalize=True) L2-normalises first: no scale error, the unit data's picks.
    x = (normal(400, 8, seed=2) * 1e-30).astype(np.float32)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    got = usl.select(x, 10, k=10, normalize=True, kmeans_iter=10)
    np.testing.assert_array_equal(got, usl.select(unit.astype(np.float32), 10, k=10, kmeans_iter=10))


def test_tiny_tensors_are_an_error_on_the_torch_paths(usl):
    torch = pytest.importorskip("torch")
    from usl_fast.backends import portable
    from usl_fast.uslt import USLT

    t = torch.from_numpy((normal() * 1e-30).astype(np.float32))
    with pytest.raises(ValueError, match="too small in magnitude"):
        portable.as_device_features(t)
    with pytest.raises(ValueError, match="too small in magnitude"):
        USLT(n_clusters=3).fit(t)
    with pytest.raises(ValueError, match="too small in magnitude"):
        USLT(n_clusters=3).fit(t.numpy())


# ------------------------------------------------------------------ item 10: arrays


@pytest.mark.filterwarnings("ignore:usl_fast.select. the features' median row norm")
def test_unaligned_float32_memmap_is_copied_once(usl, tmp_path):
    x = normal(600, 8, seed=3).astype(np.float32)
    m = np.memmap(tmp_path / "u.bin", dtype=np.float32, mode="w+", offset=3, shape=x.shape)
    m[:] = x
    m.flush()
    m = np.memmap(tmp_path / "u.bin", dtype=np.float32, mode="r", offset=3, shape=x.shape)
    assert not m.flags.aligned
    labels = np.arange(600) % 5
    for f in (
        lambda a: usl.knn(a, 5)[1],
        lambda a: usl.density(a, 5),
        lambda a: usl.kmeans(a, 4, n_iter=5).labels,
        lambda a: usl.select(a, 5, k=5, kmeans_iter=5),
        lambda a: usl.range_count(a, 1.0),
        lambda a: usl.regularizer(a, labels, [0, 1, 2]),
        lambda a: usl.TypiClust(k=5, kmeans_iter=5).fit(a, 5).indices_,
        lambda a: usl.KCenterGreedy().fit(a, 5).indices_,
    ):
        np.testing.assert_array_equal(f(m), f(x))


@pytest.mark.filterwarnings("ignore:usl_fast.select. the features' median row norm")
def test_torch_integer_tensors_are_accepted_like_numpy_integers(usl):
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).integers(0, 100, (200, 8))
    got = usl.select(torch.from_numpy(a), 10, k=5)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), usl.select(a, 10, k=5))
    np.testing.assert_array_equal(
        usl.knn(torch.from_numpy(a.astype(np.int32)), 4)[1].numpy(), usl.knn(a, 4)[1]
    )
    with pytest.raises(TypeError, match=r"`features` must be a real numeric array.*torch.bool"):
        usl.knn(torch.zeros((5, 2), dtype=torch.bool), 1)


@pytest.mark.parametrize("threads", [2**31, 2**64, 5000])
def test_threads_beyond_the_cap_are_an_error(usl, no_engine, threads):
    x = normal(100, 4).astype(np.float32)
    for call in (
        lambda: usl.knn(x, 3, threads=threads),
        lambda: usl.density(x, 3, threads=threads),
        lambda: usl.kmeans(x, 3, threads=threads),
        lambda: usl.select(x, 3, k=3, threads=threads),
        lambda: usl.range_count(x, 1.0, threads=threads),
        lambda: usl.TypiClust(k=3, threads=threads).fit(x, 3),
    ):
        with pytest.raises(ValueError) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(f"`threads` must be <= {_validate.MAX_THREADS} = max(1024, 4 x")
        assert f"(got threads={threads})" in msg


def seeded_calls(usl, x, seed):
    """Every consumer of a 64-bit ``seed`` (numpy's default_rng takes any size, the
    engine's k-means++ a uint64, torch's Generator up to 2**64 - 1)."""
    return [
        lambda: usl.kmeans(x, 3, init="k-means++", seed=seed, n_iter=3),
        lambda: usl.kmeans(x, 3, seed=seed, n_iter=3),
        lambda: usl.select(x, 3, k=3, seed=seed, kmeans_iter=3),
        lambda: usl.select(x, 3, k=3, kmeans_init="k-means++", seed=seed, kmeans_iter=3),
        lambda: usl.TypiClust(k=3, seed=seed).fit(x, 3).indices_,
        lambda: usl.ProbCover(seed=seed).fit(x, 3).indices_,
        lambda: usl.KCenterGreedy(seed=seed).fit(x, 3).indices_,
    ]


def random_baseline_calls(usl, x, seed):
    """The random baseline: numpy's legacy RandomState, 32-bit seeds."""
    return [
        lambda: usl.random_select(100, 3, seed=seed),
        lambda: usl.RandomSelect(seed=seed).fit(x, 3),
        lambda: usl.select(x, 3, method="random", seed=seed),
    ]


@pytest.mark.parametrize("seed", [2**32, 2**64 - 1])
def test_random_baseline_seeds_beyond_32_bits_are_an_error(usl, no_engine, seed):
    x = normal(100, 4).astype(np.float32)
    for call in random_baseline_calls(usl, x, seed):
        want = rf"`seed` must be <= 4294967295 = 2\*\*32 - 1\b.*\(got seed={seed}\)"
        with pytest.raises(ValueError, match=want):
            call()


def test_seeds_beyond_64_bits_are_an_error(usl, no_engine):
    x = normal(100, 4).astype(np.float32)
    for call in seeded_calls(usl, x, 2**64):
        want = rf"`seed` must be <= 18446744073709551615 = 2\*\*64 - 1 \(got seed={2**64}\)"
        with pytest.raises(ValueError, match=want):
            call()
    for call in seeded_calls(usl, x, -1) + random_baseline_calls(usl, x, -1):
        with pytest.raises(ValueError, match=r"`seed` must be >= 0 \(got seed=-1\)"):
            call()


def test_largest_seed_and_thread_count_work(usl):
    x = normal(300, 4).astype(np.float32)
    a = usl.kmeans(x, 3, init="k-means++", seed=2**32 - 1, n_iter=3)
    b = usl.kmeans(x, 3, init="k-means++", seed=2**32 - 1, n_iter=3, threads=1)
    np.testing.assert_array_equal(a.labels, b.labels)
    # 64-bit seeds, accepted before the 32-bit bound: every consumer runs, reproducibly.
    for seed in (2**32, 2**64 - 1):
        for call in seeded_calls(usl, x, seed):
            first, again = call(), call()
            first = first.labels if hasattr(first, "labels") else first
            again = again.labels if hasattr(again, "labels") else again
            np.testing.assert_array_equal(first, again)
    assert usl.random_select(100, 3, seed=2**32 - 1).shape == (3,)


def test_uslt_takes_64_bit_seeds(usl):
    torch = pytest.importorskip("torch")
    from usl_fast.uslt import USLT

    x = normal(120, 4).astype(np.float32)
    kw = dict(n_clusters=3, epochs=2, batch_size=32, n_neighbors=5, seed=2**64 - 1)
    a, b = USLT(**kw).fit(x), USLT(**kw).fit(x)  # torch's Generator takes up to 2**64 - 1
    np.testing.assert_array_equal(a.indices_, b.indices_)
    with pytest.raises(ValueError, match=r"`seed` must be <= 18446744073709551615 = 2\*\*64 - 1"):
        USLT(n_clusters=3, seed=2**64)


def test_horizon_num_beyond_int32_is_an_error(usl, no_engine):
    x = normal(100, 4).astype(np.float32)
    with pytest.raises(ValueError, match=r"`horizon_num` must be <= 2147483647 = 2\*\*31 - 1"):
        usl.regularizer(x, np.zeros(100, int), [0, 1], horizon_num=2**31)
    with pytest.raises(ValueError, match=r"`horizon_num` must be <= 2147483647"):
        usl.select(x, 3, k=3, horizon_num=2**40)


def test_thread_count_under_an_address_space_limit_is_not_fatal(tmp_path):
    # threads=5000 under a 3 GB limit killed the process ("libgomp: Thread creation
    # failed"): now the thread count is refused before any thread starts.
    code = textwrap.dedent(
        """
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))
        import numpy as np, usl_fast
        x = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
        try:
            usl_fast.knn(x, 5, threads=5000)
        except ValueError as e:
            print("ERR", e)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "ERR `threads` must be <=" in r.stdout and "(got threads=5000)" in r.stdout


# ------------------------------------------------------------------ item 10: the CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    np.save(d / "good.npy", x)
    (d / "random.npy").write_bytes(rng.bytes(5000))
    (d / "random.pt").write_bytes(rng.bytes(5000))
    (d / "random.npz").write_bytes(rng.bytes(5000))
    good = (d / "good.npy").read_bytes()
    (d / "truncated.npy").write_bytes(good[: len(good) // 2])
    np.save(d / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(d / "objects.npz", a=np.array([{"a": 1}], dtype=object))
    return d


CORRUPT = {
    "random.npy": "is not a valid .npy file: it does not start with the \\x93NUMPY signature",
    "random.pt": "is not a valid .pt file: torch.save writes a zip archive",
    "random.npz": "is not a valid .npz file",
    "truncated.npy": "is truncated: its header describes a float32 array of shape (1000, 8), "
    "32,128 bytes in all, but the file has 16,064 bytes",
    "objects.npy": "holds Python objects (dtype object), which usl-fast never loads",
    "objects.npz": "holds Python objects, which usl-fast never loads",
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_cli_corrupt_files_say_so_and_never_advise_unsafe_loading(files, tmp_path, name):
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    line = one_error_line(cli(["select", files / name, "-m", 5, "-o", tmp_path / "p.npy"], tmp_path))
    assert CORRUPT[name] in line, line
    for unsafe in ("allow_pickle", "weights_only", "pickle.load", "trust"):
        assert unsafe not in line, line
    assert not (tmp_path / "p.npy").exists()


def test_cli_a_pickle_that_runs_code_is_named_not_run(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for legacy in (False, True):
        path = tmp_path / f"evil{int(legacy)}.pt"
        torch.save(
            {"x": torch.zeros(3, 2), "e": Payload()},
            path,
            _use_new_zipfile_serialization=not legacy,
        )
        line = one_error_line(cli(["select", path, "-m", 2, "-o", tmp_path / "p.npy"], tmp_path))
        assert "unsupported GLOBAL" in line and "never Python objects" in line, line
        assert "weights_only" not in line and "safe_globals" not in line
        assert not marker.exists()


def test_cli_threads_beyond_the_cap(files, tmp_path):
    line = one_error_line(
        cli(["select", files / "good.npy", "-m", 5, "--threads", 5000, "-o", tmp_path / "p.npy"], tmp_path)
    )
    assert "`threads` must be <=" in line and "(got threads=5000)" in line


def test_cli_uslt_on_an_unavailable_cuda_device(files, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    line = one_error_line(
        cli(
            ["select", files / "good.npy", "-m", 5, "--method", "uslt", "--device", "cuda:0"]
            + ["-o", tmp_path / "p.npy"],
            tmp_path,
        )
    )
    assert "`device`='cuda:0' is not available" in line and "use device='cpu'" in line, line


def test_distributed_cli_error_line_is_one_write(tmp_path, monkeypatch):
    # The cause of the glued lines: print() makes two write(2) calls, the text and then
    # the newline (stderr writes through), so another rank's line could land between them.
    from usl_fast.distributed import __main__ as dmain

    writes = []

    class Err:
        def fileno(self):
            return 2

        def flush(self):
            pass

        def write(self, text):  # print() would come here
            writes.append(("write", text))

    monkeypatch.setattr(sys, "stderr", Err())
    monkeypatch.setattr(dmain.os, "write", lambda fd, data: writes.append((fd, data)))
    monkeypatch.chdir(tmp_path)
    assert dmain.main(["select", "nope.npy", "-m", "3", "-o", "o.npy"]) == 1
    prefix = "python -m usl_fast.distributed: rank"
    assert writes == [(2, f"{prefix} 0: error: FEATS.npy: no such file: nope.npy\n".encode())]


def test_distributed_cli_error_lines_are_whole_lines(tmp_path):
    # Several ranks' error lines on one stderr: each is written in one piece, so none is
    # glued to another ("...nope.npypython -m ...").
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "usl_fast.distributed", "select", "nope.npy", "-m", "3"]
            + ["-o", "o.npy"],
            cwd=tmp_path,
            env=dict(subprocess_env(), RANK=str(r)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(8)
    ]
    outs = [p.communicate(timeout=120)[1] for p in procs]
    for r, (p, err) in enumerate(zip(procs, outs)):
        assert p.returncode == 1
        assert err == f"python -m usl_fast.distributed: rank {r}: error: FEATS.npy: no such file: nope.npy\n"
    # and through one shared pipe, as torchrun's ranks write
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        ps = [subprocess.Popen([sys.executable, "-m", "usl_fast.distributed", "select",
                                "nope.npy", "-m", "3", "-o", "o.npy"],
                               env=dict(os.environ, RANK=str(r))) for r in range(8)]
        sys.exit(max(p.wait() for p in ps))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.splitlines()
    assert len(lines) == 8 and r.stderr.endswith("\n"), r.stderr
    for line in lines:
        assert line.startswith("python -m usl_fast.distributed: rank ") and line.endswith(
            "error: FEATS.npy: no such file: nope.npy"
        ), line
