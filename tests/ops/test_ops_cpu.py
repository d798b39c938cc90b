"""The fused C++/OpenMP backend ("cpu") against mlrb.reference, forward and backward."""
from __future__ import annotations

import pytest
import torch

import mlrb
from mlrb.names import ALL_NAMES, INDEX, resolve_select
from ops_cases import (DEPTH_SCALES, assert_close_at_depth_scale, assert_close_to_reference, make_inputs,
                        reference_value_and_grad)

cpu = pytest.importorskip("mlrb.ops.cpu")
if cpu.unavailable_reason(torch.device("cpu")) is not None:
    pytest.skip(cpu.unavailable_reason(torch.device("cpu")), allow_module_level=True)

EVERY = list(ALL_NAMES)  # the 78 losses and the AMLR pair
# (B, H, W): generic; not multiples of 32 with 1x1 fallback levels (H, W < 32); tiny.
SHAPES = [(2, 40, 56), (1, 19, 27), (2, 33, 70), (1, 5, 3)]


def _losses(pred, gt, mask=None, select=None, **kw):
    return mlrb.fused_loss_space(pred, gt, mask, select=select, backend="cpu", **kw)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mask", [None, "holes", "sparse"])
def test_every_loss_float64_matches_reference(shape, mask):
    pred, gt, m = make_inputs(*shape, dtype=torch.float64, mask=mask)
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 40, 56), (1, 19, 27), (2, 67, 95)])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_every_loss_float32_matches_reference(shape, mask):
    pred, gt, m = make_inputs(*shape, dtype=torch.float32, mask=mask)
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=2e-5, atol=2e-6)


def test_all_true_mask_is_the_unmasked_result():
    pred, gt, _ = make_inputs(2, 36, 44, dtype=torch.float64)
    full = torch.ones_like(pred, dtype=torch.bool)
    torch.testing.assert_close(_losses(pred, gt, full, EVERY), _losses(pred, gt, None, EVERY), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("params", [dict(si_lambda=0.85, si_sqrt=True, si_scale=10.0), dict(si_lambda=0.0)])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_amlr_options(params, mask):
    pred, gt, m = make_inputs(2, 24, 30, dtype=torch.float64, mask=mask)
    gt[0, 0, :3, :5] = 0.0  # missing depth (gt <= 0) is invalid for the AMLR pair
    assert_close_to_reference("cpu", pred, gt, m, "AMLR", rtol=1e-10, atol=1e-12, **params)


@pytest.mark.parametrize("select", ["AMLR", "Si", "Gr", "D@0", "M65@3", "Nc@5", "rc@1", "L^3 | L^4 | L^5",
                                    "L_M", "L_N", ["Nr@2", "D@0", "Gr", "M@4"], "L_D | L_G"])
def test_subsets(select):
    pred, gt, m = make_inputs(2, 37, 45, dtype=torch.float64, mask="holes")
    assert_close_to_reference("cpu", pred, gt, m, select, rtol=1e-10, atol=1e-12)
    out = _losses(pred, gt, m, select)
    assert out.shape == (2, len(resolve_select(select)))


def test_sparse_kitti_like_mask():
    pred, gt, m = make_inputs(2, 88, 152, dtype=torch.float64, mask="sparse")
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)


def test_empty_mask_gives_zero_and_no_gradient():
    pred, gt, m = make_inputs(2, 20, 28, dtype=torch.float32, mask="empty")
    p = pred.clone().requires_grad_(True)
    out = _losses(p, gt, m, EVERY)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_values_at_invalid_pixels_are_never_read():
    pred, gt, m = make_inputs(2, 30, 41, dtype=torch.float64, mask="holes")
    p2, g2 = pred.clone(), gt.clone()
    p2[~m], g2[~m] = float("nan"), float("inf")
    ref = _losses(pred, gt, m, EVERY)
    p2.requires_grad_(True)
    out = _losses(p2, g2, m, EVERY, check_finite=True)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert torch.isfinite(p2.grad).all() and (p2.grad[~m] == 0).all()


