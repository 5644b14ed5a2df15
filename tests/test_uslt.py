"""USL-T (usl_fast.uslt, docs/uslt.md) against hand computations in plain
Python / float64 NumPy: the global and local losses and their gradients, the EMA prior,
the clustering heads, the confidence selection (hand tables, fill rule, K > m, chunked
input), the feature augmentation, the kNN list, the trainer (collapse check on separated
blobs, reproducibility, input/output types), every documented argument error, and the
import without PyTorch."""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import oracles
import pytest

torch = pytest.importorskip("torch")

from usl_fast.uslt import (  # noqa: E402
    USLT,
    ClusterHead,
    EMAPrior,
    FeatureAugment,
    global_loss,
    knn_neighbors,
    local_loss,
    select_confident,
    uslt_loss,
)
from usl_fast.uslt._losses import PRIOR_FLOOR, adjusted_target  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- plain-math helpers


def softmax(row):
    mx = max(row)
    e = [math.exp(v - mx) for v in row]
    s = sum(e)
    return [v / s for v in e]


def log_softmax(row):
    mx = max(row)
    lse = mx + math.log(sum(math.exp(v - mx) for v in row))
    return [v - lse for v in row]


def ce(row, c):
    """Cross-entropy of logits `row` against class c."""
    return -log_softmax(row)[c]


def argmax(row):
    return max(range(len(row)), key=lambda j: (row[j], -j))


def global_oracle(weak, strong, tau, reweight):
    """One head, lists of lists: mean over confident samples (or over present classes of
    their mean) of the CE of strong against the weak arg-max; 0 with nothing confident."""
    by_class = {}
    for w, s in zip(weak, strong):
        p = softmax(w)
        if max(p) > tau:
            c = argmax(w)
            by_class.setdefault(c, []).append(ce(s, c))
    if not by_class:
        return 0.0
    if reweight:
        return sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    allv = [x for v in by_class.values() for x in v]
    return sum(allv) / len(allv)


def target_oracle(z, prior, w, t):
    return softmax([(zk - w * math.log(max(pk, PRIOR_FLOOR))) / t for zk, pk in zip(z, prior)])


def local_oracle(anchor, nbr, prior, w, t):
    """One head: mean over rows of KL(target || softmax(anchor))."""
    tot = 0.0
    for a, z in zip(anchor, nbr):
        q = target_oracle(z, prior, w, t)
        la = log_softmax(a)
        tot += sum(qk * (math.log(qk) - lk) for qk, lk in zip(q, la) if qk > 0)
    return tot / len(anchor)


def T(rows, dtype=torch.float64, grad=False):
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


# Four samples, three clusters. Weak views: rows 0-2 confident (> 0.95), row 3 not.
WEAK = [[5.0, 0.0, 0.0], [0.0, 6.0, 0.0], [4.5, 0.0, 1.0], [1.0, 0.5, 0.0]]
STRONG = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0]]


# --------------------------------------------------------------------------- global loss


def test_hand_table_is_what_we_think():
    conf = [max(softmax(r)) for r in WEAK]
    assert conf[0] > 0.95 and conf[1] > 0.95 and conf[2] > 0.95 and conf[3] < 0.95
    assert [argmax(r) for r in WEAK[:3]] == [0, 1, 0]


def test_global_loss_hand_value_reweighted_and_plain():
    # Confident: rows 0 and 2 (pseudo-class 0), row 1 (pseudo-class 1).
    ce0, ce1, ce2 = ce(STRONG[0], 0), ce(STRONG[1], 1), ce(STRONG[2], 0)
    want_rw = ((ce0 + ce2) / 2 + ce1) / 2  # mean over present classes of their mean CE
    want_plain = (ce0 + ce1 + ce2) / 3
    assert abs(want_rw - want_plain) > 0.1  # the two modes really differ here
    got_rw = global_loss(T(WEAK), T(STRONG), tau=0.95, reweight=True)
    got_plain = global_loss(T(WEAK), T(STRONG), tau=0.95, reweight=False)
    assert got_rw.dim() == 0
    assert got_rw.item() == pytest.approx(want_rw, rel=1e-12)
    assert got_plain.item() == pytest.approx(want_plain, rel=1e-12)
    assert global_oracle(WEAK, STRONG, 0.95, True) == pytest.approx(want_rw, rel=1e-12)


def test_global_loss_gradient_hand_value_and_no_weak_gradient():
    weak = T(WEAK, grad=True)
    strong = T(STRONG, grad=True)
    global_loss(weak, strong, tau=0.95, reweight=True).backward()
    assert weak.grad is None or bool((weak.grad == 0).all())
    # d/ds_i = w_i / sum(w) * (softmax(s_i) - onehot(t_i)); w = 1/2, 1, 1/2, 0; sum(w) = 2.
    coef = [0.25, 0.5, 0.25, 0.0]
    targets = [0, 1, 0, 0]
    want = [
        [coef[i] * (p - (k == targets[i])) for k, p in enumerate(softmax(STRONG[i]))]
        for i in range(4)
    ]
    np.testing.assert_allclose(strong.grad.numpy(), np.array(want), rtol=1e-12, atol=1e-15)


def test_global_loss_threshold_is_strict():
    weak = T(WEAK)
    # tau equal to row 2's own (float32) confidence: row 2 must drop out.
    tau = float(torch.softmax(weak.float(), dim=-1)[2].max())
    got = global_loss(weak, T(STRONG), tau=tau, reweight=True).item()
    assert got == pytest.approx((ce(STRONG[0], 0) + ce(STRONG[1], 1)) / 2, rel=1e-12)
    got0 = global_loss(weak, T(STRONG), tau=0.0, reweight=False).item()
    want0 = sum(ce(s, argmax(w)) for w, s in zip(WEAK, STRONG)) / 4  # every row counts
    assert got0 == pytest.approx(want0, rel=1e-12)


