"""What a labeling choice is worth to a semi-supervised learner, measured: on scikit-learn's
8x8 digits, pick m of the 1,347 training images with each selection method, train FixMatch
(the small CPU configuration, usl_fast.ssl.PRESETS["digits"]) from the picks' labels, and
report test accuracy on the 450 held-out images and the classes the picks cover.

    python benchmarks/quality/digits_fixmatch.py               # budgets 10 20 40, seeds 0-4
    python benchmarks/quality/digits_fixmatch.py --budgets 10 --seeds 1 --steps 50  # smoke

Methods (selection sees only the training images' features, never labels, except
"stratified"):
  random      usl_fast.random_select (the authors' baseline)
  stratified  m / 10 random images of each class - CHEATS: it reads the labels; an
              upper-bound-ish reference, not a selection method
  usl         usl_fast.select, CIFAR-10 preset with k = 20 (as the demo)
  uslt        usl_fast.uslt.USLT(n_clusters=m) defaults
  kcenter     k-center greedy (farthest-first traversal from a seeded random start)
Features for selection: standardise -> PCA(32) -> L2-normalise, fitted on the training
images (the demo's stand-in for a self-supervised encoder). The seed drives the selection
(k-means init, random draw, USL-T, k-center start) AND FixMatch's init and batches, so each
(method, budget, seed) is one independent run. Writes benchmarks/results/quality_digits.{md,json}.
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

METHODS = ("random", "stratified", "usl", "uslt", "kcenter")
RESULTS = pathlib.Path(__file__).resolve().parent.parent / "results"


def features(train_x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 unit rows from (n, 1, 8, 8) uint8 images; no labels used."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(train_x.reshape(len(train_x), -1).astype(np.float64))
    x = PCA(n_components=32, svd_solver="full").fit_transform(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def kcenter_greedy(x: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Farthest-first traversal: a seeded random first point, then repeatedly the point
    farthest (squared L2) from everything picked so far; ties to the lower index."""
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(len(x)))]
    d = ((x - x[picks[0]]) ** 2).sum(1, dtype=np.float64)
    for _ in range(m - 1):
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(1, dtype=np.float64))
    return np.asarray(picks, dtype=np.int64)


def stratified(y: np.ndarray, m: int, seed: int, classes: int = 10) -> np.ndarray:
    """m // classes random images per class, the remainder to the lowest classes (uses labels)."""
    rng = np.random.default_rng(seed)
    per = [m // classes + (1 if c < m % classes else 0) for c in range(classes)]
    out = [rng.choice(np.flatnonzero(y == c), k, replace=False) for c, k in enumerate(per) if k]
    return np.concatenate(out).astype(np.int64)


def select(method: str, x: np.ndarray, y: np.ndarray, m: int, seed: int) -> np.ndarray:
    import usl_fast

    if method == "random":
        return np.asarray(usl_fast.random_select(len(x), m, seed=seed))
    if method == "stratified":
        return stratified(y, m, seed)
    if method == "usl":
        return np.asarray(usl_fast.select(x, m, defaults="cifar10", k=20, seed=seed, threads=1))
    if method == "uslt":
        from usl_fast.uslt import USLT

        return np.asarray(USLT(n_clusters=m, seed=seed, threads=1).fit(x).indices_)
    if method == "kcenter":
        return kcenter_greedy(x, m, seed)
    raise ValueError(f"unknown method {method!r}")


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
    picks = select(job["method"], x, y, job["m"], job["seed"])
    t_sel = time.perf_counter() - t0
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
        "| budget | method | classes covered (of 10) | FixMatch test accuracy (EMA) |",
        "| ---: | --- | ---: | ---: |",
    ]
    for m in budgets:
        for meth in methods:
            rs = [r for r in rows if r["m"] == m and r["method"] == meth]
            if not rs:
                continue
            acc = np.array([r["accuracy"] for r in rs]) * 100
            cov = np.mean([r["coverage"] for r in rs])
            name = "stratified (uses labels)" if meth == "stratified" else meth
            out.append(f"| {m} | {name} | {cov:.1f} | {acc.mean():.1f}% +- {acc.std():.1f}% |")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--steps", type=int, default=None, help="FixMatch steps [preset: 2000]")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
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
        dict(method=meth, m=m, seed=s, steps=args.steps)
        for m in args.budgets
        for s in range(args.seeds)
        for meth in args.methods
    ]
    rows: List[Dict[str, Any]] = []
    previous_elapsed = 0.0
    if args.extend:
        prev = json.loads(pathlib.Path(args.extend).read_text())
        have = {(r["method"], r["m"], r["seed"]) for r in prev["runs"]}
        rows = [
            r
            for r in prev["runs"]
            if (r["method"], r["m"], r["seed"]) in {(j["method"], j["m"], j["seed"]) for j in jobs}
        ]
        jobs = [j for j in jobs if (j["method"], j["m"], j["seed"]) not in have]
        previous_elapsed = float(prev.get("elapsed_s", 0.0))
        print(f"kept {len(rows)} runs of {args.extend}; {len(jobs)} to run", flush=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) if args.workers > 1 else _Inline() as pool:
        for r in pool.map(one_run, jobs):
            rows.append(r)
            print(
                f"m={r['m']:>3} seed={r['seed']} {r['method']:<10} classes {r['coverage']:>2} "
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
        + "`"
        + (f", finished with `--extend {args.extend}`" if args.extend else "")
        + f" ({elapsed / 60:.1f} min in all, {args.workers} worker process(es), one torch "
        "thread each).",
        f"FixMatch: usl_fast.ssl.PRESETS['digits'] ({steps} steps), test accuracy of the EMA "
        "model on the 450 held-out images after the last step; mean +- std over seeds "
        f"0-{args.seeds - 1}.",
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
