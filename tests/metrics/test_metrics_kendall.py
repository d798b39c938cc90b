"""Kendall's tau-b: hand-worked values and an O(N^2) pair count, with ties."""
import math

import numpy as np
import pytest
import torch

from mlrb.metrics import count_inversions, kendall_tau, kendall_tau_1d, kendall_tau_per_image


def naive_tau_b(x, y) -> float:
    """O(N^2) tau-b straight from the definition."""
    n = len(x)
    s = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            a = np.sign(x[i] - x[j])
            b = np.sign(y[i] - y[j])
            s += a * b
            tx += a != 0
            ty += b != 0
    return 0.0 if tx == 0 or ty == 0 else s / math.sqrt(tx * ty)


def test_hand_worked():
    # x = 1,2,3,4; y = 1,3,2,4: 6 pairs, one discordant (2,3) -> (5 - 1) / 6.
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert kendall_tau_1d(x, torch.tensor([1.0, 3.0, 2.0, 4.0])) == pytest.approx(4 / 6)
    assert kendall_tau_1d(x, x * 3 + 1) == pytest.approx(1.0)
    assert kendall_tau_1d(x, -x) == pytest.approx(-1.0)
    # ties: x = 1,1,2; y = 1,2,3. n0=3, n1=1, n2=0; C=2, D=0 -> 2/sqrt(2*3)
    assert kendall_tau_1d(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == \
        pytest.approx(2 / math.sqrt(6))
    # constant map: documented as 0
    assert kendall_tau_1d(torch.ones(5), torch.arange(5.0)) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_random_with_ties_against_naive(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(15):
        n = int(torch.randint(2, 60, (1,), generator=g))
        kx, ky = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
        x = torch.randint(0, kx, (n,), generator=g).double()
        y = torch.randint(0, ky, (n,), generator=g).double() + 0.5 * x
        assert kendall_tau_1d(x, y) == pytest.approx(naive_tau_b(x.numpy(), y.numpy()),
                                                     abs=1e-12)
    x, y = torch.rand(200, generator=g), torch.rand(200, generator=g)  # no ties
    assert kendall_tau_1d(x, y) == pytest.approx(naive_tau_b(x.numpy(), y.numpy()), abs=1e-12)


def test_count_inversions_against_naive():
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 5, 33, 100):
        r = torch.randint(0, 13, (n,), generator=g)
        want = sum(int(r[i] > r[j]) for i in range(n) for j in range(i + 1, n))
        assert count_inversions(r) == want
    assert count_inversions(torch.arange(10).flip(0)) == 45


def test_mask_batch_and_nonfinite():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 6, 7, generator=g)
    pred = gt + 0.3 * torch.rand(2, 6, 7, generator=g)
    mask = torch.rand(2, 6, 7, generator=g) > 0.3
    pred[0, 0, 0] = float("nan")
    taus, counts = kendall_tau_per_image(pred, gt, mask)
    for i in range(2):
        keep = mask[i] & torch.isfinite(pred[i])
        assert int(counts[i]) == int(keep.sum())
        assert float(taus[i]) == pytest.approx(
            naive_tau_b(pred[i][keep].numpy(), gt[i][keep].numpy()), abs=1e-12)
    assert kendall_tau(pred, gt, mask) == pytest.approx(float(taus.mean()))


def test_too_few_valid_pixels():
    gt = torch.rand(2, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :3] = True
    mask[1, 0, 0] = True  # one pixel: image skipped
    taus, counts = kendall_tau_per_image(gt, gt, mask)
    assert counts.tolist() == [3, 1] and taus.tolist() == [1.0, 0.0]
    assert kendall_tau(gt, gt, mask) == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau(gt[1:], gt[1:], mask[1:])
    with pytest.raises(ValueError, match="at least 2"):
        kendall_tau_1d(torch.ones(1), torch.ones(1))


def naive_tau_a(x, y) -> float:
    """Eq. 14 of Jun et al. (2022): (concordant - discordant) / all pairs."""
    n = len(x)
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


@pytest.mark.parametrize("seed", range(3))
def test_tau_a_against_naive_and_equal_to_tau_b_without_ties(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 5, (40,), generator=g).double()  # ties in both
    y = torch.randint(0, 7, (40,), generator=g).double()
    assert kendall_tau_1d(x, y, variant="a") == pytest.approx(naive_tau_a(x.numpy(), y.numpy()), abs=1e-12)
    assert abs(kendall_tau_1d(x, y, "a")) < abs(kendall_tau_1d(x, y, "b"))  # ties shrink tau-a
    u, v = torch.randn(30, generator=g), torch.randn(30, generator=g)
    assert kendall_tau_1d(u, v, "a") == pytest.approx(kendall_tau_1d(u, v, "b"), abs=1e-12)
    pred, gt = torch.randn(2, 1, 4, 5, generator=g), torch.randint(0, 3, (2, 1, 4, 5), generator=g).float()
    per = [naive_tau_a(pred[i].flatten().numpy(), gt[i].flatten().numpy()) for i in range(2)]
    assert kendall_tau(pred, gt, variant="a") == pytest.approx(sum(per) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="variant"):
        kendall_tau(pred, gt, variant="c")
