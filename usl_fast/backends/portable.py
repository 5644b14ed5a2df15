"""The portable back end: USL from torch operations, on whatever device the tensor lives
(CUDA, ROCm, MPS or CPU), with the C++ engine's definitions, so that its results are the
engine's bit for bit.

- The distance is the engine's ``exact_l2`` (docs/engine.md): the float32 difference of each
  coordinate, squared in float64 into eight lanes (lane l sums the coordinates t with
  t % 8 == l, in ascending t), the lanes combined as ((0+1)+(2+3))+((4+5)+(6+7)), rounded
  once to float32. Here the lanes are a (.., 8) float64 tensor and the coordinates a loop
  of d / 8 additions, so every sum has the engine's order.
- A float32 matrix product is only a filter (the engine's rigorous bound, any summation
  order): per row block, it decides which columns can be among a row's k nearest, those
  are evaluated exactly, and keys (distance bits << 32 | index) are merged with
  ``torch.topk`` on integers: ties go to the lower index, as in the engine.
- k-means sums are float64 in ascending row order per cluster: step r adds the r-th
  member of every cluster at once (distinct clusters, so no two additions meet).
- The regularizer sums its terms in the engine's order (ascending pick, or ascending
  (distance, pick) for the top-h flavour); D^-alpha is 1/sqrt(D) for alpha 0.5 and 1/D for
  alpha 1 (every preset), correctly rounded here and in the engine (on CPU tensors the
  square root is numpy's: torch's CPU one is not correctly rounded); any other alpha uses
  torch.pow, which may differ from the engine's C library pow in the last bit.
- float64 is required on the device (so not Apple MPS).

Per-row bookkeeping between the steps (densities, labels, scores, the per-cluster arg-max)
is done on the host by the same code as the CPU path (``_pipeline._pick_rounds``); the
O(n^2 d), O(n K d) and O(n m d) work runs on the tensor's device. Memory on the device
beyond the features, per step: a few ``block_rows`` x ``block_cols`` float32 filter tiles
(4,096 x 32,768 on a GPU: 512 MiB each), the exact evaluation's float64 temporaries (within
``_TEMP_BYTES``, 256 MiB), and a row block's (rows, m) distances in the regularizer. The
filter's products are forced to full float32 (``_IeeeMatmul``).

When asked for (opt-in, see ``backends.resolve``) and with a build that has the CUDA kernels
(usl_fast._cuda, compiled when nvcc is found), ``backends.resolve`` hands those kernels in (``kernels=``): the
exact distances of the refine step and the regularizer and the k-means sums then run as
CUDA kernels on the same definitions (the shared usl_fast/l2.hpp).

This module has been tested on CPU tensors only (against the engine, bit for bit); neither
it nor the CUDA kernels have run on a GPU.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _dispatch
from .._validate import unit_rows
from ._rows import KMeansResult, Rows

#: This back end's name (``backends.resolve``).
NAME = "portable"

_LANES = 8
_INT64_MAX = (1 << 63) - 1
#: Bytes of float64 temporaries one exact-distance step may allocate on the device.
_TEMP_BYTES = 256 << 20


def _torch():
    import torch

    return torch


def _check_rows(t, name: str) -> None:
    """The module's functions take float32 tensors with contiguous rows (what
    ``as_device_features`` returns); anything else is an error, never a silent misread."""
    torch = _torch()
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim != 2:
        raise TypeError(
            f"usl_fast.backends.portable: `{name}` must be a 2-D float32 torch tensor (got "
            f"{type(t).__name__} {getattr(t, 'dtype', '')}); usl_fast.backends.portable."
            "as_device_features converts and checks one"
        )
    if not t.is_contiguous():
        raise ValueError(
            f"usl_fast.backends.portable: `{name}` must be contiguous (use .contiguous())"
        )


def _kernels(t, kernels):
    """The CUDA kernels handed in (``backends.resolve``), for a tensor on a CUDA device;
    else None (torch operations)."""
    return kernels if kernels is not None and t.device.type == "cuda" else None


def _stream(t) -> int:
    return _torch().cuda.current_stream(t.device).cuda_stream


def filter_rel(d: int) -> float:
    return float(np.float32(d + 16) * np.float32(2.0**-23))


def filter_abs(d: int) -> float:
    return float(np.float32(16 * d + 64) * np.float32(2.0**-126))


def exact_l2(a, b):
    """exact_l2 of the rows of ``a`` and ``b`` (broadcast over leading dimensions), float32,
    the engine's bits."""
    torch = _torch()
    diff = (a - b).to(torch.float64)  # one float32 subtraction, then exact in float64
    sq = diff * diff
    d = sq.shape[-1]
    full = d - d % _LANES
    lanes = torch.zeros(sq.shape[:-1] + (_LANES,), dtype=torch.float64, device=sq.device)
    for t in range(0, full, _LANES):
        lanes = lanes + sq[..., t : t + _LANES]
    if full < d:
        tail = torch.zeros_like(lanes)
        tail[..., : d - full] = sq[..., full:]
        lanes = lanes + tail  # x + 0.0 == x: the lanes past the tail are unchanged
    s = lanes.unbind(-1)
    total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    return total.to(torch.float32)


