"""What is specific to the fused C++/OpenMP backend ("cpu"): threads and row bands (bitwise the
same for any thread count), the bytes it saves for backward, and the extension mlrb._C
called directly with bad input (in a child process, so that a crash fails a test instead
of the test run). The contract it shares with the other backends (every loss against the
reference, masks, dtypes, layouts, ops, compile, gradients) is test_ops_contract.py.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import mlrb
from mlrb.names import ALL_NAMES, INDEX
from mlrb.ops import cpu
from ops_cases import assert_close_to_reference, make_inputs, require_backend

EVERY = list(ALL_NAMES)  # the 78 losses and the AMLR pair


@pytest.fixture(autouse=True)
def _cpu_backend_runs():
    require_backend("cpu")  # fails (not skips) without mlrb._C, unless MLRB_NO_CPU_EXT=1


def _losses(pred, gt, mask=None, select=None, **kw):
    return mlrb.fused_loss_space(pred, gt, mask, select=select, backend="cpu", **kw)


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


# box_row_sum_transpose: border entries as weighted sums, quad passes over the entries the
# inner columns read, r = 2 read straight from the row; widths around each 2r and below 3.
BOX_LOSSES = [n for n in ALL_NAMES if n.split("@")[0] in ("M5", "M17", "M65")]


@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 6, 17, 33, 66, 67])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_box_transposes_at_narrow_widths_match_reference_float64(W, mask):
    pred, gt, m = make_inputs(2, 11, W, dtype=torch.float64, mask=mask)
    assert_close_to_reference("cpu", pred, gt, m, BOX_LOSSES, rtol=1e-10, atol=1e-12)


# The backward counts the valid set of each type from the mask bytes with byte counters over
# blocks of 255 columns: rows of 255 and more, holes and all valid (a full block counts 255).
@pytest.mark.parametrize("W", [255, 256, 600])
@pytest.mark.parametrize("mask", ["holes", "all valid"])
def test_masked_wide_rows_match_reference_float64(W, mask):
    pred, gt, m = make_inputs(1, 4, W, dtype=torch.float64, mask="holes")
    if mask == "all valid":
        m = torch.ones_like(m)
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)


# A level k >= 1 whose mask has no valid pixel is skipped (drivers.h mark_live_levels), per
# sample, in both backward paths (whole samples for B >= 4, row bands below). Sample 0 is all
# valid (every level live), sample 1 has an 8x8 valid corner (levels 1-3 live, 4-5 dead), the
# rest a 5% mask (every level k >= 1 dead: a 4x4 footprint is never all valid).
@pytest.mark.parametrize("B,H", [(4, 40), (2, 140)])
def test_levels_without_valid_pixels_are_skipped_per_sample(B, H):
    pred, gt, m = make_inputs(B, H, 36, dtype=torch.float64, mask="sparse")
    m[0] = True
    m[1, :, :8, :8] = True
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)
    L = _losses(pred, gt, m, EVERY)
    scale = torch.tensor([int(n.split("@")[1]) if "@" in n else 0 for n in EVERY])
    assert all((L[0, scale == k] != 0).any() for k in range(1, 6))  # live levels have terms
    assert all((L[1, scale == k] != 0).any() for k in range(1, 4))
    assert (L[1, scale >= 4] == 0).all() and (L[2:, scale >= 1] == 0).all()
    _assert_bitwise_across_threads(pred.float(), gt.float(), m)


# The backward clears no gradient up front: each band pass clears its rows as it reaches them
# (backward_band.h), the driver only when scale 0 is not selected. Its output array is not
# zeroed (numpy empty): freed NaN-filled memory of the same size is usually handed back to it,
# and every entry must still be written. Whole samples (B = 4) and bands with halos (B = 1).
@pytest.mark.parametrize("B,H", [(4, 24), (1, 140)])
@pytest.mark.parametrize("select", ["all", "D@0", "M65@0, Nc@0", "L^1 | L^4", "Si", "M5@2, Gr"])
def test_backward_writes_every_gradient_entry(B, H, select):
    from mlrb import _C

    pred, gt, m = make_inputs(B, H, 36, dtype=torch.float64, mask="holes")
    idx = list(mlrb.resolve_select(select))
    G = np.random.default_rng(0).random((B, len(idx))) + 0.5
    p, g, mk = (x.reshape(B, H, 36).numpy() for x in (pred, gt, m))
    want = cpu.loss_space_cpu_bwd(torch.from_numpy(G), pred, gt, m, idx, 1.0, False, 1.0)
    for mask in (mk, None):
        for _ in range(3):
            junk = np.full((B, H, 36), np.nan)
            del junk
            got = _C.loss_space_backward(G, p, g, mask, idx, 1.0, False, 1.0, 1)
            assert np.isfinite(got).all()
        if mask is not None:
            assert np.array_equal(got, want.reshape(B, H, 36).numpy())
    assert_close_to_reference("cpu", pred, gt, m, select, rtol=1e-10, atol=1e-12)


# With a mask, whole samples (B >= 4) and a box loss at scale 0, a sample to whose gradient
# nothing is added after scale 0 (no live level k >= 1, no AMLR pair) has its invalid pixels
# zeroed by the scale-0 band's widest box (drivers.h band_zeroes), not by zero_invalid.
@pytest.mark.parametrize("select", ["all", "L^0", "M5@0, D@0", "M65@0, L^1", "D@0, N@0", "all | AMLR"])
def test_invalid_pixels_get_exactly_zero_gradient(select):
    pred, gt, m = make_inputs(4, 40, 36, dtype=torch.float64, mask="sparse")
    m[0] = True  # sample 0: every level live; samples 1-3: every level k >= 1 dead
    assert_close_to_reference("cpu", pred, gt, m, select, rtol=1e-10, atol=1e-12)
    p = pred.float().requires_grad_(True)
    (_losses(p, gt.float(), m, select) * torch.rand(4, len(mlrb.resolve_select(select)))).sum().backward()
    assert torch.equal(p.grad[~m], torch.zeros_like(p.grad[~m]))  # +0 (not -0) at invalid pixels
    assert not torch.signbit(p.grad[~m]).any() and (p.grad[m] != 0).any()


# With a mask, a row where no footprint of the gradient (normal) group can be valid skips the
# group (row_window.h RowWindow::row_types): rows holding one horizontal pair (r only), one
# vertical pair (c only), an L (N), a 2x2 block, a row of three; across a band border (B = 1).
@pytest.mark.parametrize("B,H", [(4, 20), (1, 140)])
def test_rows_with_few_valid_footprints_match_reference_float64(B, H):
    pred, gt, _ = make_inputs(B, H, 24, dtype=torch.float64)
    m = torch.zeros(B, 1, H, 24, dtype=torch.bool)
    m[:, :, 2, 5:7] = True
    m[:, :, 5:7, 20] = True
    m[:, :, 9, 2:4] = m[:, :, 10, 2] = True
    m[:, :, 13:15, 8:10] = True
    m[:, :, 17, 3:6] = True
    if H > 64:
        m[:, :, 63:65, 11] = True
    assert_close_to_reference("cpu", pred, gt, m, EVERY, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask", [None, "sparse"])
def test_batch_one_bitwise_identical_across_threads(mask):
    """B = 1 runs its row bands on all threads; the bits must not depend on how many."""
    pred, gt, m = make_inputs(1, 230, 75, dtype=torch.float32, mask=mask)
    _assert_bitwise_across_threads(pred, gt, m)


GROUPS = {"gradient": ("r", "c", "rr", "rc", "cc"), "normal": ("N", "Nr", "Nc")}


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("mask", [None, "holes"])
def test_a_whole_group_in_one_loop_gives_each_type_s_numbers(group, mask):
    # A scale with all types of a group selected runs them in one loop (shared loads and
    # differences); one type alone runs its own. Same sums in the same order: equal losses,
    # and the gradient of one type is the same whether the others run beside it (weight 0).
    pred, gt, m = make_inputs(2, 37, 45, dtype=torch.float32, mask=mask)
    names = [f"{t}@{k}" for k in (0, 1) for t in GROUPS[group]]
    p = pred.clone().requires_grad_(True)
    together = _losses(p, gt, m, names)
    for j, name in enumerate(names):
        q = pred.clone().requires_grad_(True)
        alone = _losses(q, gt, m, name)
        assert torch.equal(together[:, j : j + 1].detach(), alone.detach()), name
        alone.sum().backward()
        (g,) = torch.autograd.grad(together[:, j].sum(), p, retain_graph=True)
        assert torch.equal(g, q.grad), name


def _stats_case(B, H, dtype, mask):
    """Inputs whose levels are all live (None, "holes") or partly dead ("dead levels")."""
    pred, gt, m = make_inputs(B, H, 36, dtype=dtype, mask="sparse" if mask == "dead levels" else mask)
    if mask == "dead levels":
        m[0, :, :8, :8] = True
    return pred, gt, m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", [None, "holes", "dead levels"])
@pytest.mark.parametrize("B,H", [(4, 40), (1, 140)])
def test_backward_with_the_forward_statistics_gives_the_same_bits(B, H, dtype, mask):
    """The forward's scale statistics (mean, far check, counts, M's sign sum) replace the
    backward's pre-passes: the same gradient bit for bit, whole samples and bands, any
    threads; and the backward does read them (changed statistics change the gradient)."""
    from mlrb import _C

    pred, gt, m = _stats_case(B, H, dtype, mask)
    p, g = (x[:, 0].numpy() for x in (pred, gt))
    mk = None if m is None else m[:, 0].numpy()
    idx = list(range(len(EVERY)))
    G = torch.rand(B, len(idx), dtype=torch.float64, generator=torch.Generator().manual_seed(1)).numpy()
    want = _C.loss_space_backward(G, p, g, mk, idx, 1.0, False, 1.0, 1)
    for threads in (1, 2):
        losses, st = _C.loss_space_forward(p, g, mk, idx, 1.0, False, 1.0, threads, return_stats=True)
        assert np.array_equal(losses, _C.loss_space_forward(p, g, mk, idx, 1.0, False, 1.0, threads))
        assert st.shape == (B, 6, _C.STAT_WIDTH)
        got = _C.loss_space_backward(G, p, g, mk, idx, 1.0, False, 1.0, 3 - threads, stats=st)
        assert np.array_equal(got, want)
    valid = np.ones_like(p, bool) if mk is None else mk
    n = valid.reshape(B, -1).sum(1)
    assert np.array_equal(st[:, 0, 4], n)  # D's count at scale 0: the valid pixels
    assert (st[:, :, 3] == 2**13 - 1).all()  # every type selected at every scale
    e = (p.astype(np.float64) - g)
    assert np.allclose(st[:, 0, 0], (e * valid).reshape(B, -1).sum(1) / n, rtol=1e-5)
    changed = st.copy()
    changed[:, 0, 2] = 0  # another M shift
    assert not np.array_equal(_C.loss_space_backward(G, p, g, mk, idx, 1.0, False, 1.0, 1, stats=changed), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", [None, "holes", "dead levels"])
@pytest.mark.parametrize("B,H", [(4, 40), (1, 140)])
def test_backward_reads_the_levels_its_forward_kept(B, H, dtype, mask):
    """A backward given the statistics of the thread's last forward of the dtype reads the
    pyramid levels that forward kept instead of rebuilding them (kept_levels.h): the same bits,
    whole samples and bands, any threads. Another forward in between, another thread or
    statistics without a token make it rebuild them, with the same bits too."""
    import threading

    from mlrb import _C

    pred, gt, m = _stats_case(B, H, dtype, mask)
    p, g = (x[:, 0].numpy() for x in (pred, gt))
    mk = None if m is None else m[:, 0].numpy()
    idx = list(range(len(EVERY)))
    G = torch.rand(B, len(idx), dtype=torch.float64, generator=torch.Generator().manual_seed(1)).numpy()
    bwd = lambda st, threads=1: _C.loss_space_backward(G, p, g, mk, idx, 1.0, False, 1.0, threads, stats=st)  # noqa: E731
    fwd = lambda x, y, threads=1: _C.loss_space_forward(x, y, mk, idx, 1.0, False, 1.0, threads,  # noqa: E731
                                                        return_stats=True)[1]
    want = bwd(None)
    assert not _C.last_backward_reused_levels()
    for threads in (1, 2):
        st = fwd(p, g, threads)
        token = st[:, :, -1]
        assert (token == token[0, 0]).all() and token[0, 0] >= 1 and token[0, 0] == int(token[0, 0])
        assert np.array_equal(bwd(st, 3 - threads), want) and _C.last_backward_reused_levels()
        assert np.array_equal(bwd(st.copy()), want) and _C.last_backward_reused_levels()  # a copy: same token
    other = {np.float32: np.float64, np.float64: np.float32}[p.dtype.type]
    fwd(p.astype(other), g.astype(other))  # a forward of the other dtype keeps its own levels
    assert np.array_equal(bwd(st), want) and _C.last_backward_reused_levels()
    assert fwd(g, p)[0, 0, -1] > st[0, 0, -1]  # another forward in between: its levels, a new token
    assert np.array_equal(bwd(st), want) and not _C.last_backward_reused_levels()
    st = fwd(p, g)
    got, reused = [], []
    t = threading.Thread(target=lambda: (got.append(bwd(st)), reused.append(_C.last_backward_reused_levels())))
    t.start()
    t.join()
    assert np.array_equal(got[0], want) and reused == [False]  # another thread's scratch
    untokened = st.copy()
    untokened[:, :, -1] = 0
    assert np.array_equal(bwd(untokened), want) and not _C.last_backward_reused_levels()


def test_autograd_hands_the_forward_statistics_to_the_backward(monkeypatch):
    pred, gt, m = make_inputs(2, 30, 36, dtype=torch.float32, mask="holes")
    seen = []
    real = cpu._C.loss_space_backward
    monkeypatch.setattr(cpu._C, "loss_space_backward", lambda *a, **k: seen.append(k["stats"]) or real(*a, **k),
                        raising=False)
    p = pred.clone().requires_grad_(True)
    _losses(p, gt, m, EVERY).sum().backward()
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (2, 6, cpu._C.STAT_WIDTH)
    assert cpu._C.last_backward_reused_levels()  # and the levels its forward kept
    q = pred.clone()
    want = torch.ops.mlrb.loss_space_cpu_bwd(torch.ones(2, len(EVERY)), q, gt, m, list(range(len(EVERY))), 1.0,
                                             False, 1.0)
    assert torch.equal(p.grad, want)  # and the same bits as the backward's own statistics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask", [None, "holes"])
def test_eager_path_gives_the_registered_ops_bits(monkeypatch, dtype, mask):
    """Eager autograd skips torch.library's layers (cpu._Eager); the registered ops' autograd
    (what torch.compile and dispatch modes run) gives the same losses and gradient."""
    pred, gt, m = make_inputs(2, 30, 36, dtype=dtype, mask=mask)
    G = torch.rand(2, len(EVERY), dtype=dtype)

    def run(path):
        p = pred.clone().requires_grad_(True)
        out = _losses(p, gt, m, EVERY)
        assert path in type(out.grad_fn).__name__
        (out * G).sum().backward()
        return out.detach(), p.grad

    eager = run("_Eager")
    monkeypatch.setattr(cpu.modes, "route", lambda *tensors: "ops")
    op = run("mlrb_loss_space_cpu_fwd")
    assert all(torch.equal(a, b) for a, b in zip(eager, op))


def test_fake_tensors_and_dispatch_modes_take_the_registered_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    pred, gt, m = make_inputs(2, 20, 24, mask="holes")
    with FakeTensorMode():  # the fake implementations give the shapes; no kernel (nor check_finite) reads fake data
        fake = _losses(torch.empty(2, 1, 20, 24), torch.empty(2, 1, 20, 24), None, "L^0")
    assert fake.shape == (2, 13) and fake.dtype == torch.float32

    class Seen(TorchDispatchMode):
        ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    p = pred.clone().requires_grad_(True)
    with Seen():  # e.g. FlopCounterMode, a profiler's mode: the op is visible to it
        _losses(p, gt, m, "L^0", check_finite=False).sum().backward()
    assert {"mlrb.loss_space_cpu_fwd.default", "mlrb.loss_space_cpu_bwd.default"} <= Seen.ops
    r = pred.clone().requires_grad_(True)
    out = _losses(r, gt, m, "L^0", check_finite=False)  # the eager path's forward
    Seen.ops = set()
    with Seen():  # a mode entered around the backward only still sees the backward op
        out.sum().backward()
    assert "mlrb.loss_space_cpu_bwd.default" in Seen.ops and torch.equal(r.grad, p.grad)
    q = pred.clone().requires_grad_(True)
    _losses(q, gt, m, "L^0").sum().backward()
    assert torch.equal(p.grad, q.grad)


def test_saves_the_inputs_and_the_scale_statistics_for_backward():
    pred, gt, m = make_inputs(2, 48, 64, dtype=torch.float32, mask="holes")
    saved = []

    def pack(t):
        saved.append(t)
        return t

    p = pred.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = _losses(p, gt, m, EVERY)
    budget = sum(t.numel() * t.element_size() for t in (pred, gt, m)) + 2 * 6 * cpu._C.STAT_WIDTH * 8
    assert sum(t.numel() * t.element_size() for t in saved) <= budget
    out.sum().backward()


def test_bad_inputs_raise_clear_errors():
    from mlrb import _C

    pred, gt, _ = make_inputs(1, 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="loss index out of range"):
        _C.loss_space_forward(pred[:, 0].numpy(), gt[:, 0].numpy(), None, [80], 1.0, False, 1.0, 1)
    with pytest.raises(ValueError, match="shapes differ"):
        _C.loss_space_forward(pred[:, 0].numpy(), gt[:, 0, :4].numpy().copy(), None, [0], 1.0, False, 1.0, 1)
    assert INDEX["Gr"] == 79  # the kernels' column layout (78 + the AMLR pair)


# Each case: a name and a statement; the child prints "name: ExceptionType: message" or
# "name: ok". p, g: float32 (B, H, W) arrays, m: a bool mask, z: an empty batch.
_C_CASES = {
    "empty batch, forward": "_C.loss_space_forward(z, z, None, [0], 1.0, False, 1.0, 1)",
    "empty batch, backward": "_C.loss_space_backward(np.zeros((0, 1)), z, z, None, [0], 1.0, False, 1.0, 1)",
    "empty batch, masked": "_C.loss_space_forward(z, z, z > 0, [0, 79], 1.0, True, 1.0, 2)",
    "empty rows": "_C.loss_space_forward(p[:, :0].copy(), g[:, :0].copy(), None, [0], 1.0, False, 1.0, 1)",
    "empty columns": "_C.loss_space_forward(p[:, :, :0].copy(), g[:, :, :0].copy(), None, [0], 1.0, False, 1.0, 1)",
    "op, empty batch": "torch.ops.mlrb.loss_space_cpu_fwd(t[:0], t[:0], None, [0], 1.0, False, 1.0, True)",
    "op bwd, empty batch": "torch.ops.mlrb.loss_space_cpu_bwd(torch.ones(0, 1), t[:0], t[:0], None, [0], 1.0, False, 1.0)",
    "2-d pred": "_C.loss_space_forward(p[0], g[0], None, [0], 1.0, False, 1.0, 1)",
    "shapes differ": "_C.loss_space_forward(p, g[:, :4].copy(), None, [0], 1.0, False, 1.0, 1)",
    "mask shape": "_C.loss_space_forward(p, g, m[:, :4].copy(), [0], 1.0, False, 1.0, 1)",
    "no indices": "_C.loss_space_forward(p, g, None, [], 1.0, False, 1.0, 1)",
    "index -1": "_C.loss_space_forward(p, g, None, [-1], 1.0, False, 1.0, 1)",
    "index 80": "_C.loss_space_forward(p, g, None, [80], 1.0, False, 1.0, 1)",
    "index twice": "_C.loss_space_forward(p, g, None, [3, 0, 3], 1.0, False, 1.0, 1)",
    "index twice, backward": "_C.loss_space_backward(np.ones((2, 2)), p, g, None, [78, 78], 1.0, False, 1.0, 1)",
    "NaN si_lambda": "_C.loss_space_forward(p, g, None, [78], float('nan'), False, 1.0, 1)",
    "inf si_scale": "_C.loss_space_backward(np.ones((2, 1)), p, g, m, [78], 1.0, True, float('inf'), 1)",
    "0 threads": "_C.loss_space_forward(p, g, None, [0], 1.0, False, 1.0, 0)",
    "too many threads": "_C.loss_space_forward(p, g, None, [0], 1.0, False, 1.0, 10**6)",
    "grad_out shape": "_C.loss_space_backward(np.ones((2, 1)), p, g, None, [0, 1], 1.0, False, 1.0, 1)",
    "non-contiguous pred": "_C.loss_space_forward(p[:, :, ::2], g[:, :, ::2], None, [0], 1.0, False, 1.0, 1)",
    "mixed dtypes": "_C.loss_space_forward(p, g.astype(np.float64), None, [0], 1.0, False, 1.0, 1)",
    "int arrays": "_C.loss_space_forward(p.astype(np.int32), g.astype(np.int32), None, [0], 1.0, False, 1.0, 1)",
    "float mask": "_C.loss_space_forward(p, g, m.astype(np.float32), [0], 1.0, False, 1.0, 1)",
    "huge map": "_C.loss_space_forward(big, big, None, [0], 1.0, False, 1.0, 1)",
    "fine": "_C.loss_space_forward(p, g, m, list(range(80)), 1.0, False, 1.0, 1)",
    # The forward's statistics handed to the backward (st: those of p, g, m, indices [0, 1]).
    "stats shape": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=st[:1].copy())",
    "stats dtype": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=st.astype(np.float32))",
    "stats count": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=bad(4, 0.5))",
    "stats count > H W": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=bad(5, 1e9))",
    "stats NaN count": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=bad(4, np.nan))",
    "stats of other losses": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 2], 1.0, False, 1.0, 1, stats=st)",
    "stats far flag": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=bad(1, 2.0))",
    "stats sign sum": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=bad(2, 1e6))",
    "stats fine": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=st)",
    "stats levels token": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=tok(0, 0, -1.0))",
    "stats levels tokens differ": "_C.loss_space_backward(np.ones((2, 2)), p, g, m, [0, 1], 1.0, False, 1.0, 1, stats=tok(1, 3, 1e15))",
    "op bwd, stats shape": "torch.ops.mlrb.loss_space_cpu_bwd(torch.ones(2, 1), t, t, None, [0], 1.0, False, 1.0, torch.zeros(2, 6, 3, dtype=torch.float64))",
    "count_nonfinite, shapes differ": "_C.count_nonfinite(p, g[:, :4].copy(), None, 1)",
    "count_nonfinite, mask shape": "_C.count_nonfinite(p, g, m[:, :4].copy(), 1)",
    "count_nonfinite, 0 threads": "_C.count_nonfinite(p, g, None, 0)",
    "count_nonfinite, non-contiguous": "_C.count_nonfinite(p[:, :, ::2], g[:, :, ::2], None, 1)",
    "count_nonfinite, mixed dtypes": "_C.count_nonfinite(p, g.astype(np.float64), None, 1)",
    "count_nonfinite, empty": "_C.count_nonfinite(z, z, None, 1)",
}
_C_EXPECTED = {
    "empty batch, forward": ("ValueError", "empty"),
    "empty batch, backward": ("ValueError", "empty"),
    "empty batch, masked": ("ValueError", "empty"),
    "empty rows": ("ValueError", "empty"),
    "empty columns": ("ValueError", "empty"),
    "op, empty batch": ("ValueError", "empty"),
    "op bwd, empty batch": ("ValueError", "empty"),
    "2-d pred": ("ValueError", r"\(B, H, W\)"),
    "shapes differ": ("ValueError", "shapes differ"),
    "mask shape": ("ValueError", "mask shape"),
    "no indices": ("ValueError", "indices is empty"),
    "index -1": ("ValueError", "out of range: -1"),
    "index 80": ("ValueError", "out of range: 80"),
    "index twice": ("ValueError", "loss index 3 is given twice"),
    "index twice, backward": ("ValueError", "loss index 78 is given twice"),
    "NaN si_lambda": ("ValueError", "si_lambda and si_scale must be finite"),
    "inf si_scale": ("ValueError", "si_lambda and si_scale must be finite"),
    "0 threads": ("ValueError", "num_threads"),
    "too many threads": ("ValueError", "num_threads"),
    "grad_out shape": ("ValueError", "grad_out must be"),
    "non-contiguous pred": ("TypeError", "incompatible function arguments"),
    "mixed dtypes": ("TypeError", "incompatible function arguments"),
    "int arrays": ("TypeError", "incompatible function arguments"),
    "float mask": ("TypeError", "incompatible function arguments"),
    "huge map": ("ValueError", "too large"),
    "fine": ("ok", ""),
    "stats shape": ("ValueError", r"stats must be the forward's \(B, 6, 18\)"),
    "stats dtype": ("TypeError", "incompatible function arguments"),
    "stats count": ("ValueError", r"stats\[1, 0\]: count 0 is not an integer"),
    "stats count > H W": ("ValueError", r"stats\[1, 0\]: count 1 is not an integer in \[0, H W\]"),
    "stats NaN count": ("ValueError", r"stats\[1, 0\]: count 0"),
    "stats of other losses": ("ValueError", r"stats\[0, 0\]: made for other losses than these indices"),
    "stats far flag": ("ValueError", r"stats\[1, 0\]: far flag"),
    "stats sign sum": ("ValueError", r"stats\[1, 0\]: sign sum"),
    "stats fine": ("ok", ""),
    "op bwd, stats shape": ("ValueError", r"stats must be the forward's float64 \(2, 6, 18\)"),
    "stats levels token": ("ValueError", r"stats\[0, 0\]: levels token is not the same integer >= 0"),
    "stats levels tokens differ": ("ValueError", r"stats\[1, 3\]: levels token"),
    "count_nonfinite, shapes differ": ("ValueError", "shapes differ"),
    "count_nonfinite, mask shape": ("ValueError", "mask shape"),
    "count_nonfinite, 0 threads": ("ValueError", "num_threads"),
    "count_nonfinite, non-contiguous": ("TypeError", "incompatible function arguments"),
    "count_nonfinite, mixed dtypes": ("TypeError", "incompatible function arguments"),
    "count_nonfinite, empty": ("ok", ""),
}


def test_extension_and_cpu_ops_raise_instead_of_crashing(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, torch
        import mlrb.ops.cpu
        from mlrb import _C
        rng = np.random.default_rng(0)
        p = (rng.random((2, 9, 11)) + 1).astype(np.float32)
        g = (rng.random((2, 9, 11)) + 1).astype(np.float32)
        m = rng.random((2, 9, 11)) > 0.3
        z = np.zeros((0, 9, 11), np.float32)
        t = torch.from_numpy(p)[:, None]
        st = _C.loss_space_forward(p, g, m, [0, 1], 1.0, False, 1.0, 1, return_stats=True)[1]
        def bad(i, v):  # st with entry i of sample 1, scale 0 set to v
            s = st.copy()
            s[1, 0, i] = v
            return s
        def tok(b, k, v):  # st with the levels token of sample b, scale k set to v
            s = st.copy()
            s[b, k, _C.STAT_WIDTH - 1] = v
            return s
        # A (1, 2^28 + 1, 1) map backed by a sparse file: refused before a byte is read.
        big = np.memmap({str(tmp_path / "big.f32")!r}, dtype=np.float32, mode="w+", shape=(1, 2**28 + 1, 1))
        for name, code in {_C_CASES!r}.items():
            try:
                eval(code)
                print(f"{{name}}: ok", flush=True)
            except Exception as exc:
                print(f"{{name}}: {{type(exc).__name__}}: {{str(exc).splitlines()[0]}}", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the child process died (rc {done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}"
    got = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert set(got) == set(_C_CASES), done.stdout
    for name, (kind, match) in _C_EXPECTED.items():
        assert got[name].startswith(kind), f"{name}: {got[name]}"
        if match:
            assert re.search(match, got[name]), f"{name}: {got[name]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_nonfinite_matches_torch_at_valid_pixels(dtype):
    """The C++ input check of fused_loss_space (check_finite=True on CPU tensors) counts
    exactly what isfinite does, over several blocks, with and without a mask, any threads."""
    from mlrb import _C
    from mlrb.loss_space import _nonfinite_counts

    gen = torch.Generator().manual_seed(3)
    n = 3 * 65536 + 17  # several blocks and a partial one
    p, g = torch.rand(n, generator=gen, dtype=dtype), torch.rand(n, generator=gen, dtype=dtype)
    for x, k in ((p, 40), (g, 25)):
        at = torch.randperm(n, generator=gen)[:k]
        x[at] = torch.tensor([float("nan"), float("inf"), -float("inf"), torch.finfo(dtype).max], dtype=dtype).repeat(k)[:k]
    m = torch.rand(n, generator=gen) > 0.4
    for mask in (None, m):
        want = [int((~torch.isfinite(x) & (True if mask is None else mask)).sum()) for x in (p, g)]
        assert 0 < want[0] and 0 < want[1]
        for threads in (1, 2):
            got = _C.count_nonfinite(p.numpy(), g.numpy(), None if mask is None else mask.numpy(), threads)
            assert list(got) == want
        # through the API's check: the C++ path for contiguous maps, torch's for strided ones
        assert _nonfinite_counts(p.view(1, 1, -1, 1), g.view(1, 1, -1, 1), None if mask is None else mask.view(1, 1, -1, 1)) == want
        strided = torch.stack([p, p], dim=1)[:, 0].reshape(1, 1, 1, -1)
        assert not strided.is_contiguous()
        m4 = None if mask is None else mask.view(1, 1, 1, -1)
        assert _nonfinite_counts(strided, g.view(1, 1, 1, -1), m4) == want


def test_cpu_op_never_asks_for_more_threads_than_the_extension_allows(monkeypatch):
    from mlrb import _C

    monkeypatch.setattr(torch, "get_num_threads", lambda: 10 * _C.MAX_THREADS)
    assert cpu._threads() == _C.MAX_THREADS
