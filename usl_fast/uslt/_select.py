"""USL-T selection (docs/uslt.md, CIFAR style): every point goes to its arg-max
cluster under one head, its confidence is the mean over heads of the max probability, and
the most confident member of each cluster is picked. When fewer than m clusters are
non-empty the rest is filled by a documented rule, and the result says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Tuple, Union

import numpy as np
import torch

from ._checks import as_int, as_logits, is_int

#: (start row, (H, b, K) logits) for consecutive row blocks covering 0..n-1.
Chunks = Callable[[], Iterator[Tuple[int, torch.Tensor]]]


@dataclass
class SelectionResult:
    """What ``select_confident`` returns (torch CPU tensors).

    Attributes
    ----------
    indices : (m,) int64
        Picks: first the most confident member of each chosen cluster, in cluster-id
        order, then the filled picks (if any) in the order they were added.
    labels : (n,) int64
        Cluster of every point under ``assign_head``.
    confidence : (n,) float64
        Mean over heads of each head's max probability.
    assign_head : int
        The head whose arg-max defines the clusters.
    cluster_sizes : (K,) int64
        Members per cluster under ``assign_head``.
    n_nonempty : int
        Clusters with at least one member.
    n_filled : int
        Picks added by the fill rule because fewer than m clusters were non-empty (0 in
        the normal case); ``filled[j]`` says whether pick j is one of them.
    """

    indices: torch.Tensor
    labels: torch.Tensor
    confidence: torch.Tensor
    assign_head: int
    cluster_sizes: torch.Tensor
    n_nonempty: int
    n_filled: int
    filled: torch.Tensor


def _doubt_and_argmax(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head: 1 - max softmax probability, computed as exp(logsumexp over the other
    clusters - logsumexp over all) in float64 so that it does not round to 0 when the max
    probability rounds to 1; plus the arg-max and the max probability. z: (H, b, K)."""
    z = z.double()
    zmax, arg = z.max(dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    others = z.scatter(-1, arg.unsqueeze(-1), float("-inf"))
    if z.shape[-1] == 1:
        doubt = torch.zeros_like(zmax)
    else:
        doubt = torch.exp(torch.logsumexp(others, dim=-1) - lse)
    return doubt, arg, torch.exp(zmax - lse)


def _select(
    chunks: Chunks, n: int, H: int, K: int, m: int, assign_head, labeled=None
) -> SelectionResult:
    from .._ops import cluster_argmax  # the engine's segmented arg-max (first index on ties)

    labels_all = torch.empty((H, n), dtype=torch.int64)
    doubt = torch.empty(n, dtype=torch.float64)
    conf = torch.empty(n, dtype=torch.float64)
    for start, z in chunks():
        d, arg, pmax = _doubt_and_argmax(z)
        stop = start + z.shape[1]
        labels_all[:, start:stop] = arg.cpu()
        doubt[start:stop] = d.mean(dim=0).cpu()
        conf[start:stop] = pmax.mean(dim=0).cpu()
    sizes_all = torch.stack([torch.bincount(labels_all[h], minlength=K) for h in range(H)])
    if assign_head == "best":
        # The head that uses the most clusters (fewest fills); ties to the lower index.
        h = int(torch.argmax((sizes_all > 0).sum(dim=1)).item())
    else:
        h = int(assign_head)
    labels = labels_all[h]
    sizes = sizes_all[h]
    lab_np = labels.numpy()
    fixed = np.zeros(0, np.int64) if labeled is None else np.asarray(labeled, np.int64)
    if fixed.size:
        # A later round: clusters holding a labeled point are covered and give no pick;
        # their members (and the labeled points) go to a dummy cluster K that is dropped.
        covered = np.zeros(K + 1, dtype=bool)
        covered[lab_np[fixed]] = True
        cand = np.where(covered[lab_np], K, lab_np)
        best = cluster_argmax(np.zeros(n, np.float32), cand, K + 1, reg=doubt.numpy(), weight=1.0)[
            :K
        ]
    else:
        # Most confident member = smallest mean doubt (exact float64 ranking), first on ties.
        best = cluster_argmax(np.zeros(n, np.float32), lab_np, K, reg=doubt.numpy(), weight=1.0)
    nonempty = np.flatnonzero(best >= 0)
    if nonempty.size > m:
        # K > m: keep the m largest clusters (ties to the lower id), listed in id order.
        order = np.lexsort((nonempty, -sizes.numpy()[nonempty]))
        nonempty = np.sort(nonempty[order[:m]])
    picks = [int(i) for i in best[nonempty]]
    n_main = len(picks)
    if n_main < m:
        picks += _fill(
            chunks, h, sizes.numpy(), m - n_main, set(picks) | set(fixed.tolist()), m + fixed.size
        )
    filled = torch.zeros(m, dtype=torch.bool)
    filled[n_main:] = True
    return SelectionResult(
        indices=torch.tensor(picks, dtype=torch.int64),
        labels=labels.clone(),
        confidence=conf,
        assign_head=h,
        cluster_sizes=sizes.clone(),
        n_nonempty=int((sizes > 0).sum().item()),
        n_filled=m - n_main,
        filled=filled,
    )


def _fill(chunks: Chunks, h: int, sizes: np.ndarray, need: int, taken: set, m: int) -> list:
    """The fill rule: the empty clusters of head h, largest soft mass (sum over points of
    their probability) first, each take the not-yet-picked point with the highest
    probability for that cluster (first index on ties) - the most confident member of the
    cluster under the soft assignment. At most m - 1 points are taken before any cluster's
    turn, so each cluster's m best candidates always contain a free one."""
    empty = np.flatnonzero(sizes == 0)
    e = torch.from_numpy(empty)
    mass = torch.zeros(empty.size, dtype=torch.float64)
    cand_p = cand_i = None
    for start, z in chunks():
        p = torch.softmax(z[h].double(), dim=-1)[:, e.to(z.device)].cpu()  # (b, E)
        mass += p.sum(dim=0)
        rows = torch.arange(start, start + p.shape[0], dtype=torch.int64)
        rows = rows.unsqueeze(1).expand_as(p)
        if cand_p is not None:
            # Earlier rows first, so the stable sort keeps lower indices first on ties.
            p = torch.cat([cand_p, p])
            rows = torch.cat([cand_i, rows])
        vals, order = torch.sort(p, dim=0, descending=True, stable=True)
        keep = min(m, vals.shape[0])
        cand_p = vals[:keep]
        cand_i = torch.gather(rows, 0, order[:keep])
    # Empty clusters by descending soft mass, ties to the lower cluster id.
    turn = np.lexsort((empty, -mass.numpy()))[:need]
    out = []
    for j in turn:
        for i in cand_i[:, j].tolist():
            if i not in taken:
                taken.add(i)
                out.append(i)
                break
    return out


def select_confident(
    logits: Union[torch.Tensor, Chunks],
    m: int,
    *,
    assign_head: Union[int, str] = "best",
) -> SelectionResult:
    """Pick m points from the clustering heads' logits of all n points.

    Each point goes to its arg-max cluster under ``assign_head``; its confidence is the
    mean over the H heads of their max softmax probability (the reference's rule); the
    most confident member of each non-empty cluster is picked (first index on ties),
    clusters in id order. With more than m non-empty clusters (K > m) the m largest are
    used. With fewer, the remaining picks come from the fill rule: each empty cluster,
    largest soft mass first, takes the unpicked point with the highest probability for
    it; ``n_filled`` / ``filled`` report them.

    Parameters
    ----------
    logits : (H, n, K) or (n, K) float tensor, any device
        Logits of every point (for large n pass a callable instead: it returns an
        iterator of (start row, (H, b, K) logits) over consecutive blocks, and may be
        called twice).
    m : int, 1 <= m <= min(n, K).
    assign_head : int in [0, H) or "best" (default): the head with the most non-empty
        clusters, ties to the lower index. The reference uses one configured head.

    Returns
    -------
    SelectionResult (CPU tensors).
    """
    if callable(logits):
        chunks = logits
        first = next(iter(chunks()), None)
        if first is None:
            raise ValueError("`logits` callable yielded no blocks")
        H, K = first[1].shape[0], first[1].shape[2]
        n = 0
        for start, z in chunks():
            if start != n or z.dim() != 3 or z.shape[0] != H or z.shape[2] != K:
                raise ValueError("`logits` blocks must be consecutive (H, b, K) tensors")
            n += z.shape[1]
    else:
        as_logits(logits, "logits", (2, 3))
        z_all = logits.detach()
        if z_all.dim() == 2:
            z_all = z_all.unsqueeze(0)
        H, n, K = z_all.shape
        if not bool(torch.isfinite(z_all).all()):
            raise ValueError("`logits` contains NaN or inf")

        def chunks() -> Iterator[Tuple[int, torch.Tensor]]:
            yield 0, z_all

    m = as_int(m, "m", 1, min(n, K), f" = min(number of points n={n}, clusters K={K})")
    if assign_head != "best":
        if not is_int(assign_head):
            raise TypeError(f"`assign_head` must be an int or 'best' (got {assign_head!r})")
        if not 0 <= int(assign_head) < H:
            raise ValueError(
                f"`assign_head` must be in [0, {H}) or 'best' (got assign_head={assign_head})"
            )
    return _select(chunks, n, H, K, m, assign_head)
