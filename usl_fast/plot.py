"""A report figure of a selection: where the picks lie in a 2-D projection of the features,
coloured by cluster, and where their densities lie among every point's density.

Data preparation (``prepare``, ``plotted_rows``, ``project``) is pure NumPy and separate
from drawing (``draw``), so it can be tested and reused; ``plot_picks`` does both. Needs
matplotlib (``pip install "usl_fast[plot]"``); t-SNE also needs scikit-learn."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from ._io import Outputs, write_atomic
from ._ops import density as _density
from ._ops import kmeans as _kmeans
from ._validate import _is_torch, as_features, as_int, as_vector, threads_arg

__all__ = ["plot_picks", "prepare", "draw", "plotted_rows", "project", "PicksPlotData"]

PROJECTIONS = ("pca", "tsne")
#: Extensions matplotlib writes with its bundled back ends (Agg, PDF, SVG).
FORMATS = (".png", ".pdf", ".svg")
SAVE_DPI = 150
#: t-SNE runs on the first TSNE_PCA_DIMS principal components (the usual preprocessing:
#: it removes noise dimensions and makes the neighbour search cheap).
TSNE_PCA_DIMS = 50
#: Earlier labeled points, in both panels (no tab20 colour is this dark).
LABELED_COLOUR = "#8b0000"
_INSTALL = 'pip install "usl_fast[plot]" (or: pip install matplotlib)'


@dataclass(frozen=True)
class PicksPlotData:
    """Everything ``draw`` needs, computed by ``prepare``.

    Attributes
    ----------
    rows : (r,) int64
        Sorted row indices of the points drawn in the projection (every pick and labeled
        point, plus a seeded random sample of the rest when n > max_points).
    xy : (r, 2) float64
        Projection of those rows.
    colour : (r,) int64
        Cluster of each drawn row as a rank 0..n_clusters-1 (the order of the distinct
        label values), which picks its colour.
    picks, labeled : int64
        Row indices as given (labeled may be empty).
    pick_pos, labeled_pos : int64
        Positions of picks / labeled in ``rows``.
    density : (n,) float64
        Density of every point (all of them feed the histogram).
    n : int
        Number of points.
    n_clusters : int
        Distinct labels among all n points.
    projection : {"pca", "tsne"}
        The projection drawn.
    explained : (2,) float64 or None
        Share of the sample's variance on PC1 and PC2 (PCA only, else None).
    labels_given, density_given : bool
        Whether labels / density came from the caller (directly or through ``result``).
    k : int or None
        kNN size of the density shown: the one computed here, or ``result.params["k"]``
        for a result's density; None for a density given as an array alone.
    """

    rows: np.ndarray
    xy: np.ndarray
    colour: np.ndarray
    picks: np.ndarray
    labeled: np.ndarray
    pick_pos: np.ndarray
    labeled_pos: np.ndarray
    density: np.ndarray
    n: int
    n_clusters: int
    projection: str
    explained: Optional[np.ndarray]
    labels_given: bool
    density_given: bool
    k: Optional[int]

    @property
    def subsampled(self) -> bool:
        return self.rows.size < self.n


# ---------------------------------------------------------------------------------------
# validation


def _as_indices(values: Any, n: int, name: str) -> np.ndarray:
    """1-D distinct integer indices in [0, n), int64; errors name the argument."""
    if _is_torch(values):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of row indices, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"`{name}` must hold integer row indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr < 0) | (arr >= n))
    if bad.size:
        raise ValueError(
            f"`{name}` must lie in [0, n) = [0, {n}) (got {name}[{bad[0]}]={arr[bad[0]]})"
        )
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        dup = int(uniq[np.argmax(counts > 1)])
        raise ValueError(f"`{name}` must not repeat an index (got {dup} more than once)")
    return arr


def _as_any_labels(labels: Any, n: int) -> np.ndarray:
    """(n,) integers of any value (cluster ids, classes, -1 for noise)."""
    if _is_torch(labels):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"`labels` must have shape ({n},) to match the features, got {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`labels` must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_path(path: Any) -> Optional[str]:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"`path` must end in one of {', '.join(FORMATS)} (got {path!r})")
    # The directory as given (not os.path.abspath's lexical form: "missing/../f.png"
    # must fail here, not after the plot is drawn).
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        raise ValueError(f"`path`'s directory does not exist (got {path!r})")
    # Writable directory, no symbolic link or directory at path (an existing file is
    # replaced: savefig's behaviour; the CLI refuses it without --force).
    Outputs(force=True).check(path, "`path`")
    return path


def _check_projection(projection: Any) -> str:
    if projection not in PROJECTIONS:
        raise ValueError(f"`projection` must be 'pca' or 'tsne' (got {projection!r})")
    return projection


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"usl_fast.plot needs matplotlib: {_INSTALL}") from exc
    return Figure


# ---------------------------------------------------------------------------------------
# data preparation (pure NumPy)


def plotted_rows(
    n: int, picks: Any, labeled: Any = None, max_points: int = 20000, seed: int = 0
) -> np.ndarray:
    """Sorted int64 rows to draw: all of range(n) when n <= max_points, else every pick
    and labeled point plus a uniform sample of the others drawn by
    ``numpy.random.default_rng(seed)``, max_points rows in all (more only when the marked
    points alone exceed max_points). Memory: 9 n bytes."""
    n = as_int(n, "n", 1)
    max_points = as_int(max_points, "max_points", 1)
    seed = as_int(seed, "seed", 0)
    marked = np.union1d(
        _as_indices(picks, n, "picks"),
        _as_indices(np.empty(0, np.int64) if labeled is None else labeled, n, "labeled"),
    )
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    fill = max_points - marked.size
    if fill <= 0:
        return marked
    rest = np.ones(n, dtype=bool)
    rest[marked] = False
    others = np.random.default_rng(seed).choice(np.flatnonzero(rest), size=fill, replace=False)
    return np.sort(np.concatenate([marked, others]))


def _pca(x: np.ndarray, dims: int, block: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Scores on the first ``dims`` principal components of x (rows centred on their mean)
    and each component's share of the total variance, float64.

    When d <= rows: eigenvectors of the covariance, accumulated in float64 over row blocks
    (memory d^2 + block d doubles; 8x faster than an SVD of a 20,000 x 512 sample here).
    Otherwise an SVD of the centred rows. Signs fixed so that each component's largest
    loading is positive (the same picture on every machine)."""
    r, d = x.shape
    mu = x.mean(axis=0, dtype=np.float64)
    if d <= r:
        cov = np.zeros((d, d))
        for s in range(0, r, block):
            b = x[s : s + block].astype(np.float64) - mu
            cov += b.T @ b
        w, v = np.linalg.eigh(cov)
        w, v = np.maximum(w[::-1], 0.0), v[:, ::-1]
    else:
        _, sv, vt = np.linalg.svd(x.astype(np.float64) - mu, full_matrices=False)
        w, v = sv**2, vt.T
    total = w.sum()
    comp = v[:, :dims]
    comp = comp * np.where(comp[np.argmax(np.abs(comp), axis=0), range(comp.shape[1])] < 0, -1, 1)
    scores = np.concatenate(
        [(x[s : s + block].astype(np.float64) - mu) @ comp for s in range(0, r, block)]
    )
    share = w[:dims] / total if total > 0 else np.zeros(min(dims, w.size))
    if scores.shape[1] < dims:  # fewer dimensions (or points) than components
        pad = dims - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)))
        share = np.pad(share, (0, pad))
    return scores, share


