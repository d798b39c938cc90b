"""The gradient contract of mlrb.fused_loss_space, the same on every backend: gradients
flow to pred only, gt and mask may come from torch.inference_mode, and second derivatives
come from the reference backend (the fused ones say so)."""
import pytest
import torch

import mlrb
from mlrb import loss_space as ls

SELECT = "D@0, N@1, Nc@0, Gr"
FUSED = [b for b in ("cpu", "triton") if ls._unavailable_reason(b, torch.device("cpu")) is None]
BACKENDS = ["reference"] + FUSED


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 1 + torch.rand(1, 1, 12, 16, generator=g)
    pred = gt + 0.2 * torch.randn(1, 1, 12, 16, generator=g)
    return pred, gt, gt > 1.2


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_flow_to_pred_only(backend):
    pred, gt, mask = inputs()
    p, g = pred.clone().requires_grad_(True), gt.clone().requires_grad_(True)
    out = mlrb.fused_loss_space(p, g, mask, select=SELECT, backend=backend)
    out.sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert g.grad is None
    # gt's own graph is left alone: a loss on gt elsewhere still differentiates.
    (2 * g).sum().backward()
    assert torch.equal(g.grad, torch.full_like(g, 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gt_and_mask_from_inference_mode(backend):
    pred, gt, mask = inputs(1)
    with torch.inference_mode():
        gt_i, mask_i = gt.clone(), mask.clone()
    assert gt_i.is_inference() and mask_i.is_inference()
    grads = []
    for g, m in ((gt, mask), (gt_i, mask_i)):
        p = pred.clone().requires_grad_(True)
        out = mlrb.fused_loss_space(p, g, m, select=SELECT, backend=backend)
        out.sum().backward()
        grads.append((out.detach(), p.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_ops_accept_inference_tensors():
    """The registered ops themselves, not only through fused_loss_space."""
    pred, gt, mask = inputs(2)
    with torch.inference_mode():
        gt_i, mask_i = gt.clone(), mask.clone()
    idx = [0, 10, 79]
    ops = []
    if "cpu" in FUSED:
        ops.append(lambda p, g, m: torch.ops.mlrb.loss_space_cpu_fwd(p, g, m, idx, 1.0, False, 1.0))
    if "triton" in FUSED:
        ops.append(lambda p, g, m: torch.ops.mlrb_triton.loss_space_fwd(p, g, m, idx, 1.0, False, 1.0, True)[0])
    if not ops:
        pytest.skip("no fused backend")
    for op in ops:
        p, q = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
        op(p, gt_i, mask_i).sum().backward()
        op(q, gt, mask).sum().backward()
        assert torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_names_the_reference_backend(backend):
    pred, gt, mask = inputs(3)
    p = pred.clone().requires_grad_(True)
    out = mlrb.fused_loss_space(p, gt, mask, select=SELECT, backend=backend)
    (g,) = torch.autograd.grad(out.sum(), p, create_graph=True)  # first order: fine
    q = pred.clone().requires_grad_(True)
    mlrb.fused_loss_space(q, gt, mask, select=SELECT, backend=backend).sum().backward()
    assert torch.equal(g.detach(), q.grad)
    with pytest.raises(RuntimeError, match="backend='reference'"):
        (g * g).sum().backward()


def test_reference_backend_has_second_derivatives():
    pred, gt, mask = inputs(4)
    p = pred[..., :4, :5].double().requires_grad_(True)
    f = lambda x: mlrb.fused_loss_space(x, gt[..., :4, :5].double(), mask[..., :4, :5],  # noqa: E731
                                        select="N@0, Si", backend="reference")
    assert torch.autograd.gradgradcheck(f, (p,), eps=1e-6, atol=1e-5, rtol=1e-4)
