"""Head-only USL-T on frozen features: the clustering heads are trained with the USL-T
objective on precomputed embeddings (weak view = the feature itself, strong view = a
feature-space augmentation), then the most confident member of each cluster is picked."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from ._augment import FeatureAugment
from ._checks import (
    as_bool,
    as_device,
    as_features_torch,
    as_float,
    as_int,
    as_positive,
    as_prob,
    is_int,
)
from .._methods import Selector
from .._validate import as_seed, threads_arg
from ._heads import HEAD_KINDS, ClusterHead
from ._losses import EMAPrior, uslt_loss
from ._select import SelectionResult, _select

#: Fewest optimizer steps of a default-length run (see USLT's `epochs`).
MIN_STEPS = 600

#: Starting prototypes of cosine heads: K random sample features per head (the
#: reference), or K features spread out by k-means++ D^2 sampling.
HEAD_INITS = ("sample", "k-means++")

#: Learning-rate schedules: constant, or cosine decay from lr to 0 over all steps.
LR_SCHEDULES = ("constant", "cosine")

#: Rows per block when computing the logits of all points for the selection.
EVAL_CHUNK = 65536


def knn_neighbors(
    features: Any, k: int = 20, *, threads: Optional[int] = None, progress: bool = False
) -> torch.Tensor:
    """The k nearest OTHER points of every point (squared L2, self excluded), as a fixed
    (n, k) int64 CPU tensor - the neighbour list USL-T samples from.

    Computed by ``usl_fast.knn`` (the point itself is its own first neighbour there and is
    dropped). Runs on the CPU: a CUDA tensor is copied to the host for the search (until
    usl_fast's CUDA back end lands); move the result with ``.to(device)``.
    """
    from .._ops import knn

    x, _ = as_features_torch(features, "features")
    n = x.shape[0]
    k = as_int(k, "k", 1, n - 1, f" = number of points n={n} minus 1 (self excluded)")
    _, idx = knn(x.cpu().numpy(), k + 1, threads=threads, progress=progress)
    idx = np.asarray(idx)
    # Drop the point itself wherever it appears (column 0 unless exact duplicates tie).
    is_self = idx == np.arange(n)[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self last, others in knn order
    out = np.take_along_axis(idx, order, axis=1)[:, :k]
    return torch.from_numpy(np.ascontiguousarray(out))


class USLT(Selector):
    """USL-T selection on frozen features: learn K clusters with H clustering heads and
    the USL-T loss, then pick the most confident member of each cluster.

    ``USLT(n_clusters=40, seed=0).fit(features)`` -> ``indices_``, ``labels_``,
    ``confidence_``. A ``Selector``: ``USLT(seed=0).fit(features, m, labeled)`` takes the
    budget at fit as the other methods do (K = m + len(labeled) when ``n_clusters`` is
    not given), with their ``get_params`` / ``set_params`` / ``fit_select``. Parameters default to the reference's CIFAR values where they carry
    over to frozen features (tau, re-weighting, adjustment weight, prior momentum,
    temperature, lambda, 3 heads, 20 neighbours, Adam with weight decay 1e-4); the rest
    is chosen for head-only training (see docs/uslt.md).

    Parameters
    ----------
    n_clusters : int, optional
        K, the number of clusters (usually the labeling budget m). Default (None): m +
        len(labeled), from ``fit``'s ``m``.
    m : int, optional
        Points to pick (default K; at most K). With K > m the m largest clusters are used.
        ``fit(x, m)`` gives it for one fit instead.
    n_heads : int
        H clustering heads trained jointly (reference: 3); the confidence is the mean of
        their max probabilities, the clusters are those of ``assign_head``.
    head : "cosine" (default) or "linear"
        Cosine heads (L2-normalised weights and features, logits times ``scale``,
        initialised from random sample features) are the reference's frozen-feature
        variant; linear heads are its CIFAR heads (trained with the backbone there).
    scale : float
        Logit scale of cosine heads (reference: 40).
    init : "sample" (default) or "k-means++"
        Starting prototypes of cosine heads: K random sample features per head (the
        reference), or K features drawn by k-means++ D^2 sampling (spread out, so two
        starting prototypes rarely share one dense region; each head its own draw).
    epochs : int, optional
        Passes over the data, each over a fresh random permutation. Default (None):
        ``max(100, ceil(MIN_STEPS / batches per epoch))`` - at least 100 epochs and at
        least ``MIN_STEPS`` = 600 optimizer steps, so that a small set (1,797 digits at
        batch 1024: 2 steps an epoch) is trained as long as a large one is in steps.
        ``epochs_`` holds the value used.
    batch_size, lr, weight_decay :
        Adam on the heads (lr 3e-3, weight decay 1e-4, batch 1024).
    lr_schedule : "cosine" (default) or "constant"
        Cosine decay of the learning rate from ``lr`` to 0 over all steps.
    tau, reweight, local_weight, adjust_weight, prior_momentum, temperature :
        The loss (``uslt_loss``): confidence threshold 0.95, inverse-frequency
        re-weighting, lambda 5, logit-adjustment weight 5, EMA momentum 0.5,
        sharpening temperature 0.25 (the reference's values).
    n_neighbors : int
        Size of the fixed kNN list (reference: 20), computed by ``usl_fast.knn``.
    augment : FeatureAugment, optional
        The strong view (default ``FeatureAugment(mix=0.5, drop=0.1)``); None or
        ``FeatureAugment(0, 0)`` makes it the feature itself.
    normalize : bool
        L2-normalise the features first (default True; the published configurations
        use unit-norm features).
    assign_head : int or "best"
        Which head's arg-max defines the clusters; "best" = the head with the most
        non-empty clusters (ties to the lower index).
    seed : int
        Seeds a torch.Generator on the training device (head init, batches, neighbour
        draws, augmentation); torch's global RNG is untouched. Same seed, same input ->
        same result on the CPU.
    device : torch device, optional
        Where to train (default: the input's device; numpy input trains on the CPU).
    threads : int, optional
        CPU threads of the kNN search (default all).
    progress : bool
        tqdm bars on stderr (off by default; ``usl-fast select --method uslt`` turns them
        on): the kNN search's, then one counting training epochs. After each
        epoch it shows ``loss`` (mean total loss of the epoch), ``confident`` (percentage
        of the epoch's samples whose weak-view top probability exceeds ``tau``, the ones
        the global loss learns from) and ``clusters used`` (non-empty clusters of head 0
        on up to 8 batches, out of ``n_clusters``).

    Attributes (after ``fit``)
    --------------------------
    indices_ : (m,) int64 picks, in the caller's library and device (numpy for numpy
        input, a torch tensor on the input's device for torch input).
    labels_ : (n,) int64 clusters under ``assign_head_``; confidence_ : (n,) float64.
    n_filled_, filled_ : picks added by the fill rule (fewer than m non-empty clusters).
    cluster_sizes_, n_nonempty_, assign_head_ : see ``SelectionResult``.
    head_ : the trained ClusterHead (eval mode); prior_ : (H, K) final EMA prior.
    neighbors_ : (n, k) int64 CPU kNN list used.  history_ : per-epoch dicts (loss,
    global, local, confident fraction, non-empty clusters of head 0).  timings_ : seconds
    per phase.
    """

    method = "uslt"

    def __init__(
        self,
        n_clusters: Optional[int] = None,
        *,
        m: Optional[int] = None,
        n_heads: int = 3,
        head: str = "cosine",
        scale: float = 40.0,
        epochs: Optional[int] = None,
        batch_size: int = 1024,
        lr: float = 3e-3,
        lr_schedule: str = "cosine",
        weight_decay: float = 1e-4,
        tau: float = 0.95,
        reweight: bool = True,
        local_weight: float = 5.0,
        adjust_weight: float = 5.0,
        prior_momentum: float = 0.5,
        temperature: float = 0.25,
        n_neighbors: int = 20,
        augment: Optional[FeatureAugment] = FeatureAugment(),  # noqa: B008 (immutable)
        normalize: bool = True,
        assign_head: Union[int, str] = "best",
        seed: int = 0,
        device: Any = None,
        threads: Optional[int] = None,
        progress: bool = False,
        init: str = "sample",
    ) -> None:
        if init not in HEAD_INITS:
            raise ValueError(f"`init` must be one of {HEAD_INITS} (got {init!r})")
        self.init = init
        self.n_clusters = None if n_clusters is None else as_int(n_clusters, "n_clusters", 1)
        high = None if self.n_clusters is None else self.n_clusters
        self.m = None if m is None else as_int(m, "m", 1, high, " = n_clusters")
        self.n_heads = as_int(n_heads, "n_heads", 1)
        if head not in HEAD_KINDS:
            raise ValueError(f"`head` must be one of {HEAD_KINDS} (got {head!r})")
        self.head = head
        self.scale = as_positive(scale, "scale")
        self.epochs = None if epochs is None else as_int(epochs, "epochs", 1)
        self.batch_size = as_int(batch_size, "batch_size", 1)
        self.lr = as_positive(lr, "lr")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES} (got {lr_schedule!r})")
        self.lr_schedule = lr_schedule
        self.weight_decay = as_float(weight_decay, "weight_decay", 0.0)
        self.tau = as_prob(tau, "tau", open_high=True)
        self.reweight = as_bool(reweight, "reweight")
        self.local_weight = as_float(local_weight, "local_weight", 0.0)
        self.adjust_weight = as_float(adjust_weight, "adjust_weight", 0.0)
        self.prior_momentum = as_prob(prior_momentum, "prior_momentum", open_high=True)
        self.temperature = as_positive(temperature, "temperature")
        self.n_neighbors = as_int(n_neighbors, "n_neighbors", 1)
        if augment is not None and not isinstance(augment, FeatureAugment):
            raise TypeError(
                f"`augment` must be a usl_fast.uslt.FeatureAugment or None (got {type(augment).__name__})"
            )
        self.augment = augment
        self.normalize = as_bool(normalize, "normalize")
        if assign_head != "best":
            if not is_int(assign_head):
                raise TypeError(f"`assign_head` must be an int or 'best' (got {assign_head!r})")
            as_int(assign_head, "assign_head", 0, self.n_heads - 1, " = n_heads - 1")
        self.assign_head = assign_head
        self.seed = as_seed(seed)
        self.device = as_device(device)
        self.threads = None if threads is None else threads_arg(threads)
        self.progress = as_bool(progress, "progress")

    # ------------------------------------------------------------------ fitting

    def fit(  # type: ignore[override]
        self,
        features: Any,
        m: Optional[int] = None,
        labeled: Any = None,
        *,
        neighbors: Any = None,
    ) -> "USLT":
        """Train the heads on ``features`` and select.

        Parameters
        ----------
        features : (n, d) numpy array or torch tensor (CPU or CUDA), float16/32/64
            Frozen embeddings. NaN/inf is an error. Not modified.
        m : int, optional
            Points to pick, as in every ``Selector.fit`` (default: the ``m`` parameter,
            else K, or K - len(labeled) with labeled points).
        neighbors : (n, k) integer array/tensor, optional
            A precomputed kNN list (each row: other points, nearest first). Default:
            ``knn_neighbors(features, n_neighbors)``, computed on the CPU.
        labeled : 1-D integer indices labeled in earlier rounds, optional
            A later round: a cluster holding a labeled point gives no pick, and no pick
            is a labeled point (use n_clusters = m + len(labeled) so that m clusters are
            left; ``usl_fast.select(..., method="uslt", labeled=...)`` does).

        Returns
        -------
        self
        """
        t_start = time.perf_counter()
        X, kind = as_features_torch(features, "features")
        in_device = X.device
        n, d = X.shape
        from .._validate import as_labeled

        budget = self.m if m is None else as_int(m, "m", 1)
        K = self.n_clusters
        if K is None:
            if budget is None:
                raise ValueError("give `n_clusters` (USLT(n_clusters=...)) or `m` (fit(x, m))")
            K = budget + (0 if labeled is None else len(labeled))
        if K > n:
            raise ValueError(f"`n_clusters` must be <= number of points n={n} (got n_clusters={K})")
        if budget is not None and budget > K:
            raise ValueError(f"`m` must be <= {K} = n_clusters (got m={budget})")
        m = K if budget is None else budget
        if neighbors is None and self.n_neighbors > n - 1:
            raise ValueError(
                f"`n_neighbors` must be <= number of points n={n} minus 1 (got n_neighbors={self.n_neighbors})"
            )
        nbr = None if neighbors is None else _as_neighbors(neighbors, n)
        fixed = as_labeled(labeled, n)
        if fixed.size and budget is None:
            m = K - fixed.size
        if fixed.size and m > K - fixed.size:
            raise ValueError(
                f"with {fixed.size} labeled points at most n_clusters - {fixed.size} = "
                f"{K - fixed.size} clusters are left for new picks (got m={m}): raise n_clusters"
            )
        if m > n - fixed.size:
            raise ValueError(f"`m`={m} exceeds the {n - fixed.size} unlabeled points")
        device = self.device if self.device is not None else in_device
        X = X.to(device)
        if self.normalize:
            X = torch.nn.functional.normalize(X, dim=1)

        timings: Dict[str, float] = {"validate": time.perf_counter() - t_start}
        t0 = time.perf_counter()
        if nbr is None:
            nbr = knn_neighbors(X, self.n_neighbors, threads=self.threads, progress=self.progress)
        self.neighbors_ = nbr
        nbr_dev = nbr.to(device)
        timings["knn"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        head, prior, history = self._train(X, nbr_dev, K)
        timings["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        res = _select(self._chunks(head, X), n, self.n_heads, K, m, self.assign_head, fixed)
        timings["select"] = time.perf_counter() - t0

        self.head_ = head
        self.prior_ = prior.prior.detach().clone()
        self.history_ = history
        self.result_ = res
        self.labels_ = _back(res.labels, kind, in_device)
        self.confidence_ = _back(res.confidence, kind, in_device)
        self.indices_ = _back(res.indices, kind, in_device)
        self.cluster_sizes_ = _back(res.cluster_sizes, kind, in_device)
        self.filled_ = _back(res.filled, kind, in_device)
        self.n_filled_ = res.n_filled
        self.n_nonempty_ = res.n_nonempty
        self.assign_head_ = res.assign_head
        self.timings_ = timings
        self.labeled_ = _back(torch.from_numpy(fixed), kind, in_device)
        self.scores_ = self.confidence_  # the Selector protocol's per-point score
        self.n_features_in_ = d
        if res.n_filled:
            import warnings

            warnings.warn(
                f"USL-T: only {res.n_nonempty} of {K} clusters are non-empty; the last "
                f"{res.n_filled} of {m} picks were filled by the soft-assignment rule "
                "(see USLT.filled_)",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def fit_select(  # type: ignore[override]
        self, features: Any, m: Optional[int] = None, labeled: Any = None, *, neighbors: Any = None
    ) -> Any:
        """``fit(features, m, labeled, neighbors=neighbors).indices_``."""
        return self.fit(features, m, labeled, neighbors=neighbors).indices_

    def _train(
        self, X: torch.Tensor, nbr: torch.Tensor, K: int
    ) -> Tuple[ClusterHead, EMAPrior, List[Dict[str, float]]]:
        n, d = X.shape
        H, k = self.n_heads, nbr.shape[1]
        device = X.device
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        head = ClusterHead(d, K, H, kind=self.head, scale=self.scale, generator=gen, device=device)
        if self.head == "cosine":
            # The reference's frozen-feature init: each head from K random sample features.
            if self.init == "k-means++":
                seeds = torch.randint(0, 2**62, (H,), generator=gen, device=device).tolist()
                rows = torch.stack([_kmeanspp_rows(X, K, s) for s in seeds]).to(device)
            else:
                rows = torch.stack(
                    [torch.randperm(n, generator=gen, device=device)[:K] for _ in range(H)]
                )
            head.init_from_features(X[rows])
        prior = EMAPrior(K, H, momentum=self.prior_momentum, device=device)
        opt = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        B = min(self.batch_size, n)
        steps_per_epoch = -(-n // B)
        epochs = self.epochs
        if epochs is None:
            epochs = max(100, -(-MIN_STEPS // steps_per_epoch))
        self.epochs_ = epochs
        total_steps = epochs * steps_per_epoch
        aug = self.augment
        history: List[Dict[str, float]] = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=epochs,
                desc="USL-T training",
                # tqdm glues the unit to the counts and the rate: " epochs" reads "3/100 epochs"
                unit=" epoch" if epochs == 1 else " epochs",
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} "
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
                dynamic_ncols=True,
            )
        head.train()
        try:
            for epoch in range(epochs):
                perm = torch.randperm(n, generator=gen, device=device)
                sums = torch.zeros(4, dtype=torch.float64, device=device)
                for s in range(0, n, B):
                    if self.lr_schedule == "cosine":
                        step = epoch * steps_per_epoch + s // B
                        for g in opt.param_groups:
                            g["lr"] = 0.5 * self.lr * (1.0 + math.cos(math.pi * step / total_steps))
                    idx = perm[s : s + B]
                    b = idx.numel()
                    pick = torch.randint(0, k, (2, b), generator=gen, device=device)
                    x = X[idx]
                    x_nb = X[nbr[idx, pick[0]]]
                    if aug is not None:
                        x_s = aug(x, X[nbr[idx, pick[1]]], gen)
                    else:
                        x_s = x
                    with torch.no_grad():
                        z_wn = head(torch.cat([x, x_nb]))
                        z_w, z_n = z_wn[:, :b], z_wn[:, b:]
                        prior.update(z_n)
                    z_s = head(x_s)
                    total, parts = uslt_loss(
                        z_w,
                        z_s,
                        z_n,
                        prior.prior,
                        tau=self.tau,
                        reweight=self.reweight,
                        adjust_weight=self.adjust_weight,
                        temperature=self.temperature,
                        local_weight=self.local_weight,
                    )
                    opt.zero_grad(set_to_none=True)
                    total.backward()
                    opt.step()
                    with torch.no_grad():
                        conf = torch.softmax(z_w, dim=-1).amax(dim=-1)
                        sums += torch.stack(
                            [
                                total.detach().double() * b,
                                parts["global"].double() * b,
                                parts["local"].double() * b,
                                (conf > self.tau).double().mean() * b,
                            ]
                        )
                avg = (sums / n).tolist()
                with torch.no_grad():
                    used = int(torch.unique(head(X[perm[: min(n, 8 * B)]])[0].argmax(-1)).numel())
                rec = dict(
                    epoch=epoch + 1,
                    loss=avg[0],
                    global_loss=avg[1],
                    local_loss=avg[2],
                    confident=avg[3],
                    clusters_used=used,
                )
                history.append(rec)
                if bar is not None:
                    bar.set_postfix_str(
                        f"loss {avg[0]:.3f}, {100 * avg[3]:.0f}% confident (p > {self.tau:g}), "
                        f"clusters used {used}/{K}"
                    )
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        head.eval()
        return head, prior, history

    @staticmethod
    def _chunks(head: ClusterHead, X: torch.Tensor):
        def gen() -> Iterator[Tuple[int, torch.Tensor]]:
            with torch.no_grad():
                for s in range(0, X.shape[0], EVAL_CHUNK):
                    yield s, head(X[s : s + EVAL_CHUNK])

        return gen

    # ------------------------------------------------------------------ inference

    def predict_logits(self, features: Any) -> torch.Tensor:
        """(H, n, K) logits of the trained heads for ``features`` (normalised like the
        training features), on the head's device."""
        self._check_fitted()
        X, _ = as_features_torch(features, "features")
        if X.shape[1] != self.head_.in_features:
            raise ValueError(
                f"`features` must have {self.head_.in_features} columns like the training "
                f"features (got shape {tuple(X.shape)})"
            )
        X = X.to(self.head_.weight.device)
        if self.normalize:
            X = torch.nn.functional.normalize(X, dim=1)
        with torch.no_grad():
            return torch.cat([z for _, z in self._chunks(self.head_, X)()], dim=1)

    def predict(self, features: Any) -> torch.Tensor:
        """(n,) int64 cluster of each row under ``assign_head_``."""
        return self.predict_logits(features)[self.assign_head_].argmax(dim=-1)

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise RuntimeError("this USLT instance is not fitted yet: call fit(features) first")

    def __repr__(self) -> str:
        return (
            f"USLT(n_clusters={self.n_clusters}, m={self.m}, n_heads={self.n_heads}, "
            f"head={self.head!r}, epochs={self.epochs}, batch_size={self.batch_size}, "
            f"lr={self.lr}, seed={self.seed})"
        )


def _kmeanspp_rows(X: torch.Tensor, K: int, seed: int) -> torch.Tensor:
    """K row indices of X by k-means++ D^2 sampling (the CPU engine's seeding)."""
    from .. import _dispatch
    from .._validate import as_features

    x, _ = as_features(X.detach().cpu(), "features")
    return torch.from_numpy(_dispatch.kmeanspp_init(x, K, seed, None))


def _as_neighbors(neighbors: Any, n: int) -> torch.Tensor:
    if isinstance(neighbors, torch.Tensor):
        t = neighbors.detach().cpu()
    else:
        arr = np.asarray(neighbors)
        if arr.dtype == object:
            raise TypeError("`neighbors` must be an integer array (got dtype object)")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"`neighbors` must hold integers, got dtype {t.dtype}")
    if t.dim() != 2 or t.shape[0] != n or t.shape[1] < 1:
        raise ValueError(
            f"`neighbors` must have shape ({n}, k) with k >= 1 to match the features, "
            f"got {tuple(t.shape)}"
        )
    t = t.to(torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= n:
        raise ValueError(f"`neighbors` must lie in [0, {n}) (got values in [{lo}, {hi}])")
    return t.contiguous()


def _back(t: torch.Tensor, kind: str, device: torch.device) -> Any:
    return t.numpy() if kind == "numpy" else t.to(device)


__all__ = ["USLT", "knn_neighbors", "SelectionResult"]