@pytest.mark.parametrize("mask", [False, True])
def test_gradcheck_float64(mask):
    pred, gt, m = make_inputs(1, 9, 11, dtype=torch.float64, mask="holes" if mask else None, seed=3)
    idx = list(range(len(ALL_NAMES)))

    def f(p):
        return cpu.loss_space(p, gt, m, idx, 0.85, True, 10.0)

    assert torch.autograd.gradcheck(f, (pred.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_opcheck():
    pred, gt, m = make_inputs(2, 12, 17, dtype=torch.float32, mask="holes")
    idx = list(resolve_select("L^0 | L^5 | AMLR"))
    for mask in (None, m):
        args = (pred.clone().requires_grad_(True), gt, mask, idx, 1.0, False, 1.0)
        torch.library.opcheck(torch.ops.mlrb.loss_space_cpu_fwd.default, args)
        G = torch.rand(2, len(idx))
        torch.library.opcheck(torch.ops.mlrb.loss_space_cpu_bwd.default, (G, pred, gt, mask, idx, 1.0, False, 1.0))


def test_batch_one_and_three_dim_inputs():
    pred, gt, m = make_inputs(1, 26, 35, dtype=torch.float64, mask="holes")
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)
    out3 = _losses(pred[:, 0], gt[:, 0], m[:, 0], EVERY)
    assert torch.equal(out3, _losses(pred, gt, m, EVERY))


def test_non_contiguous_and_channels_last_inputs():
    pred, gt, m = make_inputs(2, 30, 40, dtype=torch.float64, mask="holes")
    ref, gref = reference_value_and_grad(pred, gt, m, EVERY)
    # A transposed view (non-contiguous) and channels-last storage of the same maps.
    pt = pred.transpose(-1, -2).contiguous().transpose(-1, -2)
    gt_t = gt.transpose(-1, -2).contiguous().transpose(-1, -2)
    m_t = m.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not pt.is_contiguous()
    pcl = torch.empty(2, 3, 30, 40, dtype=torch.float64).to(memory_format=torch.channels_last)[:, :1].copy_(pred)
    assert not pcl.is_contiguous()
    for p, g, mm in ((pt, gt_t, m_t), (pcl, gt.contiguous(memory_format=torch.channels_last), m)):
        p = p.detach().requires_grad_(True)
        out = _losses(p, g, mm, EVERY)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        out.sum().backward()
        torch.testing.assert_close(p.grad, gref, rtol=1e-10, atol=1e-12)
        assert p.grad.shape == p.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    pred, gt, m = make_inputs(2, 32, 44, dtype=dtype, mask="holes")
    p = pred.clone().requires_grad_(True)
    out = _losses(p, gt, m, EVERY)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert p.grad.dtype == dtype
    # Same as the float32 computation on the upcast values.
    p32 = pred.float().requires_grad_(True)
    ref = _losses(p32, gt.float(), m, EVERY)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(p.grad, p32.grad.to(dtype), rtol=0, atol=0)


def _assert_bitwise_across_threads(pred, gt, m, **kw):
    """Losses and grad_pred identical for 1 thread, 2 threads and a repeated call."""
    G = torch.rand(pred.shape[0], len(EVERY), dtype=torch.float64).to(pred.dtype)

    def run():
        p = pred.clone().requires_grad_(True)
        out = _losses(p, gt, m, EVERY, **kw)
        (out * G).sum().backward()
        return out.detach(), p.grad

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two, again = run(), run()
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b) and torch.equal(b, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_bitwise_deterministic_repeated_and_across_threads(dtype, mask):
    _assert_bitwise_across_threads(*make_inputs(3, 70, 90, dtype=dtype, mask=mask), si_sqrt=True)


# Rows are split into fixed bands of 64 (csrc kBandRows): several bands, a last band of
# one row, halos of the 65x65 box crossing band borders, a tall thin map.
@pytest.mark.parametrize("shape", [(1, 150, 20), (1, 129, 12), (2, 200, 9)])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_row_bands_match_reference_float64(shape, mask):
    pred, gt, m = make_inputs(*shape, dtype=torch.float64, mask=mask)
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask", [None, "sparse"])
def test_batch_one_bitwise_identical_across_threads(mask):
    """B = 1 runs its row bands on all threads; the bits must not depend on how many."""
    pred, gt, m = make_inputs(1, 230, 75, dtype=torch.float32, mask=mask)
    _assert_bitwise_across_threads(pred, gt, m)


def test_saves_only_the_inputs_for_backward():
    pred, gt, m = make_inputs(2, 48, 64, dtype=torch.float32, mask="holes")
    saved = []

    def pack(t):
        saved.append(t)
        return t

    p = pred.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = _losses(p, gt, m, EVERY)
    budget = sum(t.numel() * t.element_size() for t in (pred, gt, m))
    assert sum(t.numel() * t.element_size() for t in saved) <= budget
    out.sum().backward()


def test_auto_picks_cpu_backend():
    pred, gt, m = make_inputs(2, 20, 24, dtype=torch.float64, mask="holes")
    assert mlrb.loss_space.available_backends("cpu")[0] == "cpu"
    assert torch.equal(mlrb.fused_loss_space(pred, gt, m, backend="auto"), _losses(pred, gt, m))
    assert cpu.unavailable_reason(torch.device("meta")) is not None


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    pred, gt, m = make_inputs(2, 24, 36, dtype=torch.float32, mask="holes")
    idx = list(resolve_select(["D@0", "M17@1", "N@0", "Nc@2", "Si", "Gr"]))

    def step(p, g, mask):
        out = cpu.loss_space(p, g, mask, idx, 0.85, True, 10.0)
        return out, (out * torch.arange(1.0, 7.0)).sum()

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    p1 = pred.clone().requires_grad_(True)
    out1, loss1 = compiled(p1, gt, m)
    loss1.backward()
    p2 = pred.clone().requires_grad_(True)
    out2, loss2 = step(p2, gt, m)
    loss2.backward()
    assert torch.equal(out1, out2)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-6, atol=1e-9)


