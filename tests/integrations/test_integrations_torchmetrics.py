"""torchmetrics classes: the same numbers as mlrb.metrics, streamed over batches, with masks."""
import importlib
import sys
import warnings

import pytest
import torch

pytest.importorskip("torchmetrics")

import mlrb.metrics as M  # noqa: E402
from mlrb.integrations.torchmetrics import WHDR, WKDR, DepthMetrics, KendallTau  # noqa: E402

CAPS = {"min_depth": 1e-3, "max_depth": 10.0}


def _data(b=7, h=12, w=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 1, h, w, generator=g) * 12
    gt[3] = 20.0                                              # no valid pixel: skipped
    gt[5, :, :4] = torch.round(gt[5, :, :4])                  # ties for Kendall / WKDR=
    pred = gt * (0.8 + 0.4 * torch.rand(b, 1, h, w, generator=g))
    mask = torch.rand(b, 1, h, w, generator=g) > 0.3
    mask[6] = False
    mask[6, 0, 0, :2] = True                                  # image 6: 2 masked-in pixels
    return pred, gt, mask


def _stream(metric, pred, gt, mask, splits=(0, 2, 3, 7), forward=False):
    for a, b in zip(splits[:-1], splits[1:]):
        m = None if mask is None else mask[a:b]
        if forward:
            metric(pred[a:b], gt[a:b], m)
        else:
            metric.update(pred[a:b], gt[a:b], m)
    return metric.compute()


@pytest.mark.parametrize("use_mask", [False, True])
def test_depth_metrics_stream_equals_one_shot(use_mask):
    pred, gt, mask = _data()
    mask = mask if use_mask else None
    want = M.depth_metrics(pred, gt, mask=mask, crop=(1, 11, 2, 13), **CAPS)
    metric = DepthMetrics(crop=(1, 11, 2, 13), **CAPS)
    got = _stream(metric, pred, gt, mask, forward=use_mask)
    assert got.keys() == want.keys()
    for k in want:
        assert float(got[k]) == pytest.approx(want[k], rel=1e-12, abs=1e-15)
    assert int(metric.skipped) == (2 if use_mask else 1)   # image 6's pixels lie outside the crop
    metric.reset()
    with pytest.raises(ValueError, match="no image"), warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # torchmetrics: compute before update
        metric.compute()


def test_depth_metrics_bad_options():
    with pytest.raises(ValueError, match="min_depth"):
        DepthMetrics(min_depth=1.0, max_depth=0.5)
    with pytest.raises(ValueError, match="unknown crop"):
        DepthMetrics(crop="nyu", **CAPS)
    with pytest.raises(ValueError, match="nonfinite"):
        DepthMetrics(nonfinite="skip", **CAPS)


@pytest.mark.parametrize("use_mask", [False, True])
def test_kendall_tau_stream_equals_one_shot(use_mask):
    pred, gt, mask = _data()
    mask = mask if use_mask else None
    want = M.kendall_tau(pred, gt, mask)
    got = _stream(KendallTau(), pred, gt, mask)
    assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("use_mask", [False, True])
def test_wkdr_and_whdr_stream_equal_one_shot(use_mask):
    pred, gt, mask = _data()
    mask = mask if use_mask else None
    kw = dict(n_pairs=300, seed=5)
    want = M.wkdr(pred, gt, mask, threshold=0.05, pred_threshold=0.04, **kw)
    for forward in (False, True):
        got = _stream(WKDR(threshold=0.05, pred_threshold=0.04, **kw), pred, gt, mask, forward=forward)
        assert got.keys() == want.keys()
        for k in want:
            assert float(got[k]) == pytest.approx(want[k], rel=1e-12)
    assert float(_stream(WHDR(**kw), pred, gt, mask)) == pytest.approx(M.whdr(pred, gt, mask, **kw), rel=1e-12)
    # reset() restarts the seeds: the same data gives the same numbers again.
    metric = WKDR(threshold=0.05, pred_threshold=0.04, **kw)
    first = _stream(metric, pred, gt, mask)
    metric.reset()
    assert _stream(metric, pred, gt, mask) == first


def test_ordinal_thresholds_must_be_finite_and_non_negative():
    for bad in (-0.1, float("nan"), float("inf")):
        for cls in (WKDR, WHDR):
            with pytest.raises(ValueError, match="ordinal threshold must be a finite number >= 0"):
                cls(threshold=bad)


def test_single_hw_image_counts_as_one():
    pred, gt, _ = _data()
    metric = WKDR(n_pairs=50)
    metric.update(pred[0, 0], gt[0, 0])
    metric.update(pred[1, 0], gt[1, 0])
    want = M.wkdr(pred[:2, 0], gt[:2, 0], n_pairs=50)
    assert {k: float(v) for k, v in metric.compute().items()} == pytest.approx(want, rel=1e-12)


def test_missing_torchmetrics_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)    # import torchmetrics -> ImportError
    monkeypatch.delitem(sys.modules, "mlrb.integrations.torchmetrics")
    with pytest.raises(ImportError, match=r"pip install mlrb\[torchmetrics\]"):
        importlib.import_module("mlrb.integrations.torchmetrics")