def test_global_loss_nothing_confident_is_zero_with_zero_gradient():
    strong = T(STRONG, grad=True)
    loss = global_loss(T(WEAK), strong, tau=0.999, reweight=True)
    assert loss.item() == 0.0
    assert loss.requires_grad  # still attached to the graph of strong_logits
    loss.backward()
    assert torch.equal(strong.grad, torch.zeros_like(strong))


def test_global_loss_two_heads_sum_per_head_losses():
    weak2 = [[0.0, 0.0, 7.0], [0.0, 0.0, 8.0], [6.0, 0.0, 0.0], [0.2, 0.1, 0.0]]
    strong2 = [[0.5, 0.5, 0.0], [1.0, -2.0, 0.5], [0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]
    weak = T([WEAK, weak2])
    strong = T([STRONG, strong2])
    for rw in (True, False):
        want = global_oracle(WEAK, STRONG, 0.95, rw) + global_oracle(weak2, strong2, 0.95, rw)
        got = global_loss(weak, strong, tau=0.95, reweight=rw).item()
        assert got == pytest.approx(want, rel=1e-12)
    # head 2's reweighting uses head 2's own counts: class 2 twice, class 0 once
    h2 = ((ce(strong2[0], 2) + ce(strong2[1], 2)) / 2 + ce(strong2[2], 0)) / 2
    assert global_oracle(weak2, strong2, 0.95, True) == pytest.approx(h2, rel=1e-12)


# --------------------------------------------------------------------------- local loss

ANCHOR = [[0.2, -0.4, 1.0], [1.5, 0.0, -0.5], [0.0, 0.3, 0.1]]
NBR = [[1.0, 0.5, -1.0], [0.0, 2.0, 0.5], [-0.3, 0.0, 0.9]]
PRIOR = [0.5, 0.3, 0.2]


def test_adjusted_target_hand_value_and_no_adjustment_is_sharpened_softmax():
    got = adjusted_target(T(NBR), T(PRIOR), adjust_weight=5.0, temperature=0.25)
    want = [target_oracle(z, PRIOR, 5.0, 0.25) for z in NBR]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    # w = 0: softmax(z / t) = p^(1/t) / sum p^(1/t), whatever the prior
    got0 = adjusted_target(T(NBR), T([0.9, 0.05, 0.05]), adjust_weight=0.0, temperature=0.25)
    for row, z in zip(got0.tolist(), NBR):
        p4 = [p**4 for p in softmax(z)]
        assert row == pytest.approx([v / sum(p4) for v in p4], rel=1e-5)
    # the adjustment raises rare clusters: cluster 2 (prior 0.2) gains against w = 0
    assert bool((got[:, 2] > adjusted_target(T(NBR), T(PRIOR), adjust_weight=0.0)[:, 2]).all())


def test_local_loss_hand_value_gradients_and_heads():
    anchor = T(ANCHOR, grad=True)
    nbr = T(NBR, grad=True)
    prior = T(PRIOR, grad=True)
    loss = local_loss(anchor, nbr, prior, adjust_weight=5.0, temperature=0.25)
    assert loss.item() == pytest.approx(local_oracle(ANCHOR, NBR, PRIOR, 5.0, 0.25), rel=1e-5)
    loss.backward()
    assert nbr.grad is None and prior.grad is None
    # d KL / d anchor_i = (softmax(anchor_i) - target_i) / B
    want = [
        [(p - q) / 3 for p, q in zip(softmax(a), target_oracle(z, PRIOR, 5.0, 0.25))]
        for a, z in zip(ANCHOR, NBR)
    ]
    np.testing.assert_allclose(anchor.grad.numpy(), want, rtol=1e-4, atol=1e-7)

    # two heads: per-head priors (H, K) or a shared (K,) prior; losses summed over heads
    anchor2 = [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.5, 0.5, 0.5]]
    nbr2 = [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.1, 0.2, 0.3]]
    prior2 = [0.1, 0.1, 0.8]
    got = local_loss(T([ANCHOR, anchor2]), T([NBR, nbr2]), T([PRIOR, prior2]), adjust_weight=2.0)
    want = local_oracle(ANCHOR, NBR, PRIOR, 2.0, 0.25)
    want += local_oracle(anchor2, nbr2, prior2, 2.0, 0.25)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got = local_loss(T([ANCHOR, anchor2]), T([NBR, nbr2]), T(PRIOR), adjust_weight=2.0)
    want = local_oracle(ANCHOR, NBR, PRIOR, 2.0, 0.25)
    want += local_oracle(anchor2, nbr2, PRIOR, 2.0, 0.25)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_local_loss_zero_prior_is_floored_and_zero_weight_ignores_prior():
    prior = [0.0, 0.5, 0.5]
    got = local_loss(T(ANCHOR), T(NBR), T(prior), adjust_weight=1.0, temperature=0.5)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(local_oracle(ANCHOR, NBR, prior, 1.0, 0.5), rel=1e-5)
    a = local_loss(T(ANCHOR), T(NBR), T(PRIOR), adjust_weight=0.0).item()
    b = local_loss(T(ANCHOR), T(NBR), T([0.98, 0.01, 0.01]), adjust_weight=0.0).item()
    assert a == pytest.approx(b, rel=1e-6)
    assert a == pytest.approx(local_oracle(ANCHOR, NBR, PRIOR, 0.0, 0.25), rel=1e-5)


# --------------------------------------------------------------------------- total loss


