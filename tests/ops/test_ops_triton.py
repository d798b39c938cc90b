"""The Triton backend against mlrb.reference.

Without CUDA these run on CPU tensors under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with CUDA they run natively on the GPU.
The interpreter is slow, so each call checks many losses at once on small maps:
2x1x40x56 (all six scales proper) and 1x1x20x28 / 1x1x19x27 (scale 5 is the 1x1
fallback, of an even and of an odd size).
"""
from __future__ import annotations

import pytest
import torch

import mlrb
from mlrb.names import INDEX, LOSS_NAMES, LOSS_TYPES, names_of, resolve_select
from ops_cases import (DEPTH_SCALES, assert_close_at_depth_scale, assert_close_to_reference,
                        backend_value_and_grad, make_inputs)

triton_backend = pytest.importorskip("mlrb.ops.triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if triton_backend.unavailable_reason(DEVICE) is not None:
    pytest.skip(f"Triton backend unavailable: {triton_backend.unavailable_reason(DEVICE)}",
                allow_module_level=True)

ALL = LOSS_NAMES + ("Si", "Gr")  # the 78 and the AMLR pair, one call
F32 = dict(rtol=2e-4, atol=2e-6)


def check(B, H, W, mask=None, select=ALL, dtype=torch.float32, seed=0, tol=F32, **kw):
    pred, gt, m = make_inputs(B, H, W, dtype=dtype, mask=mask, seed=seed, device=DEVICE)
    assert_close_to_reference("triton", pred, gt, m, select, seed=seed, **tol, **kw)


@pytest.mark.parametrize("mask", [None, "holes"])
def test_every_loss_forward_backward(mask):
    check(2, 40, 56, mask)


@pytest.mark.parametrize("mask", ["sparse", "empty"])
def test_sparse_and_empty_masks(mask):
    check(2, 40, 56, mask, seed=1)


def test_empty_mask_is_zero_without_nan():
    pred, gt, m = make_inputs(1, 20, 28, mask="empty", device=DEVICE)
    L, g = backend_value_and_grad("triton", pred, gt, m, ALL)
    assert torch.equal(L, torch.zeros_like(L))
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("shape,mask", [((1, 20, 28), None), ((1, 19, 27), "holes")])
def test_one_by_one_fallback(shape, mask):
    H, W = shape[1:]
    assert (H >> 5) == 0 or (W >> 5) == 0  # scale 5 is the 1x1 resize
    check(*shape, mask)


def test_full_mask_is_exactly_no_mask():
    pred, gt, m = make_inputs(1, 20, 28, mask="full", device=DEVICE)
    a = mlrb.fused_loss_space(pred, gt, m, select=ALL, backend="triton")
    b = mlrb.fused_loss_space(pred, gt, None, select=ALL, backend="triton")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_invalid_pixels_never_read():
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    bad_p, bad_g = pred.clone(), gt.clone()
    bad_p[~m], bad_g[~m] = float("nan"), float("inf")
    sel = "D@0, M65@0, Nc@1, M5@2, Si, Gr"
    L0, g0 = backend_value_and_grad("triton", pred, gt, m, sel)
    L1, g1 = backend_value_and_grad("triton", bad_p, bad_g, m, sel)
    assert torch.equal(L0, L1) and torch.equal(g0, g1)


@pytest.mark.parametrize("select", [
    "D0",
    "L^3 | L^4 | L^5",
    "Nc@2, M@0, M17@4, rr@1",  # any order, scattered scales
    "L_M",
    "AMLR",
])
def test_subsets(select):
    check(2, 40, 56, "holes", select=select)


def test_subset_columns_match_full_call():
    pred, gt, m = make_inputs(2, 40, 56, mask="holes", device=DEVICE)
    full = mlrb.fused_loss_space(pred, gt, m, select=ALL, backend="triton")
    sel = ["Gr", "cc@3", "D@0", "M65@1"]
    part = mlrb.fused_loss_space(pred, gt, m, select=sel, backend="triton")
    torch.testing.assert_close(part, full[:, [ALL.index(n) for n in sel]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("si", [dict(si_lambda=0.85, si_sqrt=True, si_scale=10.0),
                                dict(si_lambda=0.5, si_sqrt=False, si_scale=2.0)])
def test_amlr_options(si):
    check(2, 40, 56, "holes", select="AMLR", **si)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    pred, gt, m = make_inputs(2, 40, 56, dtype=dtype, mask="holes", device=DEVICE)
    L, g = backend_value_and_grad("triton", pred, gt, m, "D0")
    assert L.dtype == torch.float32 and g.dtype == dtype
    # The reference sees the same (rounded) inputs in float64: only the gradient's
    # final rounding to the input dtype differs.
    assert_close_to_reference("triton", pred, gt, m, ALL, rtol=2e-3, atol=2e-3 if dtype == torch.bfloat16 else 4e-4)


def test_float64_uses_reference_with_a_note():
    pred, gt, m = make_inputs(1, 20, 28, dtype=torch.float64, mask="holes", device=DEVICE)
    triton_backend._warned_f64 = False
    with pytest.warns(RuntimeWarning, match="float64"):
        L = mlrb.fused_loss_space(pred, gt, m, select="D0, Si", backend="triton")
    assert L.dtype == torch.float64


def test_reproducible_bitwise():
    pred, gt, m = make_inputs(2, 40, 56, mask="holes", device=DEVICE)
    a = backend_value_and_grad("triton", pred, gt, m, "L^0, M65@1, Gr")
    b = backend_value_and_grad("triton", pred, gt, m, "L^0, M65@1, Gr")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _count_launches(monkeypatch):
    """Count launches independently of mlrb's own hook: patch __getitem__ of the kernel
    class (JITFunction natively, InterpretedFunction under the interpreter)."""
    from mlrb.kernels import pyramid
    cls = type(pyramid.pyramid_fwd_kernel)
    seen = []
    orig = cls.__getitem__

    def counting(self, grid):
        seen.append(self.__name__ if hasattr(self, "__name__") else self.fn.__name__)
        return orig(self, grid)

    monkeypatch.setattr(cls, "__getitem__", counting)
    return seen


@pytest.mark.parametrize("select,fwd,bwd", [
    ("D0", 3, 2),  # scale 0 only: no box pass, no column stage of the transposed pyramid
    ("L^3 | L^4 | L^5", 4, 4),
    (ALL, 4, 4),
])
def test_launch_count(monkeypatch, select, fwd, bwd):
    from mlrb.kernels import launch
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    p = pred.clone().requires_grad_(True)
    seen = _count_launches(monkeypatch)
    launch.reset()
    L = mlrb.fused_loss_space(p, gt, m, select=select, backend="triton")
    assert len(seen) == launch.total() == fwd <= 6
    seen.clear()
    launch.reset()
    L.sum().backward()
    assert len(seen) == launch.total() == bwd <= 6


def test_no_grad_forward_matches():
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    with torch.no_grad():
        a = mlrb.fused_loss_space(pred, gt, m, select="L_M", backend="triton")
    b, _ = backend_value_and_grad("triton", pred, gt, m, "L_M")
    assert torch.equal(a, b)


def test_torch_compile_smoke():
    # aot_eager exercises dynamo + the fake and autograd registrations without Inductor
    # code generation. The backend's entry point is compiled with fullgraph=True (the
    # dispatcher in mlrb.loss_space imports backends with importlib, which dynamo skips).
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    idx = resolve_select("D@0, M5@1, N@2, Gr")

    def f(p):
        return triton_backend.loss_space(p, gt, m, idx, 1.0, False, 1.0)

    # dynamic=True: the fake implementation must cope with symbolic sizes (it specialises).
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True, dynamic=True)
    p1 = pred.clone().requires_grad_(True)
    p2 = pred.clone().requires_grad_(True)
    L1, L2 = compiled(p1), f(p2)
    (g1,) = torch.autograd.grad(L1.sum(), p1)
    (g2,) = torch.autograd.grad(L2.sum(), p2)
    torch.testing.assert_close(L1, L2)
    torch.testing.assert_close(g1, g2)


def test_opcheck():
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    args = (pred.requires_grad_(True), gt, m, list(resolve_select("D@0, M5@1, Gr")), 1.0, False, 1.0, True)
    torch.library.opcheck(torch.ops.mlrb_triton.loss_space_fwd.default, args,
                          # not test_aot_dispatch_dynamic: it compares the workspace output,
                          # scratch memory that is never fully written
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_auto_backend_choice():
    from mlrb.loss_space import _pick_backend
    if DEVICE == "cuda":
        assert _pick_backend("auto", torch.device("cuda")) == "triton"
    else:
        # Under the interpreter, CPU tensors may use backend="triton" explicitly, while
        # "auto" still prefers the CPU kernels (or the reference), never the interpreter.
        assert _pick_backend("triton", torch.device("cpu")) == "triton"
        assert _pick_backend("auto", torch.device("cpu")) in ("cpu", "reference")


def test_kernel_column_layout_follows_loss_names():
    """The kernels number the loss types themselves (their per-level sums at Q_NUM + t,
    layout.py; output column of 13 k + t through make_plan's table), in the order of
    mlrb.LOSS_TYPES. The reference computes each loss by its name: a kernel type in
    another's slot, a change of LOSS_TYPES order or a column table that is off puts the
    wrong loss under a name. One call, the 13 types of a scale in reverse order."""
    from mlrb.kernels import layout
    from mlrb.names import NUM_TYPES

    assert layout.Q_CNT - layout.Q_NUM == NUM_TYPES and layout.NUM_SCALES * NUM_TYPES == len(LOSS_NAMES)
    names = [f"{t}@2" for t in reversed(LOSS_TYPES)] + ["Gr", "D@0"]
    plan = triton_backend.make_plan(1, 20, 28, tuple(INDEX[n] for n in names), triton_backend.INTERPRETER_BLOCKS)
    assert [plan.cols[INDEX[n]] for n in names] == list(range(len(names)))
    check(1, 20, 28, "holes", select=names)


@pytest.fixture
def small_tiles(monkeypatch):
    """GPU-like tiling on small maps: several tiles, chunks and strips per scale, so the
    carried prefix sums, multi-program partial sums and tile decoding are exercised."""
    monkeypatch.setattr(triton_backend, "blocks_override", triton_backend.Blocks(
        pyr=(32, 32, 1), row=(8, 16, 1), col=(4, 8, 1), col_bwd=(4, 8, 1), ut=(8, 16, 1), seg=8,
        reduce_warps=1, reduce_chunk=4))


def test_tiled_code_paths(small_tiles):
    check(1, 19, 28, "holes")


def test_kernels_compile_for_h100_without_spills():
    """The interpreter is lenient; compile every kernel for sm_90 with the GPU tile sizes
    (no GPU needed) and require that ptxas spills nothing."""
    import os
    import subprocess
    import sys

    import triton

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not os.path.exists(os.path.join(tools, "cuobjdump")):
        pytest.skip("triton's NVIDIA backend tools (ptxas, cuobjdump) are not installed")
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, script, "90"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert len(rows) == 8, done.stdout
    for name, regs, stack in rows:
        assert int(stack) == 0, f"{name} spills: {regs} registers, {stack} bytes of stack"


@pytest.mark.parametrize("scale", DEPTH_SCALES)
def test_normal_losses_over_the_depth_range(scale):
    # The gradient of N, Nr, Nc once overflowed (den^2) from depths ~1e9 on.
    assert_close_at_depth_scale("triton", scale, "N@0, Nr@0, Nc@1", H=12, W=16, device=DEVICE)


@pytest.mark.parametrize("tiled", [False, True])
def test_scale_invariant_loss_with_pred_off_by_a_factor(tiled, request):
    # Si = mean(d^2) - lambda mean(d)^2 cancels in float32 when |mean d| >> std d (pred in
    # millimetres against gt in metres, say): it was 4e-3 off at a factor 1e6. The kernels
    # merge squared deviations per column, per program and between programs (tiled: many
    # programs per scale).
    if tiled:
        request.getfixturevalue("small_tiles")
    pred, gt, m = make_inputs(1, 19, 28, mask="holes", device=DEVICE)
    for factor in (1e3, 1e6):
        assert_close_to_reference("triton", pred * factor, gt, m, "Si", rtol=2e-5, atol=1e-7,
                                  si_lambda=0.85, si_sqrt=True, si_scale=10.0)


def test_workspace_beyond_int32_is_refused():
    with pytest.raises(ValueError, match="split the batch"):
        triton_backend.make_plan(64, 1024, 2048, tuple(range(80)), triton_backend.GPU_BLOCKS)


def test_amlr_missing_depth_and_tiny_pred():
    # gt <= 0 marks missing depth (invalid for the AMLR pair); pred below LOG_EPS is clamped.
    pred, gt, m = make_inputs(1, 20, 28, mask="holes", device=DEVICE)
    gt[:, :, 3:6, 4:9] = 0.0
    gt[:, :, 10, 10:14] = -1.0
    pred[:, :, 12:15, 2:6] = 1e-9
    assert_close_to_reference("triton", pred, gt, m, "Si, Gr, D@0, N@1", rtol=2e-4, atol=2e-6,
                              si_lambda=0.85, si_sqrt=True, si_scale=10.0)


def test_non_contiguous_inputs_and_bhw():
    pred, gt, m = make_inputs(2, 20, 28, mask="holes", device=DEVICE)
    sel = "D@0, M5@1, rc@0, Gr"
    want = mlrb.fused_loss_space(pred, gt, m, select=sel, backend="triton")
    pt = pred.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided
    gt_ = gt.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not pt.is_contiguous()
    torch.testing.assert_close(mlrb.fused_loss_space(pt, gt_, m, select=sel, backend="triton"), want,
                               rtol=0, atol=0)
    got = mlrb.fused_loss_space(pred[:, 0], gt[:, 0], m[:, 0], select=sel, backend="triton")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
