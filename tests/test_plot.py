"""usl_fast.plot: the figure renders and reads back as a real image, the rows drawn always
hold every pick and labeled point, the projection and the data preparation are right,
labels / density given are used as given, every documented error names its argument, and
the docs/plot.md example runs."""

from __future__ import annotations

import pathlib
import re
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="usl_fast.plot needs matplotlib (the 'plot' extra)")

from usl_fast import plot  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data():
    """300 unit vectors in 6 clusters (d=8), 12 picks and 8 earlier labels (2 shared)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 8))
    ids = rng.integers(0, 6, 300)
    x = centres[ids] + 0.15 * rng.standard_normal((300, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    picks = rng.choice(300, 12, replace=False)
    labeled = np.r_[picks[:2], rng.choice(np.setdiff1d(np.arange(300), picks), 6, replace=False)]
    return x, picks, labeled, ids


def legend_texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]


# --------------------------------------------------------------------------- rendering


def test_png_renders_and_reads_back(data, tmp_path):
    import matplotlib.image as mpimg
    from matplotlib.figure import Figure

    x, picks, labeled, _ = data
    out = tmp_path / "picks.png"
    fig = plot.plot_picks(x, picks, labeled=labeled, path=out, k=10)
    assert isinstance(fig, Figure)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 400 and img.shape[1] > 1000  # 13 x 5.6 in at 150 dpi, cropped
    colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # clusters, markers, anti-aliased text: not a blank page
    assert (img[..., :3] < 0.5).mean() > 0.005  # some dark ink (text, axes, stars)


@pytest.mark.parametrize("ext, head", [(".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_vector_formats(data, tmp_path, ext, head):
    x, picks, _, ids = data
    out = tmp_path / f"picks{ext.upper()}"  # the extension check ignores case
    plot.plot_picks(x, picks, labels=ids, path=out, k=10)
    assert out.read_bytes()[:5].startswith(head)


def test_legends_count_picks_labeled_and_overlap(data):
    x, picks, labeled, ids = data
    fig = plot.plot_picks(x, picks, labeled=labeled, labels=ids, k=10)
    texts = legend_texts(fig)
    assert "picks (12)" in texts
    assert "labeled earlier (8; 2 also picked)" in texts
    assert "points (300)" in texts
    assert any(t.startswith("picks (12): median at the ") for t in texts)
    assert (
        fig.axes[0].get_xlabel().startswith("PC1 (") and "% of variance" in fig.axes[0].get_xlabel()
    )
    assert "k=10" in fig.axes[1].get_xlabel()
    assert [t.get_text() for t in fig.texts] == [
        "Picks: 12 new, 8 labeled earlier, among 300 points"
    ]
    fig = plot.plot_picks(x, picks, labels=ids, k=10, title="Round 2")
    assert [t.get_text() for t in fig.texts] == ["Round 2"]  # get_suptitle: matplotlib >= 3.8
    assert not any("labeled" in t for t in legend_texts(fig))


def test_global_backend_and_pyplot_untouched(data):
    import matplotlib

    before = dict.__getitem__(matplotlib.rcParams, "backend")
    had_pyplot = "matplotlib.pyplot" in sys.modules
    x, picks, _, ids = data
    plot.plot_picks(x, picks, labels=ids, k=10)
    assert dict.__getitem__(matplotlib.rcParams, "backend") == before
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_log_axis_when_densities_span_decades(data):
    x, picks, _, ids = data
    dens = np.full(300, 2.0)
    dens[::7] = 5000.0  # exact duplicates give huge densities
    fig = plot.plot_picks(x, picks, labels=ids, density=dens)
    assert fig.axes[1].get_xscale() == "log"
    assert fig.axes[1].get_xlabel() == "density (as given), log scale"
    fig = plot.plot_picks(x, picks, labels=ids, density=np.linspace(1, 3, 300))
    assert fig.axes[1].get_xscale() == "linear"


def test_many_picks_get_smaller_marks_and_translucent_ticks(data):
    x, _, _, ids = data
    few = plot.draw(plot.prepare(x, np.arange(40), labels=ids, density=np.ones(300)))
    many = plot.draw(plot.prepare(x, np.arange(240), labels=ids, density=np.ones(300)))
    assert few.axes[0].collections[-1].get_sizes()[0] == 190
    assert many.axes[0].collections[-1].get_sizes()[0] == pytest.approx(95)  # sqrt(60 / 240)
    rug = [[ln for ln in f.axes[1].lines if ln.get_marker() == "|"][0] for f in (few, many)]
    assert rug[0].get_alpha() == 1.0
    assert rug[1].get_alpha() == pytest.approx(0.25)


# --------------------------------------------------------------------------- data preparation


def test_plotted_rows_keep_every_marked_point():
    rng = np.random.default_rng(1)
    picks = rng.choice(10_000, 30, replace=False)
    labeled = rng.choice(10_000, 25, replace=False)
    rows = plot.plotted_rows(10_000, picks, labeled, max_points=100, seed=3)
    assert rows.dtype == np.int64 and rows.size == 100
    assert np.all(np.diff(rows) > 0)  # sorted, distinct
    assert np.isin(picks, rows).all() and np.isin(labeled, rows).all()
    np.testing.assert_array_equal(rows, plot.plotted_rows(10_000, picks, labeled, 100, 3))
    assert not np.array_equal(rows, plot.plotted_rows(10_000, picks, labeled, 100, 4))
    # n <= max_points: everything
    np.testing.assert_array_equal(plot.plotted_rows(50, [3, 1], None, 50), np.arange(50))
    # more marked points than max_points: exactly the marked ones
    np.testing.assert_array_equal(
        plot.plotted_rows(10_000, picks, labeled, max_points=10), np.union1d(picks, labeled)
    )


def test_subsample_bounds_the_projection(data):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50_000, 16)).astype(np.float32)
    picks = rng.choice(50_000, 40, replace=False)
    labels = rng.integers(0, 40, 50_000)
    dens = rng.random(50_000)
    d = plot.prepare(
        x, picks, labels=labels, density=dens, max_points=2000, labeled=picks[:5], seed=1
    )
    assert d.subsampled and d.rows.size == 2000 and d.xy.shape == (2000, 2)
    np.testing.assert_array_equal(d.rows[d.pick_pos], picks)
    np.testing.assert_array_equal(d.rows[d.labeled_pos], picks[:5])
    # fitted on the sample only: the same as projecting the sample by itself
    xy, share = plot.project(x[d.rows])
    np.testing.assert_allclose(d.xy, xy)
    np.testing.assert_allclose(d.explained, share)
    assert d.density.shape == (50_000,)  # the histogram still sees every point
    fig = plot.draw(d)
    assert "random 2,000 of 50,000 points" in legend_texts(fig)


def test_given_labels_and_density_are_used_as_given(data, no_engine):
    x, picks, labeled, _ = data
    labels = np.where(np.arange(300) % 3 == 0, -1, 10 * (np.arange(300) % 4))  # any integers
    dens = np.linspace(0.5, 9.0, 300)[::-1].copy()
    d = plot.prepare(x, picks, labeled=labeled, labels=labels, density=dens)
    assert no_engine == []  # neither k-means nor the density ran
    assert d.labels_given and d.density_given and d.k is None
    np.testing.assert_array_equal(d.density, dens)
    assert d.n_clusters == 5
    np.testing.assert_array_equal(d.colour, np.searchsorted([-1, 0, 10, 20, 30], labels))
    fig = plot.draw(d)
    ax, hx = fig.axes
    background = ax.collections[0]
    assert len(background.get_offsets()) == 300
    assert len(np.unique(background.get_facecolors()[:, :3], axis=0)) == 5
    assert "given labels (5 distinct)" in ax.get_title()
    assert sum(p.get_height() for p in hx.patches) == 300  # histogram of every point
    stars = ax.collections[2]
    np.testing.assert_allclose(stars.get_offsets(), d.xy[d.pick_pos])


def test_computed_labels_and_density_match_the_public_functions(data, usl):
    x, picks, labeled, _ = data
    d = plot.prepare(x, picks, labeled=labeled, k=7, seed=5)
    K = np.union1d(picks, labeled).size  # 18: two labeled points are also picks
    km = usl.kmeans(x, K, seed=5).labels
    np.testing.assert_array_equal(d.colour, np.unique(km, return_inverse=True)[1].reshape(-1))
    np.testing.assert_array_equal(d.density, usl.density(x, k=7).astype(np.float64))
    assert d.k == 7 and not d.labels_given and not d.density_given
    d2 = plot.prepare(x, picks, labeled=labeled, k=7, seed=5)
    np.testing.assert_array_equal(d.xy, d2.xy)  # the same picture every time


def pick_rug(fig):
    """x positions of the picks' ticks below the histogram (black '|' marks)."""
    (rug,) = [
        ln for ln in fig.axes[1].lines if ln.get_marker() == "|" and ln.get_color() == "black"
    ]
    return np.asarray(rug.get_xdata(), dtype=np.float64)


