"""What a labeling choice is worth to a semi-supervised learner, measured: on scikit-learn's
8x8 digits, pick m of the 1,347 training images with each selection method, train FixMatch
(the small CPU configuration, usl_fast.ssl.PRESETS["digits"]) from the picks' labels, and
report test accuracy on the 450 held-out images and the classes the picks cover.

    python benchmarks/quality/digits_fixmatch.py               # budgets 10 20 40, seeds 0-4
    python benchmarks/quality/digits_fixmatch.py --budgets 10 --seeds 1 --steps 50  # smoke

Methods (selection sees only the training images' features, never labels, except
"stratified"); settings fixed before any comparison was run:
  random      usl_fast.RandomSelect (the authors' baseline)
  stratified  m / 10 random images of each class - CHEATS: it reads the labels; an
              upper-bound-ish reference, not a selection method
  usl         usl_fast.select, CIFAR-10 preset with k = 20 (as the demo)
  uslt        usl_fast.uslt.USLT(n_clusters=m) defaults
  kcenter     usl_fast.KCenterGreedy (farthest-first from a seeded random start)
  typiclust   usl_fast.TypiClust defaults (the authors': k = 20, clusters > 5 points, cap 500)
  probcover   usl_fast.ProbCover(n_classes=10): delta by the paper's purity rule
              (alpha = 0.95 on 10 k-means pseudo-labels)
Second round (`--round2`, default on): the same methods pick 20, then 20 more with
labeled= the first 20 (stratified and random: two draws of the same rule); FixMatch trains
on the 40, reported beside the one-shot 40.
Each configuration also gets a label-spreading score (scikit-learn LabelSpreading, kNN
kernel, 10 neighbours, alpha 0.2, on the selection features): accuracy on the training
images that were not picked - a cheap, training-free view of the same picks.
Features for selection: standardise -> PCA(32) -> L2-normalise, fitted on the training
images (the demo's stand-in for a self-supervised encoder). The seed drives the selection
(k-means init, random draw, USL-T, k-center start) AND FixMatch's init and batches, so each
(method, budget, seed) is one independent run. Writes benchmarks/results/quality_digits.{md,json}.
With --extend, runs of an earlier .json are kept only if the current code picks exactly the
same indices for them (checked, so a kept row is what this code would produce).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

METHODS = ("random", "stratified", "usl", "uslt", "kcenter", "typiclust", "probcover")
RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"


def features(train_x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 unit rows from (n, 1, 8, 8) uint8 images; no labels used."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(train_x.reshape(len(train_x), -1).astype(np.float64))
    x = PCA(n_components=32, svd_solver="full").fit_transform(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def stratified(y: np.ndarray, m: int, seed: int, classes: int = 10) -> np.ndarray:
    """m // classes random images per class, the remainder to the lowest classes (uses labels)."""
    rng = np.random.default_rng(seed)
    per = [m // classes + (1 if c < m % classes else 0) for c in range(classes)]
    out = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in enumerate(per) if k]
    return np.concatenate(out).astype(np.int64)


def select(
    method: str, x: np.ndarray, y: np.ndarray, m: int, seed: int, labeled: Any = None
) -> np.ndarray:
    import usl_fast

    if method == "stratified":
        if labeled is None:
            return stratified(y, m, seed)
        # a second draw of the same rule among the images not labeled yet
        pool = np.setdiff1d(np.arange(len(y)), labeled)
        return pool[stratified(y[pool], m, seed + 1000)]
    kw: Dict[str, Any] = dict(seed=seed, threads=1, labeled=labeled)
    if method == "usl":
        kw.update(defaults="cifar10", k=20)
    elif method == "probcover":
        kw.update(n_classes=10)
    elif method == "random":
        kw.pop("threads")
    return np.asarray(usl_fast.select(x, m, method=method, **kw))


