"""The "strong view" of a frozen feature vector for head-only USL-T training: a random
move part of the way towards one of the point's k nearest neighbours, then random
coordinate dropout, then the original norm restored (docs/uslt.md explains the choice)."""

from __future__ import annotations

from typing import Optional

import torch

from ._checks import as_bool, as_prob


class FeatureAugment:
    """Feature-space augmentation: ``x -> renorm(drop(x + lam * (x_nb - x)))``.

    * neighbour interpolation: ``x_nb`` is a random one of the point's kNN neighbours
      (the same fixed list the local loss samples from) and ``lam ~ U(0, mix)`` per row.
      Image augmentations move a self-supervised embedding towards the embeddings of
      similar images - that is what contrastive training makes them do - and the nearest
      neighbours are the best available estimate of where such views land. Unlike
      isotropic noise, the move stays on the data manifold, and ``mix <= 0.5`` keeps the
      view closer to its own point than to the neighbour.
    * coordinate dropout: each coordinate is zeroed with probability ``drop`` (the rest
      scaled by 1/(1 - drop)), the feature-space analogue of the information a strong
      crop or colour distortion removes; it stops the heads from relying on a few
      coordinates.
    * ``renorm``: the result is rescaled to the input row's norm, so unit features stay
      on the sphere (where the published configurations and cosine heads live).

    Parameters
    ----------
    mix : float in [0, 1]
        Largest interpolation step towards the neighbour (default 0.5).
    drop : float in [0, 1)
        Coordinate dropout probability (default 0.1).
    renorm : bool
        Restore each row's norm (default True).

    ``aug(x, x_nb, generator)``: x, x_nb (B, d) float tensors on one device; generator a
    torch.Generator on that device (or None for torch's global RNG). Returns (B, d).
    """

    def __init__(self, mix: float = 0.5, drop: float = 0.1, renorm: bool = True) -> None:
        self.mix = as_prob(mix, "mix")
        self.drop = as_prob(drop, "drop", open_high=True)
        self.renorm = as_bool(renorm, "renorm")

    def __call__(
        self,
        x: torch.Tensor,
        x_nb: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        if x.shape != x_nb.shape or x.dim() != 2:
            raise ValueError(
                "`x` and `x_nb` must be (B, d) tensors of the same shape "
                f"(got {tuple(x.shape)} and {tuple(x_nb.shape)})"
            )
        B, d = x.shape
        out = x
        if self.mix > 0:
            lam = torch.rand((B, 1), generator=generator, device=x.device, dtype=x.dtype)
            out = out + (lam * self.mix) * (x_nb - x)
        if self.drop > 0:
            keep = torch.rand((B, d), generator=generator, device=x.device, dtype=x.dtype)
            out = out * (keep >= self.drop).to(x.dtype) * (1.0 / (1.0 - self.drop))
        if self.renorm:
            norm_in = torch.linalg.vector_norm(x, dim=1, keepdim=True)
            norm_out = torch.linalg.vector_norm(out, dim=1, keepdim=True)
            out = out * (norm_in / norm_out.clamp_min(1e-12))
        return out

    def __repr__(self) -> str:
        return f"FeatureAugment(mix={self.mix}, drop={self.drop}, renorm={self.renorm})"

    def _key(self) -> tuple:
        return (self.mix, self.drop, self.renorm)

    def __eq__(self, other: object) -> bool:
        # By value: a cloned USLT's copy equals its original (scikit-learn's get_params).
        if not isinstance(other, FeatureAugment):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())
