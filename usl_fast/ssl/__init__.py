"""Semi-supervised learning on the picks: a reference FixMatch (Sohn et al. 2020) in plain
PyTorch, to measure what a labeling choice is worth (``usl-fast fixmatch``).

Needs PyTorch (``pip install usl_fast[torch]``); no torchvision: CIFAR is read from its
python-pickle batches and the augmentations are written in torch (``augment.py``).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "usl_fast.ssl (FixMatch) needs PyTorch, which is not installed: "
        "pip install usl_fast[torch]  (or install torch yourself: https://pytorch.org)."
    ) from exc

from .augment import StrongAugment, WeakAugment, cifar_augment, digits_augment
from .fixmatch import (
    PRESETS,
    FixMatch,
    FixMatchConfig,
    ImageData,
    SmallCNN,
    WideResNet,
    load_cifar,
    load_digits_split,
    read_labeled,
)

__all__ = [
    "FixMatch",
    "FixMatchConfig",
    "PRESETS",
    "ImageData",
    "WideResNet",
    "SmallCNN",
    "load_cifar",
    "load_digits_split",
    "read_labeled",
    "WeakAugment",
    "StrongAugment",
    "cifar_augment",
    "digits_augment",
]
