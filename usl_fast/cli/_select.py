"""``usl-fast select``: read a feature file, run ``usl_fast.select`` with any method and
write the picks (``.npy``, ``.txt`` and/or the reference's ``Index,ImageID`` CSVs), all
outputs or none."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any, Dict, Tuple

import numpy as np

from .._presets import METHOD_NAMES, PARAMS, PRESETS, USL_PARAMS
from ._common import PROG, CLIError
from ._files import (
    check_indices,
    check_outputs,
    complement,
    l2_normalize,
    load_features,
    picks_format,
    read_image_ids,
    read_indices,
    require_suffix,
    write_index_csv,
    write_info_npz,
    write_picks,
)

# The USL options, one per declared parameter but --defaults (usl_fast._presets): each
# argparse dest is the usl_fast.select keyword, forwarded only when given, so that
# everything left out comes from the --defaults preset.
_USL_OPTIONS = tuple(p.name for p in USL_PARAMS if p.name != "defaults")

# Options of the other methods: argparse dest -> keyword of the method's estimator
# (usl_fast.TypiClust, ProbCover, ..., usl_fast.uslt.USLT). Forwarded when given and the
# chosen --method takes that keyword; otherwise an error.
_METHOD_OPTIONS = {
    **{o: o for o in _USL_OPTIONS},
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "n_heads": "n_heads",
    "n_neighbors": "n_neighbors",
    "head": "head",
    "head_init": "init",
    "device": "device",
    "delta": "delta",
    "n_classes": "n_classes",
    "max_clusters": "max_clusters",
    "min_cluster_size": "min_cluster_size",
    "metric": "metric",
    "max_edges": "max_edges",
}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``select`` on ``sub`` (the ``add_subparsers`` action of ``usl-fast``)."""
    sp = sub.add_parser(
        "select",
        help="choose m instances to label from a feature file",
        description="Choose m instances to label from FEATURES with USL (kNN density, k-means, "
        "regularized per-cluster arg-max) or another --method, optionally as a later round "
        "(--labeled). Every USL option not given comes from the --defaults preset (see "
        "usl_fast.PRESETS); the other methods' options default to their estimator's.",
    )
    sp.add_argument(
        "features",
        metavar="FEATURES",
        help="(n, d) features: .npy (memory-mapped), .npz, or .pt/.pth (needs torch)",
    )
    sp.add_argument(
        "-m",
        "--budget",
        dest="m",
        type=int,
        required=True,
        help="labeling budget: number of instances to pick, 1 <= m <= n",
    )
    sp.add_argument(
        "--key", help="entry holding the features in a .npz or a dict saved in .pt/.pth"
    )
    sp.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise rows first (the published configs assume unit-norm features)",
    )
    sp.add_argument(
        "--method",
        choices=method_choices(),
        default="usl",
        help="selection method, as usl_fast.select(method=...): usl (USL); typiclust, "
        "probcover, kcenter (k-center greedy), random (the authors' baseline) and uslt "
        "(USL-T heads, needs torch) are usl_fast.TypiClust, ProbCover, KCenterGreedy, "
        "RandomSelect and usl_fast.uslt.USLT [default: usl]",
    )
    sp.add_argument(
        "--labeled",
        metavar="LABELED",
        help="indices labeled in earlier rounds (.npy, or .txt / .csv as -o writes them): "
        "the picks are new ones, and the method accounts for these (usl_fast.select labeled=)",
    )

    out = sp.add_argument_group("outputs (at least one of -o / --csv)")
    out.add_argument(
        "-o",
        "--output",
        metavar="PICKS",
        help="write the picks; the extension picks the format: .npy (int64, pick order), "
        ".txt (one index per line, pick order) or .csv (as --csv)",
    )
    out.add_argument(
        "--csv",
        metavar="PICKS.csv",
        help="write the picks sorted ascending as CSV: header Index,ImageID with "
        "--image-ids, else a single Index column",
    )
    out.add_argument(
        "--complement-csv",
        metavar="REST.csv",
        help="write all other indices in the same CSV format",
    )
    out.add_argument(
        "--image-ids",
        metavar="FILE",
        help="ImageID column for the CSVs: one id per line, exactly n lines",
    )
    out.add_argument(
        "--save-info",
        metavar="INFO.npz",
        help="also save usl_fast.select's SelectResult: every field that is set (picks, "
        "cluster labels, densities, scores, ...) as an array, timings and params as JSON",
    )
    out.add_argument("--force", action="store_true", help="overwrite existing output files")

    g = sp.add_argument_group("USL parameters (default: from --defaults)")
    _add_usl_options(g)
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the k-means init / the random baseline [default: 0]",
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads [default: all]")
    g.add_argument("--no-progress", action="store_true", help="hide the per-phase progress bars")

    o = sp.add_argument_group(
        "TypiClust / ProbCover parameters (--method typiclust / probcover; -k and "
        "--kmeans-iter (TypiClust), --alpha (ProbCover's purity), --seed and --threads also "
        "apply; see usl_fast.TypiClust, usl_fast.ProbCover) [default: the method's own]"
    )
    o.add_argument(
        "--delta",
        type=float,
        default=None,
        help="ProbCover ball radius (plain L2) [default: by purity with --n-classes, else 0.6]",
    )
    o.add_argument(
        "--n-classes",
        type=int,
        default=None,
        help="ProbCover: choose delta by purity from this many k-means classes",
    )
    o.add_argument("--max-edges", type=int, default=None, help="ProbCover: most graph edges")
    o.add_argument(
        "--max-clusters", type=int, default=None, help="TypiClust: most k-means clusters"
    )
    o.add_argument(
        "--min-cluster-size",
        type=int,
        default=None,
        help="TypiClust: clusters this small or smaller are dropped",
    )
    o.add_argument(
        "--metric",
        choices=("sqeuclidean", "euclidean"),
        default=None,
        help="TypiClust typicality distance",
    )
    _show_method_defaults(o)

    t = sp.add_argument_group(
        "USL-T parameters (--method uslt; --n-clusters [default: m + len(labeled)], --seed "
        "and --threads also apply)"
    )
    t.add_argument(
        "--epochs", type=int, default=None, help="[default: >= 100 epochs and >= 600 steps]"
    )
    t.add_argument("--batch-size", type=int, default=None, help="[default: 1024]")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate [default: 3e-3]")
    t.add_argument("--n-heads", type=int, default=None, help="clustering heads [default: 3]")
    t.add_argument(
        "--n-neighbors", type=int, default=None, help="kNN list of the local loss [default: 20]"
    )
    t.add_argument(
        "--head", choices=("cosine", "linear"), default=None, help="head kind [default: cosine]"
    )
    t.add_argument(
        "--head-init",
        choices=("sample", "k-means++"),
        default=None,
        help="starting prototypes of cosine heads [default: sample]",
    )
    t.add_argument(
        "--device", default=None, help="torch device to train on, e.g. cuda:0 [default: cpu]"
    )
    sp.set_defaults(func=run)
    return sp


