"""The contract every backend of the loss space keeps, one test per clause, run on each backend.

Backends: "cpu" (C++/OpenMP, mlrb/ops/cpu.py), "triton" (mlrb/ops/triton.py; without CUDA on
CPU tensors under the Triton interpreter, set up in tests/conftest.py) and, where a clause
means something for the definition itself, "reference" (mlrb/reference.py). A fused backend
that cannot run makes its tests FAIL (ops_cases.require_backend) unless the platform opts
out (MLRB_NO_CPU_EXT=1, MLRB_NO_TRITON=1; tests/ops/test_ops_available.py).

What differs between backends is in SPECS below: the dtypes each computes natively and the
tolerances. What is specific to one backend (threads and row bands; launches, tiling,
register spills) is in test_ops_cpu.py / test_ops_triton.py.

The interpreter is slow (about 2.5 s per sample for all 80 losses, whatever the map size up
to 64x64), so the cases are small; cases marked HEAVY run for Triton only on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import mlrb
from mlrb import loss_space as ls
from mlrb.names import ALL_NAMES, resolve_select
from ops_cases import (DEPTH_SCALES, assert_close_at_depth_scale, assert_close_to_reference, backend_value_and_grad,
                       device_of, make_inputs, reference_value_and_grad, require_backend)

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
EVERY = list(ALL_NAMES)  # the 78 losses and the AMLR pair
INTERPRETED = not torch.cuda.is_available()  # the Triton kernels run under the interpreter


@dataclass(frozen=True)
class Spec:
    dtypes: tuple  # computed natively; the first is the one the tests use when any will do
    ref: dict  # dtype -> tolerance (rtol, atol) against the float64 reference
    same: tuple  # two calls that differ in bookkeeping only (full mask vs none, subset vs all)
    si_factor: tuple  # float32 Si with pred off by a factor 1e3 / 1e6, against the reference
    batch: int  # samples per call where the clause does not depend on the shape
    half: dict  # dtype -> tolerance of the gradient of float16 / bfloat16 inputs against the
    # backend's float32 gradient on the upcast values, rounded to the dtype


SPECS = {
    "reference": Spec((F64, F32), {}, (0.0, 0.0), (0.0, 0.0), 2, {F16: (0.0, 0.0), BF16: (0.0, 0.0)}),
    "cpu": Spec((F64, F32), {F64: (1e-10, 1e-12), F32: (2e-5, 2e-6)}, (1e-12, 1e-14), (2e-5, 0.0), 2,
                {F16: (0.0, 0.0), BF16: (0.0, 0.0)}),
    # One sample per call under the interpreter (its cost is per sample). The kernels cast
    # the gradient to bfloat16 themselves, and the interpreter's cast does not always round
    # as torch's does (float16 is exact): up to one bfloat16 ulp, 2^-7 relative.
    "triton": Spec((F32,), {F32: (2e-4, 2e-6)}, (1e-6, 1e-7), (2e-5, 1e-7), 1 if INTERPRETED else 2,
                   {F16: (0.0, 0.0), BF16: (2**-7, 0.0)}),
}
FUSED = ("cpu", "triton")
ALL_BACKENDS = ("reference", *FUSED)


def params(backends, cases=(None,), heavy=(), keep=lambda backend, case: True):
    """pytest params (backend, case) for every backend x case that ``keep``s, without the
    HEAVY cases of an interpreted Triton; ids read backend-case."""
    out = []
    for b in backends:
        for c in cases:
            if (b == "triton" and INTERPRETED and c in heavy) or not keep(b, c):
                continue
            out.append(pytest.param(b, c, id=b if c is None else f"{b}-{c}"))
    return out


@pytest.fixture(autouse=True)
def _backend_runs(request):
    """Every test here is parametrized by ``backend``: fail (not skip) when it cannot run."""
    backend = request.node.callspec.params.get("backend") if hasattr(request.node, "callspec") else None
    if backend is not None:
        require_backend(backend)


def inputs(backend, B, H, W, *, dtype=None, mask=None, seed=0):
    """make_inputs on the backend's device, in its first dtype; B None: the backend's batch."""
    return make_inputs(B or SPECS[backend].batch, H, W, dtype=dtype or SPECS[backend].dtypes[0], mask=mask, seed=seed,
                       device=device_of(backend))


def losses(backend, pred, gt, mask=None, select=None, **kw):
    return mlrb.fused_loss_space(pred, gt, mask, select=select, backend=backend, **kw)


def close(a, b, tol, msg=None):
    torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1], msg=msg)


# ----------------------------------------------------------------------------- against the reference
# (B, H, W), mask, dtype: 2x40x56 has all six scales proper; 20x28 and 19x27 make scale 5 the
# 1x1 fallback (even and odd sizes); 5x3 is below every scale; 33x70, 67x95 are not multiples
# of 32; 88x152 sparse is KITTI-like. float64 cases run on the backends computing it.
EVERY_LOSS_CASES = {
    "2x40x56-holes-f32": ((2, 40, 56), "holes", F32),
    "1x40x56-none-f32": ((1, 40, 56), None, F32),
    "1x40x56-sparse-f32": ((1, 40, 56), "sparse", F32),
    "1x20x28-none-f32": ((1, 20, 28), None, F32),
    "1x19x27-holes-f32": ((1, 19, 27), "holes", F32),
    "2x40x56-none-f32": ((2, 40, 56), None, F32),
    "2x40x56-sparse-f32": ((2, 40, 56), "sparse", F32),
    "1x19x27-none-f32": ((1, 19, 27), None, F32),
    "2x67x95-none-f32": ((2, 67, 95), None, F32),
    "2x67x95-holes-f32": ((2, 67, 95), "holes", F32),
    **{f"{B}x{H}x{W}-{m or 'none'}-f64": ((B, H, W), m, F64)
       for B, H, W in ((2, 40, 56), (1, 19, 27), (2, 33, 70), (1, 5, 3)) for m in (None, "holes", "sparse")},
    "2x88x152-sparse-f64": ((2, 88, 152), "sparse", F64),
}
HEAVY_EVERY_LOSS = ("2x40x56-none-f32", "2x40x56-sparse-f32", "1x19x27-none-f32", "2x67x95-none-f32",
                    "2x67x95-holes-f32")


@pytest.mark.parametrize("backend,case", params(FUSED, EVERY_LOSS_CASES, HEAVY_EVERY_LOSS,
                                                 keep=lambda b, c: EVERY_LOSS_CASES[c][2] in SPECS[b].dtypes))
def test_every_loss_matches_reference(backend, case):
    shape, mask, dtype = EVERY_LOSS_CASES[case]
    pred, gt, m = inputs(backend, *shape, dtype=dtype, mask=mask)
    rtol, atol = SPECS[backend].ref[dtype]
    assert_close_to_reference(backend, pred, gt, m, EVERY, rtol=rtol, atol=atol)


SUBSETS = ["AMLR", "Si", "Gr", "D@0", "D0", "M65@3", "Nc@5", "rc@1", "L^3 | L^4 | L^5", "L_M", "L_N",
           ["Nr@2", "D@0", "Gr", "M@4"], "Nc@2, M@0, M17@4, rr@1", "L_D | L_G"]


# Under the interpreter Triton runs a few that cover one type family, one scale set, a union
# of scales, scattered names in any order and the AMLR pair.
HEAVY_SUBSETS = tuple(i for i, sel in enumerate(SUBSETS)
                      if sel not in ("AMLR", "D0", "L^3 | L^4 | L^5", "L_M", "Nc@2, M@0, M17@4, rr@1"))


@pytest.mark.parametrize("backend,select", params(FUSED, range(len(SUBSETS)), HEAVY_SUBSETS))
def test_subsets(backend, select):
    """Any selection, in any order, scattered over scales: the columns are the named losses."""
    select = SUBSETS[select]
    pred, gt, m = inputs(backend, None, 37, 45, mask="holes")
    rtol, atol = SPECS[backend].ref[pred.dtype]
    assert_close_to_reference(backend, pred, gt, m, select, rtol=rtol, atol=atol)
    assert losses(backend, pred, gt, m, select).shape == (pred.shape[0], len(resolve_select(select)))


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_subset_columns_match_full_call(backend, case):
    pred, gt, m = inputs(backend, None, 40, 56, mask="holes")
    full = losses(backend, pred, gt, m, EVERY)
    sel = ["Gr", "cc@3", "D@0", "M65@1"]
    close(losses(backend, pred, gt, m, sel), full[:, [EVERY.index(n) for n in sel]], SPECS[backend].same)


AMLR_OPTIONS = {"bts": dict(si_lambda=0.85, si_sqrt=True, si_scale=10.0), "lambda0": dict(si_lambda=0.0),
                "half": dict(si_lambda=0.5, si_sqrt=False, si_scale=2.0)}
AMLR_CASES = [f"{o}-{m}" for o in AMLR_OPTIONS for m in ("none", "holes")]


@pytest.mark.parametrize("backend,case", params(FUSED, AMLR_CASES, heavy=("bts-none", "lambda0-none", "lambda0-holes",
                                                                            "half-none")))
def test_amlr_options_missing_depth_and_tiny_pred(backend, case):
    # gt <= 0 marks missing depth (invalid for the AMLR pair); pred below LOG_EPS is clamped.
    options, mask = case.split("-")
    mask = None if mask == "none" else mask
    pred, gt, m = inputs(backend, 2, 24, 30, mask=mask)
    gt[0, 0, :3, :5] = 0.0
    gt[1, 0, 10, 10:14] = -1.0
    pred[0, 0, 12:15, 2:6] = 1e-9
    rtol, atol = SPECS[backend].ref[pred.dtype]
    assert_close_to_reference(backend, pred, gt, m, "AMLR", rtol=rtol, atol=atol, **AMLR_OPTIONS[options])
    if options == "bts" and mask == "holes":  # the pair next to other losses of the same pixels
        assert_close_to_reference(backend, pred, gt, m, "Si, Gr, D@0, N@1", rtol=rtol, atol=atol,
                                  **AMLR_OPTIONS[options])


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_empty_mask_gives_zero_and_no_gradient(backend, case):
    pred, gt, m = inputs(backend, None, 20, 28, dtype=F32, mask="empty")
    L, g = backend_value_and_grad(backend, pred, gt, m, EVERY)
    assert torch.equal(L, torch.zeros_like(L)) and torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_all_true_mask_is_the_unmasked_result(backend, case):
    pred, gt, _ = inputs(backend, None, 36, 44)
    full = torch.ones_like(pred, dtype=torch.bool)
    close(losses(backend, pred, gt, full, EVERY), losses(backend, pred, gt, None, EVERY), SPECS[backend].same)


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_values_at_invalid_pixels_are_never_read(backend, case):
    """NaN / Inf at invalid pixels: the same losses and gradients, bit for bit, as clean inputs
    (check_finite=True looks at valid pixels only), and no gradient there."""
    pred, gt, m = inputs(backend, None, 30, 41, mask="holes")
    bad_p, bad_g = pred.clone(), gt.clone()
    bad_p[~m], bad_g[~m] = float("nan"), float("inf")
    L0, g0 = backend_value_and_grad(backend, pred, gt, m, EVERY)
    L1, g1 = backend_value_and_grad(backend, bad_p, bad_g, m, EVERY, check_finite=True)
    assert torch.equal(L0, L1) and torch.equal(g0, g1)
    assert torch.isfinite(g1).all() and (g1[~m] == 0).all()


# ----------------------------------------------------------------------------- input forms
@pytest.mark.parametrize("backend,dtype", params(ALL_BACKENDS, (F16, BF16)))
def test_half_inputs_are_computed_in_float32(backend, dtype):
    """float16 / bfloat16: float32 losses, a gradient in the input dtype, and the numbers of the
    float32 computation on the upcast values: the same losses, the gradient rounded once."""
    pred, gt, m = inputs(backend, None, 32, 44, dtype=dtype, mask="holes")
    L, g = backend_value_and_grad(backend, pred, gt, m, EVERY)
    assert L.dtype == F32 and g.dtype == dtype
    L32, g32 = backend_value_and_grad(backend, pred.float(), gt.float(), m, EVERY)
    assert torch.equal(L, L32)
    close(g, g32.to(dtype), SPECS[backend].half[dtype])


# Every loss type once, at scattered scales, and the AMLR pair (under the interpreter, Triton:
# a point loss, a box, a stencil and the pair; the layout is handled before the kernels).
EVERY_TYPE = "D@0, M@1, M5@1, M17@0, M65@2, r@0, c@3, rr@1, rc@0, cc@2, N@0, Nr@1, Nc@2, Si, Gr"
LAYOUT_SELECT = {b: "D@0, M5@1, rc@0, Gr" if b == "triton" and INTERPRETED else EVERY_TYPE for b in ALL_BACKENDS}


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_non_contiguous_channels_last_and_three_dim_inputs(backend, case):
    """A transposed view, channels-last storage and (B, H, W) maps give the bits of
    contiguous (B, 1, H, W) inputs; the gradient has pred's shape."""
    pred, gt, m = inputs(backend, None, 30, 40, mask="holes")
    sel = LAYOUT_SELECT[backend]
    want = backend_value_and_grad(backend, pred, gt, m, sel)

    def strided(x):
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)

    def channels_last(x):
        return torch.empty(x.shape[0], 3, 30, 40, dtype=x.dtype, device=x.device).to(
            memory_format=torch.channels_last)[:, :1].copy_(x)

    assert not strided(pred).is_contiguous() and not channels_last(pred).is_contiguous()
    for p, g, mm in ((strided(pred), strided(gt), strided(m)), (channels_last(pred), channels_last(gt), m)):
        L, grad = backend_value_and_grad(backend, p, g, mm, sel)
        assert torch.equal(L, want[0]) and torch.equal(grad, want[1]) and grad.shape == p.shape
    L, grad = backend_value_and_grad(backend, pred[:, 0], gt[:, 0], m[:, 0], sel)
    assert torch.equal(L, want[0]) and torch.equal(grad, want[1][:, 0])


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_repeated_calls_are_bitwise_identical(backend, case):
    pred, gt, m = inputs(backend, None, 40, 56, mask="holes")
    a = backend_value_and_grad(backend, pred, gt, m, "L^0, M65@1, Gr")
    b = backend_value_and_grad(backend, pred, gt, m, "L^0, M65@1, Gr")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------- float range
