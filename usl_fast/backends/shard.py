"""The shard back end: USL's steps over rows split across the ranks of a process group,
each rank holding one consecutive range (rank 0 the first). Every step gives exactly the
bits of the one-process step on the concatenated rows; docs/distributed.md says how, and
what each costs."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _dispatch
from ._comm import Comm
from .engine import EngineRows, lloyd

#: Point-to-point tags: step s of the kNN ring uses 16 s + one of these.
_TAG_ROWS, _TAG_BOUND, _TAG_LISTS, _TAG_SUMS = 1, 2, 3, 4


def merge_lists(run: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The k smallest of two ascending (rows, k) lists, ascending: min(a_t, b_(k-1-t)) holds
    exactly the k smallest of the union (the first half of a bitonic merge)."""
    out = np.minimum(run, new[:, ::-1])
    out.sort(axis=1)
    return out


def density_of_lists(run: np.ndarray) -> np.ndarray:
    """The engine's density of ascending lists: float64 sum in ascending order, / k, floored
    at MIN_MEAN_DIST, inverted, float32 (the density epilogue's exact arithmetic)."""
    k = run.shape[1]
    s = np.zeros(run.shape[0], np.float64)
    for t in range(k):
        s += run[:, t]
    mean = s / k
    return (1.0 / np.where(mean > _dispatch.MIN_MEAN_DIST, mean, _dispatch.MIN_MEAN_DIST)).astype(
        np.float32
    )