def run(args: argparse.Namespace) -> int:
    import usl_fast

    t_start = time.perf_counter()
    if args.output is None and args.csv is None:
        raise CLIError(
            "give at least one output: -o/--output PICKS.npy|.txt|.csv and/or --csv PICKS.csv"
        )
    out_fmt = picks_format(args.output) if args.output is not None else None
    require_suffix(args.csv, "--csv", ".csv", "the picks as CSV")
    require_suffix(args.complement_csv, "--complement-csv", ".csv", "the other indices as CSV")
    require_suffix(args.save_info, "--save-info", ".npz", "a numpy archive")
    writes_csv = args.csv is not None or args.complement_csv is not None or out_fmt == ".csv"
    if args.image_ids is not None and not writes_csv:
        raise CLIError("--image-ids is only used with --csv / --complement-csv / -o PICKS.csv")
    inputs = [args.features] + [p for p in (args.image_ids, args.labeled) if p is not None]
    outs = check_outputs(
        [
            (args.output, "-o/--output"),
            (args.csv, "--csv"),
            (args.complement_csv, "--complement-csv"),
            (args.save_info, "--save-info"),
        ],
        args.force,
        inputs,
    )
    # The method's parameters (USL-T's need torch) and the labeled file, before any work.
    kwargs = _method_kwargs(args)
    labeled = read_indices(args.labeled, "--labeled") if args.labeled is not None else None

    feats = load_features(args.features, args.key)
    if args.normalize:
        feats = l2_normalize(feats)
    t_load = time.perf_counter() - t_start
    shape = getattr(feats, "shape", ())
    if len(shape) != 2:
        raise CLIError(f"features must be 2-D (n_points, dim), got shape {tuple(shape)}")
    n = int(shape[0])
    if labeled is not None:
        check_indices(labeled, n, "--labeled", args.labeled)
    # Read the ids before the (possibly long) selection so a wrong file fails at once.
    ids = read_image_ids(args.image_ids, n) if args.image_ids is not None else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = usl_fast.select(
            # USL-T reads numpy (a memory-mapped .npy is read once by its checks)
            feats if args.method != "uslt" else np.asarray(feats),
            args.m,
            method=args.method,
            labeled=labeled,
            seed=args.seed,
            threads=args.threads,
            progress=not args.no_progress,
            return_info=True,
            **kwargs,
        )
    for w in caught:  # e.g. features far from unit norm, clusters left empty
        print(f"{PROG}: note: {w.message}", file=sys.stderr)
    picks = np.asarray(res.indices, dtype=np.int64)
    # USL's, USL-T's and TypiClust's all-fill warnings already said it (printed above); a
    # method that fills in silence (TypiClust's partial fill) gets this one line.
    said = any("filled" in str(w.message) for w in caught)
    if res.n_filled and not said:
        print(
            f"{PROG}: note: the last {res.n_filled} picks came from the method's fill rule "
            "(n_filled), not from its own rule",
            file=sys.stderr,
        )
    summary = ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items())
    if args.method != "usl":
        summary = f"--method {args.method}, seed {args.seed}, {summary}"
    if labeled is not None:
        summary = f"{labeled.size} labeled before, {summary}"
    summary = f"load {t_load:.2f} s, {summary}"

    # All or nothing: every output goes to a temporary file first, and only when all of
    # them are written are they renamed into place; on any error none is left behind.
    with outs:
        if args.output is not None:
            write_picks(args.output, picks, ids, outs)
        if args.save_info is not None:
            write_info_npz(args.save_info, res, outs)
        if args.csv is not None:
            write_index_csv(args.csv, picks, ids, outs)
        if args.complement_csv is not None:
            write_index_csv(args.complement_csv, complement(picks, n), ids, outs)
        outs.commit()
    total = time.perf_counter() - t_start
    print(f"selected {picks.size} of {n} in {total:.2f} s ({summary})")
    return 0