def row_norms(x):
    return exact_l2(x, x.new_zeros(()))


class _IeeeMatmul:
    """Full float32 products inside: the filter's error bound is float32's; a TF32 (or
    bf16) product, which a training script may have switched on globally, would break it
    and drop true neighbours. The setting is restored on exit. (torch >= 2.9 has per-backend
    ``fp32_precision`` settings, which must not be mixed with the older API.)"""

    def __enter__(self):
        torch = _torch()
        self.new = [
            b
            for b in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
            if b is not None and hasattr(b, "fp32_precision")
        ]
        if self.new:
            self.saved = [b.fp32_precision for b in self.new]
            for b in self.new:
                b.fp32_precision = "ieee"
        else:
            self.saved = (
                torch.get_float32_matmul_precision(),
                torch.backends.cuda.matmul.allow_tf32,
            )
            torch.set_float32_matmul_precision("highest")
            torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        torch = _torch()
        if self.new:
            for b, v in zip(self.new, self.saved):
                b.fp32_precision = v
        else:
            torch.set_float32_matmul_precision(self.saved[0])
            torch.backends.cuda.matmul.allow_tf32 = self.saved[1]
        return False


def _round_up_f32(v64):
    """The smallest float32 >= each float64 value."""
    torch = _torch()
    f = v64.to(torch.float32)
    inf = torch.tensor(float("inf"), dtype=torch.float32, device=f.device)
    return torch.where(f.to(torch.float64) < v64, torch.nextafter(f, inf), f)


def _keys(dist, idx):
    """int64 keys ordering (distance, index): distance bits high (non-negative floats order
    like their bits), index low."""
    torch = _torch()
    return (dist.contiguous().view(torch.int32).to(torch.int64) << 32) | idx.to(torch.int64)


def _key_dist(keys):
    torch = _torch()
    return (keys >> 32).to(torch.int32).view(torch.float32)