def test_uslt_loss_is_global_plus_weighted_local_with_strong_anchor():
    nbr = NBR + [[0.0, 0.0, 0.0]]
    weak = T(WEAK, grad=True)
    strong = T(STRONG, grad=True)
    total, parts = uslt_loss(weak, strong, T(nbr), T(PRIOR), local_weight=3.0)
    g = global_oracle(WEAK, STRONG, 0.95, True)
    loc_strong = local_oracle(STRONG, nbr, PRIOR, 5.0, 0.25)
    loc_weak = local_oracle(WEAK, nbr, PRIOR, 5.0, 0.25)
    assert abs(loc_strong - loc_weak) > 0.1  # the anchor choice is visible
    assert parts["global"].item() == pytest.approx(g, rel=1e-12)
    assert parts["local"].item() == pytest.approx(loc_strong, rel=1e-5)
    assert total.item() == pytest.approx(g + 3.0 * loc_strong, rel=1e-5)
    assert not parts["global"].requires_grad and not parts["local"].requires_grad
    total.backward()
    assert weak.grad is None or bool((weak.grad == 0).all())
    assert strong.grad is not None and bool((strong.grad != 0).any())
    # local_weight = 0: only the global loss
    total0, _ = uslt_loss(T(WEAK), T(STRONG), T(nbr), T(PRIOR), local_weight=0.0)
    assert total0.item() == pytest.approx(g, rel=1e-12)


# --------------------------------------------------------------------------- EMA prior


def test_ema_prior_starts_uniform_and_follows_update_rule():
    pr = EMAPrior(3, n_heads=2, momentum=0.25)
    np.testing.assert_array_equal(pr.prior.numpy(), np.full((2, 3), 1 / 3, np.float32))
    assert "prior" in pr.state_dict()
    rng = np.random.default_rng(0)
    want = [[1 / 3] * 3 for _ in range(2)]
    for _ in range(3):
        z = rng.standard_normal((2, 5, 3)) * 2
        got = pr.update(torch.tensor(z))
        for h in range(2):
            mean = [sum(softmax(list(r))[k] for r in z[h]) / 5 for k in range(3)]
            want[h] = [0.25 * w + 0.75 * m for w, m in zip(want[h], mean)]
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(pr.prior.sum(dim=1).numpy(), [1.0, 1.0], rtol=1e-6)
    # one head: (B, K) logits
    p1 = EMAPrior(2, momentum=0.5)
    p1.update(T([[0.0, 0.0], [math.log(3.0), 0.0]]))
    # softmax rows (1/2, 1/2) and (3/4, 1/4): batch mean (5/8, 3/8)
    want1 = [[0.5 * 0.5 + 0.5 * 5 / 8, 0.5 * 0.5 + 0.5 * 3 / 8]]
    np.testing.assert_allclose(p1.prior.numpy(), want1, rtol=1e-6)