def method_choices() -> Tuple[str, ...]:
    """The methods ``usl_fast.select`` accepts, usl (the default) first: the declared
    ``usl_fast._presets.METHOD_NAMES`` (``uslt`` needs torch; the others are
    ``usl_fast.METHODS``)."""
    return METHOD_NAMES


def _option_name(dest: str) -> str:
    return "-k" if dest == "k" else "--" + dest.replace("_", "-")


def _method_params(method: str) -> Tuple[str, ...]:
    """Keywords the estimator of ``method`` takes (what select forwards to it)."""
    import inspect

    import usl_fast

    if method == "uslt":
        try:
            from ..uslt import USLT
        except ImportError as exc:
            raise CLIError(f"--method uslt: {exc}") from exc
        cls: Any = USLT
    else:
        cls = usl_fast.METHODS[method]
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def _method_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The keywords of ``usl_fast.select`` for ``--method`` from the options given (each
    forwarded only when given, so the rest keeps the method's or the preset's default);
    a given option the method does not take is an error (forgetting ``--method probcover``
    while giving ``--delta`` would otherwise return USL picks)."""
    given = [o for o in _METHOD_OPTIONS if getattr(args, o, None) is not None]
    if args.method == "usl":
        kwargs = {o: getattr(args, o) for o in given if o in _USL_OPTIONS}
        kwargs["defaults"] = args.defaults or PARAMS["defaults"].default
        # The presets set exactly one horizon; giving the other one replaces it instead
        # of failing with "give at most one of horizon_dist and horizon_num".
        if "horizon_num" in kwargs and "horizon_dist" not in kwargs:
            kwargs["horizon_dist"] = None
        if "horizon_dist" in kwargs and "horizon_num" not in kwargs:
            kwargs["horizon_num"] = None
        ignored = [o for o in given if o not in _USL_OPTIONS]
    else:
        # Every option whose keyword the method's estimator takes (TypiClust's k and
        # kmeans_iter, ProbCover's alpha, USL-T's n_clusters included: select() passes
        # those on).
        takes = set(_method_params(args.method))
        kwargs = {
            _METHOD_OPTIONS[o]: getattr(args, o) for o in given if _METHOD_OPTIONS[o] in takes
        }
        ignored = [o for o in given if _METHOD_OPTIONS[o] not in takes]
    names = [_option_name(o) for o in ignored]
    if args.method != "usl" and args.defaults is not None:
        names.append("--defaults")
    if names:
        raise CLIError(
            f"--method {args.method} does not take {', '.join(names)}: leave "
            f"{'it' if len(names) == 1 else 'them'} out, or choose the --method "
            f"{'it belongs' if len(names) == 1 else 'they belong'} to"
        )
    return kwargs


def _off(v: Any) -> Any:
    return "off" if v is None else v


def _add_usl_options(group: Any) -> None:
    """One option per declared USL parameter (``usl_fast._presets.USL_PARAMS``, in
    ``select``'s order): its type or choices and its doc line as the help, then its default.
    The argparse default is None ("not given"): a given option is forwarded, the others come
    from the --defaults preset, whose values the help lists (a preset equal to an earlier
    one, imagenet-moco = imagenet, is named beside it: "imagenet 20 (also imagenet-moco)",
    so that every --defaults choice appears)."""
    records = list(PRESETS.values())
    shown = [name for i, name in enumerate(PRESETS) if PRESETS[name] not in records[:i]]
    also = {
        name: "".join(
            f" (also {other})"
            for other in PRESETS
            if other != name and PRESETS[other] == PRESETS[name]
        )
        for name in shown
    }
    for p in USL_PARAMS:
        text = p.doc
        if p.from_preset:
            vals = ", ".join(f"{name} {_off(PRESETS[name][p.name])}{also[name]}" for name in shown)
            text = f"{text} [default: the preset's: {vals}]"
        elif p.default is not None:
            text = f"{text} [default: {p.default}]"
        kw: Dict[str, Any] = {"dest": p.name, "default": None, "help": text}
        if p.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif p.choices is not None:
            kw["choices"] = p.choices
        else:
            kw["type"] = p.type
        flags = ("-k", "--k") if p.name == "k" else (p.option,)  # --k: the long form, too
        group.add_argument(*flags, **kw)


def _show_method_defaults(group: Any) -> None:
    """Append to the help of the TypiClust / ProbCover options whose argparse default is
    None ("not given, the estimator decides") the estimator's constructor default."""
    import inspect

    import usl_fast

    owners = {}
    for cls in (usl_fast.TypiClust, usl_fast.ProbCover):
        for name, par in inspect.signature(cls.__init__).parameters.items():
            owners.setdefault(name, (cls.__name__, par.default))
    for action in group._group_actions:
        if action.dest in ("delta", "n_classes"):
            continue  # their help says how they combine
        if action.dest in owners and "[default" not in (action.help or ""):
            owner, default = owners[action.dest]
            shown = "no limit" if default is None else default
            action.help = f"{action.help} [default: {shown}]"
