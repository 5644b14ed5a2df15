"""FixMatch's image augmentations (Sohn et al. 2020) in plain PyTorch: the weak view (flip +
integer translation) and the strong view (weak + RandAugment with random magnitudes +
Cutout), batched over (N, C, H, W) tensors in [0, 1] on any device, seeded by a Generator.
"""

from __future__ import annotations

import numbers
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from .._validate import as_bool, as_interval

__all__ = ["WeakAugment", "StrongAugment", "STRONG_OPS", "digits_augment", "cifar_augment"]

#: FixMatch's RandAugment op list (the paper's Table 12), the default of ``StrongAugment``.
STRONG_OPS: tuple[str, ...] = (
    "identity",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
)

# Range each op's magnitude is drawn from, uniformly and per sample ("RandAugment with
# random magnitude"). The blend factors span [0.05, 1.95], both sides of the identity
# (factor 1), so an op can weaken or strengthen its property.
_RANGES: Dict[str, Tuple[float, float]] = {
    "brightness": (0.05, 1.95),
    "color": (0.05, 1.95),
    "contrast": (0.05, 1.95),
    "sharpness": (0.05, 1.95),
    "posterize": (4.0, 8.0),  # bits kept, an integer
    "rotate": (-30.0, 30.0),  # degrees
    "shear_x": (-0.3, 0.3),
    "shear_y": (-0.3, 0.3),
    "solarize": (0.0, 1.0),  # threshold
    "translate_x": (-0.3, 0.3),  # fraction of the width
    "translate_y": (-0.3, 0.3),  # fraction of the height
}

# ITU-R 601-2 luma, the weights PIL's "L" conversion uses for the grey version of RGB.
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------- validation


def _as_ops(ops: Sequence[str] | None) -> tuple[str, ...]:
    if ops is None:
        return STRONG_OPS
    # A bare string is a Sequence too; "rotate" would otherwise read as six unknown ops.
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise TypeError(
            f"`ops` must be a sequence of op names such as ['rotate'] (got ops={ops!r})"
        )
    ops = tuple(ops)
    if not ops:
        raise ValueError(
            f"`ops` must name at least one op (got ops=[]); allowed: {list(STRONG_OPS)}"
        )
    unknown = [op for op in ops if op not in STRONG_OPS]
    if unknown:
        raise ValueError(f"`ops` has unknown op(s) {unknown}; allowed: {list(STRONG_OPS)}")
    return ops


