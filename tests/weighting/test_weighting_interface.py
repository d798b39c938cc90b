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


def _state(w):
    return {k: v.clone() for k, v in w.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_step_raises_at_once_and_leaves_the_weighter_unchanged(kind):
    data = _losses(8)
    w, clean = _make(kind, steps_per_epoch=8), _make(kind, steps_per_epoch=8)
    for x in data[:5]:  # into the third period (ends after steps 1, 3, 5, 7)
        w(x)
        clean(x)
    before = _state(w)
    bad = data[5].clone()
    bad[1, 2] = float("nan")
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"step 5.*\['loss0', 'loss2'\].*unchanged"):
        w(bad)
    after = _state(w)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The caller skipped the batch; training goes on exactly as without it (skip_step keeps
    # the automatic period ends where they were).
    w.skip_step()
    clean.skip_step()
    for x in data[6:]:
        w(x)
        clean(x)
    assert w.periods_ended == 4 and w._epoch == 1 and torch.isfinite(w.weights).all()
    assert torch.equal(w.weights, clean.weights) and torch.equal(w.last_mean, clean.last_mean)


@pytest.mark.parametrize("kind", ["rebalance", "amlr"])
def test_deferred_check_raises_at_the_period_end_and_recovers(kind):
    data = _losses(6)
    w = _make(kind, finite_check="period")
    for x in data[:2]:
        w(x)
    w.end_period()
    weights = w.weights.clone()
    bad = data[2].clone()
    bad[0, 3] = float("nan")
    w(bad)  # no check, no sync at the step
    w(data[3])
    with pytest.raises(FloatingPointError, match=r"\['loss3'\].*discarded"):
        w.end_period()
    assert torch.equal(w.weights, weights) and w.periods_ended == 1 and w._count == 0
    for x in data[4:]:
        w(x)
    assert w.end_period() and torch.isfinite(w.weights).all() and w.periods_ended == 2
    with pytest.raises(ValueError, match="finite_check"):
        _make(kind, finite_check="never")


def test_period_means_are_means_over_samples():
    g = torch.Generator().manual_seed(3)
    steps = [torch.rand(4, N, generator=g), torch.rand(4, N, generator=g), torch.rand(1, N, generator=g)]
    single = torch.rand(N, generator=g)  # (n,) counts as one sample
    w = MultiLossRebalancer(N)
    for x in steps:
        w(x)
    w(single)
    samples = torch.cat(steps + [single[None]]).double()
    torch.testing.assert_close(w.period_means(), samples.mean(0), rtol=1e-12, atol=0)
    w.end_period()
    torch.testing.assert_close(w.last_mean, samples.mean(0), rtol=1e-12, atol=0)
    # A state from before sample counts (one batch mean per step) still loads and resumes.
    old = MultiLossRebalancer(N)
    for x in steps[:2]:
        old(x)
    sd = old.state_dict()
    sd["period_sum"] = torch.stack([x.double().mean(0) for x in steps[:2]]).sum(0)
    del sd["period_samples"]
    new = MultiLossRebalancer(N)
    new.load_state_dict(sd)
    torch.testing.assert_close(new.period_means(), old.period_means(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_with_nan_or_negative_counts_is_refused(kind):
    w = _make(kind)
    w(_losses(1)[0])
    good = _state(w)
    for key, value in (("period_sum", float("nan")), ("last_mean", float("inf")), ("period_count", -1)):
        sd = dict(good)
        sd[key] = sd[key].clone().fill_(value)
        with pytest.raises(ValueError, match=key):
            _make(kind).load_state_dict(sd)
    sd = dict(good)
    sd["enabled"] = torch.zeros(N, dtype=torch.bool)
    with pytest.raises(ValueError, match="enables no loss"):
        _make(kind).load_state_dict(sd)
    fresh = _make(kind)
    fresh.load_state_dict(good)  # the good one loads
    assert fresh._count == 1


@pytest.mark.parametrize("kind", ["rebalance", "uncertainty"])
def test_float16_losses_with_large_weights_give_a_finite_total(kind):
    if kind == "rebalance":
        w = MultiLossRebalancer(2, max_ratio=None)
        w(torch.tensor([1e-6, 1.0], dtype=torch.float64))
        w.end_period()
        assert w.weights[0] > 65504  # above float16's largest number
    else:
        w = UncertaintyWeighting(2, init=[-12.0, 0.0])  # exp(12) = 1.6e5
    x = torch.tensor([[1e-4, 1.0]], dtype=torch.float16)
    total = w(x)
    assert total.dtype == torch.float16 and torch.isfinite(total)


def test_bad_arguments_name_themselves():
    for kw, match in ((dict(steps_per_period=2.5), "steps_per_period"), (dict(steps_per_epoch="x"), "steps_per_epoch"),
                      (dict(periods_per_epoch=0), "periods_per_epoch"), (dict(lam="fast"), "lam"),
                      (dict(max_ratio="big"), "max_ratio"), (dict(init_scale=0.0), "init_scale"),
                      (dict(init_scale="x"), "init_scale"), (dict(clip=(0.5,)), "clip")):
        with pytest.raises(ValueError, match=match):
            MultiLossRebalancer(N, **kw)
    for kw, match in ((dict(lam="x"), "lam"), (dict(eps=float("nan")), "eps"), (dict(betas=0.9), "betas"),
                      (dict(init_ratio=[0.0, 0.0]), "init_ratio")):
        with pytest.raises(ValueError, match=match):
            AMLRRebalancer(2, **kw)
    with pytest.raises(ValueError, match=">= 0"):
        FixedWeights(N, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="every enabled"):
        FixedWeights(N, [0.0, 1.0, 0.0, 0.0], enabled=[True, False, True, True])
    assert MultiLossRebalancer(N, steps_per_period=2.0).steps_per_period == 2
    import numpy as np  # n as numpy (or torch) gives it, e.g. len of an array's row
    for cls in (FixedWeights, MultiLossRebalancer, AMLRRebalancer, UncertaintyWeighting):
        assert cls(np.int64(3)).n == 3 and type(cls(np.int64(3)).n) is int
    for bad in (2.0, True, 0, "3"):
        with pytest.raises(ValueError, match="n .the number of losses. must be a positive int"):
            FixedWeights(bad)
