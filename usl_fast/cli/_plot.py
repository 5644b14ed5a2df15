"""``usl-fast plot``: draw where the picks lie (``usl_fast.plot.plot_picks``)."""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np

from .._presets import PARAMS, PRESETS
from ._common import CLIError, _positive_int
from ._files import (
    check_indices,
    check_outputs,
    l2_normalize,
    load_features,
    read_indices,
    require_file,
    require_suffix,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``plot`` on ``sub`` (the ``add_subparsers`` action of ``usl-fast``)."""
    from .. import plot

    plot_default = {
        name: p.default for name, p in inspect.signature(plot.plot_picks).parameters.items()
    }
    pp = sub.add_parser(
        "plot",
        help="draw where the picks lie (needs matplotlib; usl_fast.plot.plot_picks)",
        description="Draw a selection for a report (usl_fast.plot.plot_picks, docs/plot.md): a "
        "2-D projection of FEATURES coloured by cluster with PICKS marked, beside the "
        "histogram of every point's kNN density with the picks' densities marked.",
    )
    pp.add_argument("features", metavar="FEATURES", help="the features the picks were made on")
    pp.add_argument(
        "picks", metavar="PICKS", help="the picks: .npy, .txt or .csv, as usl-fast select -o writes"
    )
    pp.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="the figure; its extension sets the format: .png, .pdf or .svg",
    )
    pp.add_argument(
        "--labeled", metavar="LABELED", help="points labeled earlier, drawn as hollow squares"
    )
    pp.add_argument(
        "--info",
        metavar="INFO.npz",
        help="colour by and histogram the selection's own cluster labels and densities, from "
        "usl-fast select --save-info [default: k-means and density computed here]",
    )
    pp.add_argument("--projection", choices=plot.PROJECTIONS, default="pca", help="2-D projection")
    pp.add_argument("--seed", type=int, default=0, help="k-means, background sample and t-SNE")
    preset = PARAMS["defaults"]  # as select's --defaults: the declared names and default
    pp.add_argument(
        "--defaults",
        choices=preset.choices,
        default=None,
        help="the preset the selection used: the computed density takes its k, as "
        f"usl-fast select does [default: {preset.default}]",
    )
    pp.add_argument(
        "-k",
        "--k",
        dest="k",
        type=_positive_int,
        default=None,
        help="kNN size of the computed density, when the selection set one [default: the "
        f"--defaults preset's: {preset.default} {PRESETS[preset.default].k}; unused with --info, whose "
        "density and k are the selection's]",
    )
    pp.add_argument(
        "--max-points",
        type=_positive_int,
        default=None,
        help=f"most points drawn in the projection [default: {plot_default['max_points']}]",
    )
    pp.add_argument("--title", default=None, help="figure title [default: picks among points]")
    pp.add_argument("--key", help="entry holding the features in a .npz or .pt/.pth dict")
    pp.add_argument("--normalize", action="store_true", help="L2-normalise rows first")
    pp.add_argument("--threads", type=_positive_int, default=None, help="[default: all]")
    pp.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    pp.set_defaults(func=run)
    return pp


def run(args: argparse.Namespace) -> int:
    from .. import plot

    if Path(args.output).suffix.lower() not in plot.FORMATS:
        raise CLIError(
            f"-o/--output {args.output!r}: the extension must be one of {', '.join(plot.FORMATS)}"
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CLIError(
            'usl-fast plot needs matplotlib: pip install "usl_fast[plot]" (or pip install '
            "matplotlib)"
        ) from exc
    if args.projection == "tsne":
        from ..demo import require_sklearn

        try:
            require_sklearn()
        except ImportError as exc:
            raise CLIError(
                "--projection tsne needs scikit-learn: pip install scikit-learn"
            ) from exc
    inputs = [args.features, args.picks] + [p for p in (args.labeled, args.info) if p]
    check_outputs([(args.output, "-o/--output")], args.force, inputs)
    picks = read_indices(args.picks, "PICKS")
    if picks.size == 0:  # plot_picks would refuse it too, naming neither PICKS nor the file
        raise CLIError(f"PICKS {args.picks!r} holds no index; it must hold at least one")
    labeled = read_indices(args.labeled, "--labeled") if args.labeled is not None else None
    extra: Dict[str, Any] = {}
    if args.info is not None:
        require_suffix(args.info, "--info", ".npz", "written by usl-fast select --save-info")
        require_file(args.info, "--info", "written by usl-fast select --save-info")
        extra["result"] = _read_info_result(args.info)
    for opt in ("defaults", "k", "max_points", "title", "threads"):
        if getattr(args, opt) is not None:
            extra[opt] = getattr(args, opt)

    feats = load_features(args.features, args.key)
    if args.normalize:
        feats = l2_normalize(feats)
    n = int(getattr(feats, "shape", (0,))[0])
    check_indices(picks, n, "PICKS", args.picks)
    if labeled is not None:
        check_indices(labeled, n, "--labeled", args.labeled)
    if "result" in extra:
        _check_info(extra["result"], args.info, n, picks, args.picks)
    t0 = time.perf_counter()
    plot.plot_picks(
        feats,
        picks,
        labeled=labeled,
        path=args.output,
        projection=args.projection,
        seed=args.seed,
        **extra,
    )
    print(
        f"wrote {args.output} ({picks.size} picks of {n} points, {time.perf_counter() - t0:.2f} s)"
    )
    return 0


def _check_info(result: Any, path: str, n: int, picks: np.ndarray, picks_path: str) -> None:
    """A CLIError naming --info unless the archive is of this selection: one label and
    density per feature row, and the picks it stored are PICKS (in any order: a .csv
    holds them sorted). plot_picks would name only its internal ``labels`` argument, or
    draw another selection's clusters without a word."""
    for name in ("labels", "density"):
        arr = getattr(result, name)
        if arr is not None and (np.ndim(arr) != 1 or len(arr) != n):
            raise CLIError(
                f"--info {path!r} does not match FEATURES: its {name} have shape "
                f"{np.shape(arr)}, the features {n} rows; give the --save-info archive of "
                "the selection made on these features"
            )
    stored = result.indices
    if stored is not None and not np.array_equal(
        np.sort(np.asarray(stored, dtype=np.int64).ravel()), np.sort(picks)
    ):
        raise CLIError(
            f"--info {path!r} is of another selection: the picks it stores differ from PICKS "
            f"{picks_path!r}; give the --save-info archive written with these picks"
        )


def _read_info_result(path: str) -> Any:
    """The ``SelectResult`` parts ``plot`` uses (labels, density, params: the density's k)
    from a ``select --save-info`` archive."""
    import json

    from .. import SelectResult

    with np.load(path, allow_pickle=False) as z:
        got = {key: z[key] for key in ("indices", "labels", "density", "params") if key in z.files}
    try:
        params = json.loads(str(got["params"])) if "params" in got else {}
    except ValueError:
        params = {}
    return SelectResult(
        indices=got.get("indices"),
        labels=got.get("labels"),
        density=got.get("density"),
        params=params if isinstance(params, dict) else {},
    )
