"""The interface shared by every weighter: forward, periods, logging, state_dict resume."""
import copy
import math

import pytest
import torch

import mlrb
from mlrb.weighting import AMLRRebalancer, FixedWeights, MultiLossRebalancer, UncertaintyWeighting
from mlrb.weighting.base import period_end_steps

N = 4


def _make(kind, **kw):
    if kind == "rebalance":
        return MultiLossRebalancer(N, **kw)
    if kind == "amlr":
        return AMLRRebalancer(N, lam=0.01, **kw)
    if kind == "uncertainty":
        return UncertaintyWeighting(N, **kw)
    return FixedWeights(N, [0.1, 0.2, 0.3, 0.4], **kw)


KINDS = ["rebalance", "amlr", "uncertainty", "fixed"]


def _losses(steps, seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 0.1, 10.0, 0.01])
    return [torch.rand(B, N, generator=g) * scale * (1 - 0.02 * k) for k in range(steps)]


def test_package_exports():
    import mlrb.weighting as wmod

    assert sorted(wmod.__all__) == sorted(
        ["MultiLossRebalancer", "AMLRRebalancer", "UncertaintyWeighting", "FixedWeights", "paper_lambda_schedule"])
    assert mlrb.MultiLossRebalancer is MultiLossRebalancer and mlrb.paper_lambda_schedule(1) == 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_total_is_weighted_batch_mean_and_differentiable(kind):
    w = _make(kind)
    x = _losses(1)[0].requires_grad_()
    total = w(x)
    assert total.ndim == 0 and total.dtype == x.dtype
    weights = w.weights.to(x.dtype)
    expected = (weights * x.mean(0)).sum()
    if kind == "uncertainty":
        expected = expected + w.log_var.sum()
    torch.testing.assert_close(total, expected.detach(), rtol=1e-6, atol=0)
    total.backward()
    torch.testing.assert_close(x.grad, (weights / x.shape[0]).expand_as(x), rtol=1e-6, atol=0)
    # (n,) input works the same as a batch of one
    torch.testing.assert_close(w(x[0].detach()), w(x[:1].detach()))


def test_uncertainty_total_and_gradient_on_log_var():
    w = UncertaintyWeighting(2, init=[0.0, math.log(4.0)])
    x = torch.tensor([[2.0, 8.0]])
    total = w(x)
    # exp(-0)*2 + 0 + exp(-log 4)*8 + log 4
    assert total.item() == pytest.approx(2.0 + 2.0 + math.log(4.0))
    total.backward()
    # d/ds [exp(-s) L + s] = 1 - exp(-s) L
    torch.testing.assert_close(w.log_var.grad, torch.tensor([1 - 2.0, 1 - 2.0]))
    neg = UncertaintyWeighting(1, init=-3.0)
    assert neg(torch.tensor([0.0])).item() < 0  # a negative total is expected


def test_eval_mode_does_not_accumulate():
    w = MultiLossRebalancer(N)
    w.eval()
    w(_losses(1)[0])
    assert w._count == 0 and torch.equal(w.period_sum, torch.zeros(N, dtype=torch.float64))
    w.train()
    w(_losses(1)[0])
    assert w._count == 1


def test_steps_per_period_ends_periods_automatically():
    w = MultiLossRebalancer(N, steps_per_period=3)
    manual = MultiLossRebalancer(N)
    for k, x in enumerate(_losses(9)):
        w(x)
        manual(x)
        if k % 3 == 2:
            manual.end_period()
    assert w.periods_ended == 3 and torch.equal(w.weights, manual.weights)


def test_paper_four_periods_per_epoch():
    # last step of period q of an epoch with I steps is ceil(q*I/4) - 1
    assert period_end_steps(10) == (2, 4, 7, 9)
    assert period_end_steps(8) == (1, 3, 5, 7)
    assert period_end_steps(2) == (0, 1)
    assert MultiLossRebalancer.period_end_steps(5, 2) == (2, 4)
    seen = []
    w = MultiLossRebalancer(N, lam=lambda e: seen.append(e) or 1.0, steps_per_epoch=10)
    for x in _losses(25):
        w(x)
    assert w.periods_ended == 4 + 4 + 2  # steps 20..24 (epoch 2) pass its ends at steps 2 and 4
    assert seen == [0, 0, 0, 1, 1, 1, 1, 2, 2]  # the first period initializes: no lambda
    assert w._epoch == 2 and w._step_in_epoch == 5


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_resumes_bit_for_bit_mid_period(kind):
    data = _losses(17)
    mode = {"steps_per_epoch": 8}  # automatic period ends, the resume lands mid-period
    a = _make(kind, **mode)
    for x in data[:9]:
        a(x)
    if kind == "uncertainty":
        with torch.no_grad():
            a.log_var.add_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    assert a._count > 0  # really in the middle of a period
    state = copy.deepcopy(a.state_dict())
    b = _make(kind, **mode)
    b.load_state_dict(state)
    totals_a = [a(x) for x in data[9:]]
    totals_b = [b(x) for x in data[9:]]
    for ta, tb in zip(totals_a, totals_b):
        assert torch.equal(ta, tb)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.periods_ended == b.periods_ended >= 2
    assert torch.equal(a.weights, b.weights)


def test_state_dict_holds_counters_and_lambda_position():
    w = MultiLossRebalancer(N)
    for e in range(2):
        for x in _losses(3, seed=e):
            w(x)
        w.end_period(epoch=e + 3)
    w(_losses(1)[0])
    sd = w.state_dict()
    assert int(sd["period"]) == 2 and int(sd["epoch"]) == 4 and int(sd["period_count"]) == 1
    assert int(sd["steps"]) == 7
    assert {"weights", "last_mean", "period_sum", "initialized", "init_scale", "enabled"} <= sd.keys()


def test_contributions_and_log_dict():
    names = ["D@0", "M@0", "r@0", "c@0"]
    w = MultiLossRebalancer(N, names=names)
    data = _losses(4)
    for x in data:
        w(x)
    running = torch.stack([x.mean(0) for x in data]).double().mean(0)
    torch.testing.assert_close(w.contributions, w.weights * running, rtol=1e-6, atol=0)
    w.end_period()
    log = w.log_dict(prefix="train/")
    assert set(log) == {f"train/weight/{n}" for n in names} | {f"train/contribution/{n}" for n in names}
    c = [log[f"train/contribution/{n}"] for n in names]
    assert max(c) == pytest.approx(min(c))  # initialization equalised the contributions
    assert all(isinstance(v, float) for v in log.values())
    with pytest.raises(ValueError, match="names"):
        MultiLossRebalancer(N, names=["a", "b"])


def test_empty_period_warns_and_changes_nothing():
    w = MultiLossRebalancer(N)
    with pytest.warns(UserWarning, match="empty period"):
        assert w.end_period() is False
    assert w.periods_ended == 0


def test_fixed_weights_and_disabled_losses():
    w = FixedWeights(N, enabled=[True, False, True, True])
    assert torch.allclose(w.weights, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=torch.float64))
    x = torch.tensor([[1.0, float("inf"), 2.0, 3.0]])
    assert w(x).item() == pytest.approx(2.0)
    w.end_period()
    assert torch.equal(w.weights, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="weights"):
        FixedWeights(N, [1.0, 2.0])
