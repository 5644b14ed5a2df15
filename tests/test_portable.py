"""The portable torch back end (usl_fast.backends.portable) against the C++ engine, bit for bit, on
CPU tensors: the exact distance, kNN lists, densities, k-means sums and loops, the
regularizer's flavours, and select() end to end (USL_FAST_BACKEND=portable routes CPU
tensors through it). The same comparisons on a CUDA tensor run only where a GPU is."""

from __future__ import annotations

import numpy as np
import pytest

import usl_fast
from usl_fast import _dispatch

torch = pytest.importorskip("torch")
from usl_fast.backends import portable as P  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def unit(n, d, seed=0, dups=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if dups:
        x[7] = x[n // 2]
        x[8] = x[n // 2]
    return x


@pytest.mark.parametrize("d", [1, 7, 8, 20, 129])
@pytest.mark.parametrize("scale", [1e-40, 1e-30, 1.0, 1e15])
def test_exact_l2_is_the_engines(d, scale):
    rng = np.random.default_rng(d)
    a = (rng.standard_normal((300, d)) * scale).astype(np.float32)
    b = (rng.standard_normal((300, d)) * scale).astype(np.float32)
    got = P.exact_l2(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(got, _dispatch.exact_l2_pairs(a, b))


@pytest.mark.parametrize("k", [1, 5, 37])
def test_knn_lists_are_the_engines(k):
    x = unit(1300, 20)
    d0, i0 = usl_fast.knn(x, k)
    # small blocks: several row and column blocks, thresholds carried across them
    d1, i1 = P.knn(torch.from_numpy(x), k, block_rows=256, block_cols=300)
    np.testing.assert_array_equal(d1.numpy(), d0)
    np.testing.assert_array_equal(i1.numpy(), i0)
    q = unit(200, 20, seed=3, dups=False)
    d0, i0 = usl_fast.knn(x, k, q)
    d1, i1 = P.knn(torch.from_numpy(x), k, torch.from_numpy(q), block_cols=512)
    np.testing.assert_array_equal(d1.numpy(), d0)
    np.testing.assert_array_equal(i1.numpy(), i0)


def test_density_and_k_equal_n_minus_one():
    x = unit(400, 9)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(P.density(t, 30, block_cols=128).numpy(), usl_fast.density(x, 30))
    np.testing.assert_array_equal(P.density(t, 399).numpy(), usl_fast.density(x, 399))


def test_segment_sum_and_lloyd_are_the_engines():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1500, 11)) * 10.0 ** rng.integers(-5, 5, (1500, 1))).astype(
        np.float32
    )
    lab = rng.integers(0, 13, 1500).astype(np.int32)
    s0, c0 = _dispatch.segment_sum(x, lab, 13, 2)
    s1, c1 = P.segment_sum(torch.from_numpy(x), torch.from_numpy(lab).long(), 13)
    np.testing.assert_array_equal(s1.numpy(), s0)
    np.testing.assert_array_equal(c1.numpy(), c0)
    y = unit(1500, 12)
    init = np.vstack([y[rng.permutation(1500)[:20]], np.full((2, 12), 9.0, np.float32)])
    km = usl_fast.kmeans(y, 22, n_iter=60, init=init)  # two clusters die at once
    c = torch.from_numpy(init.copy())
    lab1, cnt1, inertia1, n_run1 = P.lloyd(torch.from_numpy(y), c, 60)
    np.testing.assert_array_equal(lab1.numpy(), km.labels)
    np.testing.assert_array_equal(c.numpy(), km.centroids)
    np.testing.assert_array_equal(cnt1.numpy(), km.counts)
    np.testing.assert_array_equal(inertia1, km.inertia)
    assert n_run1 == km.n_iter_run and (km.counts == 0).sum() >= 2


@pytest.mark.parametrize(
    "alpha,hd,hn,mask_zero",
    [(0.5, 4.0, 0, False), (1.0, 1.0, 0, False), (1.5, np.inf, 16, True), (1.0, np.inf, 8, False)],
)
def test_regularizer_flavours_are_the_engines(alpha, hd, hn, mask_zero):
    x = unit(900, 16)
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 30, 900).astype(np.int32)
    picks = np.concatenate([[7, 8], rng.permutation(900)[:30]])  # a duplicate pair: D = 0
    tag = np.concatenate([[-1, 3], np.arange(30)]).astype(np.int32)
    r0 = _dispatch.regularizer(x, x[picks], lab, tag, alpha, hd, hn, mask_zero, 2)
    r1 = P.regularizer(
        torch.from_numpy(x),
        torch.from_numpy(x[picks]),
        torch.from_numpy(lab).long(),
        torch.from_numpy(tag).long(),
        alpha,
        hd,
        hn,
        mask_zero,
        block_rows=100,
    )
    if alpha in (0.5, 1.0):
        np.testing.assert_array_equal(r1.numpy(), r0)
    else:  # torch.pow against the C library's pow: the last bit may differ
        np.testing.assert_allclose(r1.numpy(), r0, rtol=1e-14)


