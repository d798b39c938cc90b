"""Per-sample loss masks: each loss is averaged over the samples that have it (in the step and
over the period)."""
import pytest
import torch

from mlrb.weighting import AMLRRebalancer, FixedWeights, MultiLossRebalancer, UncertaintyWeighting


def _step(seed=0):
    g = torch.Generator().manual_seed(seed)
    losses = torch.rand(4, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False], [True, True, False], [True, False, True]])
    return losses, mask


def test_total_is_the_mean_over_samples_that_have_each_loss():
    losses, mask = _step()
    w = FixedWeights(3, [1.0, 2.0, 3.0])
    x = losses.clone().requires_grad_(True)
    total = w(x, loss_mask=mask)
    direct = (1.0 * losses[:, 0].mean() + 2.0 * losses[[0, 2], 1].mean() + 3.0 * losses[3, 2])
    assert total.item() == pytest.approx(direct.item(), rel=1e-12)
    total.backward()
    assert x.grad[~mask].abs().sum() == 0
    assert x.grad[1, 0].item() == pytest.approx(1.0 / 4) and x.grad[0, 1].item() == pytest.approx(2.0 / 2)


def test_masked_out_entries_may_be_nan_and_an_all_true_mask_changes_nothing():
    losses, mask = _step()
    bad = losses.clone()
    bad[~mask] = float("nan")
    x = bad.clone().requires_grad_(True)
    total = MultiLossRebalancer(3)(x, loss_mask=mask)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(x.grad).all()
    a, b = FixedWeights(3, [1.0, 2.0, 3.0]), FixedWeights(3, [1.0, 2.0, 3.0])
    assert torch.equal(a(losses), b(losses, loss_mask=torch.ones_like(mask)))
    a.end_period(), b.end_period()
    assert torch.equal(a.last_mean, b.last_mean)


def test_period_mean_counts_only_the_samples_with_the_loss():
    w = FixedWeights(3, 1.0)
    steps = []
    for s in range(4):
        losses, _ = _step(s)
        mask = torch.ones(4, 3, dtype=torch.bool)
        mask[:, 2] = s in (0, 2)  # loss 2 only in steps 0 and 2
        mask[:, 1] = False  # loss 1 never in this period
        w(losses, loss_mask=mask)
        steps.append(losses)
    w.end_period()
    assert w.last_mean[0].item() == pytest.approx(torch.stack([s[:, 0].mean() for s in steps]).mean().item())
    assert w.last_mean[1].item() == 0.0
    assert w.last_mean[2].item() == pytest.approx((steps[0][:, 2].mean() + steps[2][:, 2].mean()).item() / 2)


@pytest.mark.parametrize("kind", ["rebalance", "amlr"])
def test_rebalancers_keep_the_weight_of_a_loss_absent_for_a_period(kind):
    make = {"rebalance": lambda: MultiLossRebalancer(3, lam=1.0),
            "amlr": lambda: AMLRRebalancer(3, lam=0.1)}[kind]
    w = make()
    losses, _ = _step()
    absent = torch.ones(4, 3, dtype=torch.bool)
    absent[:, 2] = False
    w(losses, loss_mask=absent)
    w.end_period()
    assert bool(w.initialized[:2].all()) and not bool(w.initialized[2])
    assert w.weights[2].item() == pytest.approx(1.0 / 3)  # untouched, no inf/NaN
    w(losses, loss_mask=torch.ones_like(absent))
    w.end_period()
    assert bool(w.initialized.all()) and torch.isfinite(w.weights).all()


def test_bad_masks_and_old_states():
    losses, mask = _step()
    w = UncertaintyWeighting(3)
    with pytest.raises(TypeError, match="bool"):
        w(losses, loss_mask=mask.float())
    with pytest.raises(ValueError, match="shape"):
        w(losses, loss_mask=mask[:2])
    with pytest.raises(ValueError, match="shape"):
        w(losses[0], loss_mask=mask[0])
    # A state saved before per-loss sample counts existed (period_sum held one batch mean per
    # step, no period_samples) resumes mid-period with the same period means.
    a = FixedWeights(3, 1.0)
    a(losses)
    a(losses)
    state = a.state_dict()
    del state["period_samples"]
    state["period_sum"] = 2 * losses.mean(0)
    b = FixedWeights(3, 1.0)
    b.load_state_dict(state)
    assert b.period_samples.tolist() == [2.0, 2.0, 2.0]
    a.end_period(), b.end_period()
    assert torch.allclose(a.last_mean, b.last_mean, rtol=1e-14, atol=0)
