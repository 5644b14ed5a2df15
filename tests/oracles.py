"""Float64 NumPy transcriptions of USL as the paper's implementation does it
(docs/parity.md), written from the reference text and not from the
package: no tiling, no expanded-form distances, no float32. Slow and obvious on purpose;
the tests compare the compiled engine against these."""

from __future__ import annotations

import numpy as np

#: Squared distance the reference writes into a masked entry (it still adds FAR**-alpha).
FAR = 1e10
#: Floor on the mean kNN distance (duplicates: a large finite density instead of inf).
MIN_MEAN_DIST = 1e-12


def as64(a) -> np.ndarray:
    """float64 copy of an array-like (a torch tensor goes through numpy)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.array(a, dtype=np.float64)


def sqdist(a, b) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances computed as sum((a_i - b_j)**2) in
    float64, so identical rows are exactly 0 (the expanded form would not guarantee it)."""
    a, b = as64(a), as64(b)
    out = np.empty((a.shape[0], b.shape[0]), np.float64)
    if b.shape[0] <= a.shape[0]:
        for j in range(b.shape[0]):
            out[:, j] = ((a - b[j]) ** 2).sum(axis=1)
    else:
        for i in range(a.shape[0]):
            out[i, :] = ((b - a[i]) ** 2).sum(axis=1)
    return out


def exact_l2(a, b) -> np.ndarray:
    """(len(a), len(b)) float32: the engine's definition of distance (docs/engine.md),
    transcribed: per pair, the float32 difference of each coordinate, widened to float64
    and squared; lane t % 8 sums its coordinates in ascending t in float64; the lanes are
    combined as ((0+1)+(2+3))+((4+5)+(6+7)) and the total rounded once to float32."""
    a32 = np.asarray(a, dtype=np.float32)
    b32 = np.asarray(b, dtype=np.float32)
    d = a32.shape[1]
    out = np.empty((a32.shape[0], b32.shape[0]), np.float32)
    for i in range(a32.shape[0]):
        df = (a32[i] - b32).astype(np.float64)  # one float32 subtraction per coordinate
        sq = df * df
        lanes = np.zeros((b32.shape[0], 8))
        for t in range(d):
            lanes[:, t % 8] = lanes[:, t % 8] + sq[:, t]
        L = [lanes[:, lane] for lane in range(8)]
        total = ((L[0] + L[1]) + (L[2] + L[3])) + ((L[4] + L[5]) + (L[6] + L[7]))
        out[i] = total.astype(np.float32)
    return out


