"""Shared fixtures and data generators for the usl_fast tests.

The tests run against the INSTALLED package: `python -m pytest` puts the repository root
on sys.path, where usl_fast/ has no compiled _cpu module unless built in place, so the
root is dropped from sys.path in that case."""

from __future__ import annotations

import importlib
import pathlib
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _in_tree_is_built() -> bool:
    pkg = ROOT / "usl_fast"
    return any(pkg.glob("_cpu*.so")) or any(pkg.glob("_cpu*.pyd"))


if not _in_tree_is_built():
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT]
    for _name in [m for m in sys.modules if m == "usl_fast" or m.startswith("usl_fast.")]:
        del sys.modules[_name]


def _import_usl_fast(attempts: int = 30):
    # Another process may be re-installing the package: retry for a while.
    for i in range(attempts):
        try:
            return importlib.import_module("usl_fast")
        except ImportError:
            if i == attempts - 1:
                raise
            for _name in [m for m in sys.modules if m == "usl_fast" or m.startswith("usl_fast.")]:
                del sys.modules[_name]
            time.sleep(1.0)


usl_fast = _import_usl_fast()


# --------------------------------------------------------------------------- generators


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32 rows uniform on the unit sphere (normalised in float64, then cast)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def blobs(
    n_per: int, n_blobs: int, d: int, seed: int, spread: float = 0.02, scale: float = 1.0
) -> tuple:
    """Well-separated Gaussian blobs: (x float32 (n_per * n_blobs, d), true blob ids,
    blob centres). Rows are shuffled so that blobs straddle tile boundaries. Centred
    near the origin: the expanded-form float32 distance ||x||^2 + ||c||^2 - 2 x.c loses
    about eps * ||x||^2, which must stay far below the gaps between candidate centroids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, d)) * scale
    ids = np.repeat(np.arange(n_blobs), n_per)
    x = centres[ids] + spread * rng.standard_normal((ids.size, d))
    perm = rng.permutation(ids.size)
    return x[perm].astype(np.float32), ids[perm], centres


def unit_blobs(n: int, d: int, n_blobs: int, seed: int, spread: float = 0.08) -> np.ndarray:
    """Unit vectors clustered around n_blobs random directions (the paper's setting:
    L2-normalised features with cluster structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_blobs, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, n_blobs, n)] + spread * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def sparse_cluster_labels(x: np.ndarray, n_used: int, n_clusters: int, seed: int) -> np.ndarray:
    """Spatially coherent labels (nearest of n_used random points) whose ids are spread
    over [0, n_clusters), so some cluster ids are empty and skipped by the selection. The
    ids 0 and 1 are always skipped when n_clusters >= n_used + 2, so that pick POSITION and
    cluster id differ from the start."""
    rng = np.random.default_rng(seed + 10_000)
    from oracles import sqdist  # tests/ is on sys.path (rootdir conftest)

    centres = x[rng.choice(x.shape[0], n_used, replace=False)]
    near = np.argmin(sqdist(x, centres), axis=1)
    pool = np.arange(2, n_clusters) if n_clusters >= n_used + 2 else np.arange(n_clusters)
    ids = np.sort(rng.choice(pool, n_used, replace=False))
    return ids[near].astype(np.int64)


@pytest.fixture(scope="session")
def usl():
    return usl_fast


@pytest.fixture(scope="session")
def make_unit():
    return unit_vectors


@pytest.fixture(scope="session")
def make_blobs():
    return blobs


@pytest.fixture(scope="session")
def make_unit_blobs():
    return unit_blobs


@pytest.fixture(scope="session")
def make_sparse_labels():
    return sparse_cluster_labels


@pytest.fixture(scope="module")
def feats(request) -> np.ndarray:
    """The CLI tests' data: a few blobs on the unit sphere, clusters a selection can
    actually find; N x D rows from the requesting test module."""
    n, d = request.module.N, request.module.D
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((6, d))
    x = centers[rng.integers(0, 6, n)] + 0.4 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture
def npy(tmp_path, feats: np.ndarray):
    """``feats`` saved as tmp_path / "feats.npy"."""
    p = tmp_path / "feats.npy"
    np.save(p, feats)
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a test module (restored afterwards): its tensors are tiny,
    and on a busy 2-core machine OpenMP barriers make every small op ~50x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def no_engine(monkeypatch):
    """Replace every entry point of the compiled engine by one that fails the test: an
    error raised while this is active was raised before any work was done."""
    calls = []

    def make(name):
        def boom(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"engine function {name!r} called before validation finished")

        return boom

    # Queries that do no work stay: the thread count, the tile GEMM's kind and the size of
    # its row images are read by the memory pre-check that runs before every op.
    queries = {
        "max_threads",
        "gemm_kind",
        "active_isa",
        "reservoir_bytes_per_row",
        "filter_image_bytes",
    }
    for name in dir(usl_fast._cpu):
        if name.startswith("_") or name in queries:
            continue
        if callable(getattr(usl_fast._cpu, name)):
            monkeypatch.setattr(usl_fast._cpu, name, make(name))
    return calls
