"""Speed of the evaluation metrics on a full 480x640 NYUv2-sized image (CPU).

Target: Kendall's tau-b over all ~307k valid pixels well under one second.
"""
import pytest
import torch

from mlrb.metrics import depth_metrics, kendall_tau, whdr

H, W = 480, 640


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, H, W, generator=g) * 9.0 + 0.5
    gt = (gt * 1000).round() / 1000  # millimetre quantisation: realistic ties
    pred = gt * (0.9 + 0.2 * torch.rand(1, H, W, generator=g))
    return pred, gt


def test_bench_kendall_tau_480x640(benchmark, pair, one_thread):
    pred, gt = pair
    tau = benchmark.pedantic(kendall_tau, args=(pred, gt), rounds=5, iterations=1)
    assert 0.5 < tau < 1.0
    assert benchmark.stats.stats.mean < 1.0  # the target: well under a second


def test_bench_depth_metrics_480x640(benchmark, pair):
    pred, gt = pair
    m = benchmark(depth_metrics, pred, gt, min_depth=1e-3, max_depth=10.0, crop="nyu_eigen")
    assert m["d1"] > 0.9


def test_bench_whdr_50k_pairs(benchmark, pair):
    pred, gt = pair
    r = benchmark(whdr, pred, gt, n_pairs=50_000)
    assert 0.0 <= r <= 1.0
