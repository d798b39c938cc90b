"""The benchmark baselines (mlrb.baselines) compute the reference's numbers and gradients."""
from __future__ import annotations

import pytest
import torch

from mlrb import baselines, reference
from mlrb.names import ALL_NAMES
from ops_cases import make_inputs

EVERY = list(range(len(ALL_NAMES)))


@pytest.mark.parametrize("formulation", [baselines.paper_loss_space, baselines.torch_loss_space])
@pytest.mark.parametrize("shape", [(2, 40, 56), (1, 19, 27)])
@pytest.mark.parametrize("mask", [None, "holes", "sparse"])
def test_baseline_matches_reference(formulation, shape, mask):
    pred, gt, m = make_inputs(*shape, dtype=torch.float64, mask=mask)
    p = pred.clone().requires_grad_(True)
    ref = reference.loss_space(p, gt, m, EVERY, si_lambda=0.85, si_sqrt=True)
    (g_ref,) = torch.autograd.grad(ref.sum(), p)
    q = pred.clone().requires_grad_(True)
    out = formulation(q, gt, m, EVERY, si_lambda=0.85, si_sqrt=True)
    (g,) = torch.autograd.grad(out.sum(), q)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("formulation", [baselines.paper_loss_space, baselines.torch_loss_space])
def test_baseline_subset_order(formulation):
    pred, gt, _ = make_inputs(2, 24, 30, dtype=torch.float32)
    idx = [40, 0, 79, 12, 65]
    torch.testing.assert_close(formulation(pred, gt, None, idx), reference.loss_space(pred, gt, None, idx),
                               rtol=1e-4, atol=1e-6)


def test_l1_unit():
    pred, gt, _ = make_inputs(2, 8, 9)
    assert torch.equal(baselines.l1_loss(pred, gt), (pred - gt).abs().mean())
