"""The process group as this package uses it: numpy arrays in and out of torch.distributed
collectives and point-to-point messages, a count of the bytes this rank hands to them, and
one error type for everything that goes wrong between ranks."""

from __future__ import annotations

import warnings
from typing import Any, List

import numpy as np


class DistributedError(RuntimeError):
    """Another rank failed, exited or disagreed, or the group's timeout passed."""


def _torch():
    import torch
    import torch.distributed as dist

    return torch, dist


_GLOO_TWIN: dict = {}


class Comm:
    """One rank's view of a torch.distributed process group (the default group if None).

    The engine computes on the CPU, so messages are host arrays over gloo, handed to it
    without a copy. A default group of another backend (NCCL in a GPU training job) gets a
    gloo group over the same ranks, opened once and kept. ``sent_bytes`` counts the bytes
    of every send and of this rank's share of every collective (its whole buffer for
    all-reduce / all-gather, and for a broadcast from it)."""

    def __init__(self, group: Any = None):
        _, dist = _torch()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "usl_fast.distributed needs an initialised process group: call "
                'torch.distributed.init_process_group("gloo") first, '
                "e.g. under torchrun; or run `torchrun ... -m usl_fast.distributed select ...`"
            )
        backend = str(dist.get_backend(group))
        if backend != "gloo":
            if group is not None:
                raise ValueError(
                    f"usl_fast.distributed: `group` uses the {backend} backend; pass a gloo "
                    "group over the same ranks (torch.distributed.new_group(ranks, "
                    'backend="gloo")): the engine computes on the CPU'
                )
            if "default" not in _GLOO_TWIN:  # every rank calls this in the same order
                _GLOO_TWIN["default"] = dist.new_group(backend="gloo")
            group = _GLOO_TWIN["default"]
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.sent_bytes = 0
        self.sent_by_phase: dict = {}
        self.phase = "start"

    # ------------------------------------------------------------------ plumbing
    def _fail(self, what: str, exc: BaseException) -> DistributedError:
        return DistributedError(
            f"usl_fast.distributed: rank {self.rank} of {self.size}: {what} failed during "
            f"'{self.phase}': another rank exited, raised or stopped answering, or the "
            f"process group's timeout passed ({type(exc).__name__}: {exc})"
        )

    def _global(self, r: int) -> int:
        _, dist = _torch()
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _tensor(self, a: np.ndarray):
        torch, _ = _torch()
        if not a.flags.c_contiguous:
            raise ValueError("internal: communication buffers must be C-contiguous")
        with warnings.catch_warnings():
            # a read-only (memory-mapped) array is only ever sent, never written
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)

    def _count(self, nbytes: int) -> None:
        self.sent_bytes += nbytes
        key = self.phase.split(":")[0]  # "selection: ..." phases together
        self.sent_by_phase[key] = self.sent_by_phase.get(key, 0) + nbytes

    def _run(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except DistributedError:
            raise
        except Exception as exc:  # torch raises RuntimeError / DistBackendError subclasses
            raise self._fail(what, exc) from exc

    # ------------------------------------------------------------------ collectives
    def all_reduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        """In place over every rank; returns ``a``."""
        _, dist = _torch()
        if self.size == 1:
            return a
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        self._run("all-reduce", dist.all_reduce, self._tensor(a), op=ops[op], group=self.group)
        self._count(a.nbytes)
        return a

    def all_gather(self, a: np.ndarray) -> np.ndarray:
        """(size, *a.shape): every rank's ``a``, in rank order."""
        torch, dist = _torch()
        if self.size == 1:
            return a[None].copy()
        out = np.empty((self.size,) + a.shape, a.dtype)
        parts = [torch.from_numpy(out[i]) for i in range(self.size)]
        t = self._tensor(np.ascontiguousarray(a))
        self._run("all-gather", dist.all_gather, parts, t, group=self.group)
        self._count(a.nbytes)
        return out

    def all_gather_object(self, obj: Any) -> List[Any]:
        _, dist = _torch()
        if self.size == 1:
            return [obj]
        out: List[Any] = [None] * self.size
        self._run("all-gather", dist.all_gather_object, out, obj, group=self.group)
        return out

    def broadcast(self, a: np.ndarray, src: int) -> np.ndarray:
        _, dist = _torch()
        if self.size == 1:
            return a
        t = self._tensor(a)
        self._run("broadcast", dist.broadcast, t, src=self._global(src), group=self.group)
        if self.rank == src:
            self._count(a.nbytes)
        return a

    # ------------------------------------------------------------------ point to point
    def isend(self, a: np.ndarray, dst: int, tag: int) -> "_Pending":
        _, dist = _torch()
        t = self._tensor(a)
        work = self._run("send", dist.isend, t, dst=self._global(dst), group=self.group, tag=tag)
        self._count(a.nbytes)
        return _Pending(self, work, t)

    def irecv(self, a: np.ndarray, src: int, tag: int) -> "_Pending":
        _, dist = _torch()
        t = self._tensor(a)
        work = self._run("receive", dist.irecv, t, src=self._global(src), group=self.group, tag=tag)
        return _Pending(self, work, t)


class _Pending:
    """A posted send or receive; ``wait()`` completes it (and keeps its buffer alive until
    then)."""

    def __init__(self, comm: Comm, work: Any, tensor: Any):
        self.comm, self.work, self.tensor = comm, work, tensor

    def wait(self) -> None:
        if self.work is not None:
            self.comm._run("send/receive", self.work.wait)
            self.work = None
