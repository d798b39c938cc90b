"""The Triton backend of the loss space: host planning, launches, torch custom ops.

Forward is at most 4 launches (pyramid, horizontal box pass when an M_n loss is selected,
losses, reduction) and backward at most 4 (horizontal transposed box pass when an M_n
loss is selected, per-scale gradients, the two stages of the transposed pyramid),
whatever the selection. All intermediates live in one float32 workspace per pass; the
forward's workspace is kept for backward, which therefore recomputes nothing.

Registered with torch.library.custom_op + register_fake + register_autograd (triton_op
cannot run under the Triton interpreter), so the backend works under autograd and
torch.compile. On CPU tensors it runs only under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from mlrb.kernels import layout as L
from mlrb.ops import modes
from mlrb.ops.checks import check_grad, check_inputs, no_double_backward, saveable
from mlrb.names import LOSS_TYPES, NUM_SCALES, NUM_TYPES

_warned_f64 = False


# ----------------------------------------------------------------------------- availability
def _kernels():
    """The kernel modules, imported on first use (triton is heavy)."""
    from mlrb.kernels import box, launch, loss_space_bwd, loss_space_fwd, pyramid, reduce
    return box, launch, loss_space_bwd, loss_space_fwd, pyramid, reduce


def interpreted() -> bool:
    """True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1 was set
    before they were imported)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(_kernels()[4].pyramid_fwd_kernel, InterpretedFunction)


def unavailable_reason(device) -> str | None:
    """None if the Triton kernels can run on tensors of ``device``, else why not."""
    device = torch.device(device)
    try:
        import triton  # noqa: F401
        _kernels()
    except ImportError as exc:
        return f"triton cannot be imported ({exc})"
    if device.type == "cuda":
        if interpreted():
            return "TRITON_INTERPRET=1 is set, the Triton kernels run only on CPU tensors"
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        if interpreted():
            return None
        return ("Triton kernels need CUDA tensors (on CPU they run only under the Triton "
                "interpreter: TRITON_INTERPRET=1 set before triton is imported)")
    return f"no Triton kernels for {device.type} tensors"


# ----------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Blocks:
    """Tile sizes and warps per kernel: (rows, columns, num_warps)."""
    pyr: tuple[int, int, int]  # pyramid: (BS, BS, warps), one program per BS x BS block, BS >= 32
    row: tuple[int, int, int]  # row strips of the horizontal box passes (rows, column chunk)
    col: tuple[int, int, int]  # loss kernel: (row chunk, strip width); the width is shared
    col_bwd: tuple[int, int, int]  # gradient kernel: same strip width as the loss kernel
    ut: tuple[int, int, int]  # both stages of the transposed pyramid
    seg: int = 64  # rows per program of the loss / gradient kernels (a multiple of their RH)
    reduce_warps: int = 4
    reduce_chunk: int = 32  # partial sums per step of the reduction


# GPU: rows of 32-64 floats (coalesced), tiles sized so that ptxas reports no spills for
# sm_90 (checked with cuobjdump -res-usage on kernels compiled without a GPU). The
# interpreter: one program per map (numpy does the work; Python overhead is per op).
GPU_BLOCKS = Blocks(pyr=(32, 32, 8), row=(8, 64, 4), col=(8, 32, 4), col_bwd=(4, 32, 4), ut=(8, 64, 4),
                    seg=64)
INTERPRETER_BLOCKS = Blocks(pyr=(32, 32, 1), row=(64, 64, 1), col=(64, 64, 1), col_bwd=(64, 64, 1),
                            ut=(64, 64, 1), seg=1 << 16, reduce_warps=1, reduce_chunk=64)
blocks_override: Blocks | None = None  # tests set it to run the tiled (GPU) code paths


def current_blocks() -> Blocks:
    if blocks_override is not None:
        return blocks_override
    return INTERPRETER_BLOCKS if interpreted() else GPU_BLOCKS


def _axis(n_in: int, k: int, fallback: bool) -> tuple[int, int, int, int]:
    """(n_out, stride, first-tap offset, odd flag) of one axis of D^k, k >= 1.

    Output i reads inputs clamp(stride * i + offset + t), t = 0..3 (spec: 2^k i + 2^(k-1) - 2
    + t); the 1x1 fallback resamples at n_in / 2 - 0.5, whose fraction is 0 for odd n_in.
    """
    if fallback:
        return 1, 1, math.floor(n_in / 2 - 0.5) - 1, n_in % 2
    return n_in >> k, 1 << k, (1 << (k - 1)) - 2, 0