def test_density_panel_uses_the_selections_k(usl, request):
    """Issue 25: the panel showed k=20 while USL ranks by the preset's k=400. By default it
    is the preset's k (select's rule, ``defaults=`` included), the one given, or the
    result's own density and k; the panel's title names k."""
    from usl_fast._presets import PRESETS

    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    picks = np.array([3, 50, 400, 599])
    k_preset = PRESETS["cifar10"]["k"]
    assert k_preset == 400  # the figure; the test follows the preset if it changes

    for kwargs, k in [
        ({}, k_preset),
        ({"defaults": "imagenet"}, PRESETS["imagenet"]["k"]),
        ({"k": 15}, 15),
    ]:
        want = usl.density(x, k=k).astype(np.float64)
        d = plot.prepare(x, picks, **kwargs)
        np.testing.assert_array_equal(d.density, want)
        assert d.k == k and not d.density_given
        fig = plot.draw(d)
        np.testing.assert_array_equal(pick_rug(fig), want[picks])
        assert f"kNN density (k={k})" in fig.axes[1].get_title(), kwargs
        assert f"k={k} nearest" in fig.axes[1].get_xlabel()

    # a SelectResult: its own density, labels and k; nothing computed again
    res = usl.select(x, 12, k=25, kmeans_iter=10, return_info=True)
    calls = request.getfixturevalue("no_engine")
    fig = plot.plot_picks(x, res.indices, result=res)
    assert calls == []
    np.testing.assert_array_equal(pick_rug(fig), res.density[res.indices].astype(np.float64))
    assert "kNN density (k=25)" in fig.axes[1].get_title()
    assert "given labels (12 distinct)" in fig.axes[0].get_title()  # the selection's clusters
    # an explicit density wins over the result's and has no k to name
    fig = plot.plot_picks(x, res.indices, result=res, density=np.arange(600.0) + 1)
    np.testing.assert_array_equal(pick_rug(fig), res.indices + 1.0)
    assert "Density (as given)" in fig.axes[1].get_title()
    assert "k=" not in fig.axes[1].get_title()


