"""The USL-T clustering head: H independent heads, each mapping a feature vector to K
cluster logits - linear (the reference's CIFAR heads) or cosine (its frozen-feature
ImageNet variant: L2-normalised weights and features, logits scaled)."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from ._checks import as_int, as_logits, as_positive

HEAD_KINDS = ("linear", "cosine")


class ClusterHead(nn.Module):
    """H clustering heads on a d-dimensional feature, K clusters each.

    ``kind="linear"``: head h computes ``x @ W_h.T + b_h`` - exactly H separate
    ``nn.Linear(d, K)`` layers (stored as one (H, K, d) weight so that all heads run as one
    matrix product). ``kind="cosine"``: ``scale * normalize(x) @ normalize(W_h).T``, no
    bias (the reference's frozen-feature variant uses scale 40).

    Parameters
    ----------
    in_features : d.  n_clusters : K.  n_heads : H (reference: 3).
    kind : "linear" or "cosine".
    scale : logit scale of the cosine heads (> 0; ignored by linear heads).
    generator : torch.Generator, optional
        Draws the initial weights (the ``nn.Linear`` rule: uniform in +-1/sqrt(d)), so a
        seeded generator gives the same head without touching torch's global RNG.

    forward(x): (B, d) -> (H, B, K) logits.
    """

    def __init__(
        self,
        in_features: int,
        n_clusters: int,
        n_heads: int = 3,
        *,
        kind: str = "linear",
        scale: float = 40.0,
        generator: Optional[torch.Generator] = None,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.in_features = as_int(in_features, "in_features", 1)
        self.n_clusters = as_int(n_clusters, "n_clusters", 1)
        self.n_heads = as_int(n_heads, "n_heads", 1)
        if kind not in HEAD_KINDS:
            raise ValueError(f"`kind` must be one of {HEAD_KINDS} (got {kind!r})")
        self.kind = kind
        self.scale = as_positive(scale, "scale")
        H, K, d = self.n_heads, self.n_clusters, self.in_features
        self.weight = nn.Parameter(torch.empty(H, K, d, device=device, dtype=dtype))
        if kind == "linear":
            self.bias: Optional[nn.Parameter] = nn.Parameter(
                torch.empty(H, K, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Uniform in +-1/sqrt(d), weights and biases (what nn.Linear does)."""
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound, generator=generator)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    @torch.no_grad()
    def init_from_features(self, samples: torch.Tensor) -> None:
        """Set every head's weights to sample features (the reference's frozen-feature
        initialisation): ``samples`` is (K, d), used by every head, or (H, K, d). Biases
        are zeroed. A cosine head then starts as a nearest-prototype classifier."""
        as_logits(samples, "samples", (2, 3))
        H, K, d = self.weight.shape
        if tuple(samples.shape) not in ((K, d), (H, K, d)):
            raise ValueError(
                f"`samples` must have shape ({K}, {d}) or ({H}, {K}, {d}), got {tuple(samples.shape)}"
            )
        self.weight.copy_(samples.to(self.weight).expand(H, K, d))
        if self.bias is not None:
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, K, d = self.weight.shape
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"input must have shape (B, {d}), got {tuple(x.shape)}")
        w = self.weight
        if self.kind == "cosine":
            x = nn.functional.normalize(x, dim=1)
            w = nn.functional.normalize(w, dim=2)
        # One (B, d) x (d, H*K) product for all heads.
        out = (x @ w.reshape(H * K, d).t()).view(x.shape[0], H, K).transpose(0, 1)
        if self.kind == "cosine":
            out = out * self.scale
        else:
            out = out + self.bias.unsqueeze(1)
        return out

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, n_clusters={self.n_clusters}, n_heads={self.n_heads}, kind={self.kind!r}"
        return s + (f", scale={self.scale}" if self.kind == "cosine" else "")
