"""WHDR and the WKDR family on sampled pairs: hand-worked labels and a naive loop."""
import math

import numpy as np
import pytest
import torch

from mlrb.metrics import (ordinal_disagreement, ordinal_labels, sample_pairs, whdr, wkdr,
                          wkdr_per_image)


def test_ordinal_labels_hand_worked():
    a = torch.tensor([1.0, 1.02, 1.03, 0.95, 2.0])
    b = torch.ones(5)
    # threshold 0.025: 1.02 is equivalent, 1.03 farther, 0.95 closer (1 > 1.025 * 0.95)
    assert ordinal_labels(a, b, 0.025).tolist() == [0, 0, 1, -1, 1]
    assert ordinal_labels(b, a, 0.025).tolist() == [0, 0, -1, 1, -1]
    assert ordinal_labels(a, b, 0.0).tolist() == [0, 1, 1, -1, 1]
    with pytest.raises(ValueError):
        ordinal_labels(a, b, -0.1)
    for t in (float("nan"), float("inf")):  # NaN passed the "< 0" test and made every pair "equal"
        with pytest.raises(ValueError, match="finite"):
            ordinal_labels(a, b, t)


def test_ordinal_disagreement_weighted():
    l = torch.tensor([1, -1, 0, 1])
    lp = torch.tensor([1, 1, 0, -1])
    assert ordinal_disagreement(l, lp) == 0.5
    assert ordinal_disagreement(l, lp, torch.tensor([1.0, 3.0, 1.0, 0.0])) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        ordinal_disagreement(l[:0], lp[:0])


def test_sample_pairs_distinct_and_uniform():
    a, b = sample_pairs(4, 20000, torch.Generator().manual_seed(0))
    assert bool((a != b).all()) and int(a.max()) == 3 and int(b.min()) == 0
    counts = torch.bincount(a * 4 + b, minlength=16).reshape(4, 4).double()
    off = counts[~torch.eye(4, dtype=torch.bool)]
    assert float(off.min()) > 0.8 * 20000 / 12 and float(counts.diag().sum()) == 0
    with pytest.raises(ValueError):
        sample_pairs(1, 10, torch.Generator())


def naive_rates(pred, gt, valid, n_pairs, t, seed):
    """Same sampling stream, relations by explicit ratio tests in a Python loop."""
    p, g = pred[valid].tolist(), gt[valid].tolist()
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, len(g), (n_pairs,), generator=gen)
    b = (a + torch.randint(1, len(g), (n_pairs,), generator=gen)) % len(g)

    def rel(u, v):
        return 1 if u / v > 1 + t else (-1 if u / v < 1 / (1 + t) else 0)

    wrong, eq_w, eq_n, ne_w, ne_n = 0, 0, 0, 0, 0
    for i, j in zip(a.tolist(), b.tolist()):
        lg, lp = rel(g[i], g[j]), rel(p[i], p[j])
        wrong += lg != lp
        if lg == 0:
            eq_n += 1
            eq_w += lg != lp
        else:
            ne_n += 1
            ne_w += lg != lp
    return wrong / n_pairs, eq_w / eq_n, ne_w / ne_n


def test_wkdr_and_whdr_against_naive():
    g = torch.Generator().manual_seed(1)
    gt = (torch.rand(2, 12, 10, generator=g) * 20).round() / 10 + 1.0  # many equal depths
    pred = gt * (1 + 0.05 * torch.randn(2, 12, 10, generator=g))
    mask = torch.rand(2, 12, 10, generator=g) > 0.2
    got = wkdr(pred, gt, mask, n_pairs=3000, threshold=0.02, seed=7)
    want = [naive_rates(pred[i], gt[i], mask[i], 3000, 0.02, 7 + i) for i in range(2)]
    for k, key in enumerate(("wkdr", "wkdr_eq", "wkdr_neq")):
        assert got[key] == pytest.approx(np.mean([w[k] for w in want]), abs=1e-12)
    w = whdr(pred, gt, mask, n_pairs=3000, threshold=0.03, seed=7)
    want = [naive_rates(pred[i], gt[i], mask[i], 3000, 0.03, 7 + i)[0] for i in range(2)]
    assert w == pytest.approx(np.mean(want), abs=1e-12)


def test_perfect_and_reversed_predictions():
    gt = torch.rand(1, 20, 20) * 9 + 1
    assert whdr(gt * 3.0, gt) == 0.0  # ratio tests are scale invariant
    r = wkdr(1.0 / gt, gt, threshold=0.0)
    assert r["wkdr"] == 1.0 and math.isnan(r["wkdr_eq"])  # continuous gt: no equivalent pairs
    # seeded: same result twice, different seed differs
    noisy = gt * (1 + 0.1 * torch.rand(1, 20, 20))
    assert whdr(noisy, gt, seed=3) == whdr(noisy, gt, seed=3) != whdr(noisy, gt, seed=4)


def test_empty_and_pred_threshold():
    gt = torch.ones(2, 3, 3)
    gt[1] = 0.0  # no positive depth: image skipped
    pred = gt.clone()
    pred[0, 0, 0] = 1.05
    rates, ok = wkdr_per_image(pred, gt, n_pairs=500)
    assert ok["wkdr"].tolist() == [True, False] and not bool(ok["wkdr_neq"].any())
    assert float(rates["wkdr"][0]) > 0
    assert wkdr(pred, gt, n_pairs=500, pred_threshold=0.1)["wkdr"] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        whdr(pred[1:], gt[1:])


def test_wkdr_on_a_constant_ground_truth_returns_all_three_keys():
    gt = torch.full((1, 6, 8), 3.0)  # every pair is equivalent: WKDR!= has no pairs
    pred = gt * (1 + 0.1 * torch.rand(1, 6, 8))
    r = wkdr(pred, gt, n_pairs=200)
    assert set(r) == {"wkdr", "wkdr_eq", "wkdr_neq"}
    assert r["wkdr"] == r["wkdr_eq"] > 0 and math.isnan(r["wkdr_neq"])
