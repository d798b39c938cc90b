"""AMLRRebalancer (Yu & Heo 2023, Eqs. 8-12) on a hand-computed three-period sequence."""
import math

import pytest
import torch

from mlrb.weighting import AMLRRebalancer

# Period means of (Si, Gr) for timesteps t = 1, 2, 3.
L = [(2.0, 0.5), (1.0, 0.5), (0.8, 0.45)]
LAM = 1e-3


def _w2_by_hand():
    w1 = torch.tensor([0.61875, 0.025], dtype=torch.float64)
    g = torch.tensor([-0.01 * 0.61875, 0.495 * 0.025], dtype=torch.float64)
    m, v = 0.1 * g, 0.001 * g * g
    assert abs(m[0] / v[0].sqrt() + math.sqrt(10.0)) < 1e-12  # |m| / sqrt(v) = sqrt(10)
    return w1 - LAM * m / (v.sqrt() + 1e-8)


def _feed(w, means):
    for mu in means:
        w(torch.tensor(mu, dtype=torch.float64).repeat(3, 1))
        w.end_period()


def test_eq8_and_eq9_initialization():
    w = AMLRRebalancer(lam=LAM)
    assert w.names == ("Si", "Gr")
    assert torch.equal(w.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))  # Eq. 8
    _feed(w, L[:1])
    # Eq. 9: L_tot = 0.5*2 + 0.5*0.5 = 1.25; w = (1.25/2 * 0.99, 1.25/0.5 * 0.01).
    torch.testing.assert_close(w.weights, torch.tensor([0.61875, 0.025], dtype=torch.float64), rtol=1e-14, atol=0)


def test_three_periods_by_hand():
    w = AMLRRebalancer(lam=LAM)
    _feed(w, L[:2])
    # t = 2 under w1 = (0.61875, 0.025): L_all(t=2) = 0.63125, L_all(t=1) = 1.25,
    # P(2) = (1.5841584, 0.7920792), P(1) = (1.6, 0.4): dP/P = 1 - P(1)/P(2) = (-0.01, 0.495),
    # g = (-0.0061875, 0.012375); m = 0.1 g, v = 0.001 g^2, so m / sqrt(v) = sqrt(10) * sign(g)
    # and w2 = w1 - 1e-3 * m / (sqrt(v) + 1e-8), about w1 -/+ 1e-3 * sqrt(10).
    torch.testing.assert_close(w.weights, _w2_by_hand(), rtol=1e-13, atol=0)
    torch.testing.assert_close(w.m, torch.tensor([-0.00061875, 0.0012375], dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(w.v, torch.tensor([0.001 * 0.0061875**2, 0.001 * 0.012375**2], dtype=torch.float64),
                               rtol=1e-12, atol=0)
    _feed(w, L[2:])
    # t = 3 under w2: L_all(3) = 0.5073567, L_all(2) = 0.6328310, g = (-0.00134131, 0.00238456),
    # m = 0.9 m + 0.1 g = (-0.00069101, 0.00135221), v = 0.999 v + 0.001 g^2,
    # w3 = w2 - 1e-3 * m / (sqrt(v) + 1e-8).
    torch.testing.assert_close(w.weights, torch.tensor([0.62536499054, 0.01844327413], dtype=torch.float64),
                               rtol=1e-9, atol=0)


def test_literal_eq12_uses_previous_moments():
    w = AMLRRebalancer(lam=LAM, delayed_moments=True)
    _feed(w, L[:2])
    # m^1 = v^1 = 0, so the literal Eq. 12 leaves w2 = w1 ...
    torch.testing.assert_close(w.weights, torch.tensor([0.61875, 0.025], dtype=torch.float64), rtol=1e-14, atol=0)
    _feed(w, L[2:])
    # ... and t = 3 steps from w2 = w1 with m^2, v^2: the moments the default mode applies
    # at t = 2 (g at t = 2 is the same in both modes), so w3 here is the default w2.
    torch.testing.assert_close(w.weights, _w2_by_hand(), rtol=1e-13, atol=0)


def test_step_timestep_and_weight_floor():
    w = AMLRRebalancer(lam=0.1, timestep="step", min_share=None)
    for mu in L:
        w(torch.tensor(mu))  # each step is a timestep
    assert w.periods_ended == 3
    # Unfloored, Gr's weight would go 0.025 - 0.1*sqrt(10) < 0 at t = 2; min_weight keeps it at 0,
    # the default min_share positive.
    assert w.weights[1] == 0 and torch.isfinite(w.weights).all()
    default = AMLRRebalancer(lam=0.1, timestep="step")
    for mu in L:
        default(torch.tensor(mu))
    assert (default.weights > 0).all()
    free = AMLRRebalancer(lam=0.1, timestep="step", min_weight=None, min_share=None)
    for mu in L[:2]:
        free(torch.tensor(mu))
    assert free.weights[1] < 0
    with pytest.raises(ValueError, match="timestep"):
        AMLRRebalancer(timestep="epoch")


def test_zero_and_disabled_losses_stay_finite():
    w = AMLRRebalancer(3, lam=0.01, enabled=[True, True, False])
    assert w.init_ratio[0] == pytest.approx(0.5)  # 1/n over enabled losses when n != 2
    _feed(w, [(1.0, 0.0, float("nan")), (0.5, 0.0, 1.0), (0.4, 0.2, 1.0), (0.3, 0.1, 1.0)])
    assert torch.isfinite(w.weights).all() and torch.isfinite(w.m).all() and w.weights[2] == 0
    assert bool(w.initialized[1])


def test_a_weight_never_reaches_zero_by_default():
    # Si falls, Gr stays: Gr's share grows and Eq. 12 pushes its weight down every timestep.
    # Unbounded (min_share=None) it hits the min_weight = 0 floor and stays there for good
    # (g is proportional to w), silently dropping the loss; min_share keeps it positive.
    def run(**kw):
        w = AMLRRebalancer(lam=0.05, **kw)
        L = [2.0, 0.5]
        for t in range(12):
            L = [L[0] * 0.9, L[1]] if t < 8 else [L[0], L[1] * 0.8]
            used = w.weights.clone()
            _feed(w, [L])
        return w, used, torch.tensor(L, dtype=torch.float64)
    paper, _, _ = run(min_share=None)
    assert paper.weights[1] == 0
    w, used, L = run()
    assert (w.weights > 0).all()
    floor = 0.01 * w.init_ratio * (used * L).sum() / L  # min_share * r_i * L_tot / L_i
    assert (w.weights >= floor * (1 - 1e-12)).all() and w.weights[1] == pytest.approx(floor[1].item())
    with pytest.raises(ValueError, match="min_share"):
        AMLRRebalancer(min_share=0.0)
