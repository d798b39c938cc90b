"""mlrb.reference against values worked out by hand on tiny maps (borders included).

Each map is given as e = pred - gt with gt = 0 unless the loss needs both; the arithmetic
is in the comments so a reader can redo it.
"""
import math

import pytest
import torch

from mlrb import reference

EPS = reference.NORMAL_EPS


def loss(name, pred, gt=None, mask=None):
    pred = torch.tensor(pred, dtype=torch.float64)[None, None]
    gt = torch.zeros_like(pred) if gt is None else torch.tensor(gt, dtype=torch.float64)[None, None]
    return reference.losses_by_name(pred, gt, mask, [name])[name].item()


# 3x4 map used for D, M and the gradient losses.
E = [[1.0, -2.0, 0.0, 3.0],
     [0.0, 0.0, 1.0, -1.0],
     [2.0, 2.0, 2.0, 2.0]]


@pytest.mark.parametrize("name, expected", [
    # |e| sums: 6 + 2 + 8 = 16 over 12 pixels.
    ("D@0", 16 / 12),
    # mean(e) = 10/12 = 5/6; sum |e - 5/6| = (1/6 + 17/6 + 5/6 + 13/6) + (5/6 + 5/6 + 1/6 + 11/6)
    #   + 4 * 7/6 = 36/6 + 22/6 + 28/6 = 86/6.
    ("M@0", 86 / 6 / 12),
    # dx rows: [3, -2, -3, 0], [0, -1, 2, 0], [0, 0, 0, 0]  -> 8 + 3 + 0 = 11.
    ("r@0", 11 / 12),
    # dy rows: [1, -2, -1, 4], [-2, -2, -1, -3], [0, 0, 0, 0] -> 8 + 8 = 16.
    ("c@0", 16 / 12),
    # dx(dx) rows: [5, 1, -3, 0], [1, -3, 2, 0], 0 -> 9 + 6 = 15.
    ("rr@0", 15 / 12),
    # dx(dy) rows: [3, -1, -5, 0], [0, -1, 2, 0], 0 -> 9 + 3 = 12.
    ("rc@0", 12 / 12),
    # dy(dy) rows: [3, 0, 0, 7], [-2, -2, -1, -3], 0 -> 10 + 8 = 18.
    ("cc@0", 18 / 12),
])
def test_first_scale_losses_by_hand(name, expected):
    assert loss(name, E) == pytest.approx(expected, rel=1e-12)


# 1x3 map e = [0, 0, 3]: with one row the vertical half of the box is the identity, and the
# replicate-padded horizontal window at column j covers clamped indices j-r .. j+r.
@pytest.mark.parametrize("name, expected", [
    # r=2: windows hold 3 once, twice, three times -> box = 3/5, 6/5, 9/5;
    # |0 - 3/5| + |0 - 6/5| + |3 - 9/5| = 3 -> mean 1.
    ("M5@0", 1.0),
    # r=8: copies of the last pixel: 7, 8, 9 -> box = 21/17, 24/17, 27/17;
    # 21/17 + 24/17 + 24/17 = 69/17 -> mean 23/17.
    ("M17@0", 23 / 17),
    # r=32: copies 31, 32, 33 -> box = 93/65, 96/65, 99/65; 93 + 96 + 96 = 285 -> 285/65/3.
    ("M65@0", 19 / 13),
])
def test_box_mean_losses_by_hand(name, expected):
    assert loss(name, [[0.0, 0.0, 3.0]]) == pytest.approx(expected, rel=1e-12)


# 2x2 prediction p = [[0, 1], [2, 3]] against a flat gt (normals (0, 0, 1)):
# dx(p) = [[-1, 0], [-1, 0]], dy(p) = [[-2, -2], [0, 0]],
# dx(dx p) = [[-1, 0], [-1, 0]], dx(dy p) = 0, dy(dy p) = [[-2, -2], [0, 0]].
# Per pixel the loss is 1 - 1 / (sqrt(a1^2 + a2^2 + 1) + eps).
P = [[0.0, 1.0], [2.0, 3.0]]


def n(sq):
    return 1 - 1 / (math.sqrt(sq) + EPS)


@pytest.mark.parametrize("name, expected", [
    ("N@0", (n(6) + n(5) + n(2) + n(1)) / 4),   # (a1, a2) = (-1,-2), (0,-2), (-1,0), (0,0)
    ("Nr@0", (n(2) + n(1) + n(2) + n(1)) / 4),  # (rr, rc) = (-1,0), (0,0), (-1,0), (0,0)
    ("Nc@0", (n(5) + n(5) + n(1) + n(1)) / 4),  # (rc, cc) = (0,-2), (0,-2), (0,0), (0,0)
])
def test_normal_losses_by_hand(name, expected):
    assert loss(name, P) == pytest.approx(expected, rel=1e-12)


def test_normal_loss_with_both_maps():
    # One row [0, 1] vs [0, 2]: pixel 0 has a = (-1, 0), b = (-2, 0):
    # 1 - (2 + 1) / (sqrt(2) sqrt(5) + eps); pixel 1 (last column, last row) is flat: ~0.
    expected = ((1 - 3 / (math.sqrt(2) * math.sqrt(5) + EPS)) + n(1)) / 2
    assert loss("N@0", [[0.0, 1.0]], [[0.0, 2.0]]) == pytest.approx(expected, rel=1e-12)


def test_pyramid_level_by_hand():
    # A ramp x[i, j] = j on 4x4. Level 1, output column 0 reads clamped taps 0, 0, 1, 2 with
    # weights (-3, 19, 19, -3)/32 -> 13/32; column 1 reads 1, 2, 3, 3 -> 83/32. Rows are
    # constant, so the vertical filter (weights summing to 1) keeps them.
    ramp = torch.arange(4.0, dtype=torch.float64).repeat(4, 1)[None, None]
    level = reference.pyramid_level(ramp, 1)
    expected = torch.tensor([[13 / 32, 83 / 32]] * 2, dtype=torch.float64)
    torch.testing.assert_close(level[0, 0], expected, rtol=1e-14, atol=1e-14)
    assert loss("D@1", ramp[0, 0].tolist()) == pytest.approx((13 + 83) / 64, rel=1e-12)


def test_amlr_pair_by_hand():
    # d = log(pred) - log(gt) = [[0, log 2], [log 2, 0]] on a 2x2 map (gt = 1).
    # Si (lambda 1) = mean(d^2) - mean(d)^2 = l2^2 / 2 - l2^2 / 4 = l2^2 / 4.
    # Gr: horizontal pairs (0, l2), (l2, 0) -> l2^2 each, same vertically -> (l2^2 + l2^2) / 2.
    l2 = math.log(2.0)
    pred = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)[None, None]
    gt = torch.ones_like(pred)
    out = reference.losses_by_name(pred, gt, None, ["Si", "Gr"])
    assert out["Si"].item() == pytest.approx(l2 ** 2 / 4, rel=1e-12)
    assert out["Gr"].item() == pytest.approx(l2 ** 2, rel=1e-12)
    bts = reference.losses_by_name(pred, gt, None, ["Si"], si_lambda=0.85, si_sqrt=True, si_scale=10.0)
    assert bts["Si"].item() == pytest.approx(10 * math.sqrt(l2 ** 2 / 2 - 0.85 * l2 ** 2 / 4), rel=1e-12)
