"""Depth metrics: hand-worked values, a naive numpy implementation, caps, crops, empty sets."""
import math

import numpy as np
import pytest
import torch

from mlrb.metrics import (METRIC_KEYS, clamp_prediction, crop_box, crop_mask, depth_metrics,
                          depth_metrics_per_image, valid_mask)

CAPS = {"min_depth": 1e-3, "max_depth": 10.0}


def naive_metrics(pred: np.ndarray, gt: np.ndarray, lo: float, hi: float) -> dict:
    """Independent per-image loop in numpy (float64), averaged over non-empty images."""
    rows = []
    for p, g in zip(pred.reshape(len(pred), -1), gt.reshape(len(gt), -1)):
        keep = np.isfinite(g) & (g > lo) & (g < hi)
        if not keep.any():
            continue
        p = p.astype(np.float64).copy()
        p[np.isnan(p)] = lo
        p = np.clip(p, lo, hi)[keep]
        g = g[keep].astype(np.float64)
        thr = np.maximum(p / g, g / p)
        e = np.log(p) - np.log(g)
        rows.append({
            "d1": np.mean(thr < 1.25), "d2": np.mean(thr < 1.25 ** 2),
            "d3": np.mean(thr < 1.25 ** 3),
            "abs_rel": np.mean(np.abs(p - g) / g), "sq_rel": np.mean((p - g) ** 2 / g),
            "rmse": np.sqrt(np.mean((p - g) ** 2)), "rmse_log": np.sqrt(np.mean(e ** 2)),
            "rmse_si": np.sqrt(np.mean(e ** 2) - np.mean(e) ** 2),
            "log10": np.mean(np.abs(np.log10(p) - np.log10(g))),
            "silog": 100 * np.sqrt(np.mean(e ** 2) - np.mean(e) ** 2),
        })
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def test_hand_worked_reciprocal_errors():
    # pred = gt * e^{+-1}: e = (+1, -1) -> rmse_log = 1, mean(e) = 0 -> rmse_si = 1,
    # silog = 100, log10 = 1/ln 10, abs_rel = ((e - 1) + (1 - 1/e)) / 2 = sinh(1).
    gt = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    pred = torch.tensor([[math.e, 1 / math.e]], dtype=torch.float64)
    m = depth_metrics(pred, gt, **CAPS)
    assert m["rmse_log"] == pytest.approx(1.0)
    assert m["rmse_si"] == pytest.approx(1.0)
    assert m["silog"] == pytest.approx(100.0)
    assert m["log10"] == pytest.approx(1 / math.log(10))
    assert m["abs_rel"] == pytest.approx(math.sinh(1.0))
    assert m["sq_rel"] == pytest.approx(((math.e - 1) ** 2 + (1 - 1 / math.e) ** 2) / 2)
    assert m["rmse"] == pytest.approx(math.sqrt(((math.e - 1) ** 2 + (1 - 1 / math.e) ** 2) / 2))
    assert (m["d1"], m["d2"], m["d3"]) == (0.0, 0.0, 0.0)  # e > 1.25^3 = 1.953


def test_hand_worked_thresholds_and_global_scale():
    gt = torch.ones(1, 4)
    pred = torch.tensor([[1.0, 1.2, 1.5, 1.9]])  # ratios vs 1.25, 1.5625, 1.953125
    m = depth_metrics(pred, gt, **CAPS)
    assert (m["d1"], m["d2"], m["d3"]) == pytest.approx((0.5, 0.75, 1.0))
    assert m["abs_rel"] == pytest.approx(0.4)
    assert m["sq_rel"] == pytest.approx(0.275)
    assert m["rmse"] == pytest.approx(math.sqrt(0.275))
    # A global factor 2 only moves the scale: scale-invariant errors vanish.
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = depth_metrics(2 * g, g, **CAPS)
    assert m["rmse_si"] == pytest.approx(0.0, abs=1e-12) and m["silog"] == pytest.approx(0.0, abs=1e-9)
    assert m["rmse_log"] == pytest.approx(math.log(2))
    assert m["log10"] == pytest.approx(math.log10(2))
    assert m["abs_rel"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean([1, 4, 9, 16])))


def test_random_against_naive_with_caps_and_nonfinite():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1.0, 12.0, size=(3, 20, 30))  # some below/above the caps
    gt[0, :3] = np.nan
    gt[1, 5] = np.inf
    pred = gt * rng.uniform(0.6, 1.5, size=gt.shape) + rng.normal(0, 0.3, size=gt.shape)
    pred[2, 0, :5] = [np.inf, -np.inf, np.nan, -3.0, 50.0]
    got = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), **CAPS)
    want = naive_metrics(pred, gt, CAPS["min_depth"], CAPS["max_depth"])
    assert list(got) == list(METRIC_KEYS)
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k


