"""The USL-T objective (docs/uslt.md): the global (confidence-thresholded,
optionally re-weighted) pseudo-label loss, the local (neighbour-consistency) loss with a
logit adjustment by an EMA prior, and their sum over heads. Pure functions of logits, so
they drop into any training loop; gradients flow only where the reference lets them."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import as_bool, as_float, as_int, as_logits, as_positive, as_prob

#: Floor on the prior before its log: a cluster no neighbour has predicted for a while gets
#: a large but finite boost (+weight * 18.4 logits) instead of +inf (and NaN targets).
PRIOR_FLOOR = 1e-8


def _heads_view(x: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (1, B, K); (H, B, K) unchanged."""
    return x.unsqueeze(0) if x.dim() == 2 else x


def global_loss(
    weak_logits: torch.Tensor,
    strong_logits: torch.Tensor,
    *,
    tau: float = 0.95,
    reweight: bool = True,
) -> torch.Tensor:
    """Confidence-thresholded pseudo-label cross-entropy (the USL-T "global" loss).

    For every sample the pseudo-label is the arg-max of ``softmax(weak_logits)``; only
    samples whose max probability is strictly greater than ``tau`` contribute, with the
    cross-entropy of ``strong_logits`` against that label. With ``reweight`` each
    confident sample is weighted by 1 / (its pseudo-class's share of the confident
    samples in the batch) and the weighted mean is taken, i.e. the loss is the mean over
    the clusters present among the confident samples of their mean cross-entropy: a
    cluster that many samples are confident about cannot dominate the batch.

    Parameters
    ----------
    weak_logits, strong_logits : (B, K) or (H, B, K) float tensors, same shape
        Logits of the weak and the strong view of the same B samples, for H heads.
        ``weak_logits`` is only used through a detached arg-max: no gradient reaches it.
    tau : float in [0, 1)
        Confidence threshold (reference: 0.95).
    reweight : bool
        Inverse-frequency re-weighting (reference: on).

    Returns
    -------
    Scalar tensor: the per-head losses summed over heads (0, still attached to the graph of
    ``strong_logits``, when no sample of a head is confident).
    """
    as_logits(weak_logits, "weak_logits", (2, 3))
    as_logits(strong_logits, "strong_logits", (2, 3))
    if weak_logits.shape != strong_logits.shape:
        raise ValueError(
            "`weak_logits` and `strong_logits` must have the same shape "
            f"(got {tuple(weak_logits.shape)} and {tuple(strong_logits.shape)})"
        )
    tau = as_prob(tau, "tau", open_high=True)
    reweight = as_bool(reweight, "reweight")
    weak = _heads_view(weak_logits)
    strong = _heads_view(strong_logits)
    K = strong.shape[-1]
    with torch.no_grad():
        conf, target = torch.softmax(weak.detach().float(), dim=-1).max(dim=-1)  # (H, B)
        mask = (conf > tau).to(strong.dtype)
        if reweight:
            # counts[h, c] = confident samples of head h with pseudo-label c. One-hot sums
            # of 0/1 values are exact in any order, so this is deterministic on any device.
            onehot = F.one_hot(target, K).to(strong.dtype)  # (H, B, K)
            counts = torch.einsum("hb,hbk->hk", mask, onehot)
            per_sample = counts.gather(1, target)  # (H, B): size of the sample's class
            weight = mask / per_sample.clamp_min(1.0)
        else:
            weight = mask
        denom = weight.sum(dim=1).clamp_min(torch.finfo(strong.dtype).tiny)  # (H,)
    ce = F.cross_entropy(strong.reshape(-1, K), target.reshape(-1), reduction="none").view_as(
        target
    )
    # A head with no confident sample contributes 0 * ce = 0 (and a zero gradient).
    return ((weight * ce).sum(dim=1) / denom).sum()


def adjusted_target(
    neighbor_logits: torch.Tensor,
    prior: torch.Tensor,
    *,
    adjust_weight: float = 5.0,
    temperature: float = 0.25,
) -> torch.Tensor:
    """The local loss's target (no gradient): softmax((z - w log prior) / t).

    z are the neighbour's logits, ``prior`` the running mean of the predicted
    distribution (floored at ``PRIOR_FLOOR`` before the log). Subtracting ``w log prior``
    raises the logits of clusters that are predicted rarely and lowers those of clusters
    that are predicted often, which is what keeps every cluster in use; dividing by the
    temperature t is the same as sharpening the probability p as p^(1/t) / sum p^(1/t).
    Shapes: (B, K) with a (K,) prior, or (H, B, K) with an (H, K) or (K,) prior.
    """
    z = _heads_view(neighbor_logits).detach().float()
    pr = prior.detach().float().to(z.device)
    if pr.dim() == 1:
        pr = pr.expand(z.shape[0], -1)
    adj = z - adjust_weight * torch.log(pr.clamp_min(PRIOR_FLOOR)).unsqueeze(1)
    out = torch.softmax(adj / temperature, dim=-1)
    return out if neighbor_logits.dim() == 3 else out[0]