def test_preset_k_larger_than_n_names_the_preset(data, no_engine):
    x, picks, _, _ = data  # 300 points < the cifar10 preset's k = 400
    with pytest.raises(ValueError, match=r"`k`=400 comes from the defaults='cifar10' preset"):
        plot.prepare(x, picks)
    with pytest.raises(ValueError, match="`defaults` must be one of"):
        plot.prepare(x, picks, defaults="cifar-10")
    with pytest.raises(TypeError, match="`result` must be a usl_fast.SelectResult"):
        plot.prepare(x, picks, result=np.ones(300))


def pca_reference(x, dims):
    xc = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:dims].T, (s**2 / (s**2).sum())[:dims]


@pytest.mark.parametrize("shape", [(500, 12), (9, 40), (30, 1)])
def test_pca_matches_an_svd_up_to_sign(shape):
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * np.linspace(3, 0.5, shape[1])).astype(np.float32)
    xy, share = plot.project(x, "pca")
    ref, ref_share = pca_reference(x, 2)
    if ref.shape[1] < 2:  # one feature: PC2 is flat
        ref, ref_share = np.pad(ref, ((0, 0), (0, 1))), np.pad(ref_share, (0, 1))
    signs = np.sign(np.sum(xy * ref, axis=0))
    signs[signs == 0] = 1
    np.testing.assert_allclose(xy, ref * signs, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(share, ref_share, rtol=1e-9, atol=1e-12)


def test_pca_signs_are_fixed():
    x = np.random.default_rng(3).standard_normal((200, 6)).astype(np.float32)
    a, _ = plot.project(x)
    b, _ = plot.project(-x)
    np.testing.assert_allclose(a, -b, atol=1e-9)  # same axes, mirrored data


@pytest.mark.slow  # scikit-learn's t-SNE
def test_tsne_on_tiny_data(data):
    pytest.importorskip("sklearn", reason="projection='tsne' needs scikit-learn")
    x, picks, labeled, ids = data
    d = plot.prepare(x[:40], [3, 17, 29], labels=ids[:40], density=np.ones(40), projection="tsne")
    assert d.xy.shape == (40, 2) and np.isfinite(d.xy).all() and d.explained is None
    again = plot.prepare(
        x[:40], [3, 17, 29], labels=ids[:40], density=np.ones(40), projection="tsne"
    )
    np.testing.assert_array_equal(d.xy, again.xy)  # seeded
    fig = plot.draw(d)
    assert fig.axes[0].get_xlabel() == "t-SNE 1"
    with pytest.raises(ValueError, match="at least 4 points"):
        plot.project(x[:3], "tsne")


def test_torch_input_gives_the_numpy_result(data):
    torch = pytest.importorskip("torch")
    x, picks, labeled, ids = data
    dens = np.linspace(1, 2, 300)
    a = plot.prepare(x, picks, labeled=labeled, labels=ids, density=dens)
    b = plot.prepare(
        torch.from_numpy(x),
        torch.from_numpy(picks),
        labeled=torch.from_numpy(labeled),
        labels=torch.from_numpy(ids),
        density=torch.from_numpy(dens),
    )
    for field in ("rows", "xy", "colour", "picks", "labeled", "density"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    fig = plot.plot_picks(torch.from_numpy(x).requires_grad_(True), torch.from_numpy(picks), k=10)
    assert "picks (12)" in legend_texts(fig)


# --------------------------------------------------------------------------- errors

N = 300
ERRORS = [
    (dict(picks=[0, N]), ValueError, r"`picks` must lie in \[0, n\) = \[0, 300\) \(got picks\[1\]=300\)"),
    (dict(picks=[-1, 2]), ValueError, r"`picks` must lie in .*picks\[0\]=-1"),
    (dict(picks=[1.0, 2.0]), TypeError, r"`picks` must hold integer row indices, got dtype float64"),
    (dict(picks=[True, False]), TypeError, r"`picks` must hold integer"),
    (dict(picks=[4, 7, 4]), ValueError, r"`picks` must not repeat an index \(got 4 more than once\)"),
    (dict(picks=[[1, 2]]), ValueError, r"`picks` must be a 1-D array"),
    (dict(picks=[]), ValueError, r"`picks` must hold at least one index"),
    (dict(labeled=[3, 3]), ValueError, r"`labeled` must not repeat an index"),
    (dict(labeled=[N + 5]), ValueError, r"`labeled` must lie in \[0, n\)"),
    (dict(labeled=[0.5]), TypeError, r"`labeled` must hold integer"),
    (dict(labels=np.zeros(N - 1, int)), ValueError, r"`labels` must have shape \(300,\)"),
    (dict(labels=np.zeros(N)), TypeError, r"`labels` must hold integers"),
    (dict(density=np.ones(5)), ValueError, r"`density` must have shape \(300,\)"),
    (dict(density=np.r_[np.nan, np.ones(N - 1)]), ValueError, r"`density` contains NaN"),
    (dict(projection="umap"), ValueError, r"`projection` must be 'pca' or 'tsne' \(got 'umap'\)"),
    (dict(path="fig.jpg"), ValueError, r"`path` must end in one of \.png, \.pdf, \.svg"),
    (dict(path="no/such/dir/fig.png"), ValueError, r"`path`'s directory does not exist"),
    (dict(path=3), TypeError, r"`path` must be a str or os.PathLike"),
    (dict(k=N), ValueError, r"`k` must be < number of points n=300"),
    (dict(k=0), ValueError, r"`k` must be >= 1"),
    (dict(max_points=0), ValueError, r"`max_points` must be >= 1"),
    (dict(seed=-1), ValueError, r"`seed` must be >= 0"),
    (dict(threads=0), ValueError, r"`threads` must be >= 1"),
    (dict(title=5), TypeError, r"`title` must be a str or None"),
    (dict(features=np.ones(N)), ValueError, r"`features` must be 2-D"),
]  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, exc, message", ERRORS, ids=[f"{next(iter(e[0]))}-{i}" for i, e in enumerate(ERRORS)]
)
def test_errors_name_the_argument(data, no_engine, tmp_path, monkeypatch, kwargs, exc, message):
    monkeypatch.chdir(tmp_path)
    x, picks, _, _ = data
    args = {"features": x, "picks": picks, "k": 10, **kwargs}
    with pytest.raises(exc, match=message):
        plot.plot_picks(args.pop("features"), args.pop("picks"), **args)
    assert no_engine == []  # raised before any work


def test_k_is_not_checked_against_n_when_density_is_given(data):
    x, picks, _, ids = data
    d = plot.prepare(x, picks, labels=ids, density=np.ones(300), k=10_000)
    assert d.k is None


def test_missing_matplotlib_says_how_to_install(data, monkeypatch, no_engine):
    x, picks, _, ids = data
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=re.escape('pip install "usl_fast[plot]"')):
        plot.plot_picks(x, picks, labels=ids, density=np.ones(300))
    assert no_engine == []
    # the data preparation needs NumPy only
    assert plot.prepare(x, picks, labels=ids, density=np.ones(300)).xy.shape == (300, 2)


