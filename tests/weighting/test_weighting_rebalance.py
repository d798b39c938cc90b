"""MultiLossRebalancer: Eq. 9 initialization and Eq. 11 rebalancing (Lee & Kim 2020, Sec. 3.2)."""
import math

import pytest
import torch

from mlrb.weighting import MultiLossRebalancer, paper_lambda_schedule

N = 5


def _run_period(w, mean, steps=3, epoch=None, seed=0):
    """Feed ``steps`` batches whose per-loss batch means average exactly to ``mean``."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    for _ in range(steps):
        noise = torch.rand(4, mean.numel(), generator=g, dtype=torch.float64) - 0.5
        noise = noise - noise.mean(0)  # zero batch mean: the step mean is exactly `mean`
        w(mean * (1 + 0.5 * noise))
    w.end_period(epoch=epoch)


def _periods(n=N, seed=1):
    """Three periods of means spread over five orders of magnitude (beyond the default
    max_ratio cap, so the tests of the paper's formulas pass max_ratio=None)."""
    g = torch.Generator().manual_seed(seed)
    L1 = torch.rand(n, generator=g, dtype=torch.float64) * torch.logspace(-3, 2, n, dtype=torch.float64)
    L2 = L1 * (0.6 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64))
    L3 = L2 * (0.6 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64))
    return L1, L2, L3


def test_paper_lambda_schedule():
    assert [paper_lambda_schedule(e) for e in range(7)] == [3.0, 1.5, 0.0, -1.5, -3.0, -3.0, -3.0]
    w = MultiLossRebalancer(3)
    assert w.lambda_at(0) == 3.0 and w.lambda_at(4) == -3.0


def test_initialization_equalises_contributions_and_keeps_overall_loss():
    L1, _, _ = _periods()
    w = MultiLossRebalancer(N, max_ratio=None)
    assert torch.allclose(w.weights, torch.full((N,), 1 / N, dtype=torch.float64))
    _run_period(w, L1)
    A = L1.mean()  # overall loss under the 1/n weights
    c = w.weights * L1
    torch.testing.assert_close(c, torch.full_like(c, (A / N).item()), rtol=1e-12, atol=0)
    torch.testing.assert_close(c.sum(), A, rtol=1e-12, atol=0)
    torch.testing.assert_close(w.contributions, c, rtol=1e-12, atol=0)


