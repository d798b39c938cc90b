"""Inputs, backend availability and reference checks shared by the tests of the backends.

Test files in this folder import it as ``from ops_cases import ...`` (pytest puts the
folder of a test file without __init__.py on sys.path).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import mlrb
from mlrb import reference
from mlrb.names import resolve_select


# The fused backends, and the variable that opts a platform out of each (the tests of a
# backend fail when it cannot run, so that a broken build cannot leave CI green).
OPT_OUT = {"cpu": "MLRB_NO_CPU_EXT", "triton": "MLRB_NO_TRITON"}


def opted_out(backend: str) -> str | None:
    """Why the tests of ``backend`` are skipped on this platform, or None (they must run)."""
    if backend in OPT_OUT and os.environ.get(OPT_OUT[backend]) == "1":
        return f"{OPT_OUT[backend]}=1: no {backend} backend wanted"
    if backend == "triton" and not sys.platform.startswith("linux"):
        return "triton is a dependency on Linux only"
    return None


def device_of(backend: str) -> torch.device:
    """Where a backend's tests run: the Triton kernels on the GPU if there is one, else on CPU
    tensors under the interpreter (tests/conftest.py); the others on CPU."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


def require_backend(backend: str) -> None:
    """Skip if the platform opted out of ``backend``; FAIL if it cannot run otherwise."""
    reason = opted_out(backend)
    if reason is not None:
        pytest.skip(reason)
    if backend == "reference":
        return
    from mlrb import loss_space

    reason = loss_space._unavailable_reason(backend, device_of(backend))
    if reason is not None:
        pytest.fail(f"backend {backend!r} cannot run: {reason} (set {OPT_OUT[backend]}=1 on a platform "
                    "without it)", pytrace=False)


def make_inputs(B=2, H=40, W=56, *, dtype=torch.float32, mask=None, seed=0, device="cpu"):
    """Smooth-ish positive depth pair plus an optional mask.

    mask: None, "holes" (random 30% invalid plus an invalid block), "sparse" (KITTI-like,
    ~5% valid), "empty" (all False), "full" (all True).
    """
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(B, 1, H, W, generator=gen, dtype=torch.float64)
    gt = 1.0 + 4.0 * torch.nn.functional.avg_pool2d(base, 3, 1, 1, count_include_pad=False)
    pred = gt + 0.3 * torch.randn(B, 1, H, W, generator=gen, dtype=torch.float64)
    pred = pred.abs() + 0.05
    m = None
    if mask == "holes":
        m = torch.rand(B, 1, H, W, generator=gen) > 0.3
        m[:, :, H // 4: H // 2, W // 3: W // 2] = False
    elif mask == "sparse":
        m = torch.rand(B, 1, H, W, generator=gen) < 0.05
    elif mask == "empty":
        m = torch.zeros(B, 1, H, W, dtype=torch.bool)
    elif mask == "full":
        m = torch.ones(B, 1, H, W, dtype=torch.bool)
    elif mask is not None:
        raise ValueError(mask)
    pred, gt = pred.to(dtype).to(device), gt.to(dtype).to(device)
    return pred, gt, None if m is None else m.to(device)


def reference_value_and_grad(pred, gt, mask, select=None, G=None, **kw):
    """Reference losses and d(sum G * L)/d pred, computed in float64."""
    idx = resolve_select(select)
    p = pred.detach().to(torch.float64).requires_grad_(True)
    L = reference.loss_space(p, gt.to(torch.float64), mask, idx, **kw)
    if G is None:
        G = torch.ones_like(L)
    (grad,) = torch.autograd.grad((L * G.to(L.dtype)).sum(), p)
    return L.detach(), grad


def backend_value_and_grad(backend, pred, gt, mask, select=None, G=None, **kw):
    p = pred.detach().clone().requires_grad_(True)
    L = mlrb.fused_loss_space(p, gt, mask, select=select, backend=backend, **kw)
    if G is None:
        G = torch.ones_like(L)
    (grad,) = torch.autograd.grad((L * G.to(L.dtype)).sum(), p)
    return L.detach(), grad


def assert_close_to_reference(backend, pred, gt, mask=None, select=None, *, rtol, atol, seed=0, **kw):
    """Forward and backward of ``backend`` against the float64 reference, with a random G."""
    n = len(resolve_select(select))
    G = torch.rand(pred.shape[0], n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    L_ref, g_ref = reference_value_and_grad(pred, gt, mask, select, G, **kw)
    L, g = backend_value_and_grad(backend, pred, gt, mask, select, G.to(pred.device), **kw)
    names = mlrb.names.names_of(resolve_select(select))
    L, g = L.cpu().to(torch.float64), g.cpu().to(torch.float64)
    for j, name in enumerate(names):
        torch.testing.assert_close(L[:, j], L_ref[:, j].cpu(), rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"forward {name}: {m}")
    torch.testing.assert_close(g, g_ref.cpu().to(g.dtype), rtol=rtol, atol=atol * max(1.0, g_ref.abs().max().item()),
                               msg=lambda m: f"grad_pred: {m}")


# Depth scales of the float32 range checks: tiny, ordinary, disparity- or millimetre-like by
# mistake, large synthetic scenes, and close to where differences themselves would overflow.
DEPTH_SCALES = (1e-6, 1.0, 1e6, 1e9)


def assert_close_at_depth_scale(backend, scale, select, *, B=1, H=20, W=28, mask="holes", rtol=2e-4, atol=2e-6,
                                device="cpu"):
    """float32 ``backend`` on depths times ``scale`` against the float64 reference of the same
    (rounded) inputs, forward and backward: losses relative to each column's size (the
    normal losses N, Nr, Nc are scale-free, in [0, 2]: absolute), gradients relative to
    the largest one."""
    pred, gt, m = make_inputs(B, H, W, dtype=torch.float64, mask=mask)
    pred, gt = (pred * scale).float(), (gt * scale).float()
    names = mlrb.names.names_of(resolve_select(select))
    G = torch.rand(B, len(names), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    L_ref, g_ref = reference_value_and_grad(pred, gt, m, names, G)
    L, g = backend_value_and_grad(backend, pred.to(device), gt.to(device), None if m is None else m.to(device),
                                  names, G.to(device))
    L, g = L.cpu().double(), g.cpu().double()
    assert torch.isfinite(L).all() and torch.isfinite(g).all(), f"{backend} at depth scale {scale:g}: NaN/Inf"
    norm = torch.tensor([1.0 if n.split("@")[0] in ("N", "Nr", "Nc") else L_ref[:, j].abs().max().item() or 1.0
                         for j, n in enumerate(names)], dtype=torch.float64)
    for j, name in enumerate(names):
        torch.testing.assert_close(L[:, j] / norm[j], L_ref[:, j] / norm[j], rtol=rtol, atol=atol,
                                   msg=lambda msg, name=name: f"{backend}, depth scale {scale:g}, {name}: {msg}")
    gmax = g_ref.abs().max()
    torch.testing.assert_close(g / gmax, g_ref / gmax, rtol=rtol, atol=atol,
                               msg=lambda msg: f"{backend}, depth scale {scale:g}, grad_pred: {msg}")