def test_missing_sklearn_for_tsne_says_how_to_install(data, monkeypatch):
    x, picks, _, ids = data
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        plot.prepare(x, picks, labels=ids, density=np.ones(300), projection="tsne")


# --------------------------------------------------------------------------- the doc


def test_doc_example_runs(tmp_path, monkeypatch):
    """The example in docs/plot.md runs as written (digits from scikit-learn) and writes
    its PNG; the example image it shows exists."""
    pytest.importorskip("sklearn", reason="the example loads scikit-learn's digits")
    text = (ROOT / "docs" / "plot.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "plot_picks(" in b]
    assert blocks, "docs/plot.md must hold a python example calling plot_picks"
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (ROOT / "docs" / img).is_file(), img
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(blocks[0], "docs/plot.md", "exec"), env)
    assert (tmp_path / "picks_digits.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_plot_takes_the_density_and_k_of_the_selection(tmp_path, monkeypatch, capsys, usl):
    """usl-fast plot: --info's density is shown with the k the selection used (from the
    archive's params); without it the density is computed at --defaults' preset k."""
    from usl_fast import cli

    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    feats, picks, info = tmp_path / "f.npy", tmp_path / "p.npy", tmp_path / "i.npz"
    np.save(feats, x)
    argv = ["select", feats, "-m", 8, "-k", 12, "--kmeans-iter", 10, "-o", picks]
    assert cli.main([str(a) for a in argv + ["--save-info", info, "--no-progress"]]) == 0
    drawn = []
    real_draw = plot.draw

    def draw(data, title=None):
        drawn.append(data)
        return real_draw(data, title)

    monkeypatch.setattr(plot, "draw", draw)
    for extra, k in [(["--info", info], 12), (["--defaults", "imagenet"], 20)]:
        argv = ["plot", feats, picks, "-o", tmp_path / "fig.png", "--force", *extra]
        assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
        assert drawn[-1].k == k
    with np.load(info) as z:
        np.testing.assert_array_equal(drawn[0].density, z["density"].astype(np.float64))
    np.testing.assert_array_equal(drawn[1].density, usl.density(x, k=20).astype(np.float64))
    capsys.readouterr()