@pytest.mark.parametrize(
    "kw",
    [
        dict(k=10, kmeans_iter=30),
        dict(defaults="imagenet", k=8, kmeans_iter=30),
        dict(defaults="imagenet-clip", k=12, kmeans_iter=20),
        dict(defaults="cifar100", k=10, labeled=[3, 5, 900]),
        dict(k=10, kmeans_iter=10, normalize=True),
    ],
)
def test_select_through_the_portable_path_is_the_engines(monkeypatch, kw):
    x = unit(1200, 24)
    if kw.get("normalize"):
        x = x * np.linspace(0.5, 3.0, 1200, dtype=np.float32)[:, None]
    t = torch.from_numpy(x)
    ref = usl_fast.select(t, 20, return_info=True, **kw)
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    got = usl_fast.select(t, 20, return_info=True, **kw)
    assert got.params["backend"] == "portable"
    assert isinstance(got.indices, torch.Tensor)
    for f in ("indices", "labels", "density", "scores"):
        np.testing.assert_array_equal(getattr(got, f).numpy(), getattr(ref, f).numpy())
    assert got.n_filled == ref.n_filled


def test_device_path_checks_its_input(monkeypatch):
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    x = torch.from_numpy(unit(50, 4))
    x[17, 2] = float("nan")
    with pytest.raises(ValueError, match="row 17"):
        usl_fast.select(x, 3, k=5)
    with pytest.raises(TypeError, match="must be a real numeric array"):
        usl_fast.select(torch.ones((10, 3), dtype=torch.bool), 3, k=5)
    # integers are accepted, as on the CPU path (README: "or integers")
    a = np.random.default_rng(0).integers(0, 9, (60, 3))
    got = usl_fast.select(torch.from_numpy(a), 3, k=5, weight=0.0)
    np.testing.assert_array_equal(got.numpy(), usl_fast.select(a, 3, k=5, weight=0.0))
    with pytest.raises(ValueError, match="kmeans_init"):
        usl_fast.select(torch.from_numpy(unit(50, 4)), 3, k=5, kmeans_init="k-means++")
    with pytest.raises(ValueError, match="`m`"):
        usl_fast.select(torch.from_numpy(unit(50, 4)), 51, k=5)


@cuda
def test_select_on_a_cuda_tensor_is_the_cpu_engines():
    x = unit(3000, 32)
    ref = usl_fast.select(x, 40, k=20, kmeans_iter=50)
    got = usl_fast.select(torch.from_numpy(x).cuda(), 40, k=20, kmeans_iter=50)
    assert got.device.type == "cuda"
    np.testing.assert_array_equal(got.cpu().numpy(), ref)
    ref = usl_fast.select(x, 40, defaults="imagenet", k=20)
    got = usl_fast.select(torch.from_numpy(x).cuda(), 40, defaults="imagenet", k=20)
    np.testing.assert_array_equal(got.cpu().numpy(), ref)