def _check_input(x: object, generator: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor (got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(
            f"`x` must be a floating-point tensor with values in [0, 1] (got dtype {x.dtype})"
        )
    if x.dim() != 4 or min(x.shape[1:]) < 1:
        raise ValueError(
            f"`x` must be a (N, C, H, W) tensor with C, H, W >= 1 (got shape {tuple(x.shape)})"
        )
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator or None (got {type(generator).__name__})"
            )
        if generator.device.type != x.device.type:
            raise ValueError(
                f"`generator` must be on the device of `x` (got generator on {generator.device}, "
                f"x on {x.device})"
            )


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # Half types go through float32: grid_sample, conv2d and the rounding to 8-bit levels
    # are either missing or too coarse for them on CPU.
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


# --------------------------------------------------------------------------- geometry


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill: float) -> torch.Tensor:
    """Translate each image by whole pixels (``out[i, j] = x[i - dy, j - dx]``), ``fill``
    where the source lies outside: two gathers, exact (no resampling), any per-sample shift."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]  # (n, h) source row
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]  # (n, w) source column
    row_in, col_in = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
    inside = row_in[:, None, :, None] & col_in[:, None, None, :]
    out = x.gather(2, rows.clamp(0, h - 1)[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols.clamp(0, w - 1)[:, None, None, :].expand(n, c, h, w))
    return out.masked_fill(~inside, fill)


def _affine(x: torch.Tensor, a: torch.Tensor, fill: float) -> torch.Tensor:
    """Resample each image through its own 2x2 map ``a`` (n, 2, 2) about the image centre,
    taking output pixel coordinates to input ones (both in pixels, so non-square images
    rotate without stretching), bilinear, ``fill`` outside."""
    _, _, h, w = x.shape
    half = torch.tensor([w / 2.0, h / 2.0], dtype=x.dtype, device=x.device)
    # affine_grid works in coordinates normalised to [-1, 1] per axis: conjugate the
    # pixel-space map by the per-axis scale.
    theta = torch.zeros((x.shape[0], 2, 3), dtype=x.dtype, device=x.device)
    theta[:, :, :2] = a * half[None, None, :] / half[None, :, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with zeros only: sampling (x - fill) and adding fill back pads with
    # fill, and blends border pixels towards it as a fill-padded image would.
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def _lerp(m: torch.Tensor, name: str) -> torch.Tensor:
    lo, hi = _RANGES[name]
    return lo + (hi - lo) * m


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(n, 1, H, W) grey version: luma for RGB, the channel mean for other channel counts."""
    c = x.shape[1]
    if c == 1:
        return x
    if c == 3:
        wts = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
        return (x * wts[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _blend(base: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # PIL's ImageEnhance convention: factor 0 gives `base`, 1 the image, > 1 extrapolates.
    return base + factor.view(-1, 1, 1, 1) * (x - base)


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit level (0..255, int64) of each value, as PIL would see the image."""
    return (x * 255.0).round_().clamp_(0, 255).long()


# --------------------------------------------------------------------------- the ops
# Each takes (n, C, H, W) images in [0, 1], magnitudes m (n,) uniform in [0, 1] and the
# fill value, and returns new (n, C, H, W) images (clamped by the caller).


def _op_autocontrast(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    # A constant channel has nothing to stretch: PIL leaves it unchanged.
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def _op_brightness(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, _lerp(m, "brightness"))


def _op_color(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    if x.shape[1] == 1:
        return x  # a grey image has no colour to change
    return _blend(_grey(x), x, _lerp(m, "color"))


def _op_contrast(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, _lerp(m, "contrast"))


def _op_equalize(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels: level v goes to
    round(255 * (cdf(v) - cdf_min) / (n_pixels - cdf_min)), the textbook map. (PIL's variant
    divides by (n_pixels - count of the top level) // 255, which is 0 - no change - for any
    image under 256 pixels, e.g. 8x8 digits.) All channels at once: one scatter_add
    histogram per row of a (n * C, H * W) view."""
    n, c, h, w = x.shape
    q = _to_levels(x).view(n * c, h * w)
    hist = torch.zeros((n * c, 256), dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    cdf = hist.cumsum(1)
    # cdf at the lowest level present = the count of that level.
    cdf_min = cdf.gather(1, q.amin(1, keepdim=True))
    denom = h * w - cdf_min  # 0 for a constant channel
    lut = ((cdf - cdf_min).clamp_min(0).to(x.dtype) * 255.0 / denom.clamp_min(1)).round_()
    out = lut.gather(1, q) / 255.0
    out = torch.where(denom > 0, out, x.reshape(n * c, h * w))
    return out.view(n, c, h, w)


def _op_posterize(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    # Bits uniform over the integers 4..8 (5 equally likely values).
    bits = (4 + (m * 5).floor().long()).clamp_(max=8)
    step = (1 << (8 - bits)).view(-1, 1, 1, 1)  # keep the top `bits` bits of the 8-bit level
    out = torch.div(_to_levels(x), step, rounding_mode="floor") * step
    # 8 bits keeps the image as it is, not its 8-bit rounding.
    return torch.where(bits.view(-1, 1, 1, 1) == 8, x, out.to(x.dtype) / 255.0)


def _op_rotate(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    t = torch.deg2rad(_lerp(m, "rotate"))
    cos, sin = torch.cos(t), torch.sin(t)
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return _affine(x, a, fill)


def _op_sharpness(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    n, c, h, w = x.shape
    if h < 3 or w < 3:
        return x  # no interior: PIL's smoothed image keeps the border pixels as they are
    kernel = torch.ones((3, 3), dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)  # PIL's SMOOTH filter, one per channel
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(smooth, x, _lerp(m, "sharpness"))


def _shear(x: torch.Tensor, m: torch.Tensor, fill: float, axis: int) -> torch.Tensor:
    s = _lerp(m, "shear_x" if axis == 0 else "shear_y")
    a = torch.eye(2, dtype=x.dtype, device=x.device).repeat(x.shape[0], 1, 1)
    # Shear about the centre (PIL's shear in FixMatch pivots on the top-left corner, which
    # also shifts the content; the translate ops already cover that).
    a[:, axis, 1 - axis] = s
    return _affine(x, a, fill)


def _op_shear_x(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    return _shear(x, m, fill, 0)


def _op_shear_y(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    return _shear(x, m, fill, 1)


def _op_solarize(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    thr = _lerp(m, "solarize").view(-1, 1, 1, 1)
    return torch.where(x > thr, 1.0 - x, x)


def _op_translate(x: torch.Tensor, m: torch.Tensor, fill: float, axis: int) -> torch.Tensor:
    side = x.shape[3] if axis == 0 else x.shape[2]
    # Whole pixels, as PIL's nearest-neighbour transform in FixMatch gives, and exact.
    k = (_lerp(m, "translate_x" if axis == 0 else "translate_y") * side).round().long()
    zero = torch.zeros_like(k)
    return _shift(x, zero, k, fill) if axis == 0 else _shift(x, k, zero, fill)


def _op_translate_x(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    return _op_translate(x, m, fill, 0)


def _op_translate_y(x: torch.Tensor, m: torch.Tensor, fill: float) -> torch.Tensor:
    return _op_translate(x, m, fill, 1)


_OPS: Dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "autocontrast": _op_autocontrast,
    "brightness": _op_brightness,
    "color": _op_color,
    "contrast": _op_contrast,
    "equalize": _op_equalize,
    "posterize": _op_posterize,
    "rotate": _op_rotate,
    "sharpness": _op_sharpness,
    "shear_x": _op_shear_x,
    "shear_y": _op_shear_y,
    "solarize": _op_solarize,
    "translate_x": _op_translate_x,
    "translate_y": _op_translate_y,
}


# --------------------------------------------------------------------------- public classes


class WeakAugment:
    """FixMatch's weak view: a horizontal flip with probability 1/2, then a random
    translation by whole pixels.

    Parameters
    ----------
    flip : bool
        Mirror left-right with probability 1/2 (default True; off for digits).
    translate : float in [0, 0.5)
        Largest shift as a fraction of the side: each sample moves by an integer drawn
        uniformly from [-round(translate * W), round(translate * W)] in x and likewise in y
        (Python's ``round``; default 0.125, i.e. 4 px on 32x32, 1 px on 8x8).
    fill : float in [0, 1]
        Value of the pixels the shift uncovers (default 0.5, mid-grey).

    Notes
    -----
    ``aug(x, generator=None)``: ``x`` a floating-point (N, C, H, W) tensor with values in
    [0, 1] on any device; ``generator`` a ``torch.Generator`` on the device of ``x`` (None:
    torch's global RNG) from which every random draw is taken. Returns a new tensor of the
    same shape, dtype and device, clamped to [0, 1]; ``x`` is not modified.
    """

    def __init__(self, flip: bool = True, translate: float = 0.125, fill: float = 0.5) -> None:
        self.flip = as_bool(flip, "flip")
        self.translate = as_interval(translate, "translate", 0.0, 0.5, open_high=True)
        self.fill = as_interval(fill, "fill", 0.0, 1.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_input(x, generator)
        out = self._apply(x.to(_work_dtype(x)), generator)
        if out is x:
            out = out.clone()  # the caller owns the result: never hand back the input
        return out.clamp_(0.0, 1.0).to(x.dtype)

    def _apply(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip + shift without checks or clamping; may return ``x`` itself when both are off."""
        n, _, h, w = x.shape
        if self.flip:
            mirror = (
                torch.rand((n,), generator=generator, device=x.device, dtype=torch.float32) < 0.5
            )
            x = torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)
        max_dx, max_dy = round(self.translate * w), round(self.translate * h)
        if max_dx > 0 or max_dy > 0:
            dx = torch.randint(-max_dx, max_dx + 1, (n,), generator=generator, device=x.device)
            dy = torch.randint(-max_dy, max_dy + 1, (n,), generator=generator, device=x.device)
            x = _shift(x, dy, dx, self.fill)
        return x

    def __repr__(self) -> str:
        return f"WeakAugment(flip={self.flip}, translate={self.translate}, fill={self.fill})"


class StrongAugment:
    """FixMatch's strong view: the weak flip + translation, then RandAugment with random
    magnitudes, then Cutout.

    For each sample, ``n_ops`` ops are drawn uniformly with replacement from ``ops`` and
    applied in turn, each at a magnitude drawn uniformly from its range:

    ============== =====================================================================
    identity       the image as it is
    autocontrast   stretch each channel's [min, max] to [0, 1] (constant channels kept)
    brightness     blend with black, factor in [0.05, 1.95]
    color          blend with the grey image, factor in [0.05, 1.95]; none for C=1
    contrast       blend with the image's mean grey level, factor in [0.05, 1.95]
    equalize       histogram equalisation per channel on 256 levels
    posterize      keep the top 4..8 bits of each 8-bit level
    rotate         rotate about the centre by -30..30 degrees (bilinear)
    sharpness      blend with the 3x3-smoothed image, factor in [0.05, 1.95]
    shear_x/_y     shear about the centre by -0.3..0.3 (bilinear)
    solarize       invert (1 - v) the values above a threshold in [0, 1]
    translate_x/_y shift by -0.3..0.3 of the side, rounded to whole pixels
    ============== =====================================================================

    A blend with factor f is ``base + f * (x - base)``: f = 1 is the identity. Grey is the
    luma (0.299 R + 0.587 G + 0.114 B) for C = 3, the channel mean for other C. Uncovered
    pixels of the geometric ops take ``fill``; every op's result is clamped to [0, 1].
    Cutout then sets a square of side ``round(cutout * min(H, W))`` (at least 1 px when
    ``cutout > 0``) centred on a uniformly drawn pixel, clipped at the borders, to ``fill``.

    Parameters
    ----------
    n_ops : int >= 0
        Ops applied per sample (default 2, FixMatch's N).
    flip, translate, fill
        As in :class:`WeakAugment` (defaults True, 0.125, 0.5).
    cutout : float in [0, 1]
        Side of the Cutout square as a fraction of the shorter side (default 0.5, 16 px on
        32x32); 0 turns Cutout off.
    ops : sequence of str, optional
        Names from ``STRONG_OPS`` to draw from (default: all of them). A name listed twice
        is drawn twice as often.

    Notes
    -----
    Called as :class:`WeakAugment`. Vectorised over the batch: for each op slot and each
    op, the samples that drew it are transformed in one batched call.
    """

    def __init__(
        self,
        n_ops: int = 2,
        flip: bool = True,
        translate: float = 0.125,
        cutout: float = 0.5,
        fill: float = 0.5,
        ops: Sequence[str] | None = None,
    ) -> None:
        if isinstance(n_ops, bool) or not isinstance(n_ops, numbers.Integral):
            raise TypeError(f"`n_ops` must be an integer (got n_ops={n_ops!r})")
        if n_ops < 0:
            raise ValueError(f"`n_ops` must be >= 0 (got n_ops={n_ops})")
        self.n_ops = int(n_ops)
        self._weak = WeakAugment(flip=flip, translate=translate, fill=fill)
        self.flip = self._weak.flip
        self.translate = self._weak.translate
        self.fill = self._weak.fill
        self.cutout = as_interval(cutout, "cutout", 0.0, 1.0)
        self.ops = _as_ops(ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_input(x, generator)
        work = x.to(_work_dtype(x))
        out = self._weak._apply(work, generator)
        if out is x:
            out = out.clone()  # written in place below; never the caller's tensor
        n, _, h, w = out.shape
        dev = out.device
        if self.n_ops > 0 and n > 0:
            choice = torch.randint(len(self.ops), (n, self.n_ops), generator=generator, device=dev)
            # float32 draws whatever the image dtype: the same seed gives the same views
            # for float32 and float64 batches.
            mag = torch.rand((n, self.n_ops), generator=generator, device=dev, dtype=torch.float32)
            for k in range(self.n_ops):
                for j, name in enumerate(self.ops):
                    if name == "identity":
                        continue
                    idx = (choice[:, k] == j).nonzero().squeeze(1)
                    if idx.numel() == 0:
                        continue
                    y = _OPS[name](out.index_select(0, idx), mag[idx, k].to(out.dtype), self.fill)
                    # Clamp after every op: the next one (solarize, posterize, ...) expects
                    # [0, 1], as PIL's 8-bit images guarantee between ops.
                    out.index_copy_(0, idx, y.clamp(0.0, 1.0))
        side = _cutout_side(self.cutout, h, w)
        if side > 0 and n > 0:
            cy = torch.randint(h, (n,), generator=generator, device=dev)
            cx = torch.randint(w, (n,), generator=generator, device=dev)
            y0, x0 = cy - side // 2, cx - side // 2
            rows = torch.arange(h, device=dev)[None, :]
            cols = torch.arange(w, device=dev)[None, :]
            in_r = (rows >= y0[:, None]) & (rows < (y0 + side)[:, None])
            in_c = (cols >= x0[:, None]) & (cols < (x0 + side)[:, None])
            out.masked_fill_(in_r[:, None, :, None] & in_c[:, None, None, :], self.fill)
        return out.clamp_(0.0, 1.0).to(x.dtype)

    def __repr__(self) -> str:
        return (
            f"StrongAugment(n_ops={self.n_ops}, flip={self.flip}, translate={self.translate}, "
            f"cutout={self.cutout}, fill={self.fill}, ops={list(self.ops)})"
        )


def _cutout_side(cutout: float, h: int, w: int) -> int:
    """Side in pixels of the Cutout square on an H x W image: ``round(cutout * min(H, W))``,
    at least 1 when ``cutout > 0``, 0 when it is 0."""
    if cutout <= 0:
        return 0
    return max(1, min(round(cutout * min(h, w)), min(h, w)))


def digits_augment() -> tuple[WeakAugment, StrongAugment]:
    """Weak and strong augmentations for 8x8 grey digits (black background).

    No flips (a mirrored 2 or 7 is not a digit), 1-px translations (0.125 of 8), black
    fill, a 2-px Cutout (0.25 of 8), and no "color" op (a grey image has none).

    Returns
    -------
    (WeakAugment, StrongAugment)
    """
    ops = tuple(op for op in STRONG_OPS if op != "color")
    weak = WeakAugment(flip=False, translate=0.125, fill=0.0)
    strong = StrongAugment(n_ops=2, flip=False, translate=0.125, cutout=0.25, fill=0.0, ops=ops)
    return weak, strong


def cifar_augment() -> tuple[WeakAugment, StrongAugment]:
    """FixMatch's CIFAR augmentations: flips, 4-px translations (0.125 of 32), mid-grey
    fill, 2 RandAugment ops from the full list, a 16-px Cutout (0.5 of 32).

    Returns
    -------
    (WeakAugment, StrongAugment)
    """
    return WeakAugment(flip=True, translate=0.125, fill=0.5), StrongAugment(
        n_ops=2, flip=True, translate=0.125, cutout=0.5, fill=0.5, ops=None
    )
