"""'R without I' (Lee & Kim Table 5(d) row 3): rebalancing from 1/n weights, no Eq. 9."""
import torch

from mlrb.weighting import MultiLossRebalancer


def _period(w, mean, epoch=0):
    w(torch.as_tensor(mean, dtype=torch.float64).expand(2, -1))
    w.end_period(epoch=epoch)


def test_without_initialization_weights_start_equal_then_rebalance():
    with_i = MultiLossRebalancer(3, lam=3.0, clip=None)
    without = MultiLossRebalancer(3, lam=3.0, clip=None, initialize=False)
    for w in (with_i, without):
        _period(w, [1.0, 10.0, 100.0])
    assert torch.allclose(without.weights.double(), torch.full((3,), 1 / 3, dtype=torch.float64))
    assert not torch.allclose(with_i.weights.double(), torch.full((3,), 1 / 3, dtype=torch.float64))
    before = without.weights.clone()
    _period(without, [0.5, 10.0, 120.0])
    assert not torch.allclose(without.weights, before)  # Eq. 11 runs from the second period
    assert torch.isfinite(without.weights).all()