def test_shapes_equivalent_and_float32():
    g = torch.rand(2, 1, 8, 9) * 5 + 0.5
    p = g * 1.1 + 0.05
    a = depth_metrics(p, g, **CAPS)
    b = depth_metrics(p[:, 0], g[:, 0], **CAPS)
    c = depth_metrics(p.numpy(), g.numpy(), **CAPS)
    assert a == b == c
    one = depth_metrics(p[0, 0], g[0, 0], **CAPS)
    per, n = depth_metrics_per_image(p, g, **CAPS)
    assert one["rmse"] == pytest.approx(float(per["rmse"][0]))
    # mean over images, not over pooled pixels
    assert a["rmse"] == pytest.approx(float(per["rmse"].mean()))
    assert n.tolist() == [72, 72]


def test_caps_clamp_and_valid_range():
    gt = torch.tensor([[0.001, 5.0, 10.0, 2.0]])  # caps are exclusive: only 5 and 2 valid
    pred = torch.tensor([[3.0, 20.0, 1.0, 0.0]])  # 20 -> 10, 0 -> 1e-3
    assert valid_mask(gt, **CAPS).tolist() == [[[False, True, False, True]]]
    per, n = depth_metrics_per_image(pred, gt, **CAPS)
    assert int(n[0]) == 2
    assert float(per["abs_rel"][0]) == pytest.approx((5 / 5 + (2 - 1e-3) / 2) / 2)
    c = clamp_prediction(torch.tensor([float("nan"), float("inf"), -float("inf"), 4.0],
                                      dtype=torch.float64), **CAPS)
    assert c.tolist() == [1e-3, 10.0, 1e-3, 4.0]
    with pytest.raises(ValueError, match="inf/NaN"):
        depth_metrics(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), nonfinite="raise",
                      **CAPS)


def test_empty_valid_set_skips_image_and_errors_when_all_empty():
    gt = torch.rand(2, 5, 5) + 1.0
    gt[1] = 0.0  # no valid pixel in image 1
    pred = gt * 1.2
    per, n = depth_metrics_per_image(pred, gt, **CAPS)
    assert n.tolist() == [25, 0]
    assert all(torch.isfinite(v).all() and float(v[1]) == 0.0 for v in per.values())
    m = depth_metrics(pred, gt, **CAPS)
    assert m == depth_metrics(pred[:1], gt[:1], **CAPS)
    with pytest.raises(ValueError, match="no valid ground-truth"):
        depth_metrics(pred[1:], gt[1:], **CAPS)
    with pytest.raises(ValueError, match="no valid ground-truth"):
        depth_metrics(pred, gt, mask=torch.zeros(5, 5), **CAPS)


def test_crops():
    assert crop_box(480, 640, "nyu_eigen") == (45, 471, 41, 601)
    assert crop_box(240, 320, "nyu_eigen") == (22, 236, 20, 300)  # proportional, rounded
    # KITTI 375x1242: int(0.40810811*375)=153, int(0.99189189*375)=371,
    # int(0.03594771*1242)=44, int(0.96405229*1242)=1197; Eigen rows 124:342.
    assert crop_box(375, 1242, "kitti_garg") == (153, 371, 44, 1197)
    assert crop_box(375, 1242, "kitti_eigen") == (124, 342, 44, 1197)
    assert crop_box(10, 12, None) == (0, 10, 0, 12)
    assert crop_box(10, 12, (1, 3, 2, 5)) == (1, 3, 2, 5)
    m = crop_mask(480, 640, "nyu_eigen")
    assert int(m.sum()) == 426 * 560 and m[45, 41] and not m[44, 41] and not m[45, 601]
    for bad in ("eigen", (0, 0, 0, 5), (0, 11, 0, 5)):
        with pytest.raises(ValueError):
            crop_box(10, 12, bad)


def test_crop_restricts_evaluation():
    gt = torch.full((480, 640), 2.0)
    pred = gt.clone()
    pred[:45] = 9.0  # errors only outside the NYU Eigen crop
    assert depth_metrics(pred, gt, crop="nyu_eigen", **CAPS)["abs_rel"] == 0.0
    assert depth_metrics(pred, gt, **CAPS)["abs_rel"] > 0.0
    _, n = depth_metrics_per_image(pred, gt, crop="nyu_eigen", **CAPS)
    assert int(n[0]) == 426 * 560


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(torch.ones(2, 3), torch.ones(3, 2), **CAPS)
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3), **CAPS)
    with pytest.raises(ValueError, match="min_depth"):
        depth_metrics(torch.ones(3, 3), torch.ones(3, 3), min_depth=5.0, max_depth=1.0)
    with pytest.raises(TypeError):
        depth_metrics([[1.0]], [[1.0]], **CAPS)