def knn_exact(features, k: int, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """kNN under the engine's distance: (distances float32 (q, k), indices int64), ties to
    the lower index."""
    x = np.asarray(features, dtype=np.float32)
    q = x if queries is None else np.asarray(queries, dtype=np.float32)
    D = exact_l2(q, x)
    idx = _order(D)[:, :k]
    return np.take_along_axis(D, idx, axis=1), idx.astype(np.int64)


def _order(D: np.ndarray) -> np.ndarray:
    """Per row, column indices sorted by (distance, index): ties go to the lower index."""
    cols = np.broadcast_to(np.arange(D.shape[1]), D.shape)
    return np.lexsort((cols, D), axis=1)


# --------------------------------------------------------------------------- kNN, density


def knn(features, k: int, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force kNN by squared L2. Self-search (queries None): every point is among its
    own neighbours at distance 0. Returns (distances float64 (q, k), indices int64)."""
    x = as64(features)
    q = x if queries is None else as64(queries)
    D = sqdist(q, x)
    idx = _order(D)[:, :k]
    return np.take_along_axis(D, idx, axis=1), idx.astype(np.int64)


def density_from_distances(dist) -> np.ndarray:
    """density_i = 1 / mean of row i of the kNN distances (self included)."""
    mean = as64(dist).mean(axis=1)
    return 1.0 / np.maximum(mean, MIN_MEAN_DIST)


def density(features, k: int) -> np.ndarray:
    """Density (docs/parity.md): 1 / mean of the k smallest squared distances, self included."""
    d, _ = knn(features, k)
    return density_from_distances(d)


# --------------------------------------------------------------------------- k-means


def random_init_indices(n: int, n_clusters: int, seed: int) -> np.ndarray:
    """The rows at the first K positions of a seeded permutation of 0..n-1."""
    return np.random.default_rng(seed).permutation(n)[:n_clusters]


def lloyd(features, init, n_iter: int, dead_rule: bool = True):
    """Lloyd's k-means from the given initial centroids, a fixed number of iterations.

    Each iteration assigns every point to its nearest centroid (lower index on ties), then
    moves each centroid to the mean of its members. A cluster with no member is dead for
    the rest of the run (the reference's NaN centroid): it keeps its position and is never
    chosen again. ``dead_rule=False`` gives plain Lloyd (an empty centroid stays put but
    may be chosen again), to show that the rule changes something.

    Returns (labels of the last assignment, centroids after the last update, counts of
    the last assignment, inertia per iteration).
    """
    x = as64(features)
    c = as64(init).copy()
    K = c.shape[0]
    alive = np.ones(K, bool)
    inertia = []
    labels = counts = None
    for _ in range(n_iter):
        D = sqdist(x, c)
        D[:, ~alive] = np.inf
        labels = np.argmin(D, axis=1)  # first minimum: lower centroid index on ties
        inertia.append(D[np.arange(x.shape[0]), labels].sum())
        counts = np.bincount(labels, minlength=K)
        if dead_rule:
            alive &= counts > 0
        for j in range(K):
            if counts[j] > 0:
                c[j] = x[labels == j].mean(axis=0)
    return labels.astype(np.int64), c, counts.astype(np.int64), np.array(inertia)


# --------------------------------------------------------------------------- regularizer


def _tags(n_picks: int, own_cluster: str, pick_clusters) -> np.ndarray:
    if own_cluster == "position":
        return np.arange(n_picks)  # the reference's quirk: pick number j vs label[i]
    if own_cluster == "cluster":
        return np.asarray(pick_clusters, dtype=np.int64)
    if own_cluster == "none":
        return np.full(n_picks, -1)
    raise ValueError(own_cluster)


def regularizer(
    features,
    labels,
    picks,
    *,
    alpha: float,
    horizon_dist: float | None = None,
    horizon_num: int | None = None,
    own_cluster: str = "position",
    pick_clusters=None,
    mask_zero: bool = False,
) -> np.ndarray:
    """One round's regularizer, docs/parity.md, for every point.

    CIFAR flavour (horizon_num None): the full N x p matrix D of squared distances to the
    picks; D[i, j] -> 1e10 where pick j is i's own cluster, where D >= horizon_dist, and
    (mask_zero) where D == 0; then sum_j 1 / D[i, j]**alpha over ALL picks, the 1e10
    entries included.

    ImageNet flavour (horizon_num given): per row the horizon_num smallest D (ties to the
    lower j) are chosen first; the masks are then applied to those entries only (a masked
    pick still takes its place), and the sum runs over those entries only.
    """
    return _regularizer(
        features,
        labels,
        picks,
        alpha,
        horizon_dist,
        horizon_num,
        own_cluster,
        pick_clusters,
        mask_zero,
    )[0]


#: float32 unit roundoff, for the error model of the package's float32 distances.
EPS32 = 2.0**-24


def _regularizer(
    features, labels, picks, alpha, horizon_dist, horizon_num, own_cluster, pick_clusters, mask_zero
):
    """(regularizer, error bound per point, fragile). The bound models a float32 engine
    that forms D as |x|^2 + |p|^2 - 2 x.p (error ~ eps (|x|^2 + |p|^2)) or, for tiny D,
    directly (error ~ eps D). `fragile` is True when some D lies within its error of a
    decision (the horizon_dist threshold, the horizon_num-th vs the next distance), i.e.
    where float32 may legitimately decide differently from this float64 transcription."""
    x = as64(features)
    lab = np.asarray(labels, dtype=np.int64)
    p = np.asarray(picks, dtype=np.int64)
    D = sqdist(x, x[p])
    sq = (x**2).sum(axis=1)
    scale = sq[:, None] + sq[p][None, :]
    E = np.where(D > 2e-3 * scale, 4 * EPS32 * scale, 8 * EPS32 * D)
    fragile = False
    tag = _tags(p.size, own_cluster, pick_clusters)
    if horizon_num is None:
        cols = np.broadcast_to(np.arange(p.size), D.shape)
    else:
        h = min(int(horizon_num), p.size)
        order = _order(D)
        if h < p.size:
            Ds = np.take_along_axis(D, order[:, h - 1 : h + 1], axis=1)
            Es = np.take_along_axis(E, order[:, h - 1 : h + 1], axis=1)
            gap = Ds[:, 1] - Ds[:, 0]
            fragile |= bool(np.any((gap > 0) & (gap <= Es.sum(axis=1))))
        cols = order[:, :h]
        D = np.take_along_axis(D, cols, axis=1)
        E = np.take_along_axis(E, cols, axis=1)
    masked = lab[:, None] == tag[cols]
    if mask_zero:
        masked |= D == 0.0
    if horizon_dist is not None:
        fragile |= bool(np.any(np.abs(D - horizon_dist) <= E))
        masked |= D >= horizon_dist
    M = np.where(masked, FAR, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (1.0 / M**alpha).sum(axis=1)
        dterm = np.where(masked | (D == 0), 0.0, alpha * M ** (-alpha - 1.0) * E)
    return value, dterm.sum(axis=1), fragile


# --------------------------------------------------------------------------- selection


def cluster_argmax(density, labels, n_clusters: int, reg=None, weight: float = 0.0) -> np.ndarray:
    """Per cluster, the member with the largest density - weight * reg (first on ties);
    -1 for an empty cluster."""
    dens = as64(density)
    lab = np.asarray(labels, dtype=np.int64)
    score = dens if reg is None else dens - weight * as64(reg)
    out = np.full(n_clusters, -1, np.int64)
    for c in range(n_clusters):
        members = np.flatnonzero(lab == c)
        if members.size:
            out[c] = members[np.argmax(score[members])]
    return out


def regularized_select(
    features,
    density,
    labels,
    n_clusters: int,
    m: int,
    *,
    rounds: int,
    weight: float,
    momentum: float,
    alpha: float,
    horizon_dist: float | None = None,
    horizon_num: int | None = None,
    own_cluster: str = "position",
    mask_zero: bool = False,
) -> np.ndarray:
    """The published selection loop (docs/parity.md): per round, clusters 0..K-1 in order, empty ones
    skipped, stop at m picks, the member with the largest density - weight * reg (first on
    ties); between rounds (not after the last) reg = mu * reg + (1 - mu) * regularizer.
    Returns the last round's picks in pick order (may be fewer than m if fewer clusters
    are non-empty: the reference has no top-up)."""
    return regularized_select_state(
        features,
        density,
        labels,
        n_clusters,
        m,
        rounds=rounds,
        weight=weight,
        momentum=momentum,
        alpha=alpha,
        horizon_dist=horizon_dist,
        horizon_num=horizon_num,
        own_cluster=own_cluster,
        mask_zero=mask_zero,
    )[0]


def regularized_select_state(
    features,
    density,
    labels,
    n_clusters,
    m,
    *,
    rounds,
    weight,
    momentum,
    alpha,
    horizon_dist=None,
    horizon_num=None,
    own_cluster="position",
    mask_zero=False,
):
    """regularized_select, also returning the regularizer the last round scored with and
    whether the case is fragile: a float32 engine may legitimately differ (a decision of
    the regularizer within float32 error, see _regularizer, or an arg-max whose runner-up
    is within the accumulated error of the scores)."""
    dens = as64(density)
    lab = np.asarray(labels, dtype=np.int64)
    n = dens.shape[0]
    reg = np.zeros(n)
    err = np.zeros(n)
    fragile = False
    picks: list[int] = []
    for t in range(rounds):
        picks, clusters = [], []
        # usl_fast's documented rule: a zero weight drops the regularizer term entirely
        # (the reference would compute 0 * inf = NaN where the regularizer is infinite).
        score = dens - weight * reg if weight > 0 else dens.copy()
        serr = weight * err if weight > 0 else np.zeros(n)
        for c in range(n_clusters):
            if len(picks) == m:
                break
            members = np.flatnonzero(lab == c)
            if members.size == 0:
                continue
            best = members[np.argmax(score[members])]
            with np.errstate(invalid="ignore"):
                gap = score[best] - score[members]
                tol = serr[best] + serr[members]
            fragile |= bool(np.any((members != best) & (gap <= tol) & (tol > 0)))
            picks.append(int(best))
            clusters.append(c)
        if t < rounds - 1:
            new, new_err, frag = _regularizer(
                features,
                lab,
                picks,
                alpha,
                horizon_dist,
                horizon_num,
                own_cluster,
                clusters,
                mask_zero,
            )
            fragile |= frag
            # Likewise a zero momentum forgets the old term, momentum 1 keeps it unchanged.
            if momentum == 0.0:
                reg, err = new, new_err
            elif momentum < 1.0:
                reg = momentum * reg + (1.0 - momentum) * new
                err = momentum * err + (1.0 - momentum) * new_err
    return np.asarray(picks, dtype=np.int64), reg, fragile


def top_up(density, reg, weight: float, picks, m: int) -> np.ndarray:
    """usl_fast's documented extension (the reference has none): when fewer than m
    clusters are non-empty, add the best-scoring points not picked yet, by the last
    round's score density - weight * reg, ties to the lower index."""
    score = as64(density) - weight * as64(reg) if weight > 0 else as64(density)
    picks = np.asarray(picks, dtype=np.int64)
    rest = np.setdiff1d(np.arange(score.size), picks)
    order = rest[np.lexsort((rest, -score[rest]))]
    return np.concatenate([picks, order[: m - picks.size]])


#: The published configurations (docs/presets.md's table), transcribed independently.
PRESETS = {
    "cifar10": dict(
        rounds=10,
        weight=0.5,
        momentum=0.9,
        alpha=0.5,
        horizon_dist=4.0,
        horizon_num=None,
        own_cluster="position",
        mask_zero=False,
        k=400,
        kmeans_iter=200,
    ),
    "cifar100": dict(
        rounds=10,
        weight=1.0,
        momentum=0.9,
        alpha=1.0,
        horizon_dist=1.0,
        horizon_num=None,
        own_cluster="position",
        mask_zero=False,
        k=400,
        kmeans_iter=200,
    ),
    "imagenet-moco": dict(
        rounds=2,
        weight=1.5,
        momentum=0.0,
        alpha=0.5,
        horizon_dist=None,
        horizon_num=128,
        own_cluster="none",
        mask_zero=True,
        k=20,
        kmeans_iter=100,
    ),
    "imagenet-clip": dict(
        rounds=2,
        weight=0.05,
        momentum=0.0,
        alpha=1.0,
        horizon_dist=None,
        horizon_num=32,
        own_cluster="position",
        mask_zero=False,
        k=20,
        kmeans_iter=100,
    ),
}
PRESETS["imagenet"] = PRESETS["imagenet-moco"]

REG_KEYS = (
    "rounds",
    "weight",
    "momentum",
    "alpha",
    "horizon_dist",
    "horizon_num",
    "own_cluster",
    "mask_zero",
)


def reg_params(preset: str, **overrides) -> dict:
    """The regularizer parameters of a preset, with overrides."""
    p = {key: PRESETS[preset][key] for key in REG_KEYS}
    p.update(overrides)
    return p


def random_select(n: int, m: int, seed: int) -> np.ndarray:
    """The authors' random baseline: legacy global generator, seed then choice."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.choice(n, m, replace=False)
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------- other methods
# Each a direct transcription of its paper's rule on a dense distance matrix (the engine's
# exact distance, so ties and thresholds are decided on the same values).


def kcenter_greedy(features, m: int, first: int | None = None, labeled=()) -> np.ndarray:
    """Farthest-first traversal: from the labeled points (or the point `first`), repeatedly
    the point farthest from everything chosen, first index on ties."""
    D = exact_l2(features, features).astype(np.float64)
    n = D.shape[0]
    chosen = list(labeled) if len(labeled) else [first]
    picks = [] if len(labeled) else [first]
    mind = D[:, chosen].min(axis=1)
    while len(picks) < m:
        score = mind.copy()
        score[chosen] = -1.0
        i = int(np.argmax(score))
        picks.append(i)
        chosen.append(i)
        mind = np.minimum(mind, D[:, i])
    assert len(set(picks)) == len(picks) and n >= m
    return np.asarray(picks, np.int64)


def typiclust(
    features,
    labels,
    m: int,
    labeled=(),
    *,
    k: int = 20,
    min_cluster_size: int = 5,
    metric: str = "sqeuclidean",
) -> np.ndarray:
    """The authors' TypiClust loop on given cluster labels: clusters with more than
    min_cluster_size points, sorted by (labeled count, -size, id), visited round-robin;
    each visit takes the remaining member (not labeled, not picked) with the largest
    1 / (mean distance to its min(k, r // 2) nearest other remaining members + 1e-5)."""
    lab = np.asarray(labels, dtype=np.int64)
    labeled = np.asarray(labeled, dtype=np.int64)
    K = int(lab.max()) + 1
    sizes = np.bincount(lab, minlength=K)
    existing = np.bincount(lab[labeled], minlength=K)
    clusters = [c for c in range(K) if sizes[c] > min_cluster_size]
    clusters.sort(key=lambda c: (existing[c], -sizes[c], c))
    D = exact_l2(features, features).astype(np.float64)
    if metric == "euclidean":
        D = np.sqrt(D)
    gone = np.zeros(lab.size, dtype=bool)
    gone[labeled] = True
    picks = []
    i = 0
    empty_in_a_row = 0
    while len(picks) < m and clusters and empty_in_a_row < len(clusters):
        c = clusters[i % len(clusters)]
        i += 1
        rows = np.flatnonzero((lab == c) & ~gone)
        if rows.size == 0:
            empty_in_a_row += 1
            continue
        empty_in_a_row = 0
        kk = min(k, rows.size // 2)
        if kk == 0:
            best = rows[0]
        else:
            sub = D[np.ix_(rows, rows)]
            typ = []
            for a in range(rows.size):
                # the kk smallest distances to other members (self left out by position;
                # a duplicate at distance 0 counts as a neighbour, as in faiss)
                others = np.delete(sub[a], a)
                typ.append(1.0 / (np.sort(others)[:kk].mean() + 1e-5))
            best = rows[int(np.argmax(typ))]
        picks.append(int(best))
        gone[best] = True
    # every kept cluster exhausted (or none kept): the lowest-index points not chosen
    rest = np.flatnonzero(~gone)
    picks.extend(int(i) for i in rest[: m - len(picks)])
    return np.asarray(picks, np.int64)


def probcover(features, m: int, delta: float, labeled=()) -> tuple[np.ndarray, int]:
    """The authors' ProbCover greedy: edges i -> j when ||x_i - x_j|| < delta (self loops
    included); the labeled points' balls are covered first; each pick is the point whose
    ball holds the most uncovered points (first on ties). Returns (greedy picks, number of
    picks still wanted once everything is covered)."""
    E = exact_l2(features, features).astype(np.float64)
    A = E < delta * delta  # E is a float32 value widened exactly; delta^2 in float64
    covered = np.zeros(A.shape[0], dtype=bool)
    for lab_i in labeled:
        covered |= A[lab_i]
    picks = []
    while len(picks) < m:
        deg = (A & ~covered[None, :]).sum(axis=1)
        i = int(np.argmax(deg))
        if deg[i] == 0:
            break
        picks.append(i)
        covered |= A[i]
    return np.asarray(picks, np.int64), m - len(picks)


def purity(features, labels, delta: float) -> float:
    """Fraction of points whose delta-ball (strictly within delta) holds only their label."""
    E = exact_l2(features, features).astype(np.float64)
    lab = np.asarray(labels)
    inside = E < delta * delta
    pure = ~(inside & (lab[:, None] != lab[None, :])).any(axis=1)
    return float(pure.mean())
