"""Per-step overhead of the loss weighters on the 78-loss space (CPU).

Target: the weighting adds negligible time next to the loss space itself; a training step
(forward + backward through the weighter on (16, 78) losses) stays well under a millisecond
of host time, and a period end (statistics, Eq. 11) is equally cheap.
"""
import pytest
import torch

from mlrb.weighting import AMLRRebalancer, MultiLossRebalancer, UncertaintyWeighting

B, N = 16, 78


@pytest.fixture(scope="module")
def losses():
    return torch.rand(B, N, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, N)


@pytest.mark.parametrize("cls", [MultiLossRebalancer, AMLRRebalancer, UncertaintyWeighting])
def test_bench_weighting_step(benchmark, losses, cls):
    w = cls(N)
    x = losses.clone().requires_grad_()

    def step():
        w(x).backward()

    benchmark.pedantic(step, rounds=200, iterations=5, warmup_rounds=10)
    assert benchmark.stats.stats.mean < 1e-3


def test_bench_rebalancer_end_period(benchmark, losses):
    w = MultiLossRebalancer(N, lam=1.5)

    def period():
        w(losses)
        w.end_period()

    benchmark.pedantic(period, rounds=100, iterations=1, warmup_rounds=3)
    assert torch.isfinite(w.weights).all()
    assert benchmark.stats.stats.mean < 2e-3
