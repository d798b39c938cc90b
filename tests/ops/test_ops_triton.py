"""What is specific to the Triton backend: its launches, the GPU tiling (run on small maps),
the compile check for a real GPU (no spills), the workspace limit, the float64 note and the
column layout of its kernels. The contract it shares with the other backends (every loss
against the reference, masks, dtypes, layouts, ops, compile, gradients) is
test_ops_contract.py.

Without CUDA these run on CPU tensors under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported); with CUDA they run natively on the GPU.
"""
from __future__ import annotations

import pytest
import torch

import mlrb
from mlrb.names import INDEX, LOSS_NAMES, LOSS_TYPES
from ops_cases import (assert_close_to_reference, backend_value_and_grad, make_inputs, opted_out,
                       require_backend)

if opted_out("triton"):
    pytest.skip(opted_out("triton"), allow_module_level=True)
from mlrb.ops import triton as triton_backend  # noqa: E402  (an ImportError fails the collection)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ALL = LOSS_NAMES + ("Si", "Gr")  # the 78 and the AMLR pair, one call
F32 = dict(rtol=2e-4, atol=2e-6)


@pytest.fixture(autouse=True)
def _triton_backend_runs():
    require_backend("triton")  # fails (not skips) when the kernels cannot run


def check(B, H, W, mask=None, select=ALL, dtype=torch.float32, seed=0, tol=F32, **kw):
    pred, gt, m = make_inputs(B, H, W, dtype=dtype, mask=mask, seed=seed, device=DEVICE)
    assert_close_to_reference("triton", pred, gt, m, select, seed=seed, **tol, **kw)


def test_float64_uses_reference_with_a_note():
    pred, gt, m = make_inputs(1, 20, 28, dtype=torch.float64, mask="holes", device=DEVICE)
    triton_backend._warned_f64 = False
    with pytest.warns(RuntimeWarning, match="float64"):
        L = mlrb.fused_loss_space(pred, gt, m, select="D0, Si", backend="triton")
    assert L.dtype == torch.float64


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


def test_scale_invariant_loss_with_pred_off_by_a_factor_tiled(small_tiles):
    # Si = mean(d^2) - lambda mean(d)^2 cancels in float32 when |mean d| >> std d (pred in
    # millimetres against gt in metres, say): it was 4e-3 off at a factor 1e6. The kernels
    # merge squared deviations per column, per program and between programs (tiled: many
    # programs per scale).
    pred, gt, m = make_inputs(1, 19, 28, mask="holes", device=DEVICE)
    for factor in (1e3, 1e6):
        assert_close_to_reference("triton", pred * factor, gt, m, "Si", rtol=2e-5, atol=1e-7,
                                  si_lambda=0.85, si_sqrt=True, si_scale=10.0)


def test_workspace_beyond_int32_is_refused():
    with pytest.raises(ValueError, match="split the batch"):
        triton_backend.make_plan(64, 1024, 2048, tuple(range(80)), triton_backend.GPU_BLOCKS)


def test_backward_op_reads_strided_workspace_and_sums_by_value():
    """A direct call of the backward op with views of the forward's ws and stats (strided,
    expanded) gives the same gradient, never reads another tensor's memory."""
    ops = torch.ops.mlrb_triton
    pred, gt, _ = make_inputs(1, 8, 8, seed=3, device=DEVICE)
    idx, args = [0, 13], (1.0, False, 1.0)
    _, stats, ws = ops.loss_space_fwd(pred, gt, None, idx, *args, True)
    g = torch.ones(1, 2, device=DEVICE)
    want = ops.loss_space_bwd(g, pred, None, ws, stats, idx, *args)
    ws2 = torch.zeros(2 * ws.numel(), device=DEVICE)
    ws2[::2] = ws
    st2 = torch.zeros(stats.shape[0], 2 * stats.shape[1], device=DEVICE)
    st2[:, ::2] = stats
    assert torch.equal(ops.loss_space_bwd(g, pred, None, ws2[::2], st2[:, ::2], idx, *args), want)
    flat = torch.zeros(1, device=DEVICE).expand(ws.numel())  # one float seen ws.numel() times
    assert torch.equal(ops.loss_space_bwd(g, pred, None, flat, stats, idx, *args),
                       ops.loss_space_bwd(g, pred, None, flat.contiguous(), stats, idx, *args))
