"""The 16-bit filters' row images: the AVX2 int16 GEMM (csrc/cpu/gemm_avx2.cpp,
build_i16_image) and the AVX-512 bf16 and int16 ones (csrc/cpu/gemm_lowp.cpp,
build_lowp_image). The pair rounds of the self and bipartite kNN, and the rectangular
passes whose sides both span several tiles (query kNN, k-means assign, regularizer, range
counts), convert each row once per call instead of once per tile. A tile multiplied from
the images must be the per-tile product bit for bit, on every tile pair (same products,
same rel, the same float32 fallback for a tile whose rows the 16-bit format cannot
represent); the kNN and the rectangular passes built on them must equal the float32
kernel's; and the images' bytes are counted by the memory checks and their allocation
failing is a MemoryError."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_cli import subprocess_env

# The image kinds: (USL_FAST_ISA, USL_FAST_GEMM, the GEMM kind that must run, the float32
# GEMM of that ISA for the reference runs, a tiny row value, whether a tile holding such a
# row falls back to float32: out of the AVX2 int16 scale's range; subnormal, which bf16
# flushes to zero; the AVX-512 int16 kernel scales per pass, exactly, and keeps it).
KINDS = {
    "avx2i16": ("avx2", "avx2i16", 4, "avx2", "1e-30", 1),
    "avx512bf16": ("avx512", "avx512bf16", 5, "avx512", "1e-39", 1),
    "avx512vnni": ("avx512", "avx512vnni", 6, "avx512", "1e-39", 0),
}

# Runs on the GEMM kind argv[1]; prints "skip <kind>" where it cannot.
_IMAGES = r"""
import sys
import numpy as np
from usl_fast._backend import _cpu
kind, tiny_value, falls_back = int(sys.argv[1]), np.float32(sys.argv[2]), sys.argv[3] == "1"
if _cpu.gemm_kind() != kind:
    print("skip", _cpu.gemm_kind())
    raise SystemExit