def test_init_scale_sets_the_contribution_shares():
    L1, _, _ = _periods()
    s = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1], dtype=torch.float64)
    w = MultiLossRebalancer(N, init_scale=s, max_ratio=None)
    _run_period(w, L1)
    torch.testing.assert_close(w.weights * L1, L1.mean() * s, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lam", [0.7, 3.0, -1.5])
def test_unclipped_rule_is_eq11_from_P_and_dP(lam):
    L1, L2, L3 = _periods()
    w = MultiLossRebalancer(N, lam=lam, clip=None, max_ratio=None)
    _run_period(w, L1)
    prev, w_prev = L1, w.weights.clone()
    for L in (L2, L3):
        _run_period(w, L)
        # P_i = L_i / L_all with L_all = sum_j w_j L_j, both periods under the same weights.
        P = L / (w_prev * L).sum()
        P_prev = prev / (w_prev * prev).sum()
        expected = w_prev * (1 - lam * (P - P_prev) / P)  # Eq. 11
        torch.testing.assert_close(w.weights, expected, rtol=1e-12, atol=0)
        prev, w_prev = L, w.weights.clone()


def test_overall_loss_unchanged_when_no_clip_is_active():
    L1, _, _ = _periods()
    L2 = L1 * torch.tensor([0.9, 1.05, 0.95, 1.0, 0.97], dtype=torch.float64)  # small moves
    w = MultiLossRebalancer(N, lam=1.5)  # default clip [0.5, 2], not reached here
    _run_period(w, L1)
    before = w.weights.clone()
    _run_period(w, L2)
    adjust = w.weights / before
    assert ((adjust > 0.5) & (adjust < 2.0)).all() and not torch.allclose(adjust, torch.ones_like(adjust))
    torch.testing.assert_close((w.weights * L2).sum(), (before * L2).sum(), rtol=1e-12, atol=0)


def test_lambda_zero_keeps_weights():
    L1, L2, L3 = _periods()
    w = MultiLossRebalancer(N, lam=0.0)
    _run_period(w, L1)
    w1 = w.weights.clone()
    _run_period(w, L2)
    _run_period(w, L3)
    assert torch.equal(w.weights, w1)


def test_lambda_one_keeps_every_contribution():
    L1, L2, L3 = _periods()
    w = MultiLossRebalancer(N, lam=1.0, clip=None, max_ratio=None)
    _run_period(w, L1)
    for prev, L in ((L1, L2), (L2, L3)):
        w_prev = w.weights.clone()
        _run_period(w, L)
        # Eq. 12 of the paper: w_i(t) P_i(t) = w_i(t-1) P_i(t-1).
        share_now = w.weights * L / (w_prev * L).sum()
        share_before = w_prev * prev / (w_prev * prev).sum()
        torch.testing.assert_close(share_now, share_before, rtol=1e-12, atol=0)


@pytest.mark.parametrize("lam", [1.5, -1.5])
def test_sign_of_lambda_decides_easy_or_hard_focus(lam):
    L1 = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    L2 = L1 * torch.tensor([0.5, 0.9, 0.9, 0.9], dtype=torch.float64)  # loss 0 falls fastest
    w = MultiLossRebalancer(4, lam=lam)
    _run_period(w, L1)
    before = w.weights.clone()
    _run_period(w, L2)
    grew = w.weights / before
    if lam > 0:  # easy loss gets a bigger weight, the others smaller
        assert grew[0] > 1 and (grew[1:] < 1).all()
    else:
        assert grew[0] < 1 and (grew[1:] > 1).all()


def test_clip_bounds_are_applied_and_settable():
    L1 = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    L2 = torch.tensor([0.01, 1.0, 1.0], dtype=torch.float64)
    for clip, lo, hi in (((0.5, 2.0), 0.5, 2.0), ((0.8, 1.25), 0.8, 1.25)):
        w = MultiLossRebalancer(3, lam=3.0, clip=clip)
        _run_period(w, L1)
        before = w.weights.clone()
        _run_period(w, L2)
        adjust = w.weights / before
        assert adjust[0] == pytest.approx(hi) and adjust[1] == pytest.approx(lo)
    with pytest.raises(ValueError, match="clip"):
        MultiLossRebalancer(3, clip=(1.5, 2.0))


def test_max_ratio_caps_the_weight_spread_and_keeps_overall_loss():
    L1 = torch.tensor([1e-6, 1.0, 2.0, 50.0], dtype=torch.float64)  # orders of magnitude apart
    free = MultiLossRebalancer(4, max_ratio=None)
    _run_period(free, L1)
    assert free.weights.max() / free.weights.min() > 1e6
    capped = MultiLossRebalancer(4, max_ratio=100.0)
    _run_period(capped, L1)
    ratio = capped.weights.max() / capped.weights.min()
    assert ratio <= 100.0 * (1 + 1e-9)
    torch.testing.assert_close((capped.weights * L1).sum(), L1.mean(), rtol=1e-12, atol=0)


def test_disabled_and_zero_losses_give_no_inf_or_nan():
    enabled = torch.tensor([True, True, False, True])
    w = MultiLossRebalancer(4, enabled=enabled, lam=3.0, clip=None)
    assert w.weights[2] == 0 and w.weights[0] == pytest.approx(1 / 3)
    bad = torch.tensor([1.0, 0.0, float("nan"), 2.0], dtype=torch.float64)  # NaN only where disabled
    for epoch in range(3):
        for _ in range(2):
            x = bad.repeat(3, 1).requires_grad_()
            total = w(x)
            assert torch.isfinite(total)
            total.backward()
            assert torch.isfinite(x.grad).all() and (x.grad[:, 2] == 0).all()
        w.end_period(epoch=epoch)
        assert torch.isfinite(w.weights).all() and w.weights[2] == 0
    # The all-zero loss kept its pre-initialization weight and is not yet initialized.
    assert w.weights[1] == pytest.approx(1 / 3) and not bool(w.initialized[1])
    # Once it becomes non-zero it is initialized (Eq. 9) under the current overall loss.
    now = torch.tensor([1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    A = (w.weights * now).sum()
    _run_period(w, now)
    assert bool(w.initialized[1]) and torch.isfinite(w.weights).all()
    assert w.weights[1] == pytest.approx((A / 3 / 0.5).item())
    # A loss that drops to zero after initialization keeps its weight.
    w1 = w.weights.clone()
    _run_period(w, torch.tensor([0.0, 0.5, 0.0, 2.0], dtype=torch.float64))
    assert torch.isfinite(w.weights).all() and w.weights[0] == w1[0]


def test_all_losses_zero_in_first_period():
    w = MultiLossRebalancer(3)
    _run_period(w, torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(w.weights).all() and torch.allclose(w.weights, torch.full((3,), 1 / 3, dtype=torch.float64))


def test_callable_lambda_receives_the_epoch():
    seen = []

    def lam(epoch):
        seen.append(epoch)
        return 1.0

    L1, L2, L3 = _periods()
    w = MultiLossRebalancer(N, lam=lam)
    _run_period(w, L1, epoch=0)  # initialization: lambda not needed
    _run_period(w, L2, epoch=0)
    _run_period(w, L3, epoch=3)
    assert seen == [0, 3] and w.current_lambda == 1.0


def test_default_epoch_counts_four_periods_per_epoch():
    seen = []
    w = MultiLossRebalancer(2, lam=lambda e: seen.append(e) or 0.0)
    for k in range(9):
        _run_period(w, torch.tensor([1.0 + k, 2.0], dtype=torch.float64), steps=1)
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2]


def test_bad_inputs_raise_clear_errors():
    w = MultiLossRebalancer(3)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        w(torch.ones(2, 4))
    with pytest.raises(ValueError, match="empty batch"):
        w(torch.ones(0, 3))
    with pytest.raises(FloatingPointError, match="loss1"):  # at the step, not at the period end
        w(torch.tensor([1.0, float("nan"), 1.0]))
    w2 = MultiLossRebalancer(2)
    with pytest.raises(ValueError, match=r"negative.*\['loss1'\]"):
        w2(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="min_factor"):
        MultiLossRebalancer(2, min_factor=0.0)
    with pytest.raises(ValueError, match="max_ratio"):
        MultiLossRebalancer(2, max_ratio=0.5)
    with pytest.raises(ValueError, match="clip"):
        MultiLossRebalancer(2, clip=(0.5, math.inf))
    with pytest.raises(ValueError, match="epoch"):
        w.end_period(epoch=-1)
    with pytest.raises(ValueError):
        MultiLossRebalancer(0)
    with pytest.raises(ValueError, match="enable"):
        MultiLossRebalancer(2, enabled=[False, False])
    with pytest.raises(ValueError, match="lam"):
        MultiLossRebalancer(2, lam=math.inf)


def test_unclipped_lambda_3_keeps_every_weight_positive():
    # Loss 0's share of the overall loss grows 1.8x: unclipped Eq. 11 with lambda = 3 gives
    # the factor 1 + 3 * (5/9 - 1) = -1/3, a negative weight (the optimizer would maximise it).
    w = MultiLossRebalancer(3, lam=3.0, clip=None)
    _run_period(w, [1.0, 1.0, 1.0])
    before = w.weights.clone()
    _run_period(w, [3.0, 1.0, 1.0])
    assert (w.weights > 0).all()
    adjust = w.weights / before
    assert adjust[0] == pytest.approx(0.01)  # floored at min_factor
    assert adjust[1] == pytest.approx(1 + 3 * (5 / 3 - 1))  # the others follow Eq. 11 unchanged
    tiny = MultiLossRebalancer(3, lam=3.0, clip=None, min_factor=1e-6, max_ratio=None)
    _run_period(tiny, [1.0, 1.0, 1.0])
    _run_period(tiny, [3.0, 1.0, 1.0])
    assert tiny.weights[0] / before[0] == pytest.approx(1e-6)


def test_tiny_loss_gets_a_capped_finite_weight_by_default():
    # The paper repository's issue #3: a loss of 1e-12 next to 1e3.
    L = [1e-12, 1e3, 2.0]
    w = MultiLossRebalancer(3)
    assert w.max_ratio == 1e6
    _run_period(w, L)
    ratio = w.weights.max() / w.weights.min()
    assert 1e5 < ratio <= 1e6 * (1 + 1e-12)  # clamped around the median weight (that of loss 2)
    torch.testing.assert_close((w.weights * torch.tensor(L, dtype=torch.float64)).sum(),
                               torch.tensor(L, dtype=torch.float64).mean(), rtol=1e-12, atol=0)
    paper = MultiLossRebalancer(3, max_ratio=None)  # the paper's behaviour, one option away
    _run_period(paper, L)
    assert paper.weights.max() / paper.weights.min() > 1e14


@pytest.mark.parametrize("max_ratio", [1e6, None])
def test_weights_and_total_stay_finite_for_a_float32_loss_of_1e38(max_ratio):
    w = MultiLossRebalancer(2, max_ratio=max_ratio)
    x = torch.tensor([[1e-38, 1e3]], dtype=torch.float32)
    w(x)
    w.end_period()
    assert torch.isfinite(w.weights).all() and (w.weights > 0).all()
    assert torch.isfinite(w(x)) and torch.isfinite(w(x.double()))
    # Even a float64 loss far below float32's range gets a finite weight.
    w64 = MultiLossRebalancer(2, max_ratio=None)
    w64(torch.tensor([1e-300, 1.0], dtype=torch.float64))
    w64.end_period()
    assert torch.isfinite(w64.weights).all() and torch.isfinite(w64.weights.float()).all()


def test_lambda_schedule_direction_and_arguments():
    assert [paper_lambda_schedule(e, -3.0, 3.0, 1.5) for e in range(6)] == [-3.0, -1.5, 0.0, 1.5, 3.0, 3.0]
    # the sign of step does not flip the schedule (it used to stick at the end value)
    assert [paper_lambda_schedule(e, 3.0, -3.0, -1.5) for e in range(3)] == [3.0, 1.5, 0.0]
    assert paper_lambda_schedule(4, 2.0, -2.0, 0.0) == 2.0
    for bad in (dict(start=math.nan), dict(step=math.inf), dict(end="x")):
        with pytest.raises(ValueError, match="lambda schedule"):
            paper_lambda_schedule(0, **bad)
    with pytest.raises(ValueError, match="epoch"):
        paper_lambda_schedule(-1)
    w = MultiLossRebalancer(2, lam=lambda e: "fast")
    _run_period(w, [1.0, 2.0])
    with pytest.raises(TypeError, match="lambda schedule returned 'fast'"):
        _run_period(w, [1.0, 2.0])