class ShardRows(EngineRows):
    """This rank's rows (global rows offset .. offset + len - 1) and the collectives that
    make each step of USL see all of them."""

    def __init__(
        self,
        x: np.ndarray,
        comm: Comm,
        sizes: np.ndarray,
        threads: Optional[int],
        progress: bool,
    ):
        super().__init__(x, threads, progress and comm.rank == 0)
        self.comm = comm
        self.sizes = np.asarray(sizes, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.offset = int(self.starts[comm.rank])
        self.n = int(self.starts[-1])
        self.warn = comm.rank == 0
        self.k_lists: Optional[int] = None

    # ------------------------------------------------------------------ kNN density
    def _own_lists(self, k: int) -> np.ndarray:
        """(rows, k) ascending distances of every own row to the own rows (itself at 0)."""
        x = self.x
        kk = min(k, x.shape[0])
        d, _ = _dispatch.knn(
            x, kk, None, self.threads, self.progress, indices=False, desc="kNN (own rows)"
        )
        if kk == k:
            return d
        out = np.full((x.shape[0], k), np.inf, np.float32)
        out[:, :kk] = d
        return out

    def density(self, k: int) -> np.ndarray:
        """Each rank's own block first (symmetric), then the shards travel one way round the
        ring for floor(P / 2) steps; at step s rank r computes the block of its rows against
        rank (r - s)'s, both sides at once, keeps its side and sends the other side's k
        smallest back. Each unordered pair of shards is computed once (with an even P the
        opposite pairs split their block in two), as in the one-process symmetric pass."""
        self.comm.phase = "kNN density"
        run = self._own_lists(k)
        if self.comm.size > 1:
            run = self._ring(run, k)
        return density_of_lists(run)

    def _post_shard(self, rows: np.ndarray, bound: np.ndarray, step: int):
        """Forward the shard held now to rank r + 1 and receive the next one from r - 1."""
        comm, P, r = self.comm, self.comm.size, self.comm.rank
        q = (r - step) % P  # whose rows arrive
        nq = int(self.sizes[q])
        buf = np.empty((nq, self.x.shape[1]), np.float32)
        bnd = np.empty(nq, np.float32)
        sends = [
            comm.isend(rows, (r + 1) % P, 16 * step + _TAG_ROWS),
            comm.isend(bound, (r + 1) % P, 16 * step + _TAG_BOUND),
        ]
        recvs = [
            comm.irecv(buf, (r - 1) % P, 16 * step + _TAG_ROWS),
            comm.irecv(bnd, (r - 1) % P, 16 * step + _TAG_BOUND),
        ]
        return buf, bnd, sends, recvs

    def _ring(self, run: np.ndarray, k: int) -> np.ndarray:
        comm, x, P, r = self.comm, self.x, self.comm.size, self.comm.rank
        steps = P // 2
        even = P % 2 == 0
        nr = x.shape[0]
        own = np.ascontiguousarray(x) if not x.flags.c_contiguous else x
        bound = run[:, -1].copy()  # k-th distance within the own rows (run changes below)
        nxt = self._post_shard(own, bound, 1)
        for s in range(1, steps + 1):
            q = (r - s) % P
            qx, qbound, sends, recvs = nxt
            for h in recvs:
                h.wait()
            if s < steps:
                nxt = self._post_shard(qx, qbound, s + 1)
            # Which part of the block (own rows x rank q's rows) this rank computes.
            a_lo, b_lo = 0, 0
            if even and s == steps:
                if r < q:
                    a_hi, b_hi = nr // 2, qx.shape[0]
                else:
                    a_hi, b_lo, b_hi = nr, int(self.sizes[q]) // 2, qx.shape[0]
            else:
                a_hi, b_hi = nr, qx.shape[0]
            # Where my rows' other side comes from: the rank that holds my rows now.
            src = (r + s) % P
            if even and s == steps:
                mine = slice(nr // 2, nr) if r < q else slice(0, nr)
            else:
                mine = slice(0, nr)
            back = np.empty((mine.stop - mine.start, k), np.float32)
            recv_back = comm.irecv(back, src, 16 * s + _TAG_LISTS) if back.shape[0] else None
            if a_hi > a_lo:
                da, db = _dispatch.knn_cross(
                    x[a_lo:a_hi],
                    qx[b_lo:b_hi],
                    k,
                    np.ascontiguousarray(run[a_lo:a_hi, -1]),
                    np.ascontiguousarray(qbound[b_lo:b_hi]),
                    self.threads,
                    self.progress,
                    desc=f"kNN ring step {s}/{steps}",
                )
                run[a_lo:a_hi] = merge_lists(run[a_lo:a_hi], da)
            else:  # a one-row shard's half of an opposite pair is empty: nothing found
                db = np.full((b_hi - b_lo, k), np.inf, np.float32)
            out_send = comm.isend(db, q, 16 * s + _TAG_LISTS)
            if recv_back is not None:
                recv_back.wait()
                run[mine] = merge_lists(run[mine], back)
            out_send.wait()
            for h in sends:
                h.wait()
        return run

    # ------------------------------------------------------------------ k-means
    def initial_centroids(self, K: int, init: str, seed: int) -> np.ndarray:
        self.comm.phase = "k-means init"
        if init != "random":
            raise ValueError(
                "usl_fast.distributed supports kmeans_init='random' only (k-means++ seeding "
                "is sequential over all rows)"
            )
        start = np.empty(K, np.int64)
        if self.comm.rank == 0:
            # The one-process draw over all n rows; only rank 0 holds the permutation.
            start[:] = np.random.default_rng(seed).permutation(self.n)[:K]
        self.comm.broadcast(start, 0)
        return self.rows(start)

    def kmeans_labels(self, cent: np.ndarray, n_iter: int) -> np.ndarray:
        return self.lloyd(cent, n_iter)[0]

    def lloyd(self, cent: np.ndarray, n_iter: int):
        self.comm.phase = "k-means"
        return lloyd(
            self.x,
            cent,
            n_iter,
            threads=self.threads,
            progress=self.progress,
            segment_sum=self._chained_sum,
            step_reduce=self._step_reduce,
        )

    def _chained_sum(self, x, labels, K, threads):
        """The float64 member sums with the one-process bits: rank 0 sums its rows, rank 1
        continues those very sums with its rows, and so on (in blocks of clusters, so that
        rank r + 1 works on block b while rank r is on block b + 1); the last rank's sums
        go to everyone. Counts are added (integers: exact in any order). The rows are
        sorted by label once, so each block's call visits only that block's members."""
        comm, P, r = self.comm, self.comm.size, self.comm.rank
        if P == 1:
            return _dispatch.segment_sum(x, labels, K, threads)
        d = x.shape[1]
        sums = np.zeros((K, d), np.float64)
        counts = np.bincount(labels, minlength=K).astype(np.int64)
        order = np.argsort(labels, kind="stable").astype(np.int64)  # by label, then row
        first = np.concatenate([[0], np.cumsum(counts)])
        nb = min(K, 4 * P)
        edges = np.linspace(0, K, nb + 1).round().astype(np.int64)
        sends = []
        for b in range(nb):
            lo, hi = int(edges[b]), int(edges[b + 1])
            if hi == lo:
                continue
            if r > 0:
                comm.irecv(sums[lo:hi], r - 1, 16 * b + _TAG_SUMS).wait()
            members = order[first[lo] : first[hi]]
            if members.size:
                _dispatch.segment_sum(
                    x, labels, K, threads, sums=sums, c_lo=lo, c_hi=hi, rows=members
                )
            if r < P - 1:
                sends.append(comm.isend(sums[lo:hi], r + 1, 16 * b + _TAG_SUMS))
        for h in sends:
            h.wait()
        comm.broadcast(sums, P - 1)
        comm.all_reduce(counts, "sum")
        return sums, counts

    def _step_reduce(self, repeated: bool, inertia: float):
        v = np.array([0.0 if repeated else 1.0, inertia], np.float64)
        self.comm.all_reduce(v, "sum")
        return bool(v[0] == 0.0), float(v[1])

    # ------------------------------------------------------------------ selection
    def _owned(self, idx: np.ndarray):
        idx = np.asarray(idx, np.int64)
        mine = (idx >= self.offset) & (idx < self.offset + self.x.shape[0])
        return mine, idx[mine] - self.offset

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows at global indices ``idx`` on every rank: each row's bits are filled by
        its owner and zero elsewhere, then summed as int32 (exact in any order, and blind to
        any flush-to-zero mode a float sum could meet)."""
        mine, loc = self._owned(idx)
        out = np.zeros((len(idx), self.x.shape[1]), np.int32)
        out[mine] = np.ascontiguousarray(self.x[loc]).view(np.int32)
        return self.comm.all_reduce(out, "sum").view(np.float32)

    def values_at(self, values: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Integer ``values`` (labels) at global indices ``idx``, on every rank."""
        if not np.issubdtype(values.dtype, np.integer):
            raise TypeError("internal: values_at gathers integers only")
        mine, loc = self._owned(idx)
        out = np.zeros(len(idx), np.int64)
        out[mine] = values[loc]
        return self.comm.all_reduce(out, "sum").astype(values.dtype)

    def regularizer(self, lab, pts, tag, p, desc) -> np.ndarray:
        self.comm.phase = f"selection: {desc}"
        return super().regularizer(lab, pts, tag, p, desc)

    def cluster_argmax(self, dens, reg, weight, lab, K) -> np.ndarray:
        """Each rank's first best member per cluster, then the largest score over the ranks
        (all-reduce max) and, among the ranks that reach it, the lowest global index
        (all-reduce min): the one-process arg-max, first index on ties."""
        self.comm.phase = "selection: per-cluster arg-max"
        best = _dispatch.segment_argmax(dens, reg, weight, lab, K)
        has = best >= 0
        score = np.full(K, -np.inf, np.float64)
        at = best[has]
        # the engine's score, the same operations (no contraction): dens - weight * reg
        score[has] = dens[at].astype(np.float64) - (weight * reg[at] if reg is not None else 0.0)
        top = self.comm.all_reduce(score.copy(), "max")
        big = np.iinfo(np.int64).max
        cand = np.where(has & (score == top), best + self.offset, big)
        self.comm.all_reduce(cand, "min")
        cand[cand == big] = -1
        return cand

    def best_rest(self, score: np.ndarray, taken: np.ndarray, r: int) -> np.ndarray:
        mine, loc = self._owned(taken)
        local = super().best_rest(score, loc, r) if r else np.zeros(0, np.int64)
        pad = r - local.size
        sc = np.concatenate([score[local], np.full(pad, np.nan)])
        gi = np.concatenate([local + self.offset, np.full(pad, -1, np.int64)])
        all_sc = self.comm.all_gather(sc).ravel()
        all_gi = self.comm.all_gather(gi).ravel()
        ok = all_gi >= 0
        all_sc, all_gi = all_sc[ok], all_gi[ok]
        order = np.lexsort((all_gi, -all_sc))
        return all_gi[order][:r]