# The selections checked at each depth scale: normal losses alone first (their gradients
# would be invisible next to the others'), then every loss; under the interpreter Triton runs
# one of each normal type only.
DEPTH_RANGE = [(s, sel) for s in DEPTH_SCALES + (1e18, 1e30) for sel in ("N@0, Nr@0, Nc@1", "L_N", "all | AMLR")]
HEAVY_DEPTH = tuple(i for i, (s, sel) in enumerate(DEPTH_RANGE) if sel != "N@0, Nr@0, Nc@1")


@pytest.mark.parametrize("backend,case", params(FUSED, range(len(DEPTH_RANGE)), HEAVY_DEPTH))
def test_float32_over_the_depth_range(backend, case):
    # N, Nr, Nc once overflowed from depths ~1e9 on (squares of gradients): wrong values
    # and NaN gradients.
    scale, select = DEPTH_RANGE[case]
    assert_close_at_depth_scale(backend, scale, select, device=device_of(backend))


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_float32_normal_losses_with_a_far_region(backend, case):
    # A far region (sky at 1e9) next to ordinary depths: on CPU the rows that read a depth
    # beyond 2^28 take the scaled formula, the others the plain one (same bits where both apply).
    pred, gt, m = make_inputs(1, 40, 30, dtype=F64, mask="holes")
    pred[:, :, 10:14, 5:20] *= 1e9
    gt[:, :, 12:16, 8:25] *= 1e9
    L_ref, g_ref = reference_value_and_grad(pred.float(), gt.float(), m, "L_N")
    dev = device_of(backend)
    L, g = backend_value_and_grad(backend, pred.float().to(dev), gt.float().to(dev), m.to(dev), "L_N")
    torch.testing.assert_close(L.cpu().double(), L_ref, rtol=0, atol=2e-6)
    gmax = g_ref.abs().max()
    torch.testing.assert_close(g.cpu().double() / gmax, g_ref / gmax, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("backend,factor", params(FUSED, (1e3, 1e6)))
def test_float32_scale_invariant_loss_with_pred_off_by_a_factor(backend, factor):
    # Si = mean(d^2) - lambda mean(d)^2 cancels in float32 when |mean d| >> std d (pred in
    # millimetres against gt in metres, say); the kernels merge per-row / per-column variances
    # instead (Chan et al.).
    pred, gt, m = make_inputs(SPECS[backend].batch, 19, 28, dtype=F64, mask="holes")
    dev = device_of(backend)
    for lam, sq in ((1.0, False), (0.85, True)):
        ref = reference_value_and_grad(pred * factor, gt, m, "Si", si_lambda=lam, si_sqrt=sq, si_scale=10.0)[0]
        got = losses(backend, (pred * factor).float().to(dev), gt.float().to(dev), m.to(dev), "Si",
                     si_lambda=lam, si_sqrt=sq, si_scale=10.0)
        close(got.cpu().double(), ref, SPECS[backend].si_factor)


FLOAT64 = [b for b in ALL_BACKENDS if F64 in SPECS[b].dtypes]


@pytest.mark.parametrize("backend,case", params(FLOAT64))
def test_float64_normal_losses_at_huge_depths(backend, case):
    # float64 squares overflow from gradients ~1e154 on; the scaled formula does not. At
    # depths 1e100 and beyond the "+1" of the normals is negligible: the losses are the
    # 2-d angles, the same at 1e100 and 1e200, and the gradients scale as 1 / depth.
    pred, gt, m = make_inputs(1, 12, 16, dtype=F64, mask="holes")
    out = {}
    for s in (1e100, 1e200):
        L, g = backend_value_and_grad(backend, pred * s, gt * s, m, "L_N")
        out[s] = L, g * s
    torch.testing.assert_close(out[1e200][0], out[1e100][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[1e200][1], out[1e100][1], rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mask", [None, "holes"])
@pytest.mark.parametrize("backend,case", params([b for b in FUSED if F64 in SPECS[b].dtypes]))
def test_gradcheck_float64(backend, case, mask):
    pred, gt, m = make_inputs(1, 9, 11, dtype=F64, mask=mask, seed=3)
    idx = list(range(len(ALL_NAMES)))
    module = ls._loaded[backend]

    def f(p):
        return module.loss_space(p, gt, m, idx, 0.85, True, 10.0)

    assert torch.autograd.gradcheck(f, (pred.clone().requires_grad_(True),), eps=1e-6, atol=1e-7, rtol=1e-5)


def tiny_inputs(backend, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 1 + torch.rand(1, 1, 12, 16, generator=g)
    pred = gt + 0.2 * torch.randn(1, 1, 12, 16, generator=g)
    dev = device_of(backend)
    return pred.to(dev), gt.to(dev), (gt > 1.2).to(dev)


GRAD_SELECT = "D@0, N@1, Nc@0, Gr"


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_gradients_flow_to_pred_only(backend, case):
    pred, gt, mask = tiny_inputs(backend)
    p, g = pred.clone().requires_grad_(True), gt.clone().requires_grad_(True)
    losses(backend, p, g, mask, GRAD_SELECT).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert g.grad is None
    # gt's own graph is left alone: a loss on gt elsewhere still differentiates.
    (2 * g).sum().backward()
    assert torch.equal(g.grad, torch.full_like(g, 2.0))


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_gt_and_mask_from_inference_mode(backend, case):
    pred, gt, mask = tiny_inputs(backend, 1)
    with torch.inference_mode():
        gt_i, mask_i = gt.clone(), mask.clone()
    assert gt_i.is_inference() and mask_i.is_inference()
    a = backend_value_and_grad(backend, pred, gt, mask, GRAD_SELECT)
    b = backend_value_and_grad(backend, pred, gt_i, mask_i, GRAD_SELECT)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_double_backward_names_the_reference_backend(backend, case):
    pred, gt, mask = tiny_inputs(backend, 3)
    p = pred.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(losses(backend, p, gt, mask, GRAD_SELECT).sum(), p, create_graph=True)
    assert torch.equal(g.detach(), backend_value_and_grad(backend, pred, gt, mask, GRAD_SELECT)[1])  # first order
    with pytest.raises(RuntimeError, match="backend='reference'"):
        (g * g).sum().backward()


def test_reference_backend_has_second_derivatives():
    pred, gt, mask = tiny_inputs("reference", 4)
    p = pred[..., :4, :5].double().requires_grad_(True)
    f = lambda x: losses("reference", x, gt[..., :4, :5].double(), mask[..., :4, :5], "N@0, Si")  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (p,), eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- torch.func
def _flat(*tensors):
    return [t.flatten(0, 1) for t in tensors]


TRANSFORMS = {  # (losses, d(sum G * L)/d pred) of V x B samples (V, B, 1, H, W) under torch.func
    "grad": lambda f, p, g, m, G: (None, torch.func.grad(lambda x: (f(*_flat(x, g, m)) * _flat(G)[0]).sum())(p)),
    "vjp": lambda f, p, g, m, G: (lambda out, pull: (out, pull(_flat(G)[0])[0]))(
        *torch.func.vjp(lambda x: f(*_flat(x, g, m)), p)),
    "vmap": lambda f, p, g, m, G: (torch.func.vmap(f)(p, g, m), None),
    "vmap(grad)": lambda f, p, g, m, G: (None, torch.func.vmap(torch.func.grad(
        lambda x, y, z, w: (f(x, y, z) * w).sum()))(p, g, m, G)),
    "grad(vmap)": lambda f, p, g, m, G: (None, torch.func.grad(lambda x: (torch.func.vmap(f)(x, g, m) * G).sum())(p)),
    "vmap, one gt for all": lambda f, p, g, m, G: (torch.func.vmap(f, in_dims=(0, None, None))(p, g[0], m[0]), None),
}


@pytest.mark.parametrize("backend,transform", params(FUSED, tuple(TRANSFORMS), heavy=("vjp", "vmap", "grad(vmap)", "vmap, one gt for all")))
def test_torch_func_transforms_give_the_eager_bits(backend, transform):
    """grad/vjp/vmap and their compositions (per-sample gradients) run the same kernels as
    eager autograd (a vmapped dimension folds into the batch): the same bits."""
    V, B = (2, 1) if backend == "triton" and INTERPRETED else (3, 2)
    select = GRAD_SELECT if backend == "triton" and INTERPRETED else EVERY
    pred, gt, m = inputs(backend, V * B, 18, 22, mask="holes")
    if transform == "vmap, one gt for all":
        gt, m = gt[:B].repeat(V, 1, 1, 1), m[:B].repeat(V, 1, 1, 1)
    p = pred.clone().requires_grad_(True)
    want = losses(backend, p, gt, m, select)
    G = torch.rand(want.shape, dtype=want.dtype, device=want.device)
    (want * G).sum().backward()

    def f(x, y, z):
        return losses(backend, x, y, z, select, check_finite=False)

    got, grad = TRANSFORMS[transform](f, *(t.view(V, B, *t.shape[1:]) for t in (pred, gt, m)), G.view(V, B, -1))
    assert got is not None or grad is not None
    if got is not None:
        assert torch.equal(got.reshape(want.shape), want.detach())
    if grad is not None:
        assert torch.equal(grad.reshape(p.shape), p.grad)


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_torch_func_second_derivative_is_refused(backend, case):
    pred, gt, mask = tiny_inputs(backend)
    inner = torch.func.grad(lambda x: losses(backend, x, gt, mask, GRAD_SELECT).sum())
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.func.grad(lambda x: inner(x).sum())(pred)


# ----------------------------------------------------------------------------- the registered ops
def ops(backend, pred, gt, mask, idx, options=(1.0, False, 1.0)):
    """(forward, backward) of a backend's registered ops in one form: forward(pred, gt, mask,
    idx, *options) -> losses; backward(grad, pred, gt, mask, idx) -> grad_pred (each reads what
    a forward of pred, gt, mask, idx saved: Triton's workspace, the CPU's scale statistics)."""
    if backend == "cpu":
        _, stats = torch.ops.mlrb.loss_space_cpu_fwd(pred, gt, mask, idx, *options, True)
        return (lambda *a: torch.ops.mlrb.loss_space_cpu_fwd(*a, True)[0],
                lambda G, p, g, m, i, stats=stats: torch.ops.mlrb.loss_space_cpu_bwd(G, p, g, m, i, *options, stats))
    _, stats, ws = torch.ops.mlrb_triton.loss_space_fwd(pred, gt, mask, idx, *options, True)
    return (lambda *a: torch.ops.mlrb_triton.loss_space_fwd(*a, False)[0],
            lambda G, p, g, m, i, ws=ws, stats=stats: torch.ops.mlrb_triton.loss_space_bwd(G, p, m, ws, stats, i,
                                                                                       *options))


def opcheck_calls(backend, pred, gt, mask, idx):
    """(op, args, test_utils) of torch.library.opcheck for a backend's forward and backward."""
    G = torch.rand(pred.shape[0], len(idx), device=pred.device)
    if backend == "cpu":
        _, stats = torch.ops.mlrb.loss_space_cpu_fwd(pred, gt, mask, idx, 1.0, False, 1.0, True)
        # Not test_aot_dispatch_dynamic for the forward that saves: its statistics carry the
        # token of the call (kept_levels.h), which no two calls share.
        saving = ("test_schema", "test_autograd_registration", "test_faketensor")
        return [(torch.ops.mlrb.loss_space_cpu_fwd.default, (pred.clone().requires_grad_(True), gt, mask, idx, 1.0,
                                                             False, 1.0, save), saving if save else None)
                for save in (True, False)] + \
               [(torch.ops.mlrb.loss_space_cpu_bwd.default, (G, pred, gt, mask, idx, 1.0, False, 1.0, st), None)
                for st in (stats, None)]
    _, stats, ws = torch.ops.mlrb_triton.loss_space_fwd(pred, gt, mask, idx, 1.0, False, 1.0, True)
    # Not test_aot_dispatch_dynamic for the forward: it compares the workspace output, scratch
    # memory that is never fully written.
    fwd_utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    return [(torch.ops.mlrb_triton.loss_space_fwd.default,
             (pred.clone().requires_grad_(True), gt, mask, idx, 1.0, False, 1.0, True), fwd_utils),
            (torch.ops.mlrb_triton.loss_space_bwd.default, (G, pred, mask, ws, stats, idx, 1.0, False, 1.0),
             fwd_utils)]


@pytest.mark.parametrize("mask", [None, "holes"])
@pytest.mark.parametrize("backend,case", params(FUSED))
def test_opcheck(backend, case, mask):
    pred, gt, m = inputs(backend, None, 12, 17, dtype=F32, mask=mask)
    idx = list(resolve_select("D@0, M5@1, N@5, Gr" if INTERPRETED and backend == "triton" else "L^0 | L^5 | AMLR"))
    for op, args, utils in opcheck_calls(backend, pred, gt, m, idx):
        kw = {} if utils is None else dict(test_utils=utils)
        torch.library.opcheck(op, args, **kw)


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_ops_accept_inference_tensors_and_any_strides(backend, case):
    """The ops themselves (not only fused_loss_space): gt and mask from inference mode, and
    non-contiguous inputs, which they copy for the kernels."""
    pred, gt, m = inputs(backend, 2, 12, 14, dtype=F32, mask="holes")
    idx = [0, 10, 79]
    fwd, bwd = ops(backend, pred, gt, m, idx)
    with torch.inference_mode():
        gt_i, m_i = gt.clone(), m.clone()
    p, q = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    fwd(p, gt_i, m_i, idx, 1.0, False, 1.0).sum().backward()
    fwd(q, gt, m, idx, 1.0, False, 1.0).sum().backward()
    assert torch.equal(p.grad, q.grad)

    def strided(x):
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)

    assert not strided(pred).is_contiguous()
    want = fwd(pred, gt, m, idx, 1.0, False, 1.0)
    assert torch.equal(fwd(strided(pred), strided(gt), strided(m), idx, 1.0, False, 1.0), want)
    G = torch.rand(2, 3, device=pred.device)
    assert torch.equal(bwd(G.t().contiguous().t(), strided(pred), strided(gt), strided(m), idx),
                       bwd(G, pred, gt, m, idx))


def bad_op_calls(backend):
    """(name, call, exception, match): what the ops of a backend must refuse, and how."""
    pred, gt, m = inputs(backend, 2, 12, 14, dtype=F32, mask="holes")
    idx = [0, 10, 79]
    G = torch.ones(2, 3, device=pred.device)
    fwd, bwd = ops(backend, pred, gt, m, idx)
    cases = [
        ("empty batch", lambda: fwd(pred[:0], gt[:0], None, idx, 1.0, False, 1.0), ValueError, "empty"),
        ("3-d pred", lambda: fwd(pred[:, 0], gt[:, 0], None, idx, 1.0, False, 1.0), ValueError, r"\(B, 1, H, W\)"),
        ("2 channels", lambda: fwd(pred.expand(2, 2, 12, 14), gt.expand(2, 2, 12, 14), None, idx, 1.0, False, 1.0),
         ValueError, r"\(B, 1, H, W\)"),
        ("shapes differ", lambda: fwd(pred, gt[..., :7], None, idx, 1.0, False, 1.0), ValueError, "shapes differ"),
        ("int pred", lambda: fwd(pred.int(), gt.int(), None, idx, 1.0, False, 1.0), TypeError, "pred must be one of"),
        ("float mask", lambda: fwd(pred, gt, m.float(), idx, 1.0, False, 1.0), TypeError, "mask must be"),
        ("mask shape", lambda: fwd(pred, gt, m[..., :7], idx, 1.0, False, 1.0), ValueError, "mask shape"),
        ("mask device", lambda: fwd(pred, gt, m.to("meta"), idx, 1.0, False, 1.0), ValueError, "mask is on meta"),
        ("no indices", lambda: fwd(pred, gt, m, [], 1.0, False, 1.0), ValueError, "indices is empty"),
        ("index 80", lambda: fwd(pred, gt, m, [80], 1.0, False, 1.0), ValueError, "out of range: 80"),
        ("index -1", lambda: fwd(pred, gt, m, [-1], 1.0, False, 1.0), ValueError, "out of range: -1"),
        ("duplicate index", lambda: fwd(pred, gt, m, [0, 0], 1.0, False, 1.0), ValueError, "distinct"),
        ("nan lambda", lambda: fwd(pred, gt, m, idx, float("nan"), False, 1.0), ValueError, "si_lambda"),
        ("inf scale", lambda: fwd(pred, gt, m, idx, 1.0, False, float("inf")), ValueError, "si_scale"),
        ("grad shape", lambda: bwd(G[:, :2], pred, gt, m, idx), ValueError, r"grad must be \(B, len"),
        ("int grad", lambda: bwd(G.int(), pred, gt, m, idx), TypeError, "grad must be a floating"),
        ("grad, empty batch", lambda: bwd(G[:0], pred[:0], gt[:0], m[:0], idx), ValueError, "empty"),
    ]
    if backend == "cpu":
        cases += [
            ("mixed dtypes", lambda: fwd(pred, gt.double(), None, [0], 1.0, False, 1.0), TypeError, "dtypes differ"),
            ("half", lambda: fwd(pred.half(), gt.half(), None, [0], 1.0, False, 1.0), TypeError,
             "float32, torch.float64"),
        ]
    else:
        _, stats, ws = torch.ops.mlrb_triton.loss_space_fwd(pred, gt, m, idx, 1.0, False, 1.0, True)

        def bwd_with(ws, stats):
            return lambda: torch.ops.mlrb_triton.loss_space_bwd(G, pred, m, ws, stats, idx, 1.0, False, 1.0)

        cases += [
            ("float64", lambda: fwd(pred.double(), gt.double(), None, idx, 1.0, False, 1.0), TypeError, "float16"),
            ("short workspace", bwd_with(ws[:10], stats), ValueError, "ws must be"),
            ("float64 stats", bwd_with(ws, stats.double()), ValueError, "stats must be"),
        ]
    return cases


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_ops_name_bad_input(backend, case):
    for name, call, exc, match in bad_op_calls(backend):
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("backend,case", params(ALL_BACKENDS))
def test_every_layer_refuses_the_same_input(backend, case):
    """An empty batch and non-finite AMLR options: the same ValueError from fused_loss_space
    on every backend as from the ops and mlrb._C."""
    pred, gt, m = inputs(backend, 1, 8, 9, dtype=F32)
    with pytest.raises(ValueError, match="empty"):
        losses(backend, pred[:0], gt[:0], m)
    for bad in (dict(si_lambda=float("nan")), dict(si_scale=float("inf"))):
        with pytest.raises(ValueError, match="must be finite"):
            losses(backend, pred, gt, select="Si", **bad)


# ----------------------------------------------------------------------------- torch.compile, auto
# (compiler, dynamic shapes): aot_eager exercises dynamo and the fake and autograd registrations
# without code generation; dynamic=True makes the fake implementations cope with symbolic sizes.
COMPILE = {"aot_eager": ("aot_eager", False), "inductor": ("inductor", False), "aot_eager-dynamic": ("aot_eager", True)}


@pytest.mark.parametrize("backend,how", params(FUSED, COMPILE, heavy=("aot_eager", "inductor")))
def test_torch_compile_fullgraph(backend, how):
    compiler, dynamic = COMPILE[how]
    pred, gt, m = inputs(backend, None, 20, 28, dtype=F32, mask="holes")
    idx = list(resolve_select(["D@0", "M17@1", "N@0", "Nc@2", "Si", "Gr"]))
    module = ls._loaded[backend]
    weights = torch.arange(1.0, 7.0, device=pred.device)

    def step(p, g, mask):
        out = module.loss_space(p, g, mask, idx, 0.85, True, 10.0)
        return out, (out * weights).sum()

    compiled = torch.compile(step, fullgraph=True, backend=compiler, dynamic=dynamic)
    p1, p2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    out1, loss1 = compiled(p1, gt, m)
    loss1.backward()
    out2, loss2 = step(p2, gt, m)
    loss2.backward()
    assert torch.equal(out1, out2)
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("backend,case", params(FUSED))
def test_fused_loss_space_under_torch_compile_fullgraph(backend, case, dynamic):
    """The public entry point itself (dispatch and argument checks included) compiles without
    graph breaks, with dynamic shapes too (the AMLR options are then symbolic)."""
    pred, gt, m = inputs(backend, None, 20, 28, dtype=F32, mask="holes")
    compiled = torch.compile(lambda p, g, mask: losses(backend, p, g, mask, "L^0 | AMLR").sum(), fullgraph=True,
                             backend="aot_eager", dynamic=dynamic)
    p, q = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    compiled(p, gt, m).backward()
    losses(backend, q, gt, m, "L^0 | AMLR").sum().backward()
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend,case", params(FUSED))
def test_auto_choice(backend, case):
    """"auto" picks the fused backend of the tensors' device (cpu on CPU, triton on CUDA; never
    the Triton interpreter), an explicit backend runs where it can, and none claims a meta device."""
    dev = device_of(backend)
    assert ls._pick_backend(backend, dev) == backend
    if backend == "triton" and dev.type == "cpu":
        assert ls._pick_backend("auto", dev) in ("cpu", "reference")
    else:
        assert ls._pick_backend("auto", dev) == backend
        assert ls.available_backends(dev)[0] == backend
        pred, gt, m = inputs(backend, None, 20, 24, mask="holes")
        assert torch.equal(losses("auto", pred, gt, m), losses(backend, pred, gt, m))
    assert ls._loaded[backend].unavailable_reason(torch.device("meta")) is not None