def topk_keys(
    q,
    base,
    k: int,
    *,
    block_rows: Optional[int] = None,
    block_cols: Optional[int] = None,
    q_norms=None,
    b_norms=None,
    kernels=None,
):
    """(rows of q, k) int64 keys of the k nearest rows of ``base`` by exact distance,
    ascending; _INT64_MAX past the base's size. Blocks default to 1,024 x 4,096 on a CPU
    and 4,096 x 32,768 on a GPU (a few float32 tiles of that size at a time)."""
    torch = _torch()
    _check_rows(q, "queries")
    _check_rows(base, "features")
    if q.shape[1] != base.shape[1] or q.device != base.device:
        raise ValueError(
            "usl_fast.backends.portable: queries and features: same dimension and device"
        )
    if not 1 <= k <= base.shape[0]:
        raise ValueError(f"usl_fast.backends.portable: k must be in [1, {base.shape[0]}] (got {k})")
    gpu = q.device.type != "cpu"
    block_rows = block_rows or (4096 if gpu else 1024)
    block_cols = block_cols or (32768 if gpu else 4096)
    n_q, d = q.shape
    n_b = base.shape[0]
    dev = q.device
    rel, abs_ = filter_rel(d), filter_abs(d)
    qn = row_norms(q) if q_norms is None else q_norms
    bn = row_norms(base) if b_norms is None else b_norms
    out = torch.empty((n_q, k), dtype=torch.int64, device=dev)
    kern = _kernels(q, kernels)
    with _IeeeMatmul():  # once for the whole search: the filter needs full float32 products
        for r0 in range(0, n_q, block_rows):
            r1 = min(n_q, r0 + block_rows)
            xr, rn = q[r0:r1], qn[r0:r1]
            run = torch.full((r1 - r0, k), _INT64_MAX, dtype=torch.int64, device=dev)
            for c0 in range(0, n_b, block_cols):
                c1 = min(n_b, c0 + block_cols)
                ip = xr @ base[c0:c1].T
                s = rn[:, None] + bn[None, c0:c1]
                e = s - 2.0 * ip
                lower = e - rel * s
                # the row's threshold: its k-th exact distance so far, and the k-th smallest
                # upper bound of this block (k columns are surely within it); + abs, rounded up
                kth = _key_dist(run[:, k - 1])
                thr = torch.where(
                    run[:, k - 1] == _INT64_MAX,
                    torch.full_like(kth, float("inf")),
                    _round_up_f32(kth.to(torch.float64) + abs_),
                )
                if c1 - c0 >= k:
                    upper = (e + rel * s) + abs_
                    uk = torch.kthvalue(upper, k, dim=1).values
                    thr = torch.minimum(thr, _round_up_f32(uk.to(torch.float64) + abs_))
                cand = lower <= thr[:, None]
                n_c = int(cand.sum(1).max())
                if n_c == 0:
                    continue
                # the n_c smallest lower bounds of each row hold all its candidates
                lo, cols = torch.topk(lower, n_c, dim=1, largest=False, sorted=False)
                ok = lo <= thr[:, None]
                cols = (cols + c0).contiguous()
                # Rows per step: the exact evaluation's temporaries (float64, about 24 bytes
                # an element without the kernels; duplicate groups make n_c large) within
                # _TEMP_BYTES.
                per_row = n_c * (4 if kern is not None else 24 * d)
                step = max(1, min(r1 - r0, _TEMP_BYTES // per_row))
                for s0 in range(0, r1 - r0, step):
                    s1 = min(r1 - r0, s0 + step)
                    if kern is not None:
                        dv = torch.empty((s1 - s0, n_c), dtype=torch.float32, device=dev)
                        with torch.cuda.device(dev):
                            kern.exact_gather(
                                xr[s0:s1].data_ptr(), d, s1 - s0, base.data_ptr(), d, n_b, d,
                                cols[s0:s1].data_ptr(), n_c, dv.data_ptr(), _stream(q),
                            )  # fmt: skip
                    else:
                        dv = exact_l2(xr[s0:s1, None, :], base[cols[s0:s1]])
                    keys = torch.where(ok[s0:s1], _keys(dv, cols[s0:s1]), _INT64_MAX)
                    both = torch.cat([run[s0:s1], keys], dim=1)
                    run[s0:s1] = torch.topk(both, k, dim=1, largest=False, sorted=True).values
            out[r0:r1] = run
    return out


def knn(features, k: int, queries=None, **blocks) -> Tuple[Any, Any]:
    """The engine's ``knn`` (self graph if ``queries`` is None): (distances float32,
    indices int64), ascending, ties to the lower index, on the tensors' device."""
    torch = _torch()
    q = features if queries is None else queries
    keys = topk_keys(q, features, k, **blocks)
    return _key_dist(keys), (keys & 0xFFFFFFFF).to(torch.int64)


def density_from_keys(keys, min_mean: float = _dispatch.MIN_MEAN_DIST):
    """The engine's density epilogue: float64 sum of the ascending distances, / k, floored,
    inverted, float32."""
    torch = _torch()
    dist = _key_dist(keys).to(torch.float64)
    s = torch.zeros(dist.shape[0], dtype=torch.float64, device=dist.device)
    for t in range(dist.shape[1]):
        s = s + dist[:, t]
    mean = s / dist.shape[1]
    floor = torch.tensor(min_mean, dtype=torch.float64, device=s.device)
    return (1.0 / torch.where(mean > floor, mean, floor)).to(torch.float32)


def density(features, k: int, **blocks):
    """The engine's kNN density (itself included), float32 on the tensor's device."""
    return density_from_keys(topk_keys(features, features, k, **blocks))


def segment_sum(x, labels, K: int, kernels=None):
    """(K, d) float64 member sums, each cluster's members added in ascending row order (the
    engine's order), and (K,) int64 counts."""
    torch = _torch()
    _check_rows(x, "x")
    n, d = x.shape
    dev = x.device
    counts = torch.bincount(labels, minlength=K)
    order = torch.sort(labels, stable=True).indices  # by cluster, then row
    kern = _kernels(x, kernels)
    if kern is not None:  # one thread per (cluster, coordinate), members in row order
        first = torch.zeros(K + 1, dtype=torch.int64, device=dev)
        first[1:] = torch.cumsum(counts, 0)
        sums = torch.empty((K, d), dtype=torch.float64, device=dev)
        order = order.contiguous()
        with torch.cuda.device(dev):
            kern.segment_sum(
                x.data_ptr(),
                d,
                d,
                order.data_ptr(),
                first.data_ptr(),
                K,
                sums.data_ptr(),
                _stream(x),
            )
        return sums, counts
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - first[labels[order]]  # place within its cluster
    by_rank = torch.sort(rank, stable=True).indices  # rank 0 of every cluster, then rank 1...
    rows = order[by_rank]
    per_rank = torch.bincount(rank, minlength=int(counts.max()) if n else 0).tolist()
    sums = torch.zeros((K, d), dtype=torch.float64, device=dev)
    at = 0
    for size in per_rank:
        r = rows[at : at + size]
        at += size
        sums[labels[r]] += x[r].to(torch.float64)  # distinct clusters within one rank
    return sums, counts


def lloyd(x, cent, n_iter: int, **blocks):
    """The engine's Lloyd loop (``backends.engine.lloyd``) in torch: (labels int32, counts int64, inertia
    float64 per iteration, iterations run); ``cent`` (K, d) float32 is updated in place."""
    torch = _torch()
    _check_rows(x, "x")
    _check_rows(cent, "cent")
    n = x.shape[0]
    K = cent.shape[0]
    dev = x.device
    alive = torch.ones(K, dtype=torch.bool, device=dev)
    inertia = np.empty(n_iter, np.float64)
    prev = None
    labels = torch.zeros(n, dtype=torch.int64, device=dev)
    counts = torch.zeros(K, dtype=torch.int64, device=dev)
    xn = row_norms(x)
    n_run = n_iter
    for it in range(n_iter):
        live = torch.nonzero(alive).flatten()
        c_live = cent if live.numel() == K else cent[live]
        keys = topk_keys(x, c_live, 1, q_norms=xn, **blocks)[:, 0]
        lab = live[(keys & 0xFFFFFFFF).to(torch.int64)]
        dist = _key_dist(keys)
        labels = lab
        # numpy's float64 sum, as the engine path computes the inertia
        inertia[it] = dist.cpu().numpy().sum(dtype=np.float64)
        if prev is not None and torch.equal(labels, prev):
            inertia[it + 1 :] = inertia[it]
            n_run = it + 1
            break
        sums, counts = segment_sum(x, labels, K, blocks.get("kernels"))
        alive &= counts > 0
        cent[alive] = (sums[alive] * (1.0 / counts[alive].to(torch.float64))[:, None]).to(
            torch.float32
        )
        prev = labels.clone()
    counts = torch.bincount(labels, minlength=K)
    return labels.to(torch.int32), counts, inertia, n_run


def _neg_pow(dv, alpha: float):
    """The engine's D^-alpha (float64). alpha 1: 1/D; alpha 0.5: 1/sqrt(D), with the square
    root correctly rounded (on CPU tensors numpy's: torch's CPU sqrt is not, 0.7 % of
    values differ in the last bit; CUDA's is). Any other alpha: torch.pow, which may differ
    from the C library's pow the engine uses in the last bit."""
    torch = _torch()
    if alpha == 1.0:
        return 1.0 / dv
    if alpha == 0.5:
        if dv.device.type == "cpu":
            return 1.0 / torch.from_numpy(np.asarray(np.sqrt(dv.numpy()), np.float64))
        return 1.0 / torch.sqrt(dv)
    return torch.pow(dv, -alpha)


def regularizer(
    x,
    picks,
    labels,
    tag,
    alpha: float,
    horizon_dist: float,
    horizon_num: int,
    mask_zero: bool,
    far: float = _dispatch.FAR,
    block_rows: Optional[int] = None,
    kernels=None,
):
    """The engine's regularizer (ops.hpp) for every row of x: float64 (n,). Distances are
    computed a chunk of picks at a time (temporaries within _TEMP_BYTES); the sum over the
    picks is one vector add per pick and row block, in the engine's order."""
    torch = _torch()
    _check_rows(x, "x")
    _check_rows(picks, "picks")
    n, m = x.shape[0], picks.shape[0]
    d = x.shape[1]
    dev = x.device
    block_rows = block_rows or (4096 if dev.type != "cpu" else 256)
    far_term = float(_neg_pow(torch.tensor(far, dtype=torch.float64), alpha))
    hd = _dispatch._float32_at_least(horizon_dist)
    h = horizon_num if 0 < horizon_num < m else 0
    out = torch.empty(n, dtype=torch.float64, device=dev)
    idx = torch.arange(m, device=dev)
    kern = _kernels(x, kernels)
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        dv = torch.empty((r1 - r0, m), dtype=torch.float32, device=dev)
        if kern is not None:
            with torch.cuda.device(dev):
                kern.exact_grid(
                    x[r0:r1].data_ptr(),
                    d,
                    r1 - r0,
                    picks.data_ptr(),
                    d,
                    m,
                    d,
                    dv.data_ptr(),
                    m,
                    _stream(x),
                )
        else:
            chunk = max(1, _TEMP_BYTES // max(1, 24 * d * (r1 - r0)))
            for j0 in range(0, m, chunk):
                j1 = min(m, j0 + chunk)
                dv[:, j0:j1] = exact_l2(x[r0:r1, None, :], picks[None, j0:j1, :])
        order = idx.expand(r1 - r0, m)
        if h:
            keys = torch.topk(_keys(dv, order), h, dim=1, largest=False, sorted=True).values
            dv, order = _key_dist(keys), (keys & 0xFFFFFFFF).to(torch.int64)
        masked = labels[r0:r1, None] == tag[order]
        masked |= dv >= hd
        if mask_zero:
            masked |= dv == 0
        term = torch.where(masked, far_term, _neg_pow(dv.to(torch.float64), alpha))
        s = torch.zeros(r1 - r0, dtype=torch.float64, device=dev)
        for j in range(term.shape[1]):  # the engine's order: ascending pick / key
            s = s + term[:, j]
        out[r0:r1] = s
    return out


class TorchRows(Rows):
    """USL's steps on a torch tensor's device; per-row bookkeeping on the host (numpy), as
    the CPU path does it. ``blocks``: tile sizes and the CUDA ``kernels`` (or None)."""

    def __init__(self, x, threads: Optional[int], progress: bool, **blocks):
        super().__init__(x, threads, progress)  # self.x: the tensor, on its device
        self.blocks = blocks

    def density(self, k: int) -> np.ndarray:
        return density(self.x, k, **self.blocks).cpu().numpy()

    def initial_centroids(self, K: int, init: str, seed: int) -> np.ndarray:
        if init != "random":
            raise ValueError("the portable back end supports kmeans_init='random' only")
        start = np.random.default_rng(seed).permutation(self.n)[:K]
        return self.rows(start)

    def kmeans_labels(self, cent: np.ndarray, n_iter: int) -> np.ndarray:
        torch = _torch()
        c = torch.from_numpy(np.array(cent, np.float32)).to(self.x.device)
        labels = lloyd(self.x, c, n_iter, **self.blocks)[0]
        cent[...] = c.cpu().numpy()
        return labels.cpu().numpy()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        torch = _torch()
        sel = torch.as_tensor(np.asarray(idx, np.int64), device=self.x.device)
        return np.ascontiguousarray(self.x[sel].cpu().numpy())

    def regularizer(self, lab, pts, tag, p, desc) -> np.ndarray:
        torch = _torch()
        dev = self.x.device
        hd = np.inf if p["horizon_dist"] is None else p["horizon_dist"]
        hn = 0 if p["horizon_num"] is None else p["horizon_num"]
        out = regularizer(
            self.x,
            torch.from_numpy(np.ascontiguousarray(pts)).to(dev),
            torch.from_numpy(np.asarray(lab, np.int64)).to(dev),
            torch.from_numpy(np.asarray(tag, np.int64)).to(dev),
            p["alpha"],
            hd,
            hn,
            p["mask_zero"],
            kernels=self.blocks.get("kernels"),
        )
        return out.cpu().numpy()


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def to_host(a: Any) -> Any:
    """A torch tensor (any device, grad or not) or CuPy array as numpy; others unchanged."""
    if _is_cupy(a):
        return a.get()
    if hasattr(a, "detach") and hasattr(a, "cpu"):
        return a.detach().cpu().numpy()
    return a


def _on_device(a: Any, like, name: str, with_top: bool = False):
    """``a`` (numpy, torch or CuPy) as a checked float32 tensor on ``like``'s device;
    ``with_top``: (that tensor, its largest squared row norm), the 2**-60 rule left to the
    caller (``_validate.check_pair_scale``)."""
    torch = _torch()
    t = _as_tensor(a)[0] if (_is_cupy(a) or isinstance(a, torch.Tensor)) else None
    if t is None:
        t = torch.as_tensor(np.asarray(a))
    if t.device != like.device:
        t = t.to(like.device)
    if with_top:
        return device_features_top(t, name)
    return as_device_features(t, name)


def _as_tensor(x: Any):
    """(a torch tensor on x's device, zero-copy via DLPack for CuPy; the converter of
    results back to x's library)."""
    torch = _torch()
    if _is_cupy(x):
        import cupy

        return torch.from_dlpack(x), lambda t: cupy.from_dlpack(t.contiguous())
    return x, lambda t: t


def as_device_features(x, name: str = "features", check_scale: bool = True):
    """Checks of ``_validate.as_features`` on the tensor's device: float32 contiguous rows
    (converted once if not), 2-D, non-empty, finite, squared norms within the engine's
    range (and, unless ``check_scale=False``, a largest one not in (0, 2**-60):
    ``_validate.MIN_SQUARED_NORM``); an error names the first bad row."""
    from .._validate import MIN_SQUARED_NORM, tiny_scale_message

    x, top = device_features_top(x, name)
    if check_scale and 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message(name, top))
    return x


def device_features_top(x, name: str = "features"):
    """(``as_device_features`` without the 2**-60 check, its largest squared row norm)."""
    torch = _torch()
    from .._backend import _cpu

    if x.device.type == "mps":
        raise ValueError(
            f"`{name}` is on Apple MPS, which has no float64: the portable back end needs it; "
            "move the tensor with .cpu()"
        )
    if x.requires_grad:
        x = x.detach()
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(
            f"`{name}` must be a real numeric array (float16/32/64 or integer), got torch "
            f"dtype {x.dtype}"
        )
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (n_points, dim), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    if x.shape[0] > _cpu.MAX_ROWS:
        raise ValueError(f"`{name}` has {x.shape[0]} rows; at most {_cpu.MAX_ROWS} are supported")
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.to(torch.float32).contiguous()
    # In row chunks: the float64 squares of the check are temporaries of _TEMP_BYTES at most,
    # not a float64 copy of all the features.
    chunk = max(1, _TEMP_BYTES // (8 * x.shape[1]))
    top = 0.0
    for r0 in range(0, x.shape[0], chunk):
        xc = x[r0 : r0 + chunk]
        bad = ~torch.isfinite(xc).all(dim=1)
        if bool(bad.any()):
            i = r0 + int(torch.nonzero(bad)[0])
            raise ValueError(f"`{name}` has NaN or inf values (first in row {i})")
        xd = xc.to(torch.float64)
        sq = (xd * xd).sum(1)
        big = sq > _cpu.MAX_SQUARED_NORM  # float64, as the CPU path checks
        top = max(top, float(sq.max()))
        if bool(big.any()):
            i = r0 + int(torch.nonzero(big)[0])
            raise ValueError(
                f"`{name}` row {i} has a squared norm above 2**124: its float32 distances "
                "would overflow; rescale the features"
            )
    return x, top


# ----------------------------------------------------------------------------------------
# The back end's plug-in functions (``backends.Backend``): USL through ``_pipeline``.


def features(X: Any, name: str, check_scale: bool = True):
    """(X as a checked float32 tensor on its device, converter of numpy results back to
    X's library and device)."""
    torch = _torch()
    x, to_caller = _as_tensor(X)
    x = as_device_features(x, name, check_scale=check_scale)
    dev = x.device

    def back(a):
        if a is None:
            return None
        return to_caller(torch.from_numpy(np.ascontiguousarray(a)).to(dev))

    return x, back


def normalized(x):
    """The CPU path's normalisation, bit for bit (its float64 norms' summation order)."""
    torch = _torch()
    return torch.from_numpy(unit_rows(x.cpu().numpy())).to(x.device)


def check_usl(usl: dict) -> None:
    if usl.get("kmeans_init", "random") != "random":
        raise ValueError(
            "`kmeans_init` must be 'random' for a tensor on a GPU (the portable back end has "
            f"no k-means++; got {usl['kmeans_init']!r})"
        )


def make_rows(x, threads: Optional[int], progress: bool, kernels: Any = None) -> Rows:
    return TorchRows(x, threads, progress, kernels=kernels)


# ----------------------------------------------------------------------------------------
# The public functions' device versions (usl_fast.knn / density / kmeans /
# regularized_select route device tensors here; ``kernels`` from ``backends.resolve``).


def public_knn(features, k, queries, threads=None, kernels=None):
    from .._validate import (
        MIN_SQUARED_NORM,
        as_int,
        check_pair_scale,
        threads_arg,
        tiny_scale_message,
    )

    threads_arg(threads)
    x, to_caller = _as_tensor(features)
    # With queries the 2**-60 rule applies to the larger side, as on the CPU (_ops.knn).
    x, top = device_features_top(x)
    n = x.shape[0]
    q = None
    if queries is None:
        if 0.0 < top < MIN_SQUARED_NORM:
            raise ValueError(tiny_scale_message("features", top))
        k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
    else:
        q, q_top = _on_device(queries, x, "queries", with_top=True)
        check_pair_scale(("features", top), ("queries", q_top))
        if q.shape[1] != x.shape[1]:
            raise ValueError(
                f"`queries` must have the same dimension as `features` (got {q.shape[1]} and "
                f"{x.shape[1]})"
            )
        k = as_int(k, "k", 1, n, f" = number of base points n={n}")
    dist, idx = knn(x, k, q, kernels=kernels)
    return to_caller(dist), to_caller(idx)


def public_density(features, k, threads=None, kernels=None):
    from .._validate import as_int, threads_arg

    threads_arg(threads)
    x, to_caller = _as_tensor(features)
    x = as_device_features(x)
    n = x.shape[0]
    k = as_int(k, "k", 1, n - 1, f" and < number of points n={n} (self included)")
    return to_caller(density(x, k, kernels=kernels))


def public_kmeans(features, n_clusters, n_iter, init, seed, threads=None, kernels=None):
    from .._validate import (
        MIN_SQUARED_NORM,
        as_int,
        as_seed,
        check_pair_scale,
        threads_arg,
        tiny_scale_message,
    )

    threads_arg(threads)
    torch = _torch()
    x, to_caller = _as_tensor(features)
    x, top = device_features_top(x)
    # The features are checked on their own: the centroids become their means.
    if 0.0 < top < MIN_SQUARED_NORM:
        raise ValueError(tiny_scale_message("features", top))
    n, d = x.shape
    K = as_int(n_clusters, "n_clusters", 1, n, f" = number of points n={n}")
    n_iter = as_int(n_iter, "n_iter", 1)
    seed = as_seed(seed)
    if isinstance(init, str):
        if init != "random":
            raise ValueError(
                f"`init` must be 'random' or a (K, d) array for a tensor on a GPU (got {init!r}; "
                "the portable back end has no k-means++)"
            )
        start = torch.from_numpy(np.random.default_rng(seed).permutation(n)[:K]).to(x.device)
        cent = x[start].clone()
    else:
        # Tiny initial centroids are fine beside normal features (check_pair_scale).
        cent, c_top = _on_device(init, x, "init", with_top=True)
        check_pair_scale(("features", top), ("init", c_top))
        cent = cent.clone()
        if tuple(cent.shape) != (K, d):
            raise ValueError(
                f"`init` must have shape (n_clusters, d) = ({K}, {d}), got {tuple(cent.shape)}"
            )
    labels, counts, inertia, n_run = lloyd(x, cent, n_iter, kernels=kernels)
    inertia_t = torch.from_numpy(inertia).to(x.device)
    return KMeansResult(
        to_caller(labels.to(torch.int64)),
        to_caller(cent),
        to_caller(counts),
        to_caller(inertia_t),
        int(n_run),
    )