def local_loss(
    anchor_logits: torch.Tensor,
    neighbor_logits: torch.Tensor,
    prior: torch.Tensor,
    *,
    adjust_weight: float = 5.0,
    temperature: float = 0.25,
) -> torch.Tensor:
    """Neighbour-consistency loss with logit adjustment (the USL-T "local" loss).

    target = softmax((neighbor_logits - adjust_weight * log prior) / temperature),
    detached; loss = KL(target || softmax(anchor_logits)) averaged over the batch (summed
    over heads). Gradients reach ``anchor_logits`` only: the neighbour's logits and the
    prior are detached, as in the reference (whose neighbour pass runs under no_grad).

    Parameters
    ----------
    anchor_logits : (B, K) or (H, B, K) float tensor
        The sample's logits; the reference uses the STRONG view's.
    neighbor_logits : same shape
        Logits of one neighbour per sample, drawn from a kNN list fixed before training.
    prior : (K,) or (H, K) float tensor
        Running mean of the predicted distribution (``EMAPrior.prior``), positive, rows
        summing to about 1.
    adjust_weight : float >= 0
        Weight of the log-prior subtraction (reference: 5.0; 0 disables the adjustment).
    temperature : float > 0
        Sharpening temperature of the target (reference: 0.25).

    Returns
    -------
    Scalar tensor.
    """
    as_logits(anchor_logits, "anchor_logits", (2, 3))
    as_logits(neighbor_logits, "neighbor_logits", (2, 3))
    if anchor_logits.shape != neighbor_logits.shape:
        raise ValueError(
            "`anchor_logits` and `neighbor_logits` must have the same shape "
            f"(got {tuple(anchor_logits.shape)} and {tuple(neighbor_logits.shape)})"
        )
    K = anchor_logits.shape[-1]
    H = anchor_logits.shape[0] if anchor_logits.dim() == 3 else 1
    as_logits(prior, "prior", (1, 2))
    if prior.shape not in ((K,), (H, K)):
        allowed = f"({K},)" + (f" or ({H}, {K})" if anchor_logits.dim() == 3 else "")
        raise ValueError(f"`prior` must have shape {allowed}, got {tuple(prior.shape)}")
    if prior.dim() == 2 and anchor_logits.dim() == 2:
        raise ValueError(f"`prior` must have shape ({K},) for 2-D logits, got {tuple(prior.shape)}")
    adjust_weight = as_float(adjust_weight, "adjust_weight", 0.0)
    temperature = as_positive(temperature, "temperature")
    target = adjusted_target(
        neighbor_logits, prior, adjust_weight=adjust_weight, temperature=temperature
    )
    target = _heads_view(target)
    logp = torch.log_softmax(_heads_view(anchor_logits), dim=-1)
    # KL(t || p) = sum t (log t - log p); xlogy makes 0 log 0 = 0 for underflowed targets.
    kl = (torch.xlogy(target, target) - target * logp.float()).sum(dim=-1)  # (H, B)
    return kl.mean(dim=1).sum().to(anchor_logits.dtype)


class EMAPrior(nn.Module):
    """The running (EMA) mean of the predicted cluster distribution, one row per head,
    used by ``local_loss`` to adjust the neighbour's logits.

    ``update(logits)`` folds in a batch: prior = momentum * prior + (1 - momentum) *
    mean over the batch of softmax(logits). It starts uniform (1/K). A buffer, so it moves
    with ``.to(device)`` and is saved in ``state_dict``.

    Parameters
    ----------
    n_clusters : K.  n_heads : H.  momentum : in [0, 1) (reference: 0.5).
    """

    def __init__(
        self, n_clusters: int, n_heads: int = 1, momentum: float = 0.5, device: Any = None
    ) -> None:
        super().__init__()
        self.n_clusters = as_int(n_clusters, "n_clusters", 1)
        self.n_heads = as_int(n_heads, "n_heads", 1)
        self.momentum = as_prob(momentum, "momentum", open_high=True)
        self.register_buffer(
            "prior",
            torch.full((self.n_heads, self.n_clusters), 1.0 / self.n_clusters, device=device),
        )

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> torch.Tensor:
        """Fold in a batch of logits, (B, K) for one head or (H, B, K); returns the prior."""
        as_logits(logits, "logits", (2, 3))
        z = _heads_view(logits)
        if z.shape[0] != self.n_heads or z.shape[-1] != self.n_clusters:
            raise ValueError(
                f"`logits` must have shape (B, {self.n_clusters}) or "
                f"({self.n_heads}, B, {self.n_clusters}) for this prior, got {tuple(logits.shape)}"
            )
        mean = torch.softmax(z.detach().float(), dim=-1).mean(dim=1)
        self.prior.mul_(self.momentum).add_(mean.to(self.prior.device), alpha=1.0 - self.momentum)
        return self.prior

    def forward(self) -> torch.Tensor:  # pragma: no cover - convenience
        return self.prior

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, n_heads={self.n_heads}, momentum={self.momentum}"


def uslt_loss(
    weak_logits: torch.Tensor,
    strong_logits: torch.Tensor,
    neighbor_logits: torch.Tensor,
    prior: torch.Tensor,
    *,
    tau: float = 0.95,
    reweight: bool = True,
    adjust_weight: float = 5.0,
    temperature: float = 0.25,
    local_weight: float = 5.0,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The total USL-T loss L = sum_h L_global + local_weight * sum_h L_local.

    The local loss's anchor is the strong view (as the reference). Shapes as in
    ``global_loss`` / ``local_loss``; defaults are the reference's CIFAR values
    (tau 0.95, re-weighting on, adjustment weight 5, temperature 0.25, lambda 5).

    Returns
    -------
    (total, {"global": ..., "local": ...}) - the parts detached, for logging.
    """
    local_weight = as_float(local_weight, "local_weight", 0.0)
    lg = global_loss(weak_logits, strong_logits, tau=tau, reweight=reweight)
    ll = local_loss(
        strong_logits,
        neighbor_logits,
        prior,
        adjust_weight=adjust_weight,
        temperature=temperature,
    )
    total = lg + local_weight * ll
    return total, {"global": lg.detach(), "local": ll.detach()}