def project(
    x: np.ndarray, projection: str = "pca", seed: int = 0, threads: Optional[int] = None
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(r, 2) float64 coordinates of the rows of x and, for PCA, the share of variance on
    each axis. "tsne": scikit-learn's TSNE (random_state=seed, perplexity min(30, (r-1)/3))
    on the first 50 principal components."""
    projection = _check_projection(projection)
    if projection == "pca":
        return _pca(x, 2)
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:
        raise ImportError(
            "projection='tsne' needs scikit-learn: pip install scikit-learn "
            "(or use the default projection='pca')"
        ) from exc
    r = x.shape[0]
    if r < 4:
        raise ValueError(f"projection='tsne' needs at least 4 points to draw (got {r})")
    z = _pca(x, min(TSNE_PCA_DIMS, x.shape[1]))[0] if x.shape[1] > TSNE_PCA_DIMS else x
    tsne = TSNE(
        n_components=2,
        perplexity=float(min(30.0, (r - 1) / 3.0)),
        init="pca",
        random_state=seed,
        n_jobs=threads,
    )
    return tsne.fit_transform(np.asarray(z, dtype=np.float64)).astype(np.float64), None


def _from_result(result: Any) -> Tuple[Any, Any, Optional[int]]:
    """(labels, density, k of that density) of a ``SelectResult`` (or any object with
    ``labels``, ``density`` and ``params`` attributes); None where it has none."""
    missing = [a for a in ("labels", "density", "params") if not hasattr(result, a)]
    if missing:
        raise TypeError(
            "`result` must be a usl_fast.SelectResult (select(..., return_info=True)); got "
            f"{type(result).__name__}, without {', '.join(missing)}"
        )
    params = result.params if isinstance(result.params, dict) else {}
    k = params.get("k") if result.density is not None else None
    return result.labels, result.density, (int(k) if isinstance(k, (int, np.integer)) else None)


def _density_k(k: Any, defaults: Any, n: int) -> int:
    """The kNN size of the density computed here: ``k``, or when None the ``defaults``
    preset's, the k ``usl_fast.select`` ranks by with the same ``defaults``."""
    from ._presets import PRESETS

    if k is not None:
        k = as_int(k, "k", 1)
        if k >= n:
            raise ValueError(f"`k` must be < number of points n={n} (self included) (got k={k})")
        return k
    if not isinstance(defaults, str) or defaults not in PRESETS:
        raise ValueError(f"`defaults` must be one of {sorted(PRESETS)} (got {defaults!r})")
    k = int(PRESETS[defaults]["k"])
    if k >= n:
        raise ValueError(
            f"`k`={k} comes from the defaults={defaults!r} preset (the k select() ranks by) "
            f"and must be < number of points n={n} (self included): pass the k the "
            f"selection used, e.g. k={min(20, n - 1)}, or its result (result=)"
        )
    return k


def prepare(
    features: Any,
    picks: Any,
    *,
    labeled: Any = None,
    labels: Any = None,
    density: Any = None,
    result: Any = None,
    projection: str = "pca",
    seed: int = 0,
    defaults: str = "cifar10",
    k: Optional[int] = None,
    max_points: int = 20000,
    threads: Optional[int] = None,
) -> PicksPlotData:
    """Validate the arguments and compute what ``draw`` shows (see ``plot_picks``).
    Needs neither matplotlib nor, for PCA, scikit-learn."""
    x, _ = as_features(features, "features")
    n = x.shape[0]
    result_k = None
    if result is not None:
        r_labels, r_density, r_k = _from_result(result)
        if labels is None:
            labels = r_labels
        if density is None and r_density is not None:
            density, result_k = r_density, r_k
    picks = _as_indices(picks, n, "picks")
    if picks.size == 0:
        raise ValueError("`picks` must hold at least one index (got an empty array)")
    labeled = _as_indices(np.empty(0, np.int64) if labeled is None else labeled, n, "labeled")
    projection = _check_projection(projection)
    seed = as_int(seed, "seed", 0)
    if k is not None:
        k = as_int(k, "k", 1)
    max_points = as_int(max_points, "max_points", 1)
    threads_arg(threads)
    labels_given = labels is not None
    density_given = density is not None
    if labels_given:
        labels = _as_any_labels(labels, n)
    if density_given:
        density = as_vector(density, n, "density", np.float64)
        k = result_k  # known only for a result's density
    else:
        # The same k as the selection being drawn (select's preset rule), not a k of its
        # own: the panel must show the density the picks were ranked by.
        k = _density_k(k, defaults, n)

    if not density_given:
        density = np.asarray(_density(x, k=k, threads=threads), dtype=np.float64)
    if not labels_given:
        K = int(np.union1d(picks, labeled).size)
        labels = np.asarray(_kmeans(x, K, seed=seed, threads=threads).labels, dtype=np.int64)

    rows = plotted_rows(n, picks, labeled, max_points, seed)
    xy, explained = project(x[rows], projection, seed, threads)
    values, rank = np.unique(labels, return_inverse=True)
    return PicksPlotData(
        rows=rows,
        xy=xy,
        colour=rank.reshape(-1)[rows].astype(np.int64),
        picks=picks,
        labeled=labeled,
        pick_pos=np.searchsorted(rows, picks),
        labeled_pos=np.searchsorted(rows, labeled),
        density=density,
        n=n,
        n_clusters=int(values.size),
        projection=projection,
        explained=explained,
        labels_given=labels_given,
        density_given=density_given,
        k=k,
    )


# ---------------------------------------------------------------------------------------
# drawing


def _palette(n_colours: int) -> np.ndarray:
    """(n_colours, 4) RGBA: tab20 with its 10 dark shades first, so up to 10 clusters get
    10 distinct hues; more clusters cycle through the 20."""
    from matplotlib import colormaps

    tab = colormaps["tab20"](np.arange(20))
    order = np.r_[0:20:2, 1:20:2]
    return tab[order][np.arange(n_colours) % 20]


def _percentile_of(values: np.ndarray, sorted_all: np.ndarray) -> float:
    """Median over ``values`` of the share (in %) of all points with a lower density."""
    return float(
        np.median(np.searchsorted(sorted_all, values, side="left")) / sorted_all.size * 100
    )


def _rug_alpha(count: int) -> float:
    """Opaque ticks up to 60 marks; past that, translucent so that overlapping ticks read
    as shades of the marks' own density instead of one solid bar."""
    return float(np.clip(60.0 / max(count, 1), 0.08, 1.0))


def _ordinal(p: float) -> str:
    q = int(round(p))
    suffix = "th" if 10 <= q % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(q % 10, "th")
    return f"{q}{suffix}"


def draw(data: PicksPlotData, title: Optional[str] = None) -> Any:
    """A two-panel matplotlib Figure (Agg canvas; pyplot and the global backend are not
    touched) of ``data``: the projection coloured by cluster with picks (stars) and earlier
    labeled points (hollow squares), and the histogram of every point's density with the
    picks' and labeled points' densities as rugs."""
    Figure = _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if title is not None and not isinstance(title, str):
        raise TypeError(f"`title` must be a str or None, got {type(title).__name__}")
    fig = Figure(figsize=(13.0, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, hx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1.0]})
    n, r = data.n, data.rows.size
    n_p, n_l = data.picks.size, data.labeled.size
    both = int(np.intersect1d(data.picks, data.labeled).size)
    colours = _palette(data.n_clusters)

    # --- left: projection ---
    size = float(np.clip(20000.0 / max(r, 1), 3.0, 14.0))
    # marks shrink past 60 of them so that thousands of picks do not hide the map
    shrink = min(1.0, float(np.sqrt(60.0 / (n_p + n_l))))
    ax.scatter(
        data.xy[:, 0],
        data.xy[:, 1],
        c=colours[data.colour],
        s=size,
        alpha=0.6,
        linewidths=0,
        rasterized=True,  # 20,000 dots stay small in PDF/SVG
        zorder=1,
    )
    if n_l:
        pos = data.labeled_pos
        ax.scatter(
            data.xy[pos, 0],
            data.xy[pos, 1],
            marker="s",
            s=max(12.0, 70.0 * shrink),
            facecolors="none",
            edgecolors=LABELED_COLOUR,
            linewidths=1.4 if shrink == 1.0 else 0.8,
            zorder=2,
        )
    pos = data.pick_pos
    ax.scatter(
        data.xy[pos, 0],
        data.xy[pos, 1],
        marker="*",
        s=max(25.0, 190.0 * shrink),
        c=colours[data.colour[pos]],
        edgecolors="black",
        linewidths=0.9 if shrink == 1.0 else 0.4,
        zorder=3,
    )
    grouping = (
        f"given labels ({data.n_clusters:,} distinct)"
        if data.labels_given
        else f"k-means cluster (K={data.n_clusters:,})"
    )
    if data.projection == "pca":
        e = data.explained * 100
        ax.set_title(
            f"PCA of the features: {e[0] + e[1]:.1f}% of the variance shown\ncolour: {grouping}",
            fontsize=11,
        )
        ax.set_xlabel(f"PC1 ({e[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({e[1]:.1f}% of variance)")
    else:
        ax.set_title(f"t-SNE of the features\ncolour: {grouping}", fontsize=11)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    points = f"random {r:,} of {n:,} points" if data.subsampled else f"points ({n:,})"
    handles = [
        Line2D([], [], ls="", marker="o", ms=5, mfc="0.55", mec="none", alpha=0.7, label=points),
        Line2D([], [], ls="", marker="*", ms=13, mfc="0.85", mec="black", label=f"picks ({n_p:,})"),
    ]
    if n_l:
        extra = f"; {both} also picked" if both else ""
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="s",
                ms=8,
                mfc="none",
                mec=LABELED_COLOUR,
                mew=1.4,
                label=f"labeled earlier ({n_l:,}{extra})",
            )
        )
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=len(handles),
        frameon=False,
        fontsize=9,
        handletextpad=0.3,
        columnspacing=1.2,
    )
    ax.set_aspect("equal", adjustable="datalim")
    ax.tick_params(labelsize=8)

    # --- right: density histogram over all n points ---
    dens = data.density
    sorted_all = np.sort(dens)
    lo, hi = float(sorted_all[0]), float(sorted_all[-1])
    log = lo > 0 and hi / lo > 30.0  # duplicates give huge densities: a log axis shows both
    if lo == hi:
        bins: Any = 1
    elif log:
        bins = np.geomspace(lo, hi, 61)
    else:
        bins = 60
    heights, _, _ = hx.hist(dens, bins=bins, color="0.72", edgecolor="none", zorder=1)
    top = float(max(heights.max(), 1.0))
    if log:
        hx.set_xscale("log")
    med = float(np.median(dens))
    hx.axvline(med, color="0.35", ls="--", lw=1, zorder=2)
    hist_handles = [
        Patch(facecolor="0.72", edgecolor="none", label=f"all {n:,} points"),
        Line2D([], [], color="0.35", ls="--", lw=1, label="median of all points"),
    ]
    # rugs below zero, picks above the labeled ones
    rug_p, rug_l = -0.06 * top, -0.15 * top
    pd = dens[data.picks]
    hx.plot(pd, np.full(pd.size, rug_p), ls="", marker="|", ms=14, mew=1.4, color="black",
            alpha=_rug_alpha(n_p), zorder=3)  # fmt: skip
    pct = _ordinal(_percentile_of(pd, sorted_all))
    hist_handles.append(
        Line2D([], [], ls="", marker="|", ms=12, mew=1.4, color="black",
               label=f"picks ({n_p:,}): median at the {pct} percentile")
    )  # fmt: skip
    if n_l:
        ld = dens[data.labeled]
        hx.plot(
            ld,
            np.full(ld.size, rug_l),
            ls="",
            marker="|",
            ms=14,
            mew=1.4,
            color=LABELED_COLOUR,
            alpha=_rug_alpha(n_l),
            zorder=3,
        )
        pct = _ordinal(_percentile_of(ld, sorted_all))
        hist_handles.append(
            Line2D([], [], ls="", marker="|", ms=12, mew=1.4, color=LABELED_COLOUR,
                   label=f"labeled earlier ({n_l:,}): median at the {pct} percentile")
        )  # fmt: skip
    hx.axhline(0, color="0.3", lw=0.8, zorder=2)
    hx.set_ylim(-0.22 * top if n_l else -0.12 * top, top * 1.08)
    hx.set_yticks([t for t in hx.get_yticks() if 0 <= t <= top * 1.08])
    if data.k is None:
        hx.set_xlabel("density (as given)" + (", log scale" if log else ""))
    else:
        hx.set_xlabel(
            f"kNN density: 1 / mean squared distance to the k={data.k} nearest (self included)"
            + (", log scale" if log else "")
        )
    hx.set_ylabel("number of points")
    # The title names k: a density at another k than the selection's ranks points differently.
    which = "Density (as given)" if data.k is None else f"kNN density (k={data.k})"
    hx.set_title(
        f"{which} of every point: high = typical, in a crowded region\n"
        + (
            "picks and earlier labeled points marked below the axis"
            if n_l
            else "picks marked below the axis"
        ),
        fontsize=11,
    )
    hx.legend(
        handles=hist_handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=2,
        frameon=False,
        fontsize=9,
        handletextpad=0.3,
        columnspacing=1.2,
    )
    hx.tick_params(labelsize=8)

    if title is None:
        title = f"Picks: {n_p:,} new" + (f", {n_l:,} labeled earlier" if n_l else "")
        title += f", among {n:,} points"
    fig.suptitle(title, fontsize=13)
    return fig