def test_ema_prior_errors():
    pr = EMAPrior(3, n_heads=2)
    with pytest.raises(ValueError, match="`logits`"):
        pr.update(torch.zeros(2, 4, 4))  # wrong K
    with pytest.raises(ValueError, match="`logits`"):
        pr.update(torch.zeros(3, 4, 3))  # wrong H
    with pytest.raises(ValueError, match="`logits`"):
        pr.update(torch.zeros(4, 3))  # 2-D but H = 2
    with pytest.raises(ValueError, match="`logits`"):
        pr.update(torch.zeros(3))
    with pytest.raises(TypeError, match="`logits`"):
        pr.update(torch.zeros(2, 4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="`momentum`"):
        EMAPrior(3, momentum=1.0)
    with pytest.raises(ValueError, match="`n_clusters`"):
        EMAPrior(0)


# --------------------------------------------------------------------------- heads


def test_linear_head_is_h_separate_affine_maps():
    g = torch.Generator().manual_seed(3)
    head = ClusterHead(5, 4, n_heads=3, generator=g, dtype=torch.float64)
    W = head.weight.detach().numpy()
    b = head.bias.detach().numpy()
    assert W.shape == (3, 4, 5) and b.shape == (3, 4)
    bound = 1 / math.sqrt(5)
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound  # nn.Linear's init
    x = np.random.default_rng(1).standard_normal((7, 5))
    out = head(torch.tensor(x)).detach().numpy()
    assert out.shape == (3, 7, 4)
    for h in range(3):
        np.testing.assert_allclose(out[h], x @ W[h].T + b[h], rtol=1e-12, atol=1e-12)


def test_cosine_head_is_scaled_cosine_similarity():
    g = torch.Generator().manual_seed(4)
    head = ClusterHead(6, 3, n_heads=2, kind="cosine", scale=10.0, generator=g, dtype=torch.float64)
    assert head.bias is None
    W = head.weight.detach().numpy()
    x = np.random.default_rng(2).standard_normal((5, 6)) * 3
    out = head(torch.tensor(x)).detach().numpy()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for h in range(2):
        wn = W[h] / np.linalg.norm(W[h], axis=1, keepdims=True)
        np.testing.assert_allclose(out[h], 10.0 * xn @ wn.T, rtol=1e-12, atol=1e-12)
    # initialised from sample features: every sample is its own prototype's best match
    s = torch.tensor(np.random.default_rng(3).standard_normal((3, 6)))
    head.init_from_features(s)
    assert torch.equal(head.weight.detach()[1], s)
    assert head(s).argmax(dim=-1).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_head_seeded_generator_reproducible_and_global_rng_untouched():
    state = torch.get_rng_state()
    a = ClusterHead(8, 5, generator=torch.Generator().manual_seed(11))
    b = ClusterHead(8, 5, generator=torch.Generator().manual_seed(11))
    c = ClusterHead(8, 5, generator=torch.Generator().manual_seed(12))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_head_errors():
    head = ClusterHead(4, 3, n_heads=2)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        head(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        head(torch.zeros(4))
    with pytest.raises(ValueError, match="`kind`"):
        ClusterHead(4, 3, kind="mlp")
    with pytest.raises(ValueError, match="`scale`"):
        ClusterHead(4, 3, kind="cosine", scale=0.0)
    with pytest.raises(ValueError, match="`samples`"):
        head.init_from_features(torch.zeros(2, 4))


# --------------------------------------------------------------------------- selection


def mean_conf(*heads_rows):
    """Mean over heads of the max softmax probability of one point."""
    return sum(max(softmax(r)) for r in heads_rows) / len(heads_rows)


# Head 0 arg-max: rows 0, 1 -> cluster 2; rows 2, 3 -> cluster 0; rows 4, 5 -> cluster 1.
# Head 1 has the same arg-max but flips the confidence order inside clusters 0 and 1,
# so head 0 alone would pick differently; rows 0 and 1 are identical (a tie).
SEL_H0 = [[0, 0, 1], [0, 0, 1], [3, 0, 0], [5, 0, 0], [0, 4, 0], [0, 2, 0]]
SEL_H1 = [[0, 0, 1], [0, 0, 1], [9, 0, 0], [1, 0, 0], [0, 1, 0], [0, 3, 0]]


def chunked(z, size):
    z3 = z if z.dim() == 3 else z.unsqueeze(0)

    def gen():
        for s in range(0, z3.shape[1], size):
            yield s, z3[:, s : s + size]

    return gen


def assert_same_result(a, b):
    for f in ("indices", "labels", "confidence", "cluster_sizes", "filled"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert (a.assign_head, a.n_nonempty, a.n_filled) == (b.assign_head, b.n_nonempty, b.n_filled)


def test_select_hand_table_mean_confidence_ties_and_cluster_order():
    conf = [mean_conf(a, b) for a, b in zip(SEL_H0, SEL_H1)]
    # the hand reasoning behind the expected picks
    assert conf[2] > conf[3] and max(softmax(SEL_H0[3])) > max(softmax(SEL_H0[2]))
    assert conf[5] > conf[4] and max(softmax(SEL_H0[4])) > max(softmax(SEL_H0[5]))
    z = T([SEL_H0, SEL_H1], dtype=torch.float32)
    res = select_confident(z, 3)
    assert res.indices.tolist() == [2, 5, 0]  # clusters 0, 1, 2 in id order; tie -> row 0
    assert res.indices.dtype == torch.int64
    assert res.labels.tolist() == [2, 2, 0, 0, 1, 1]
    assert res.cluster_sizes.tolist() == [2, 2, 2]
    assert res.confidence.dtype == torch.float64
    np.testing.assert_allclose(res.confidence.numpy(), conf, rtol=1e-12)
    assert (res.n_nonempty, res.n_filled, res.assign_head) == (3, 0, 0)
    assert res.filled.tolist() == [False, False, False]
    # head 0 alone (2-D logits): its own confidence order
    res0 = select_confident(T(SEL_H0, dtype=torch.float32), 3)
    assert res0.indices.tolist() == [3, 4, 0]
    # chunked input: same result, block boundaries inside clusters
    for size in (1, 2, 4, 6):
        assert_same_result(select_confident(chunked(z, size), 3), res)


def test_select_ranks_confidences_that_round_to_one():
    # max probabilities 1 - 2e-18 and 1 - 4e-23 both round to 1.0 in float64; the more
    # confident row 1 must still win (ranking by the exact 1 - p, not by p).
    z = T([[40.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    res = select_confident(z, 2)
    assert res.confidence[0].item() == res.confidence[1].item() == 1.0
    assert res.indices.tolist() == [1, 2]


def test_select_assign_head_best_and_explicit():
    h0 = [[5, 0, 0], [4, 0, 0], [0, 3, 0], [0, 2, 0]]  # uses 2 clusters
    h1 = [[5, 0, 0], [0, 4, 0], [0, 0, 3], [0, 2, 0]]  # uses 3 clusters
    z = T([h0, h1], dtype=torch.float32)
    res = select_confident(z, 3)
    assert res.assign_head == 1 and res.labels.tolist() == [0, 1, 2, 1]
    assert res.indices.tolist() == [0, 1, 2] and res.n_filled == 0
    # ties (both heads use 3 clusters) go to the lower index
    assert select_confident(T([h1, h1]), 3).assign_head == 0
    r0 = select_confident(z, 2, assign_head=0)
    assert r0.assign_head == 0 and r0.labels.tolist() == [0, 0, 1, 1]
    c = [mean_conf(a, b) for a, b in zip(h0, h1)]
    assert r0.indices.tolist() == [int(np.argmax(c[:2])), 2 + int(np.argmax(c[2:]))]


# Only clusters 0 and 1 are non-empty (K = 4, m = 4): two picks come from the fill rule.
FILL = [[6, -5, 4, -5], [3, 0, 1, 0], [0, 3, 0, 2], [0, 4, 0, 1], [1, 2, 0, 0]]


def fill_oracle(z, m):
    """The documented fill rule in float64 NumPy (one head)."""
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    lab = p.argmax(axis=1)
    K = z.shape[1]
    main = [
        int(np.flatnonzero(lab == c)[np.argmax(p.max(axis=1)[lab == c])])
        for c in range(K)
        if (lab == c).any()
    ]
    empty = [c for c in range(K) if not (lab == c).any()]
    mass = p.sum(axis=0)
    order = sorted(empty, key=lambda c: (-mass[c], c))[: m - len(main)]
    picks = list(main)
    for c in order:
        cand = sorted(range(len(z)), key=lambda i: (-p[i, c], i))
        picks.append(next(i for i in cand if i not in picks))
    return picks


def test_select_fill_rule_hand_table():
    # Hand: main picks row 0 (cluster 0) and row 3 (cluster 1). Soft mass: cluster 3 (0.42)
    # before cluster 2 (0.36); cluster 3's best row is 2; cluster 2's best row is 0, already
    # picked, so it takes row 1.
    assert fill_oracle(FILL, 4) == [0, 3, 2, 1]
    z = T(FILL, dtype=torch.float32)
    res = select_confident(z, 4)
    assert res.indices.tolist() == [0, 3, 2, 1]
    assert res.n_nonempty == 2 and res.n_filled == 2
    assert res.filled.tolist() == [False, False, True, True]
    assert res.cluster_sizes.tolist() == [2, 3, 0, 0]
    r3 = select_confident(z, 3)
    assert r3.indices.tolist() == [0, 3, 2] and r3.n_filled == 1
    for size in (1, 2, 3):
        assert_same_result(select_confident(chunked(z, size), 4), res)


def test_select_fill_ties_go_to_first_index_across_blocks():
    # Rows 2 and 3 are identical; empty cluster 2 (larger soft mass) takes row 2 (first
    # index), then cluster 3 takes row 3 - also when the two rows sit in different blocks.
    z = T([[5, 0, 0, 0], [0, 5, 0, 0], [2, 0, 1, 0], [2, 0, 1, 0]], dtype=torch.float32)
    assert fill_oracle(z.numpy(), 4) == [0, 1, 2, 3]
    res = select_confident(z, 4)
    assert res.indices.tolist() == [0, 1, 2, 3] and res.n_filled == 2
    for size in (1, 3):
        assert_same_result(select_confident(chunked(z, size), 4), res)


def test_select_fill_random_tables_distinct_and_match_oracle():
    rng = np.random.default_rng(5)
    for _trial in range(20):
        n, K = int(rng.integers(4, 30)), int(rng.integers(3, 12))
        # a few dominant clusters, so most are empty
        z = rng.standard_normal((n, K))
        z[:, : max(1, K // 4)] += 4.0
        m = int(rng.integers(1, min(n, K) + 1))
        res = select_confident(torch.tensor(z), m)
        picks = res.indices.tolist()
        assert len(picks) == m and len(set(picks)) == m
        n_main = m - res.n_filled
        assert res.filled.tolist() == [False] * n_main + [True] * res.n_filled
        if res.n_nonempty < m:
            assert res.n_filled == m - res.n_nonempty > 0
            assert picks == fill_oracle(z, m)
        for size in (1, 3, 7):
            assert_same_result(select_confident(chunked(torch.tensor(z), size), m), res)


def test_select_more_clusters_than_m_uses_largest():
    # row: (cluster, logit); sizes [2, 3, 1, 2]; the most confident rows are in clusters
    # 2 and 3, but the m = 2 largest clusters are 1 (size 3) and 0 (ties 0 vs 3 -> lower id).
    rows = [(3, 9), (1, 2), (0, 3), (1, 4), (2, 8), (0, 5), (3, 7), (1, 1)]
    z = torch.zeros(8, 4)
    for i, (c, a) in enumerate(rows):
        z[i, c] = a
    res = select_confident(z, 2)
    assert res.indices.tolist() == [5, 3]  # cluster 0's best, then cluster 1's
    assert res.n_nonempty == 4 and res.n_filled == 0
    assert res.cluster_sizes.tolist() == [2, 3, 1, 2]
    assert_same_result(select_confident(chunked(z, 3), 2), res)


def test_select_errors():
    z = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="`m`"):
        select_confident(z, 4)  # > min(n, K) = 3
    with pytest.raises(ValueError, match="`m`"):
        select_confident(z, 0)
    with pytest.raises(TypeError, match="`m`"):
        select_confident(z, 2.0)
    with pytest.raises(TypeError, match="`logits`"):
        select_confident(np.zeros((5, 3)), 2)
    with pytest.raises(TypeError, match="`logits`"):
        select_confident(torch.zeros(5, 3, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="`logits`"):
        select_confident(torch.zeros(1, 2, 5, 3), 2)
    bad = torch.zeros(5, 3)
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="`logits`"):
        select_confident(bad, 2)
    with pytest.raises(ValueError, match="`assign_head`"):
        select_confident(z, 2, assign_head=2)
    with pytest.raises(TypeError, match="`assign_head`"):
        select_confident(z, 2, assign_head="first")
    with pytest.raises(ValueError, match="`logits`"):
        select_confident(lambda: iter(()), 2)

    def gap():
        yield 0, z[:, :2]
        yield 3, z[:, 3:]

    with pytest.raises(ValueError, match="`logits`"):
        select_confident(gap, 2)


# --------------------------------------------------------------------------- augmentation


def test_feature_augment_shape_norms_identity_and_seed():
    rng = np.random.default_rng(7)
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor(rng.standard_normal((16, 9)) * 2, dtype=dtype)
        nb = torch.tensor(rng.standard_normal((16, 9)), dtype=dtype)
        aug = FeatureAugment(mix=0.5, drop=0.2)
        out = aug(x, nb, torch.Generator().manual_seed(1))
        assert out.shape == x.shape and out.dtype == dtype
        assert not torch.equal(out, x)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(
            np.linalg.norm(out.numpy().astype(np.float64), axis=1),
            np.linalg.norm(x.numpy().astype(np.float64), axis=1),
            rtol=tol,
        )
        again = aug(x, nb, torch.Generator().manual_seed(1))
        assert torch.equal(out, again)
        assert not torch.equal(out, aug(x, nb, torch.Generator().manual_seed(2)))
        for renorm in (True, False):
            same = FeatureAugment(mix=0.0, drop=0.0, renorm=renorm)(x, nb)
            assert torch.equal(same, x)


def test_feature_augment_mix_moves_along_segment_and_drop_zeroes_or_scales():
    rng = np.random.default_rng(8)
    x = torch.tensor(rng.standard_normal((50, 6)))
    nb = torch.tensor(rng.standard_normal((50, 6)))
    out = FeatureAugment(mix=0.3, drop=0.0, renorm=False)(x, nb, torch.Generator().manual_seed(0))
    d, v = (out - x).numpy(), (nb - x).numpy()
    lam = (d * v).sum(axis=1) / (v * v).sum(axis=1)
    np.testing.assert_allclose(d, lam[:, None] * v, atol=1e-12)  # on the segment x -> nb
    assert lam.min() >= 0.0 and lam.max() <= 0.3 and lam.max() - lam.min() > 0.1
    out = FeatureAugment(mix=0.0, drop=0.25, renorm=False)(x, nb, torch.Generator().manual_seed(0))
    o, xx = out.numpy(), x.numpy()
    zero = o == 0
    np.testing.assert_allclose(o[~zero], xx[~zero] / 0.75, rtol=1e-12)
    assert 0.1 < zero.mean() < 0.4


def test_feature_augment_errors():
    with pytest.raises(ValueError, match="`x`"):
        FeatureAugment()(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="`x`"):
        FeatureAugment()(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="`mix`"):
        FeatureAugment(mix=1.5)
    with pytest.raises(ValueError, match="`drop`"):
        FeatureAugment(drop=1.0)
    with pytest.raises(TypeError, match="`renorm`"):
        FeatureAugment(renorm=1)


# --------------------------------------------------------------------------- kNN list


def test_knn_neighbors_excludes_self_and_matches_oracle(make_unit):
    x = make_unit(60, 8, seed=21)
    got = knn_neighbors(x, 5)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int64 and got.shape == (60, 5)
    _, want = oracles.knn(x, 6)
    assert (want[:, 0] == np.arange(60)).all()
    np.testing.assert_array_equal(got.numpy(), want[:, 1:])
    assert not (got.numpy() == np.arange(60)[:, None]).any()
    # torch input: same list
    assert torch.equal(knn_neighbors(torch.from_numpy(x), 5), got)


def test_knn_neighbors_duplicates_still_exclude_self(make_unit):
    x = make_unit(20, 4, seed=22)
    x[1] = x[0]
    x[2] = x[0]
    nb = knn_neighbors(x, 3).numpy()
    assert not (nb == np.arange(20)[:, None]).any()
    assert set(nb[0, :2].tolist()) == {1, 2}
    assert set(nb[1, :2].tolist()) == {0, 2}
    assert set(nb[2, :2].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="`k`"):
        knn_neighbors(x, 20)
    with pytest.raises(ValueError, match="`k`"):
        knn_neighbors(x, 0)


# --------------------------------------------------------------------------- trainer


def three_blobs(seed=0, n_per=200, d=16, spread=0.1):
    """3 blobs around orthonormal directions in d-D (pairwise centre distance sqrt(2),
    spread 0.1 per coordinate), L2-normalised, shuffled: (x float32, blob ids)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    ids = np.repeat(np.arange(3), n_per)
    x = q.T[ids] + spread * rng.standard_normal((ids.size, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(ids.size)
    return x[perm].astype(np.float32), ids[perm]


@pytest.fixture(scope="module")
def blob_fit():
    x, ids = three_blobs()
    model = USLT(n_clusters=3, epochs=60, batch_size=128, seed=0).fit(x)
    return x, ids, model


def test_uslt_no_collapse_on_three_blobs(blob_fit):
    x, ids, model = blob_fit
    n = x.shape[0]
    sizes = np.bincount(model.labels_, minlength=3)
    np.testing.assert_array_equal(model.cluster_sizes_, sizes)
    assert sizes.max() <= n // 2, f"collapsed clusters: sizes {sizes.tolist()}"
    assert model.n_nonempty_ == 3 and model.n_filled_ == 0
    assert not model.filled_.any()
    picks = model.indices_
    assert len(set(picks.tolist())) == 3
    assert sorted(ids[picks].tolist()) == [0, 1, 2], "the 3 picks must come from 3 blobs"
    # the clusters are the blobs (up to renaming): majority agreement >= 95%
    cont = np.zeros((3, 3), int)
    np.add.at(cont, (ids, model.labels_), 1)
    assert cont.max(axis=1).sum() >= 0.95 * n and len(set(cont.argmax(axis=1))) == 3
    # each pick is its cluster's most confident member (confidence_ is what was ranked)
    for c, i in enumerate(picks):
        members = np.flatnonzero(model.labels_ == c)
        assert model.confidence_[i] == model.confidence_[members].max()
    # a real training run: one history record per epoch, confidence went up
    assert len(model.history_) == 60
    assert model.history_[-1]["confident"] > model.history_[0]["confident"]
    assert model.prior_.shape == (3, 3)
    assert model.neighbors_.shape == (n, 20)
    # predict() on the training features gives labels_
    np.testing.assert_array_equal(model.predict(x).numpy(), model.labels_)


def test_uslt_logit_adjustment_prevents_collapse_of_linear_heads():
    # Randomly initialised linear heads (no sample-feature init to lean on): with the
    # logit adjustment every blob gets its own cluster; without it (the control, which
    # shows that the check can fail) the local loss merges two blobs into one cluster.
    x, ids = three_blobs()
    kw = dict(n_clusters=3, head="linear", lr=1e-2, epochs=60, batch_size=128, seed=0)
    good = USLT(**kw).fit(x)
    sizes = np.bincount(good.labels_, minlength=3)
    assert sizes.max() <= x.shape[0] // 2, sizes.tolist()
    assert sorted(ids[good.indices_].tolist()) == [0, 1, 2]
    with pytest.warns(RuntimeWarning, match="non-empty"):
        bad = USLT(**kw, adjust_weight=0.0).fit(x)
    assert np.bincount(bad.labels_, minlength=3).max() > x.shape[0] // 2
    assert bad.n_filled_ >= 1 and bad.filled_[-1]


def test_uslt_reproducible_and_io_types():
    x, _ = three_blobs(seed=1, n_per=60)
    kw = dict(n_clusters=3, epochs=5, batch_size=64, seed=3)
    a = USLT(**kw).fit(x)
    b = USLT(**kw).fit(x)
    for f in ("indices_", "labels_", "confidence_", "cluster_sizes_"):
        assert isinstance(getattr(a, f), np.ndarray), f
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert a.indices_.dtype == np.int64 and a.labels_.dtype == np.int64
    assert a.confidence_.dtype == np.float64 and a.confidence_.shape == (180,)
    assert torch.equal(a.head_.weight, b.head_.weight)
    c = USLT(**{**kw, "seed": 4}).fit(x)
    assert not torch.equal(a.head_.weight, c.head_.weight)
    # torch in -> torch out (CPU), same values as the numpy run
    t = USLT(**kw).fit(torch.from_numpy(x))
    for f in ("indices_", "labels_", "confidence_"):
        got = getattr(t, f)
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu", f
        np.testing.assert_array_equal(got.numpy(), getattr(a, f))
    assert t.indices_.dtype == torch.int64 and t.confidence_.dtype == torch.float64
    # passing the default neighbour list explicitly changes nothing
    nb = knn_neighbors(x / np.linalg.norm(x, axis=1, keepdims=True), 20)
    d = USLT(**kw).fit(x, neighbors=nb.numpy())
    np.testing.assert_array_equal(d.indices_, a.indices_)
    np.testing.assert_array_equal(d.confidence_, a.confidence_)
    assert np.asarray(USLT(**kw).fit_select(x)).tolist() == a.indices_.tolist()


def test_uslt_default_length_is_at_least_100_epochs_and_600_steps():
    # 180 points at batch 64: 3 steps an epoch, so 600 steps need 200 epochs.
    x, _ = three_blobs(seed=1, n_per=60)
    model = USLT(n_clusters=3, batch_size=64, seed=0).fit(x)
    assert model.epochs_ == 200 and len(model.history_) == 200
    assert USLT(n_clusters=3, batch_size=64, epochs=7, seed=0).fit(x).epochs_ == 7


def test_uslt_cosine_schedule_differs_from_constant_and_kmeanspp_init(monkeypatch):
    x, ids = three_blobs(seed=2, n_per=60)
    kw = dict(n_clusters=3, epochs=8, batch_size=64, seed=1)
    cos = USLT(**kw).fit(x)
    const = USLT(**kw, lr_schedule="constant").fit(x)
    assert not torch.equal(cos.head_.weight, const.head_.weight)
    # k-means++ prototypes: every head starts from 3 distinct data rows, its own draw,
    # and the run is reproducible.
    starts = []
    orig = ClusterHead.init_from_features

    def spy(self, samples):
        starts.append(samples.clone())
        return orig(self, samples)

    monkeypatch.setattr(ClusterHead, "init_from_features", spy)
    a = USLT(**kw, init="k-means++").fit(x)
    b = USLT(**kw, init="k-means++").fit(x)
    np.testing.assert_array_equal(a.indices_, b.indices_)
    assert torch.equal(starts[0], starts[1])
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    rows = [[int(torch.argmin(((xn - p) ** 2).sum(1))) for p in head] for head in starts[0]]
    for head, r in zip(starts[0], rows):
        assert len(set(r)) == 3 and torch.equal(xn[r], head)
    assert len({tuple(r) for r in rows}) > 1, "each head draws its own prototypes"


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(n_clusters=0), ValueError, "n_clusters"),
        (dict(n_clusters=2.5), TypeError, "n_clusters"),
        (dict(n_clusters=3, m=4), ValueError, "m"),
        (dict(n_clusters=3, m=0), ValueError, "m"),
        (dict(n_clusters=3, n_heads=0), ValueError, "n_heads"),
        (dict(n_clusters=3, head="mlp"), ValueError, "head"),
        (dict(n_clusters=3, scale=0.0), ValueError, "scale"),
        (dict(n_clusters=3, epochs=0), ValueError, "epochs"),
        (dict(n_clusters=3, batch_size=0), ValueError, "batch_size"),
        (dict(n_clusters=3, lr=0.0), ValueError, "lr"),
        (dict(n_clusters=3, weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(n_clusters=3, tau=1.0), ValueError, "tau"),
        (dict(n_clusters=3, tau=-0.1), ValueError, "tau"),
        (dict(n_clusters=3, tau=float("nan")), ValueError, "tau"),
        (dict(n_clusters=3, reweight=1), TypeError, "reweight"),
        (dict(n_clusters=3, local_weight=-1.0), ValueError, "local_weight"),
        (dict(n_clusters=3, adjust_weight=-0.5), ValueError, "adjust_weight"),
        (dict(n_clusters=3, prior_momentum=1.0), ValueError, "prior_momentum"),
        (dict(n_clusters=3, temperature=0.0), ValueError, "temperature"),
        (dict(n_clusters=3, n_neighbors=0), ValueError, "n_neighbors"),
        (dict(n_clusters=3, augment="strong"), TypeError, "augment"),
        (dict(n_clusters=3, normalize="yes"), TypeError, "normalize"),
        (dict(n_clusters=3, assign_head=3), ValueError, "assign_head"),
        (dict(n_clusters=3, assign_head="first"), TypeError, "assign_head"),
        (dict(n_clusters=3, seed=-1), ValueError, "seed"),
        (dict(n_clusters=3, device="nonsense"), ValueError, "device"),
        (dict(n_clusters=3, threads=0), ValueError, "threads"),
        (dict(n_clusters=3, progress=None), TypeError, "progress"),
        (dict(n_clusters=3, lr_schedule="step"), ValueError, "lr_schedule"),
        (dict(n_clusters=3, init="random"), ValueError, "init"),
    ],
)
def test_uslt_init_errors(kwargs, exc, name):
    with pytest.raises(exc, match=f"`{name}`"):
        USLT(**kwargs)


def test_uslt_fit_errors(make_unit):
    x = make_unit(30, 8, seed=30)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="`features`"):
        USLT(n_clusters=3).fit(bad)
    with pytest.raises(ValueError, match="`features`"):
        USLT(n_clusters=3).fit(torch.from_numpy(bad))
    with pytest.raises(ValueError, match="`features`"):
        USLT(n_clusters=3).fit(x[0])
    with pytest.raises(TypeError, match="`features`"):
        USLT(n_clusters=3).fit(torch.zeros(30, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="`n_clusters`"):
        USLT(n_clusters=31).fit(x)
    with pytest.raises(ValueError, match="`n_neighbors`"):
        USLT(n_clusters=3, n_neighbors=30).fit(x)
    nb = np.tile(np.arange(1, 4), (30, 1))
    with pytest.raises(ValueError, match="`neighbors`"):
        USLT(n_clusters=3).fit(x, neighbors=nb[:29])
    with pytest.raises(ValueError, match="`neighbors`"):
        USLT(n_clusters=3).fit(x, neighbors=nb[:, 0])
    with pytest.raises(ValueError, match="`neighbors`"):
        USLT(n_clusters=3).fit(x, neighbors=nb + 27)  # values up to 30 = n
    with pytest.raises(ValueError, match="`neighbors`"):
        USLT(n_clusters=3).fit(x, neighbors=nb - 2)  # negative
    with pytest.raises(TypeError, match="`neighbors`"):
        USLT(n_clusters=3).fit(x, neighbors=nb.astype(np.float32))
    with pytest.raises(RuntimeError, match="fit"):
        USLT(n_clusters=3).predict(x)


def test_loss_errors():
    w, s = T(WEAK), T(STRONG)
    for tau in (1.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="`tau`"):
            global_loss(w, s, tau=tau)
    with pytest.raises(TypeError, match="`tau`"):
        global_loss(w, s, tau="high")
    with pytest.raises(TypeError, match="`reweight`"):
        global_loss(w, s, reweight=1)
    with pytest.raises(ValueError, match="`weak_logits`"):
        global_loss(w, s[:3])
    with pytest.raises(ValueError, match="`weak_logits`"):
        global_loss(w[0], s)
    with pytest.raises(TypeError, match="`weak_logits`"):
        global_loss(np.asarray(WEAK), s)
    with pytest.raises(TypeError, match="`strong_logits`"):
        global_loss(w, s.long())
    a, n, p = T(ANCHOR), T(NBR), T(PRIOR)
    with pytest.raises(ValueError, match="`anchor_logits`"):
        local_loss(a, n[:2], p)
    with pytest.raises(ValueError, match="`prior`"):
        local_loss(a, n, T([0.5, 0.5]))
    with pytest.raises(ValueError, match="`prior`"):
        local_loss(a, n, T([PRIOR, PRIOR]))  # (H, K) prior needs 3-D logits
    with pytest.raises(ValueError, match="`prior`"):
        local_loss(a.expand(2, 3, 3), n.expand(2, 3, 3), T([PRIOR] * 3))
    with pytest.raises(ValueError, match="`temperature`"):
        local_loss(a, n, p, temperature=0.0)
    with pytest.raises(ValueError, match="`adjust_weight`"):
        local_loss(a, n, p, adjust_weight=-1.0)
    with pytest.raises(TypeError, match="`neighbor_logits`"):
        local_loss(a, n.long(), p)
    with pytest.raises(ValueError, match="`local_weight`"):
        uslt_loss(w, s, T(NBR + [[0.0] * 3]), p, local_weight=-1.0)


# --------------------------------------------------------------------------- import without torch


def test_import_without_torch(tmp_path, usl):
    pkg_root = str(pathlib.Path(usl.__file__).resolve().parent.parent)
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import usl_fast
        x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
        dist, idx = usl_fast.knn(x, 3)
        assert idx.shape == (20, 3)
        for mod in ("usl_fast.uslt", "usl_fast.ssl"):
            try:
                __import__(mod)
            except ImportError as exc:
                print("IMPORT-ERROR:", mod, exc)
            else:
                print("NO-ERROR:", mod)
        from usl_fast import cli
        try:
            cli.main(["fixmatch", "--dataset", "digits", "--labeled", "x.npy"])
        except SystemExit as exc:
            print("EXIT", exc.code)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": pkg_root, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for mod in ("usl_fast.uslt", "usl_fast.ssl"):
        line = next((ln for ln in lines if ln.startswith(f"IMPORT-ERROR: {mod} ")), None)
        assert line is not None and "pip install usl_fast[torch]" in line, out.stdout
    # the CLI turns it into its one-line error, exit status 2
    assert "EXIT 2" in lines and "pip install usl_fast[torch]" in out.stderr, out.stderr