def test_fused_loss_space_under_torch_compile_fullgraph():
    pred, gt, m = make_inputs(2, 24, 36, dtype=torch.float32, mask="holes")
    compiled = torch.compile(lambda p, g, mask: _losses(p, g, mask, "L^0 | AMLR").sum(), fullgraph=True,
                             backend="aot_eager")
    p = pred.clone().requires_grad_(True)
    compiled(p, gt, m).backward()
    q = pred.clone().requires_grad_(True)
    _losses(q, gt, m, "L^0 | AMLR").sum().backward()
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", DEPTH_SCALES + (1e18, 1e30))
def test_float32_over_the_depth_range(scale):
    # N, Nr, Nc once overflowed from depths ~1e9 on (squares of gradients): wrong values
    # and NaN gradients. The normal losses alone (their gradients would be invisible next
    # to the others'), then every loss.
    assert_close_at_depth_scale("cpu", scale, "L_N")
    assert_close_at_depth_scale("cpu", scale, "all | AMLR")


def test_float32_normal_losses_with_a_far_region():
    # Rows that read a depth beyond 2^28 take the scaled formula, the others the plain one
    # (the same bits where both apply): a far region (sky at 1e9) next to ordinary depths.
    pred, gt, m = make_inputs(1, 40, 30, dtype=torch.float64, mask="holes")
    pred[:, :, 10:14, 5:20] *= 1e9
    gt[:, :, 12:16, 8:25] *= 1e9
    idx = "L_N"
    L_ref, g_ref = reference_value_and_grad(pred.float(), gt.float(), m, idx)
    p = pred.float().requires_grad_(True)
    L = _losses(p, gt.float(), m, idx)
    L.sum().backward()
    torch.testing.assert_close(L.double(), L_ref, rtol=0, atol=2e-6)
    gmax = g_ref.abs().max()
    torch.testing.assert_close(p.grad.double() / gmax, g_ref / gmax, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("factor", [1e3, 1e6])
def test_float32_scale_invariant_loss_with_pred_off_by_a_factor(factor):
    # mean(d^2) - lambda mean(d)^2 cancels when |mean d| >> std d; the kernels merge
    # per-row variances instead (Chan et al.).
    pred, gt, m = make_inputs(2, 30, 41, dtype=torch.float64, mask="holes")
    for lam, sq in ((1.0, False), (0.85, True)):
        ref = reference_value_and_grad(pred * factor, gt, m, "Si", si_lambda=lam, si_sqrt=sq)[0]
        got = _losses((pred * factor).float(), gt.float(), m, "Si", si_lambda=lam, si_sqrt=sq)
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=0)


def test_float64_normal_losses_at_huge_depths():
    # float64 squares overflow from gradients ~1e154 on; the scaled formula does not. At
    # depths 1e100 and beyond the "+1" of the normals is negligible: the losses are the
    # 2-d angles, the same at 1e100 and 1e200, and the gradients scale as 1 / depth.
    pred, gt, m = make_inputs(1, 12, 16, dtype=torch.float64, mask="holes")
    out = {}
    for s in (1e100, 1e200):
        p = (pred * s).requires_grad_(True)
        L = _losses(p, gt * s, m, "L_N")
        (g,) = torch.autograd.grad(L.sum(), p)
        out[s] = L, g * s
    torch.testing.assert_close(out[1e200][0], out[1e100][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[1e200][1], out[1e100][1], rtol=1e-10, atol=1e-12)


def test_bad_inputs_raise_clear_errors():
    from mlrb import _C

    pred, gt, _ = make_inputs(1, 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="loss index out of range"):
        _C.loss_space_forward(pred[:, 0].numpy(), gt[:, 0].numpy(), None, [80], 1.0, False, 1.0, 1)
    with pytest.raises(ValueError, match="shapes differ"):
        _C.loss_space_forward(pred[:, 0].numpy(), gt[:, 0, :4].numpy().copy(), None, [0], 1.0, False, 1.0, 1)
    assert INDEX["Gr"] == 79  # the kernels' column layout (78 + the AMLR pair)