def test_public_functions_route_device_tensors_to_the_portable_path(monkeypatch):
    x = unit(700, 10)
    t = torch.from_numpy(x)
    d0, i0 = usl_fast.knn(t, 9)
    dens0 = usl_fast.density(t, 25)
    km0 = usl_fast.kmeans(t, 12, n_iter=40, seed=4)
    lab0 = km0.labels
    rs0 = usl_fast.regularized_select(t, dens0, lab0, 12, defaults="imagenet")
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    d1, i1 = usl_fast.knn(t, 9)
    np.testing.assert_array_equal(d1.numpy(), d0.numpy())
    np.testing.assert_array_equal(i1.numpy(), i0.numpy())
    np.testing.assert_array_equal(usl_fast.density(t, 25).numpy(), dens0.numpy())
    km1 = usl_fast.kmeans(t, 12, n_iter=40, seed=4)
    for a, b in zip(km1[:4], km0[:4]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert km1.n_iter_run == km0.n_iter_run
    km2 = usl_fast.kmeans(t, 12, n_iter=40, init=t[:12])
    np.testing.assert_array_equal(
        km2.labels.numpy(), usl_fast.kmeans(x, 12, n_iter=40, init=x[:12]).labels
    )
    rs1 = usl_fast.regularized_select(t, dens0, lab0, 12, defaults="imagenet")
    assert isinstance(rs1, torch.Tensor)
    np.testing.assert_array_equal(rs1.numpy(), rs0.numpy())
    with pytest.raises(ValueError, match="k-means\\+\\+"):
        usl_fast.kmeans(t, 12, init="k-means++")


def test_the_cuda_kernels_module_loads_without_a_gpu():
    # Built when asked (USL_FAST_CUDA=ON; tools/build_wheels.sh asks wherever nvcc is, and
    # CI's machine has nvcc and no GPU): the module must import and report the devices it
    # sees instead of failing. A build that records the kernels must be able to load them.
    # (tools/check_builds.sh builds them strictly wherever nvcc is, and fails if it cannot.)
    try:
        recorded = usl_fast.build_info()["cuda"]
    except RuntimeError:  # an engine copied into a source checkout records nothing
        recorded = None
    if recorded is False:
        pytest.skip("built without the CUDA kernels (USL_FAST_CUDA=ON builds them)")
    try:
        from usl_fast import _cuda
    except ImportError:
        if recorded:
            raise
        pytest.skip("built without the CUDA kernels (USL_FAST_CUDA=ON builds them)")
    assert _cuda.device_count() == torch.cuda.device_count()


@cuda
@pytest.mark.parametrize("backend", ["portable", "cuda"])
def test_every_step_on_the_gpu_is_the_cpu_engines(monkeypatch, backend):
    if backend == "cuda":
        monkeypatch.setenv("USL_FAST_BACKEND", "cuda")
    x = unit(2500, 40)
    t = torch.from_numpy(x).cuda()
    d0, i0 = usl_fast.knn(x, 17)
    d1, i1 = usl_fast.knn(t, 17)
    np.testing.assert_array_equal(d1.cpu().numpy(), d0)
    np.testing.assert_array_equal(i1.cpu().numpy(), i0)
    np.testing.assert_array_equal(usl_fast.density(t, 50).cpu().numpy(), usl_fast.density(x, 50))
    km0 = usl_fast.kmeans(x, 30, n_iter=40, seed=2)
    km1 = usl_fast.kmeans(t, 30, n_iter=40, seed=2)
    np.testing.assert_array_equal(km1.labels.cpu().numpy(), km0.labels)
    np.testing.assert_array_equal(km1.centroids.cpu().numpy(), km0.centroids)
    for kw in (dict(k=20), dict(defaults="imagenet", k=20), dict(k=20, labeled=[1, 2, 3])):
        ref = usl_fast.select(x, 30, **kw)
        got = usl_fast.select(t, 30, **kw)
        assert got.device.type == "cuda"
        np.testing.assert_array_equal(got.cpu().numpy(), ref)


def test_a_global_low_precision_matmul_setting_changes_nothing(monkeypatch):
    # Training scripts often switch float32 products to TF32 / bf16; the filter's bound is
    # float32's, so the portable path forces full products for itself and restores the
    # setting after.
    x = unit(900, 16)
    ref = usl_fast.knn(x, 10)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        d1, i1 = P.knn(torch.from_numpy(x), 10)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(d1.numpy(), ref[0])
    np.testing.assert_array_equal(i1.numpy(), ref[1])


def test_device_functions_take_host_arguments_and_check_tensors(monkeypatch):
    x = unit(400, 8)
    t = torch.from_numpy(x)
    dens = usl_fast.density(x, 20)
    km = usl_fast.kmeans(x, 9, n_iter=20, seed=1)
    ref = usl_fast.regularized_select(x, dens, km.labels, 9)
    monkeypatch.setenv("USL_FAST_BACKEND", "portable")
    # numpy densities and labels with a device tensor; numpy init and queries
    got = usl_fast.regularized_select(t, dens, km.labels, 9)
    np.testing.assert_array_equal(got.numpy(), ref)
    km2 = usl_fast.kmeans(t, 9, n_iter=20, init=x[:9])
    np.testing.assert_array_equal(
        km2.labels.numpy(), usl_fast.kmeans(x, 9, n_iter=20, init=x[:9]).labels
    )
    d, i = usl_fast.knn(t, 3, x[:5])
    np.testing.assert_array_equal(i.numpy(), usl_fast.knn(x, 3, x[:5])[1])
    with pytest.raises(ValueError, match="threads"):
        usl_fast.density(t, 20, threads=0)
    # the module's own functions refuse what they would misread
    with pytest.raises(TypeError, match="float32"):
        P.knn(t.double(), 3)
    with pytest.raises(ValueError, match="contiguous"):
        P.knn(t[:, ::2], 3)
    with pytest.raises(ValueError, match="k must be"):
        P.knn(t, 401)


def test_small_temporary_budgets_change_nothing(monkeypatch):
    # The exact evaluation steps and the input check are sized by _TEMP_BYTES; with a tiny
    # budget (one row a step, duplicate groups making candidate lists long) the results and
    # the errors are the same.
    monkeypatch.setattr(P, "_TEMP_BYTES", 4096)
    x = unit(600, 12)
    x[100:160] = x[5]  # a duplicate group: every member is a candidate of every other
    d0, i0 = usl_fast.knn(x, 20)
    d1, i1 = P.knn(torch.from_numpy(x), 20, block_rows=128, block_cols=256)
    np.testing.assert_array_equal(d1.numpy(), d0)
    np.testing.assert_array_equal(i1.numpy(), i0)
    y = torch.from_numpy(unit(300, 12))
    y[250, 3] = float("inf")
    with pytest.raises(ValueError, match="row 250"):
        P.as_device_features(y)
    y[250, 3] = 0.0
    y[260, 0] = 2.0**63
    with pytest.raises(ValueError, match="row 260"):
        P.as_device_features(y)