@dataclass(frozen=True, eq=False)  # hashed by identity: make_plan caches it
class Plan:
    """Everything the launches of one (B, H, W, selection, tiling) need, computed once."""
    levels: tuple[int, ...]  # active scales
    shapes: tuple[tuple[int, int], ...]  # (h_k, w_k), all six
    geom: tuple  # (6, GW) ints: the geometry table (layout.py)
    cols: tuple  # (NUM_COLS,) ints: output column of each loss, -1 if unselected
    sel: int  # SEL of the kernels: bit t per selected loss type, bit T_AMLR (layout.py)
    plane: int  # elements of one workspace plane (all active scales, all samples)
    ntp: int  # programs of the pyramid launch (per sample)
    ntl: int  # programs of the loss and gradient launches
    nrow: int  # programs of the horizontal box passes (0: no M_n selected)
    nut: int  # programs of the column stage of the transposed pyramid
    fwd_planes: int  # planes in the forward workspace, then the partial sums
    ws_numel: int
    bws_numel: int
    ubase: int  # offset of the column stage's output in the backward workspace
    blocks: Blocks


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=256)
def make_plan(B: int, H: int, W: int, indices: tuple[int, ...], blocks: Blocks) -> Plan:
    """Level sizes and taps, active scales, program counts and workspace sizes."""
    sel = set(indices)
    types = {LOSS_TYPES[i % NUM_TYPES] for i in sel if i < L.COL_SI}
    active = {i // NUM_TYPES for i in sel if i < L.COL_SI}
    amlr = bool(sel & {L.COL_SI, L.COL_GR})
    if amlr:
        active.add(0)
    # Plain ints: a plan may first be made under a fake mode (register_fake), where any
    # tensor created would be fake; the real tables are made in _device_tables.
    geom = []
    shapes = []
    off = uoff = 0
    starts = dict.fromkeys(("row", "col", "ut"), 0)
    sel_bits = L.selection_bits(types, amlr)
    any_box = bool(sel_bits & L.BOX_BITS)
    for k in range(NUM_SCALES):
        if k == 0:  # D^0 is the input: no taps
            h, rs, ro, rodd = H, 1, 0, 0
            w, cs, co, codd = W, 1, 0, 0
        else:
            fb = (H >> k) == 0 or (W >> k) == 0
            h, rs, ro, rodd = _axis(H, k, fb)
            w, cs, co, codd = _axis(W, k, fb)
        shapes.append((h, w))
        on = k in active
        n = {
            "row": _cdiv(h, blocks.row[0]) if any_box else 0,
            "col": _cdiv(w, blocks.col[1]) * _cdiv(h, blocks.seg),
            "ut": _cdiv(h, blocks.ut[0]) * _cdiv(W, blocks.ut[1]) if k > 0 else 0,
        }
        row = [h, w, off if on else 0, rs, ro, cs, co, rodd, codd, uoff if on else 0, int(on)]
        for name in ("row", "col", "ut"):
            cnt = n[name] if on else 0
            row += [starts[name], cnt]
            starts[name] += cnt
        geom.append(tuple(row + [0] * (L.GW - len(row))))
        if on:
            off += B * h * w
            if k > 0:
                uoff += B * h * W
    cols = [-1] * L.NUM_COLS
    for j, i in enumerate(indices):
        cols[i] = j
    plane = off
    bs = blocks.pyr[0]
    assert bs == blocks.pyr[1] and bs >= 1 << (NUM_SCALES - 1) and bs & (bs - 1) == 0, blocks.pyr
    nbw = _cdiv(W, bs)
    ntp = _cdiv(H, bs) * nbw  # pyramid blocks per sample
    ntl, nrow, nut = starts["col"], starts["row"], starts["ut"]
    # Planes past the first four (and past GP in backward) serve the M_n losses only.
    fwd_planes = L.NUM_FWD_PLANES if any_box else L.NUM_FWD_PLANES_NO_BOX
    ws_numel = fwd_planes * plane + B * ntp * L.PYR_PARTS + B * ntl * L.NQ
    ubase = (L.NUM_BWD_PLANES if any_box else L.NUM_BWD_PLANES_NO_BOX) * plane
    if max(ws_numel, ubase + uoff) >= 2**31:
        raise ValueError(f"mlrb triton backend: a batch of {B}x1x{H}x{W} needs a workspace beyond "
                         "int32 indexing (2^31 floats); split the batch into smaller calls")
    return Plan(tuple(sorted(active)), tuple(shapes), tuple(geom), tuple(cols), sel_bits, plane, ntp, ntl, nrow,
                nut, fwd_planes, ws_numel, ubase + uoff, ubase, blocks)


@functools.lru_cache(maxsize=256)
def _device_tables(plan: Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(plan.geom, dtype=torch.int32, device=device),
            torch.tensor(plan.cols, dtype=torch.int32, device=device))


def _prep(pred, mask, indices):
    """The plan and its device tables, pred as a contiguous (B, H, W) and the mask as
    uint8 (None without one)."""
    B, _, H, W = pred.shape
    plan = make_plan(B, H, W, tuple(int(i) for i in indices), current_blocks())
    geom, cols = _device_tables(plan, pred.device)
    pred = pred.reshape(B, H, W).contiguous()
    mask_u8 = None if mask is None else mask.reshape(B, H, W).contiguous().view(torch.uint8)
    return B, H, W, plan, geom, cols, pred, mask_u8


# ----------------------------------------------------------------------------- forward
def _forward(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward):
    box, launch, _, fwd, pyramid, reduce = _kernels()
    B, H, W, plan, geom, cols, pred, m = _prep(pred, mask, indices)
    gt = gt.reshape(B, H, W).contiguous()
    bl = plan.blocks
    assert bl.col[1] == bl.col_bwd[1] and bl.seg % bl.col[0] == 0 == bl.seg % bl.col_bwd[0], \
        "the loss and gradient kernels share their programs (column strip, row segment)"
    ws = torch.empty(plan.ws_numel, device=pred.device, dtype=torch.float32)
    out = torch.zeros(B, len(indices), device=pred.device, dtype=torch.float32)
    stats = torch.empty(B, NUM_SCALES * L.NQ, device=pred.device, dtype=torch.float32)
    part_pyr = ws[plan.fwd_planes * plan.plane:]
    part = part_pyr[B * plan.ntp * L.PYR_PARTS:]
    has_mask = m is not None
    mptr = m if has_mask else pred
    launch.launch(pyramid.pyramid_fwd_kernel, (plan.ntp, B), pred, gt, mptr, ws, part_pyr, geom,
                  H, W, plan.plane, _cdiv(W, bl.pyr[0]), plan.ntp, HAS_MASK=has_mask, BS=bl.pyr[0],
                  num_warps=bl.pyr[2])
    if plan.nrow:
        launch.launch(box.box_rows_fwd_kernel, (plan.nrow, B), ws, geom, plan.plane,
                      HAS_MASK=has_mask, SEL=plan.sel & L.BOX_BITS, RH=bl.row[0], CW=bl.row[1],
                      num_warps=bl.row[2])
    launch.launch(fwd.loss_space_fwd_kernel, (plan.ntl, B), ws, part_pyr, part, geom, plan.plane,
                  plan.ntp, plan.ntl, HAS_MASK=has_mask, SEL=plan.sel, SAVE_Y=bool(save_for_backward),
                  RH=bl.col[0], CW=bl.col[1], SEG=bl.seg, PCH=bl.reduce_chunk * 4,
                  num_warps=bl.col[2])
    launch.launch(reduce.reduce_kernel, (B,), part_pyr, part, geom, cols, out, stats, plan.ntp,
                  plan.ntl, len(indices), float(si_lambda), float(si_scale), SI_SQRT=bool(si_sqrt),
                  SEL=plan.sel & L.AMLR_BIT, CH=bl.reduce_chunk, num_warps=bl.reduce_warps)
    return out, stats, ws


# ----------------------------------------------------------------------------- backward
def _backward(grad_out, pred, mask, ws, stats, indices, si_lambda, si_sqrt, si_scale):
    box, launch, bwd, _, pyramid, _ = _kernels()
    B, H, W, plan, geom, cols, pred, m = _prep(pred, mask, indices)
    bl = plan.blocks
    grad_out = grad_out.to(torch.float32).contiguous()
    ws, stats = ws.contiguous(), stats.contiguous()  # read as flat buffers (a direct call may pass views)
    bws = torch.empty(plan.bws_numel, device=pred.device, dtype=torch.float32)
    grad = torch.empty(B, 1, H, W, device=pred.device, dtype=pred.dtype)
    has_mask = m is not None
    mptr = m if has_mask else pred
    if plan.nrow:
        launch.launch(box.box_rows_bwd_kernel, (plan.nrow, B), ws, bws, geom, plan.plane,
                      SEL=plan.sel & L.BOX_BITS, RH=bl.row[0], CW=bl.row[1], num_warps=bl.row[2])
    launch.launch(bwd.loss_space_bwd_kernel, (plan.ntl, B), ws, bws, stats, grad_out, geom, cols,
                  plan.plane, len(indices), float(si_lambda), float(si_scale), HAS_MASK=has_mask,
                  SEL=plan.sel, SI_SQRT=bool(si_sqrt), RH=bl.col_bwd[0], CW=bl.col_bwd[1], SEG=bl.seg,
                  num_warps=bl.col_bwd[2])
    if plan.nut:
        launch.launch(pyramid.pyramid_bwd_cols_kernel, (plan.nut, B), bws, geom, W, plan.plane,
                      plan.ubase, TH=bl.ut[0], TW=bl.ut[1], num_warps=bl.ut[2])
    launch.launch(pyramid.pyramid_bwd_rows_kernel, (_cdiv(H, bl.ut[0]) * _cdiv(W, bl.ut[1]), B),
                  bws, geom, mptr, grad, H, W, plan.plane, plan.ubase, HAS_MASK=has_mask,
                  TH=bl.ut[0], TW=bl.ut[1], num_warps=bl.ut[2])
    return grad


# ----------------------------------------------------------------------------- checks
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # float64: the reference (loss_space below)


def _check_fwd(op, pred, gt, mask, indices, si_lambda, si_scale, real: bool) -> None:
    check_inputs(op, pred, gt, mask, indices, si_lambda, si_scale, _DTYPES)
    if real:  # not in the fake implementations: their tensors are on the real device anyway
        reason = unavailable_reason(pred.device)
        if reason is not None:
            raise ValueError(f"{op}: cannot run on {pred.device} tensors: {reason}")


def _check_bwd(op, grad_out, pred, mask, ws, stats, indices, si_lambda, si_scale, real: bool) -> None:
    """The backward reads the forward's workspace and sums: their sizes must be the plan's."""
    _check_fwd(op, pred, pred, mask, indices, si_lambda, si_scale, real)
    check_grad(op, grad_out, pred, len(indices))
    B, _, H, W = (int(d) for d in pred.shape)
    plan = make_plan(B, H, W, tuple(int(i) for i in indices), current_blocks())
    for what, t, shape in (("ws", ws, (plan.ws_numel,)), ("stats", stats, (B, NUM_SCALES * L.NQ))):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or tuple(t.shape) != shape \
                or t.device != pred.device:
            got = (t.dtype, tuple(t.shape), str(t.device)) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: {what} must be the forward's float32 {shape} tensor on {pred.device}, got {got}")


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("mlrb_triton::loss_space_fwd", mutates_args=())
def loss_space_fwd(
    pred: torch.Tensor, gt: torch.Tensor, mask: Optional[torch.Tensor], indices: list[int],
    si_lambda: float, si_sqrt: bool, si_scale: float, save_for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses (B, n), per-scale sums (B, 6 * NQ), workspace kept for backward)."""
    _check_fwd("mlrb_triton::loss_space_fwd", pred, gt, mask, indices, si_lambda, si_scale, real=True)
    with _device_ctx(pred):
        return _forward(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward)


@loss_space_fwd.register_fake
def _(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward):
    _check_fwd("mlrb_triton::loss_space_fwd", pred, gt, mask, indices, si_lambda, si_scale, real=False)
    # The workspace size depends on the tiling of every scale: specialise symbolic sizes.
    B, H, W = (int(d) for d in (pred.shape[0], pred.shape[-2], pred.shape[-1]))
    plan = make_plan(B, H, W, tuple(int(i) for i in indices), current_blocks())
    f32 = dict(device=pred.device, dtype=torch.float32)
    return (pred.new_empty((B, len(indices)), **f32), pred.new_empty((B, NUM_SCALES * L.NQ), **f32),
            pred.new_empty((plan.ws_numel,), **f32))


@torch.library.custom_op("mlrb_triton::loss_space_bwd", mutates_args=())
def loss_space_bwd(
    grad_out: torch.Tensor, pred: torch.Tensor, mask: Optional[torch.Tensor], ws: torch.Tensor,
    stats: torch.Tensor, indices: list[int], si_lambda: float, si_sqrt: bool, si_scale: float,
) -> torch.Tensor:
    """d(sum grad_out * L) / d pred, shape and dtype of pred."""
    _check_bwd("mlrb_triton::loss_space_bwd", grad_out, pred, mask, ws, stats, indices, si_lambda, si_scale,
               real=True)
    with _device_ctx(pred):
        return _backward(grad_out, pred, mask, ws, stats, indices, si_lambda, si_sqrt, si_scale)


@loss_space_bwd.register_fake
def _(grad_out, pred, mask, ws, stats, indices, si_lambda, si_sqrt, si_scale):
    _check_bwd("mlrb_triton::loss_space_bwd", grad_out, pred, mask, ws, stats, indices, si_lambda, si_scale,
               real=False)
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, _ = inputs
    _, stats, ws = output
    ctx.save_for_backward(pred, saveable(mask), ws, stats)  # a copy of an inference-mode mask
    ctx.params = (list(indices), si_lambda, si_sqrt, si_scale)


def _autograd_backward(ctx, grad_out, _grad_stats, _grad_ws):
    pred, mask, ws, stats = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 8
    grad = loss_space_bwd(grad_out, pred, mask, ws, stats, *ctx.params)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("mlrb_triton::loss_space_fwd", _autograd_backward,
                                setup_context=_setup_context)
torch.library.register_autograd("mlrb_triton::loss_space_bwd", no_double_backward("triton"))


# ----------------------------------------------------------------------------- torch.func
class _Transformed(torch.autograd.Function):
    """The ops' calls under torch.func transforms, which torch.library's generated autograd
    Function does not support: grad, vjp, jacrev (setup_context) and vmap (a rule that folds
    the vmapped dimension into the batch: one launch sequence). Same kernels, same bits."""

    @staticmethod
    def forward(pred, gt, mask, params, save):
        with _device_ctx(pred):
            return _forward(pred, gt, mask, *params, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pred, _, mask, params, _ = inputs
        _, stats, ws = output
        ctx.mark_non_differentiable(stats, ws)
        ctx.save_for_backward(pred, saveable(mask), ws, stats)
        ctx.params = params

    @staticmethod
    def backward(ctx, grad_out, _grad_stats, _grad_ws):
        pred, mask, ws, stats = ctx.saved_tensors
        return _TransformedGrad.apply(grad_out, pred, mask, ws, stats, ctx.params), None, None, None, None

    @staticmethod
    def vmap(info, in_dims, pred, gt, mask, params, save):
        out, stats, ws = _Transformed.apply(*modes.fold(info, in_dims[:3], pred, gt, mask), params, save)
        # The workspace is the folded batch's, laid out by its plan: not per sample, not batched.
        return (modes.unfold(info, out), modes.unfold(info, stats), ws), (0, 0, None)


class _TransformedGrad(torch.autograd.Function):
    """_Transformed's backward: a Function of its own with a vmap rule (vmap of grad), which
    refuses a second derivative."""

    @staticmethod
    def forward(grad_out, pred, mask, ws, stats, params):
        with _device_ctx(pred):
            return _backward(grad_out, pred, mask, ws, stats, *params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(no_double_backward("triton"))

    @staticmethod
    def vmap(info, in_dims, grad_out, pred, mask, ws, stats, params):
        grad_out, pred, mask, stats = modes.fold(info, (*in_dims[:3], in_dims[4]), grad_out, pred, mask, stats)
        return modes.unfold(info, _TransformedGrad.apply(grad_out, pred, mask, ws, stats, params)), 0


def _device_ctx(t: torch.Tensor):
    if t.is_cuda:
        return torch.cuda.device(t.device)
    # Interpreter only: its host-side tensor copies must not meet an active dispatch mode
    # (e.g. AOTAutograd's first-call aliasing check), which cannot see real storage.
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


# ----------------------------------------------------------------------------- entry point
def loss_space(pred, gt, mask, indices, si_lambda=1.0, si_sqrt=False, si_scale=1.0) -> torch.Tensor:
    """Selected losses (B, len(indices)) of (B, 1, H, W) pred, gt and optional bool mask.

    float16 / bfloat16 / float32 inputs run the Triton kernels with float32 arithmetic.
    float64 inputs run the reference (float64) path: the kernels accumulate in float32.
    """
    global _warned_f64
    if pred.dtype == torch.float64 or gt.dtype == torch.float64:
        if not _warned_f64:
            _warned_f64 = True
            warnings.warn("mlrb: the Triton backend computes in float32; float64 inputs use the "
                          "float64 reference implementation instead.", RuntimeWarning, stacklevel=3)
        from mlrb import reference
        return reference.loss_space(pred, gt, mask, indices, si_lambda=si_lambda, si_sqrt=si_sqrt,
                                    si_scale=si_scale)
    save = torch.is_grad_enabled() and pred.requires_grad
    if modes.route(pred, gt, mask) == "func":
        _check_fwd("mlrb_triton::loss_space_fwd", pred, gt, mask, indices, si_lambda, si_scale, real=True)
        params = (list(indices), float(si_lambda), bool(si_sqrt), float(si_scale))
        # Under torch.func a wrapped pred need not say it requires grad (grad of vmap): save.
        return _Transformed.apply(pred, gt, mask, params, torch.is_grad_enabled())[0]
    out, _, _ = loss_space_fwd(pred, gt, mask, list(indices), float(si_lambda), bool(si_sqrt),
                               float(si_scale), save)
    return out