def picks_for(job: Dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The job's picks: m at once, or (round2) m/2 then m/2 more with labeled=."""
    if not job.get("round2"):
        return select(job["method"], x, y, job["m"], job["seed"])
    first = select(job["method"], x, y, job["m"] // 2, job["seed"])
    second = select(job["method"], x, y, job["m"] - first.size, job["seed"], labeled=first)
    assert not np.isin(second, first).any()
    return np.concatenate([first, second])


def label_spreading(x: np.ndarray, y: np.ndarray, picks: np.ndarray) -> float:
    """Accuracy of scikit-learn's LabelSpreading (kNN kernel, 10 neighbours, alpha 0.2)
    from the picks' labels, on the training images not picked."""
    from sklearn.semi_supervised import LabelSpreading

    yy = np.full(len(y), -1)
    yy[picks] = y[picks]
    ls = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=1000).fit(x, yy)
    rest = np.setdiff1d(np.arange(len(y)), picks)
    return float((ls.transduction_[rest] == y[rest]).mean())


def _key(r: Dict[str, Any]) -> Tuple[str, int, int, bool]:
    return (r["method"], r["m"], r["seed"], bool(r.get("round2", False)))


@functools.lru_cache(maxsize=1)
def _prepared() -> Tuple[Any, np.ndarray, np.ndarray]:
    """The digits split, the selection features and the training labels: made once per
    worker process, shared by all its runs."""
    from usl_fast.ssl import load_digits_split

    data = load_digits_split()
    return data, features(data.train_x.numpy()), data.train_y.numpy()


def one_run(job: Dict[str, Any]) -> Dict[str, Any]:
    """Select, then train FixMatch; runs in a worker process with one torch thread."""
    import torch

    torch.set_num_threads(1)
    from dataclasses import replace

    from usl_fast.ssl import PRESETS, FixMatch

    data, x, y = _prepared()
    t0 = time.perf_counter()
    picks = picks_for(job, x, y)
    t_sel = time.perf_counter() - t0
    spread = label_spreading(x, y, picks)
    assert len(picks) == job["m"] and np.unique(picks).size == job["m"]
    cfg = replace(PRESETS["digits"], seed=job["seed"])
    if job.get("steps"):
        cfg = replace(cfg, steps=job["steps"], eval_every=job["steps"])
    run = FixMatch(data, picks, cfg, device="cpu")
    t1 = time.perf_counter()
    hist = run.train(log=None)
    return dict(
        job,
        coverage=int(np.unique(y[picks]).size),
        label_spreading=spread,
        accuracy=hist.test_acc[-1],
        raw_accuracy=hist.raw_test_acc[-1],
        mask_rate=hist.mask_rate[-1],
        select_s=t_sel,
        train_s=time.perf_counter() - t1,
        picks=picks.tolist(),
    )


class _Inline:
    """One worker: run the jobs in this process (no pickling, easy to debug)."""

    def __enter__(self) -> "_Inline":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @staticmethod
    def map(fn: Any, jobs: List[Dict[str, Any]]) -> Any:
        return map(fn, jobs)


def table(rows: List[Dict[str, Any]], budgets: Sequence[int], methods: Sequence[str]) -> List[str]:
    out = [
        "| budget | method | classes covered (of 10) | label spreading accuracy | "
        "FixMatch test accuracy (EMA) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    groups = [(m, False) for m in budgets]
    if any(r.get("round2") for r in rows):
        groups.append((max(r["m"] for r in rows if r.get("round2")), True))
    for m, r2 in groups:
        for meth in methods:
            rs = [
                r
                for r in rows
                if r["m"] == m and r["method"] == meth and bool(r.get("round2")) == r2
            ]
            if not rs:
                continue
            acc = np.array([r["accuracy"] for r in rs]) * 100
            cov = np.mean([r["coverage"] for r in rs])
            ls = np.array([r["label_spreading"] for r in rs]) * 100
            name = "stratified (uses labels)" if meth == "stratified" else meth
            budget = f"{m // 2} + {m - m // 2}" if r2 else str(m)
            out.append(
                f"| {budget} | {name} | {cov:.1f} | {ls.mean():.1f}% +- {ls.std():.1f}% | "
                f"{acc.mean():.1f}% +- {acc.std():.1f}% |"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--steps", type=int, default=None, help="FixMatch steps [preset: 2000]")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--round2",
        type=int,
        default=40,
        help="total budget of the two-round runs (half, then half more with labeled=); 0: none",
    )
    ap.add_argument(
        "--out", default=str(RESULTS / "quality_digits"), help="output stem (.md/.json)"
    )
    ap.add_argument(
        "--extend",
        default=None,
        help="a previous run's .json: its runs are kept and only the missing jobs run (to "
        "finish an interrupted run); the table covers both",
    )
    args = ap.parse_args(argv)
    jobs = [
        dict(method=meth, m=m, seed=s, steps=args.steps, round2=False)
        for m in args.budgets
        for s in range(args.seeds)
        for meth in args.methods
    ]
    if args.round2:
        jobs += [
            dict(method=meth, m=args.round2, seed=s, steps=args.steps, round2=True)
            for s in range(args.seeds)
            for meth in args.methods
        ]
    rows: List[Dict[str, Any]] = []
    previous_elapsed = 0.0
    if args.extend:
        prev = json.loads(pathlib.Path(args.extend).read_text())
        wanted = {_key(j) for j in jobs}
        _, x, y = _prepared()
        for r in prev["runs"]:
            if _key(r) not in wanted:
                continue
            picks = picks_for(r, x, y)
            if not np.array_equal(picks, np.asarray(r["picks"])):
                print(f"not kept (the current code picks differently): {_key(r)}", flush=True)
                continue
            if "label_spreading" not in r:
                r["label_spreading"] = label_spreading(x, y, picks)
            r.setdefault("round2", False)
            rows.append(r)
        have = {_key(r) for r in rows}
        jobs = [j for j in jobs if _key(j) not in have]
        previous_elapsed = float(prev.get("elapsed_s", 0.0))
        print(f"kept {len(rows)} runs of {args.extend}; {len(jobs)} to run", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) if args.workers > 1 else _Inline() as pool:
        for r in pool.map(one_run, jobs):
            rows.append(r)
            print(
                f"m={r['m']:>3}{'r2' if r['round2'] else '  '} seed={r['seed']} {r['method']:<10} "
                f"classes {r['coverage']:>2} spread {100 * r['label_spreading']:5.1f}% "
                f"acc {100 * r['accuracy']:5.1f}% (raw {100 * r['raw_accuracy']:5.1f}%) "
                f"mask {r['mask_rate']:.2f} select {r['select_s']:.1f} s train {r['train_s']:.1f} s",
                flush=True,
            )
    elapsed = time.perf_counter() - t0 + previous_elapsed
    lines = table(rows, args.budgets, args.methods)
    steps = args.steps or 2000
    head = [
        "# FixMatch on scikit-learn digits from each method's picks",
        "",
        f"Command: `python benchmarks/quality/digits_fixmatch.py "
        f"--budgets {' '.join(map(str, args.budgets))} --seeds {args.seeds}"
        + (f" --steps {args.steps}" if args.steps else "")
        + (f" --round2 {args.round2}" if args.round2 != 40 else "")
        + "`"
        + (f", finished with `--extend {args.extend}`" if args.extend else "")
        + f" ({elapsed / 60:.1f} min in all, {args.workers} worker process(es), one torch "
        "thread each).",
        f"FixMatch: usl_fast.ssl.PRESETS['digits'] ({steps} steps), test accuracy of the EMA "
        "model on the 450 held-out images after the last step; label spreading: accuracy on "
        "the training images not picked; mean +- std over seeds "
        f"0-{args.seeds - 1}. Rows '20 + 20': 20 picks, then 20 more with labeled= the first.",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    print("\n" + text)
    stem = pathlib.Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "elapsed_s": elapsed, "runs": rows}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