rng = np.random.default_rng(11)
checked = fell_back = 0
dims = (64, 65, 127, 128, 511, 512, 513, 1030) + ((1, 2, 31, 33) if kind != 4 else ())
for d in dims:
    for m, n in ((1, 1), (7, 9), (8, 8), (33, 250), (256, 256), (255, 17)):
        if d > 600 and m * n > 5000:
            continue
        a = rng.standard_normal((m, d + 3)).astype(np.float32)[:, 1 : d + 1]
        b = rng.standard_normal((n, d)).astype(np.float32) * np.float32(3e-3)
        for tiny in (False, True):
            if tiny:  # a row all but at the centre: its scale is out of range
                a = a.copy()
                a[m // 2] = tiny_value
            center = (rng.standard_normal((1, d)) * 1e-6).astype(np.float32)
            if tiny:
                center[:] = 0.0
            want = np.full(m * n, 7.0, np.float32)
            got = np.full(m * n, 9.0, np.float32)
            rel_want = _cpu.gemm_tile(a, b, want, center)
            rel_got = _cpu.gemm_tile_images(a, b, got, center)
            assert rel_got == rel_want, (d, m, n, tiny, rel_got, rel_want)
            assert np.array_equal(got.view(np.int32), want.view(np.int32)), (d, m, n, tiny)
            checked += 1
            if tiny and falls_back:  # redone in float32: the float32 bound plus 2^-21
                v = float(_cpu.filter_rel(d)) + 2.0**-21
                f = np.float32(v)
                f = f if float(f) >= v else np.nextafter(f, np.float32(np.inf))
                assert rel_want == f, (d, m, n, rel_want, f)
                fell_back += 1
# Every tile pair of multi-tile images (later tiles' panels, exponents and kappas), with a
# row in a's second tile that the tiny value makes fall back where the kind does.
for d in (33 if kind != 4 else 64, 128, 600):
    a = rng.standard_normal((700, d)).astype(np.float32)
    b = (rng.standard_normal((600, d)) * 1e-2).astype(np.float32)
    a[300] = tiny_value
    center = np.zeros((1, d), np.float32)
    for ti in range(3):
        for tj in range(3):
            ra, rb = a[256 * ti : 256 * ti + 256], b[256 * tj : 256 * tj + 256]
            want = np.full(len(ra) * len(rb), 7.0, np.float32)
            got = np.full(len(ra) * len(rb), 9.0, np.float32)
            rel_want = _cpu.gemm_tile(ra, rb, want, center)
            rel_got = _cpu.gemm_tile_images(a, b, got, center, ti=ti, tj=tj)
            assert rel_got == rel_want, (d, ti, tj, rel_got, rel_want)
            assert np.array_equal(got.view(np.int32), want.view(np.int32)), (d, ti, tj)
            checked += 1
            fell_back += falls_back and ti == 1
# the images' size: about 2 d (+ 4) bytes a row, nothing where the GEMM converts per tile
assert _cpu.filter_image_bytes(1000, 128) >= 1000 * 2 * 128
assert _cpu.filter_image_bytes(1000, 128) < 1000 * (2 * 128 + 4) * 1.05 + 4096
if kind == 4:
    assert _cpu.filter_image_bytes(1000, 63) == 0 and _cpu.filter_image_bytes(1000, 16385) == 0
else:  # AVX-512: the passes' coordinates rounded up to 32
    assert _cpu.filter_image_bytes(1000, 33) >= 1000 * 2 * 64
    assert _cpu.filter_image_bytes(1000, 1030) >= 1000 * 2 * (512 + 512 + 32)
assert _cpu.filter_image_bytes(0, 128) == 0
print("ok", checked, fell_back)
"""

# The passes on the images against the float32 kernel's, saved by the parent: the kNN graph
# (symmetric pass with and without the sampled bounds, query pass of x against itself and
# against other queries, bipartite block), the density, a k-means assign to 300 centroids
# (two tiles), range counts and searches, a nearest-centre update and a whole selection
# (assign, regularizer). The rows come in +- pairs (magnitudes 10^-2 ..
# 10^2, so the engine's float64 column mean is exactly 0) and end with +- pairs of rows of
# norm ~1e-30 and ~1e-39: those lie all but at the centre; int16 cannot scale them and bf16
# flushes the subnormal ones, so their tiles run in float32.
_KNN = r"""
import sys, numpy as np, usl_fast
from usl_fast import _dispatch
from usl_fast._backend import _cpu
rng = np.random.default_rng(4)
parts = []
for d in (64, 200, 600):
    y = rng.standard_normal((530, d)).astype(np.float32)
    y *= (10.0 ** rng.uniform(-2, 2, (530, 1))).astype(np.float32)
    tiny = (rng.standard_normal((3, d)) * 1e-30).astype(np.float32)
    sub = (rng.standard_normal((3, d)) * 1e-39).astype(np.float32)
    x = np.vstack([y, -y, y[:40], -y[:40], tiny, -tiny, sub, -sub])  # duplicates too
    for k in (1, 9, 60):
        parts += list(usl_fast.knn(x, k, threads=2))
    parts.append(usl_fast.density(x, 9, threads=2))
    a, b = np.ascontiguousarray(x[:700]), np.ascontiguousarray(x[700:])
    parts += list(_dispatch.knn_cross(a, b, 9, None, None, 2))
    parts += list(_dispatch.knn(x, 9, None, 2, False, 0.0, 0.0))  # query pass
    parts += list(_dispatch.knn(x, 9, np.ascontiguousarray(x[::2] * 0.5), 2, False))
    cent = np.ascontiguousarray(x[:300] + np.float32(0.01))
    parts += list(_dispatch.assign(x, cent, 2))
    radius = float(np.median(parts[-1]))
    parts.append(_dispatch.range_count(x, np.ascontiguousarray(x[::3]), radius, 2, False))
    parts += list(_dispatch.range_search(x, np.ascontiguousarray(x[::3]), radius, 2, False))
    mind, arg = np.full(len(x), np.inf, np.float32), np.zeros(len(x), np.int64)
    _dispatch.min_update(x, np.ascontiguousarray(x[::4] * 0.9), 0, mind, arg, 2)
    parts += [mind, arg, *usl_fast.knn(x, 100, threads=2)]  # k = 100: the sampled pass
    info = usl_fast.select(x, 300, threads=2, return_info=True)
    parts += [np.asarray(info.indices), np.asarray(info.scores)]
np.savez(sys.argv[1], np.array([_cpu.gemm_kind()]), *parts)
"""


def _run(script, kind, *args, tmp_path, gemm=None):
    isa, default_gemm = KINDS[kind][:2]
    env = dict(subprocess_env(), USL_FAST_ISA=isa, USL_FAST_GEMM=gemm or default_gemm)
    r = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_tiles_from_images_are_the_per_tile_products(tmp_path, kind):
    _, _, number, _, tiny, falls_back = KINDS[kind]
    out = _run(_IMAGES, kind, number, tiny, falls_back, tmp_path=tmp_path)
    if out[0] == "skip":
        pytest.skip(f"this CPU or build runs GEMM kind {out[1]}, not {kind}")
    assert out[0] == "ok" and int(out[2]) >= falls_back, out  # the fallback was exercised


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_passes_on_images_equal_the_float32_kernel(tmp_path, kind):
    _, _, number, float32_gemm, _, _ = KINDS[kind]
    got, want = tmp_path / "images.npz", tmp_path / "f32.npz"
    _run(_KNN, kind, got, tmp_path=tmp_path)
    _run(_KNN, kind, want, tmp_path=tmp_path, gemm=float32_gemm)
    g, w = np.load(got), np.load(want)
    if int(g["arr_0"][0]) != number or int(w["arr_0"][0]) not in (1, 3):
        pytest.skip(f"this CPU or build has no {kind} kernels")
    assert len(g.files) == len(w.files)
    for name in g.files[1:]:
        assert np.array_equal(g[name].view(np.uint8), w[name].view(np.uint8)), name


# The memory check counts the images, and an allocation failure of the images is a
# MemoryError naming their bytes, after which the next call runs.
_MEMORY = r"""
import sys
import numpy as np, pytest, usl_fast
from usl_fast import _dispatch
from usl_fast._backend import _cpu
kind = int(sys.argv[1])
if _cpu.gemm_kind() != kind:
    print("skip", _cpu.gemm_kind())
    raise SystemExit
n, d, k = 3000, 96, 20
rng = np.random.default_rng(2)
x = rng.standard_normal((n, d)).astype(np.float32)
seen = []
real = _dispatch.check_memory
_dispatch.check_memory = lambda nbytes, what, *a, **kw: seen.append(nbytes) or real(nbytes, what, *a, **kw)
ref = usl_fast.knn(x, k, threads=2, _sample_hits=0.0)
usl_fast.knn(x, k, threads=2, _sample_hits=0.0, _max_reservoir_bytes=0)  # query pass
usl_fast.knn(x[:256], k, threads=2, _sample_hits=0.0, _max_reservoir_bytes=0)  # one tile
usl_fast.knn(x[:257], k, threads=2, _sample_hits=0.0, _max_reservoir_bytes=0)  # two
image = _cpu.filter_image_bytes(n, d)
assert image > 2 * n * d
# Both passes hold one image of x (the query pass: x against itself, one array)...
assert abs((seen[0] - seen[1]) - (n * _dispatch.reservoir_bytes_per_row(k) + 4.0 * n
                                  - _dispatch.DEDUP_DETECT_BYTES_PER_ROW * n)) < 1.0, seen
# ... and a query pass of one row tile holds none: its rows meet one tile, converted there.
lists = lambda r: r * k * 12.0 + _dispatch.DEDUP_DETECT_BYTES_PER_ROW * r + 8.0 * r
assert seen[2] == lists(256), seen
assert seen[3] == lists(257) + _cpu.filter_image_bytes(257, d), seen
# The rectangular passes count both sides' images where both span two tiles or more.
img = lambda r: _cpu.filter_image_bytes(r, d)
for K in (256, 300):
    cent = np.ascontiguousarray(x[:K] + np.float32(0.5))
    both = img(n) + img(K) if K > 256 else 0.0
    del seen[:]
    _dispatch.assign(x, cent, 2)
    assert seen == [8.0 * n + 8.0 * (n + K) + both], (K, seen)
    del seen[:]
    _dispatch.min_update(x, cent, 0, np.full(n, np.inf, np.float32), None, 2)
    assert seen == [8.0 * (n + K) + both], (K, seen)
    del seen[:]
    _dispatch.range_count(cent, x, 1.0, 2, False)
    assert seen == [8.0 * K + 8.0 * (K + n) + both], (K, seen)
# What the symmetric pass allocates before its images (sample pass off): the norms, the
# reservoirs (count, threshold) and the centred norms.
cap = 2 * k + 16
before = 4 * n + 8 * cap * n + 4 * n + 4 * n + 4 * n
if kind == 4:  # int16: 8-row panels of coordinate pairs, 4-byte words, 32-byte aligned
    words = ((n + 7) // 8 * 8 * ((d + 1) // 2) + 8) * 4
else:  # AVX-512: 16-row panels, d rounded up to 32, 64-byte aligned
    words = ((n + 15) // 16 * 16 * ((d + 31) // 32 * 32) + 32) * 2
_cpu.set_alloc_limit(before + words - 1)
try:
    with pytest.raises(MemoryError, match=f"\\({words} bytes\\)"):
        usl_fast.knn(x, k, threads=2, _sample_hits=0.0)
finally:
    _cpu.set_alloc_limit(-1)
again = usl_fast.knn(x, k, threads=2, _sample_hits=0.0)
assert np.array_equal(again[1], ref[1]) and np.array_equal(again[0], ref[0])
print("ok")
"""


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_images_are_counted_and_their_allocation_failure_is_a_memoryerror(tmp_path, kind):
    out = _run(_MEMORY, kind, KINDS[kind][2], tmp_path=tmp_path)
    if out[0] == "skip":
        pytest.skip(f"this CPU or build runs GEMM kind {out[1]}, not {kind}")
    assert out == ["ok"]