def plot_picks(
    features: Any,
    picks: Any,
    *,
    labeled: Any = None,
    labels: Any = None,
    density: Any = None,
    result: Any = None,
    path: Any = None,
    projection: str = "pca",
    seed: int = 0,
    defaults: str = "cifar10",
    k: Optional[int] = None,
    title: Optional[str] = None,
    max_points: int = 20000,
    threads: Optional[int] = None,
) -> Any:
    """Draw a selection for a report: a 2-D projection of the features coloured by cluster
    with the picks marked, beside the histogram of every point's density with the picks'
    densities marked. See docs/plot.md for how to read it.

    Parameters
    ----------
    features : (n, d) numpy array or torch CPU tensor, float16/32/64
        The features the selection was made on (NaN/inf is an error).
    picks : (m,) integer indices, distinct, in [0, n)
        The new picks (e.g. ``usl_fast.select``'s result). Drawn as black-edged stars.
    labeled : integer indices, distinct, in [0, n), optional
        Points labeled in earlier rounds, drawn as hollow squares. They may overlap
        ``picks``: such a point gets both marks and the legend counts it.
    labels : (n,) integers, optional
        The colour of each point (cluster ids, classes; any integer values). Default:
        ``usl_fast.kmeans(features, K, seed=seed)`` with K = number of distinct picks and
        labeled points (pass ``SelectResult.labels`` to show the selection's own clusters).
    density : (n,) real, optional
        Default: ``result.density``, else ``usl_fast.density(features, k=k)``.
    result : usl_fast.SelectResult, optional
        The selection's own ``select(..., return_info=True)`` result: its ``labels`` and
        ``density`` (and the ``k`` in its ``params``, named in the figure) are used where
        ``labels`` / ``density`` are not given, and nothing is computed again.
    path : str or os.PathLike ending in .png, .pdf or .svg, optional
        Where to save the figure (dpi 150, tight bounding box).
    projection : "pca" (default; NumPy only) or "tsne" (scikit-learn; 90 s for 5,000 points
        on 2 cores, growing faster than linearly: lower ``max_points`` to 5,000 or less).
    seed : int >= 0
        Seeds k-means, the background sample and t-SNE: the same figure every time.
    defaults, k : str, int (1 <= k < n)
        kNN size of a computed density, as ``usl_fast.select`` takes it: ``k``, or the
        ``defaults`` preset's (cifar10: 400, the k USL ranks by) when ``k`` is None. Pass
        the ``k`` or ``defaults`` the selection used. The density panel's title names k.
        Unused when the density is given (``density`` or ``result``).
    title : str, optional
        The figure's title (default says how many picks among how many points).
    max_points : int >= 1
        Most points drawn in the projection: a seeded random sample of this size (always
        holding every pick and labeled point) when n is larger. The projection is fitted on
        that sample only; the histogram always uses all n densities.
    threads : int, optional
        Threads for the density, k-means and t-SNE.

    Returns
    -------
    matplotlib.figure.Figure with an Agg canvas (no pyplot state and no global backend
    change; shows in Jupyter, ``fig.savefig`` works).

    Errors: ImportError without matplotlib (``pip install "usl_fast[plot]"``) or, for
    t-SNE, scikit-learn; ValueError / TypeError naming the argument for indices out of
    range, repeated or not integer, wrong shapes, an unknown projection or file extension.

    Memory beyond the features: the density and k-means when computed (see those
    functions), 9 n bytes for the sample, and for PCA d^2 + 4096 d doubles plus the
    sample's coordinates; t-SNE's own memory grows with max_points.
    """
    path = _check_path(path)
    _check_projection(projection)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"`title` must be a str or None, got {type(title).__name__}")
    _require_matplotlib()  # before the expensive part
    data = prepare(
        features,
        picks,
        labeled=labeled,
        labels=labels,
        density=density,
        result=result,
        projection=projection,
        seed=seed,
        defaults=defaults,
        k=k,
        max_points=max_points,
        threads=threads,
    )
    fig = draw(data, title)
    if path is not None:
        # Into a temporary file beside path, renamed over it: never through a symbolic
        # link, never a half-written figure. The format is explicit: a file object has no
        # extension for matplotlib to go by.
        fmt = os.path.splitext(path)[1].lower()[1:]

        def save(f: Any) -> None:
            fig.savefig(f, format=fmt, dpi=SAVE_DPI, bbox_inches="tight")

        write_atomic(path, save, what="`path`")
    return fig
