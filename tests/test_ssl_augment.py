"""Tests of usl_fast.ssl.augment (FixMatch's weak and strong image augmentations in torch):
each op's result is checked against a computation written here, on hand-made images,
plus the contract (shape, dtype, device, range, no in-place change, seeding) and errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from usl_fast.ssl.augment import (  # noqa: E402
    STRONG_OPS,
    StrongAugment,
    WeakAugment,
    cifar_augment,
    digits_augment,
)

LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_op(name: str, fill: float = 0.5, n_ops: int = 1) -> StrongAugment:
    """The op alone: no flip, no translation, no Cutout."""
    return StrongAugment(n_ops=n_ops, flip=False, translate=0.0, cutout=0.0, fill=fill, ops=[name])


def levels(shape, seed: int = 0, low: int = 0, high: int = 256) -> torch.Tensor:
    """Images whose values are exact 8-bit levels k / 255 (no rounding ambiguity)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g).float() / 255.0


def shift_fill(img: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Move a (C, H, W) image down by dy and right by dx, `fill` in the uncovered band."""
    out = torch.roll(img, shifts=(dy, dx), dims=(1, 2)).clone()
    if dy > 0:
        out[:, :dy] = fill
    elif dy < 0:
        out[:, dy:] = fill
    if dx > 0:
        out[:, :, :dx] = fill
    elif dx < 0:
        out[:, :, dx:] = fill
    return out


def find_shift(out, img, max_dy, max_dx, fill, atol=0.0):
    """The (dy, dx) within range such that `out` is `img` shifted by it, or None."""
    for dy in range(-max_dy, max_dy + 1):
        for dx in range(-max_dx, max_dx + 1):
            if torch.allclose(out, shift_fill(img, dy, dx, fill), rtol=0, atol=atol):
                return dy, dx
    return None


def fit_factor(out, x, base):
    """Least-squares f in out = base + f * (x - base), per image; and the worst residual."""
    d, e = (x - base).flatten(1), (out - base).flatten(1)
    f = (d * e).sum(1) / (d * d).sum(1)
    resid = (e - f[:, None] * d).abs().amax(1)
    return f, resid


# --------------------------------------------------------------------------- contract


AUGS = {
    "weak": lambda: WeakAugment(),
    "weak_noflip": lambda: WeakAugment(flip=False, translate=0.25, fill=0.0),
    "strong": lambda: StrongAugment(),
    "strong_digits": lambda: digits_augment()[1],
    "strong_3ops": lambda: StrongAugment(n_ops=3, cutout=1.0, fill=0.1),
}


@pytest.mark.parametrize("aug_name", list(AUGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(40, 3, 32, 32), (40, 1, 8, 8), (30, 2, 9, 13), (20, 4, 1, 5)])
def test_contract_shape_dtype_range_no_inplace(aug_name, dtype, shape):
    x = torch.rand(shape, generator=gen(1), dtype=dtype)
    before = x.clone()
    out = AUGS[aug_name]()(x, gen(2))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.data_ptr() != x.data_ptr()
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before)  # the input is never modified


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes_come_back_as_given(dtype):
    x = torch.rand(16, 3, 16, 16, generator=gen(1)).to(dtype)
    for aug in (WeakAugment(), StrongAugment()):
        out = aug(x, gen(3))
        assert out.dtype == dtype and out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_kept_and_seeded():
    x = torch.rand(64, 3, 32, 32, device="cuda")
    for aug in (WeakAugment(), StrongAugment()):
        a = aug(x, torch.Generator(device="cuda").manual_seed(5))
        b = aug(x, torch.Generator(device="cuda").manual_seed(5))
        assert a.device == x.device and a.dtype == x.dtype
        assert torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1


def test_empty_batch():
    x = torch.rand(0, 3, 8, 8)
    assert WeakAugment()(x).shape == x.shape
    assert StrongAugment()(x, gen()).shape == x.shape


@pytest.mark.parametrize("aug", [WeakAugment(), StrongAugment(), digits_augment()[1]], ids=repr)
def test_seeding(aug):
    x = torch.rand(64, 3, 16, 16, generator=gen(0))
    a, b = aug(x, gen(7)), aug(x, gen(7))
    assert torch.equal(a, b)  # same seed, same views
    assert not torch.equal(a, aug(x, gen(8)))  # another seed, other views
    # None: torch's global RNG, reproducible through torch.manual_seed.
    torch.manual_seed(11)
    c = aug(x)
    torch.manual_seed(11)
    assert torch.equal(c, aug(x))


def test_float64_gives_the_float32_views():
    # The draws do not depend on the dtype; ops without 8-bit rounding or thresholds give
    # the same images up to float32 precision.
    ops = [
        "identity",
        "brightness",
        "color",
        "contrast",
        "rotate",
        "sharpness",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
    ]
    aug = StrongAugment(ops=ops)
    x = torch.rand(64, 3, 16, 16, generator=gen(0))
    a, b = aug(x, gen(4)), aug(x.double(), gen(4))
    torch.testing.assert_close(b.float(), a, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- weak


def test_weak_off_is_identity():
    x = torch.rand(10, 3, 8, 8, generator=gen(0))
    out = WeakAugment(flip=False, translate=0.0)(x, gen())
    assert torch.equal(out, x) and out is not x


def test_weak_translate_is_an_integer_shift_with_fill():
    h, w, fill = 16, 24, 0.3
    img = torch.rand(2, h, w, generator=gen(0)) * 0.2 + 0.5  # never equal to fill
    x = img[None].repeat(300, 1, 1, 1)
    out = WeakAugment(flip=False, translate=0.125, fill=fill)(x, gen(1))
    max_dy, max_dx = round(0.125 * h), round(0.125 * w)  # 2, 3
    seen = set()
    for o in out:
        s = find_shift(o, img, max_dy, max_dx, fill)
        assert s is not None, "output is not an in-range integer shift of the input"
        seen.add(s)
    # Each sample draws its own shift, uniform over the range: all 5 x 7 appear.
    assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-3, 4)}


def test_weak_flip_is_mirror_or_not():
    img = torch.rand(3, 8, 8, generator=gen(0))
    x = img[None].repeat(200, 1, 1, 1)
    out = WeakAugment(flip=True, translate=0.0)(x, gen(2))
    same = (out == img).flatten(1).all(1)
    mirrored = (out == img.flip(2)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 60 <= int(mirrored.sum()) <= 140  # probability 1/2


# --------------------------------------------------------------------------- each op


def test_op_identity_exact():
    x = torch.rand(50, 3, 7, 9, generator=gen(0))
    assert torch.equal(one_op("identity")(x, gen()), x)


def test_n_ops_zero_is_identity():
    x = torch.rand(20, 3, 8, 8, generator=gen(0))
    aug = StrongAugment(n_ops=0, flip=False, translate=0.0, cutout=0.0)
    assert torch.equal(aug(x, gen()), x)


def test_op_solarize_inverts_exactly_the_values_above_a_threshold():
    # 16 distinct levels, none at 0.5 (where x and 1 - x coincide).
    img = (torch.arange(16, dtype=torch.float32) * 16 + 3).view(1, 4, 4) / 255.0
    x = img[None].repeat(200, 1, 1, 1)
    out = one_op("solarize")(x, gen(3))
    counts = []
    for o in out:
        inv = torch.isclose(o, 1 - img, atol=1e-6)
        kept = o == img
        assert (inv ^ kept).all()
        if inv.any() and kept.any():
            assert img[inv].min() > img[kept].max()  # a threshold separates them
        counts.append(int(inv.sum()))
    # Threshold uniform in [0, 1]: from none to all of the pixels inverted.
    assert min(counts) <= 1 and max(counts) >= 15


def test_op_posterize_keeps_4_to_8_bits():
    img = levels((3, 6, 6), seed=1)
    q = (img * 255).round().long()
    x = img[None].repeat(200, 1, 1, 1)
    out = one_op("posterize")(x, gen(4))
    bits_seen = []
    for o in out:
        match = [
            b for b in range(4, 9) if torch.equal(o, ((q >> (8 - b)) << (8 - b)).float() / 255.0)
        ]
        assert match, "not a posterization to 4..8 bits"
        bits_seen.append(match[-1])
    assert set(bits_seen) == {4, 5, 6, 7, 8}


def test_op_autocontrast_stretches_each_channel():
    img = torch.stack(
        [
            0.2 + 0.5 * torch.rand(5, 6, generator=gen(0)),
            torch.full((5, 6), 0.3),  # constant: left as it is
            torch.rand(5, 6, generator=gen(1)) * 0.1 + 0.45,
        ]
    )
    out = one_op("autocontrast")(img[None].repeat(4, 1, 1, 1), gen())
    for c in (0, 2):
        ch = img[c]
        expect = (ch - ch.min()) / (ch.max() - ch.min())
        torch.testing.assert_close(out[:, c], expect.expand(4, -1, -1), rtol=0, atol=1e-6)
        assert out[:, c].amin() == 0 and out[:, c].amax() == 1
    assert torch.equal(out[:, 1], img[1].expand(4, -1, -1))


def reference_equalize(ch: torch.Tensor) -> torch.Tensor:
    """Textbook equalisation of one channel of 8-bit levels, by counting."""
    q = (ch.double() * 255).round().long().flatten()
    vals, counts = torch.unique(q, return_counts=True)
    if len(vals) == 1:
        return ch.clone()
    cdf = torch.cumsum(counts, 0)
    total, cdf_min = q.numel(), int(counts[0])
    lut = {int(v): round(255 * (int(c) - cdf_min) / (total - cdf_min)) for v, c in zip(vals, cdf)}
    return torch.tensor([lut[int(v)] for v in q], dtype=ch.dtype).view(ch.shape) / 255.0


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8), (2, 5, 7)])
def test_op_equalize_matches_reference(shape):
    img = levels(shape, seed=2, high=200)
    img[0, 0, 0] = 0.0  # a black pixel, as on digits
    if shape[0] > 1:
        img[1] = 0.4  # a constant channel stays as it is
    out = one_op("equalize")(img[None], gen())[0]
    for c in range(shape[0]):
        torch.testing.assert_close(out[c], reference_equalize(img[c]), rtol=0, atol=1e-6)
        if len(torch.unique(img[c])) > 1:
            # A monotone map of the input onto the full range.
            order = torch.argsort(img[c].flatten())
            assert (torch.diff(out[c].flatten()[order]) >= 0).all()
            assert out[c].min() == 0 and out[c].max() == 1


def test_op_equalize_flattens_the_histogram():
    u = torch.rand(1, 1, 64, 64, generator=gen(3))
    x = (u**2 * 255).round() / 255  # skewed towards dark, on 8-bit levels
    out = one_op("equalize")(x, gen())
    for p in (0.25, 0.5, 0.75):
        assert abs(float((out <= p).float().mean()) - p) < 0.03
    assert float((x <= 0.25).float().mean()) > 0.45  # the input was far from flat (0.5)


def test_op_brightness_scales_by_a_factor_in_range():
    x = torch.rand(300, 3, 5, 5, generator=gen(0)) * 0.45 + 0.05  # 1.95 * 0.5 < 1: no clamp
    out = one_op("brightness")(x, gen(5))
    f, resid = fit_factor(out, x, torch.zeros_like(x))
    assert resid.max() < 1e-5
    assert f.min() >= 0.05 - 1e-5 and f.max() <= 1.95 + 1e-5
    assert f.min() < 0.15 and f.max() > 1.85  # uniform over the range


def test_op_contrast_blends_with_the_mean_grey():
    x = torch.rand(300, 3, 6, 6, generator=gen(0)) * 0.2 + 0.4
    out = one_op("contrast")(x, gen(6))
    grey = (x.double() * LUMA[None, :, None, None]).sum(1, keepdim=True)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True).float().expand_as(x)
    f, resid = fit_factor(out, x, mean)
    assert resid.max() < 1e-5
    assert f.min() >= 0.05 - 1e-4 and f.max() <= 1.95 + 1e-4
    assert f.min() < 0.15 and f.max() > 1.85


def test_op_contrast_grey_image_uses_its_mean():
    x = torch.rand(50, 1, 6, 6, generator=gen(0)) * 0.2 + 0.4
    out = one_op("contrast")(x, gen(6))
    f, resid = fit_factor(out, x, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
    assert resid.max() < 1e-5


def test_op_color_blends_with_the_grey_image():
    x = torch.rand(300, 3, 6, 6, generator=gen(0)) * 0.2 + 0.4
    out = one_op("color")(x, gen(7))
    grey = (x.double() * LUMA[None, :, None, None]).sum(1, keepdim=True).float().expand_as(x)
    f, resid = fit_factor(out, x, grey)
    assert resid.max() < 1e-5
    assert f.min() >= 0.05 - 1e-4 and f.max() <= 1.95 + 1e-4
    # A grey image has no colour: unchanged.
    g1 = torch.rand(20, 1, 6, 6, generator=gen(1))
    assert torch.equal(one_op("color")(g1, gen()), g1)


def test_op_sharpness_blends_with_the_smoothed_image():
    x = torch.rand(200, 2, 6, 7, generator=gen(0)) * 0.2 + 0.4
    out = one_op("sharpness")(x, gen(8))
    smooth = x.clone()
    k = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    for i in range(1, 5):
        for j in range(1, 6):
            smooth[:, :, i, j] = (x[:, :, i - 1 : i + 2, j - 1 : j + 2] * k).sum((2, 3))
    f, resid = fit_factor(out, x, smooth)
    assert resid.max() < 1e-5
    assert f.min() >= 0.05 - 1e-3 and f.max() <= 1.95 + 1e-3
    # The border has no 3x3 neighbourhood: kept.
    border = torch.ones(6, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(out[:, :, border], x[:, :, border])
    # A constant image is as sharp as it gets.
    c = torch.full((10, 3, 8, 8), 0.7)
    torch.testing.assert_close(one_op("sharpness")(c, gen()), c, rtol=0, atol=1e-6)


def centred_coords(h, w):
    yy, xx = torch.meshgrid(
        torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij"
    )
    return yy.float(), xx.float()


def test_op_rotate_constant_interior_and_fill_corners():
    c, fill = 0.8, 0.2
    x = torch.full((100, 3, 32, 32), c)
    out = one_op("rotate", fill=fill)(x, gen(9))
    yy, xx = centred_coords(32, 32)
    disc = (yy**2 + xx**2).sqrt() <= 14
    torch.testing.assert_close(out[:, :, disc], x[:, :, disc], rtol=0, atol=1e-5)
    # The corners come from outside the image for all but tiny angles.
    corner_moved = (out[:, 0, 0, 0] - c).abs() > 0.1
    assert corner_moved.float().mean() > 0.8


def test_op_rotate_about_the_centre_in_range():
    n, s = 200, 33
    yy, xx = centred_coords(s, s)
    blob = torch.exp(-(yy**2 + xx**2) / (2 * 4.0**2))  # rotation-invariant
    out = one_op("rotate", fill=0.0)(blob.expand(n, 1, s, s), gen(10))
    torch.testing.assert_close(out, blob.expand(n, 1, s, s), rtol=0, atol=0.02)
    # A horizontal bar through the centre: its orientation is the angle.
    bar = ((yy.abs() <= 1) & (xx.abs() <= 10)).float()
    out = one_op("rotate", fill=0.0)(bar.expand(n, 1, s, s), gen(11))[:, 0].double()
    m = out.sum((1, 2))
    cy, cx = (out * yy).sum((1, 2)) / m, (out * xx).sum((1, 2)) / m
    assert cy.abs().max() < 0.05 and cx.abs().max() < 0.05  # pivot at the centre
    mu20 = (out * (xx - cx[:, None, None]) ** 2).sum((1, 2))
    mu02 = (out * (yy - cy[:, None, None]) ** 2).sum((1, 2))
    mu11 = (out * (xx - cx[:, None, None]) * (yy - cy[:, None, None])).sum((1, 2))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))
    assert angle.abs().max() <= 31
    assert angle.min() < -25 and angle.max() > 25


@pytest.mark.parametrize("name", ["shear_x", "shear_y"])
def test_op_shear_keeps_lines_along_its_axis_and_slope_in_range(name):
    n, s = 200, 33
    yy, xx = centred_coords(s, s)
    # shear_x moves pixels along x by s * y: an image constant along x stays as it is
    # wherever the source is inside (|x| <= 16 - 0.3 * 16 - 1).
    ramp = (yy + 16.5) / 33 if name == "shear_x" else (xx + 16.5) / 33
    along = xx if name == "shear_x" else yy
    out = one_op(name, fill=0.0)(ramp.expand(n, 1, s, s), gen(12))
    safe = along.abs() <= 10
    torch.testing.assert_close(out[:, 0][:, safe], ramp.expand(n, s, s)[:, safe], rtol=0, atol=1e-5)
    # A line across its axis through the centre comes out with slope -s, |s| <= 0.3.
    line = (
        ((xx.abs() < 0.5) & (yy.abs() <= 12))
        if name == "shear_x"
        else ((yy.abs() < 0.5) & (xx.abs() <= 12))
    )
    out = one_op(name, fill=0.0)(line.float().expand(n, 1, s, s), gen(13))[:, 0].double()
    if name == "shear_y":
        out, yy_, xx_ = out.transpose(1, 2), xx.T, yy.T
    else:
        yy_, xx_ = yy, xx
    rows = slice(6, 27)  # |y| <= 10
    w = out[:, rows]
    pos = (w * xx_[rows]).sum(2) / w.sum(2)  # where the line is on each row
    ys = yy_[rows, 0].double()
    slope = (pos * ys).sum(1) / (ys * ys).sum()
    assert slope.abs().max() <= 0.3 + 1e-3
    assert slope.min() < -0.25 and slope.max() > 0.25


@pytest.mark.parametrize("name", ["translate_x", "translate_y"])
def test_op_translate_is_a_whole_pixel_shift_in_range(name):
    h, w, fill = 10, 20, 0.25
    img = torch.rand(2, h, w, generator=gen(0)) * 0.3 + 0.6
    out = one_op(name, fill=fill)(img[None].repeat(400, 1, 1, 1), gen(14))
    max_dy, max_dx = (0, round(0.3 * w)) if name == "translate_x" else (round(0.3 * h), 0)
    ks = []
    for o in out:
        sft = find_shift(o, img, max_dy, max_dx, fill, atol=0)
        assert sft is not None
        ks.append(sft[1] if name == "translate_x" else sft[0])
    k_max = max_dx or max_dy
    assert min(ks) == -k_max and max(ks) == k_max


@pytest.mark.parametrize("name", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_geometric_ops_keep_a_constant_image_constant_in_the_middle(name):
    x = torch.full((60, 1, 32, 32), 0.9)
    out = one_op(name, fill=0.0)(x, gen(15))
    torch.testing.assert_close(out[:, :, 12:20, 12:20], x[:, :, 12:20, 12:20], rtol=0, atol=1e-5)


def test_n_ops_composes_ops():
    # Two translate_x per sample: total shifts beyond one op's range appear.
    h, w, fill = 4, 20, 0.0
    img = torch.rand(1, h, w, generator=gen(0)) * 0.5 + 0.5
    out = one_op("translate_x", fill=fill, n_ops=2)(img[None].repeat(300, 1, 1, 1), gen(16))
    big = 0
    for o in out:
        # shift by a then b: the pixels of img[j - a - b] where both intermediate sources
        # are inside, fill elsewhere.
        found = False
        for a in range(-6, 7):
            for b in range(-6, 7):
                if torch.equal(o, shift_fill(shift_fill(img, 0, a, fill), 0, b, fill)):
                    found, big = True, big + (abs(a + b) > 6)
                    break
            if found:
                break
        assert found
    assert big > 10


def test_all_default_ops_on_odd_sizes():
    for shape in [(200, 3, 5, 7), (200, 1, 2, 3), (50, 3, 1, 1)]:
        x = torch.rand(shape, generator=gen(0))
        out = StrongAugment(n_ops=3)(x, gen(17))
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------- cutout


@pytest.mark.parametrize(
    "h, w, cutout, side",
    [(32, 32, 0.5, 16), (8, 8, 0.25, 2), (8, 8, 0.01, 1), (10, 6, 0.5, 3), (9, 9, 1.0, 9)],
)
def test_cutout_one_square_of_the_right_side(h, w, cutout, side):
    n, fill = 300, 0.0
    x = torch.rand(n, 3, h, w, generator=gen(0)) * 0.5 + 0.5  # never equal to fill
    aug = StrongAugment(
        n_ops=1, ops=["identity"], flip=False, translate=0.0, cutout=cutout, fill=fill
    )
    out = aug(x, gen(18))
    changed = out != x
    assert (changed == changed[:, :1]).all()  # the same pixels in every channel
    assert (out[changed] == fill).all()
    full = 0
    for m in changed[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert len(rows) > 0
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert m[r0:r1, c0:c1].all() and int(m.sum()) == (r1 - r0) * (c1 - c0)  # a rectangle
        # Side `side`, or less where the square is clipped by a border.
        assert r1 - r0 == side or (r1 - r0 < side and (r0 == 0 or r1 == h))
        assert c1 - c0 == side or (c1 - c0 < side and (c0 == 0 or c1 == w))
        full += (r1 - r0 == side) and (c1 - c0 == side)
    assert full > 0.1 * n or side >= min(h, w)


def test_cutout_zero_is_off():
    x = torch.rand(20, 3, 8, 8, generator=gen(0))
    aug = StrongAugment(ops=["identity"], flip=False, translate=0.0, cutout=0.0)
    assert torch.equal(aug(x, gen()), x)


# --------------------------------------------------------------------------- presets


def test_digits_preset():
    weak, strong = digits_augment()
    assert (weak.flip, weak.translate, weak.fill) == (False, 0.125, 0.0)
    assert (strong.flip, strong.translate, strong.fill, strong.cutout) == (False, 0.125, 0.0, 0.25)
    assert strong.n_ops == 2 and "color" not in strong.ops
    assert set(strong.ops) == set(STRONG_OPS) - {"color"}
    # A left-right asymmetric digit-sized image never comes out mirrored.
    img = torch.zeros(1, 8, 8)
    img[:, 1:7, 1:3] = 1.0
    img[:, 1, 3:6] = 0.6
    x = img[None].repeat(500, 1, 1, 1)
    for o in weak(x, gen(19)):
        assert find_shift(o, img, 1, 1, 0.0) is not None
        assert find_shift(o, img.flip(2), 1, 1, 0.0) is None
    # The strong view's first stage is the same weak transform (no flip).
    first = StrongAugment(
        n_ops=0, flip=strong.flip, translate=strong.translate, cutout=0.0, fill=strong.fill
    )
    for o in first(x, gen(20)):
        assert find_shift(o, img, 1, 1, 0.0) is not None


def test_cifar_preset():
    weak, strong = cifar_augment()
    assert (weak.flip, weak.translate, weak.fill) == (True, 0.125, 0.5)
    assert (strong.flip, strong.translate, strong.fill, strong.cutout) == (True, 0.125, 0.5, 0.5)
    assert strong.n_ops == 2 and tuple(strong.ops) == STRONG_OPS
    assert STRONG_OPS == (
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


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: WeakAugment(flip=1), TypeError, "`flip` must be True or False"),
        (
            lambda: WeakAugment(translate=0.7),
            ValueError,
            r"`translate` must be in \[0, 0.5\) \(got translate=0.7\)",
        ),
        (lambda: WeakAugment(translate=0.5), ValueError, "`translate`"),
        (lambda: WeakAugment(translate=-0.1), ValueError, "`translate`"),
        (lambda: WeakAugment(translate=float("nan")), ValueError, "`translate`"),
        (lambda: WeakAugment(translate="0.1"), TypeError, "`translate` must be a real number"),
        (lambda: WeakAugment(fill=1.5), ValueError, r"`fill` must be in \[0, 1\] \(got fill=1.5\)"),
        (lambda: StrongAugment(n_ops=-1), ValueError, "`n_ops` must be >= 0"),
        (lambda: StrongAugment(n_ops=1.5), TypeError, "`n_ops` must be an integer"),
        (lambda: StrongAugment(n_ops=True), TypeError, "`n_ops`"),
        (lambda: StrongAugment(cutout=1.2), ValueError, "`cutout` must be in"),
        (lambda: StrongAugment(flip=None), TypeError, "`flip`"),
        (lambda: StrongAugment(translate=0.6), ValueError, "`translate`"),
        (lambda: StrongAugment(fill=-0.1), ValueError, "`fill`"),
        (lambda: StrongAugment(ops=[]), ValueError, "`ops` must name at least one op"),
        (lambda: StrongAugment(ops=["rotate", "blur"]), ValueError, r"unknown op\(s\) \['blur'\]"),
        (lambda: StrongAugment(ops="rotate"), TypeError, "`ops` must be a sequence"),
        (lambda: StrongAugment(ops=3), TypeError, "`ops`"),
    ],
)
def test_argument_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_unknown_op_lists_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        StrongAugment(ops=["identity", "Rotate"])
    for op in STRONG_OPS:
        assert repr(op) in str(info.value)


@pytest.mark.parametrize("aug", [WeakAugment(), StrongAugment()], ids=repr)
def test_call_errors(aug):
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        aug([[0.0]])
    with pytest.raises(TypeError, match="`x` must be a floating-point"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"`x` must be a \(N, C, H, W\)"):
        aug(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"`x` must be a \(N, C, H, W\)"):
        aug(torch.zeros(2, 3, 0, 8))
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        aug(torch.zeros(2, 3, 8, 8), 0)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="`generator` must be on the device"):
            aug(torch.zeros(2, 3, 8, 8, device="cuda"), gen())


def test_repr_names_the_settings():
    assert repr(WeakAugment(flip=False)) == "WeakAugment(flip=False, translate=0.125, fill=0.5)"
    assert "ops=['rotate']" in repr(StrongAugment(ops=["rotate"]))
