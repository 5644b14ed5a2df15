"""FixMatch's strong augmentation (usl_fast.ssl.StrongAugment: flip, translate, two
RandAugment-style ops, Cutout; batched torch code) on the batches a FixMatch step draws:
7 x 64 = 448 CIFAR images, and 7 x 16 x 2 = 224 digits of the small configuration. No peer
runs here (torchvision does not import beside the CPU torch this project tests with); the
numbers say what the augmentation costs next to a training step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

CASES = {"cifar 448x3x32x32": (448, 3, 32), "digits 224x1x8x8": (224, 1, 8)}


@pytest.mark.parametrize("case", list(CASES))
def test_strong_augment(bench, case):
    from usl_fast.ssl import cifar_augment, digits_augment

    n, c, side = CASES[case]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, side, side, generator=gen)
    strong = (cifar_augment() if c == 3 else digits_augment())[1]
    out = strong(x, gen)  # check (and warm-up): same shape, values in [0, 1], input kept
    assert out.shape == x.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    bench.group = f"strong augment {case}"
    bench.extra_info.update(impl="usl_fast", n=n, channels=c, side=side)
    bench.time(lambda: strong(x, gen))
