"""The fused C++/OpenMP CPU backend of the loss space, registered as torch custom ops.

``mlrb::loss_space_cpu_fwd`` computes the selected losses per sample and, for autograd, the
statistics of each (sample, scale) that the backward needs before its pass over the scale
(the mean of pred - gt, the counts of the valid sets, the sum of the M loss's signs: a
(B, 6, STAT_WIDTH) float64 tensor, with the token of the forward call).
``mlrb::loss_space_cpu_bwd`` computes the gradient for pred from the incoming (B, n)
gradient, recomputing the rest; given the forward's statistics it skips the pre-passes
that re-read pred and gt, and, run on the forward's thread with no forward of the dtype
in between (as autograd runs it), it reads the pyramid levels that forward kept in its
scratch instead of rebuilding them (csrc/loss_space/cpu/kept_levels.h). Same bits either
way. Both are opaque to torch.compile (fake implementations give the shapes), like
torchvision's ops.

The file reads top to bottom: the kernels' calls (``_forward``, ``_backward``), the forward
op and its fake, the backward op and its fake, the autograd registration, the eager path
(``_Eager``, ``_Transformed``, ``_EagerGrad``: the same calls without torch.library's
dispatch layers, taken in eager mode and under torch.func transforms) and the entry point
``loss_space`` (called by mlrb.fused_loss_space). The kernels (csrc/loss_space/cpu/,
extension ``mlrb._C``) take raw buffers: contiguous float32/float64 (B, H, W) maps and an
optional bool mask (None: no mask is allocated).
They run on ``torch.get_num_threads()`` threads with a fixed work partition, so results
are bitwise identical for any thread count. half/bfloat16 inputs are computed in float32.

The ops check their inputs (mlrb/ops/checks.py) and so does the extension itself: bad
input raises ValueError / TypeError, never reaches the kernels. Gradients flow to pred
only; gt and mask may be inference tensors. There is no second derivative (use the
reference backend).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from mlrb.ops import modes
from mlrb.ops.checks import check_grad, check_inputs, no_double_backward, saveable

try:
    from mlrb import _C
except ImportError as exc:  # the extension was not built
    _C = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


def unavailable_reason(device: torch.device) -> str | None:
    """None if this backend can run on tensors of ``device``, else why not."""
    if _C is None:
        return f"the C++ extension mlrb._C is not built ({_IMPORT_ERROR}); run `pip install -e .`"
    if torch.device(device).type != "cpu":
        return "the cpu backend runs on CPU tensors only"
    return None


_DTYPES = (torch.float32, torch.float64)


def _check(op: str, pred, gt, mask, indices, si_lambda, si_scale) -> None:
    check_inputs(op, pred, gt, mask, indices, si_lambda, si_scale, _DTYPES)
    if gt.dtype != pred.dtype:
        raise TypeError(f"{op}: pred and gt dtypes differ: {pred.dtype} vs {gt.dtype}")


NUM_SCALES = 6  # the statistics are (B, NUM_SCALES, _C.STAT_WIDTH)


def _check_stats(op: str, stats, pred) -> None:
    """The backward's optional statistics must be a forward's (their values: checked by _C)."""
    if stats is None:
        return
    shape = (pred.shape[0], NUM_SCALES, _C.STAT_WIDTH)
    if not isinstance(stats, Tensor) or stats.dtype != torch.float64 or tuple(stats.shape) != shape \
            or stats.device.type != "cpu":
        got = (stats.dtype, tuple(stats.shape), str(stats.device)) if isinstance(stats, Tensor) \
            else type(stats).__name__
        raise ValueError(f"{op}: stats must be the forward's float64 {shape} CPU tensor (or None), got {got}")


def _maps(x: Tensor):
    """numpy (B, H, W) C-contiguous view (a copy if need be) of a (B, 1, H, W) CPU tensor."""
    return x.detach().reshape(x.shape[0], x.shape[-2], x.shape[-1]).contiguous().numpy()


def _threads() -> int:
    # Results do not depend on the count; the extension refuses more than MAX_THREADS.
    return min(torch.get_num_threads(), _C.MAX_THREADS)


# ---------------------------------------------------------------- the kernels' calls
def _forward(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward):
    """(losses in pred's dtype, statistics or an empty (0, 6, STAT_WIDTH)): inputs checked."""
    args = (_maps(pred), _maps(gt), None if mask is None else _maps(mask), list(indices), si_lambda, si_sqrt,
            si_scale, _threads())
    if save_for_backward:
        out, stats = _C.loss_space_forward(*args, return_stats=True)
        stats = torch.from_numpy(stats)
    else:
        out, stats = _C.loss_space_forward(*args), torch.empty((0, NUM_SCALES, _C.STAT_WIDTH), dtype=torch.float64)
    return torch.from_numpy(out).to(pred.dtype), stats


def _backward(grad, pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, stats):
    """d(sum grad * L) / d pred: inputs checked; stats: the forward's, or None."""
    g = _C.loss_space_backward(
        grad.detach().to(torch.float64).contiguous().numpy(), _maps(pred), _maps(gt),
        None if mask is None else _maps(mask), list(indices), si_lambda, si_sqrt, si_scale,
        _threads(), stats=None if stats is None else stats.detach().contiguous().numpy(),
    )
    return torch.from_numpy(g).view(pred.shape)


# ---------------------------------------------------------------- forward op
@torch.library.custom_op("mlrb::loss_space_cpu_fwd", mutates_args=(), device_types="cpu")
def loss_space_cpu_fwd(
    pred: Tensor,
    gt: Tensor,
    mask: Optional[Tensor],
    indices: Sequence[int],
    si_lambda: float,
    si_sqrt: bool,
    si_scale: float,
    save_for_backward: bool,
) -> tuple[Tensor, Tensor]:
    """(selected losses (B, n) of (B, 1, H, W) pred, gt (both float32 or both float64), the
    statistics for the backward: (B, 6, STAT_WIDTH) float64 if save_for_backward, else empty)."""
    _check("mlrb::loss_space_cpu_fwd", pred, gt, mask, indices, si_lambda, si_scale)
    return _forward(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward)


@loss_space_cpu_fwd.register_fake
def _(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save_for_backward):
    _check("mlrb::loss_space_cpu_fwd", pred, gt, mask, indices, si_lambda, si_scale)
    B = pred.shape[0] if save_for_backward else 0
    return (pred.new_empty((pred.shape[0], len(indices))),
            pred.new_empty((B, NUM_SCALES, _C.STAT_WIDTH), dtype=torch.float64))


# ---------------------------------------------------------------- backward op
@torch.library.custom_op("mlrb::loss_space_cpu_bwd", mutates_args=(), device_types="cpu")
def loss_space_cpu_bwd(
    grad: Tensor,
    pred: Tensor,
    gt: Tensor,
    mask: Optional[Tensor],
    indices: Sequence[int],
    si_lambda: float,
    si_sqrt: bool,
    si_scale: float,
    stats: Optional[Tensor] = None,
) -> Tensor:
    """d(sum grad * L) / d pred, shape and dtype of pred; stats: the forward's, or None."""
    _check("mlrb::loss_space_cpu_bwd", pred, gt, mask, indices, si_lambda, si_scale)
    check_grad("mlrb::loss_space_cpu_bwd", grad, pred, len(indices))
    _check_stats("mlrb::loss_space_cpu_bwd", stats, pred)
    return _backward(grad, pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, stats)


@loss_space_cpu_bwd.register_fake
def _(grad, pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, stats=None):
    _check("mlrb::loss_space_cpu_bwd", pred, gt, mask, indices, si_lambda, si_scale)
    check_grad("mlrb::loss_space_cpu_bwd", grad, pred, len(indices))
    _check_stats("mlrb::loss_space_cpu_bwd", stats, pred)
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, _ = inputs
    # The inputs and the forward's statistics (the backward recomputes everything else).
    # Inference tensors (e.g. gt loaded under torch.inference_mode) cannot be saved: a copy.
    ctx.save_for_backward(pred, saveable(gt), saveable(mask), output[1])
    ctx.params = (list(indices), si_lambda, si_sqrt, si_scale)


def _op_backward(ctx, grad, _grad_stats):
    pred, gt, mask, stats = ctx.saved_tensors
    if grad is None:
        return (None,) * 8
    # Without saved statistics (a forward with save_for_backward=False) the backward makes its own.
    grad_pred = loss_space_cpu_bwd(grad.contiguous(), pred, gt, mask, *ctx.params,
                                   stats if stats.shape[0] else None)
    return grad_pred, None, None, None, None, None, None, None


torch.library.register_autograd("mlrb::loss_space_cpu_fwd", _op_backward, setup_context=_setup_context)
torch.library.register_autograd("mlrb::loss_space_cpu_bwd", no_double_backward("cpu"))


# ---------------------------------------------------------------- eager path
def _save(ctx, pred, gt, mask, params, save, stats) -> None:
    ctx.mark_non_differentiable(stats)
    if save:
        ctx.save_for_backward(pred, saveable(gt), saveable(mask), stats)
        ctx.params = params


class _Eager(torch.autograd.Function):
    """The ops' forward and backward without torch.library's dispatch layers: about 20 Python
    frames per op call, which run with cold caches after the kernels (0.6-0.9 ms per forward
    + backward at real sizes). ``loss_space`` takes it on plain tensors in eager mode
    (mlrb.ops.modes.route), where the ops would do nothing more. Same bits."""

    @staticmethod
    def forward(ctx, pred, gt, mask, params, save):
        out, stats = _forward(pred, gt, mask, *params, save)
        _save(ctx, pred, gt, mask, params, save, stats)
        return out, stats

    @staticmethod
    def backward(ctx, grad, _grad_stats):
        pred, gt, mask, stats = ctx.saved_tensors
        route = modes.route(grad, pred)
        if route == "ops":  # e.g. a dispatch mode entered around the backward only: the op is seen
            grad_pred = loss_space_cpu_bwd(grad.contiguous(), pred, gt, mask, *ctx.params, stats)
        elif torch.is_grad_enabled() or route == "func":  # create_graph=True, torch.func
            grad_pred = _EagerGrad.apply(grad, pred, gt, mask, ctx.params, stats)
        else:
            grad_pred = _backward(grad, pred, gt, mask, *ctx.params, stats)
        return grad_pred, None, None, None, None


class _Transformed(_Eager):
    """_Eager under torch.func transforms: grad, vjp, jacrev (setup_context) and vmap (its
    rule). A Function of its own because with setup_context torch binds every call's
    arguments to the signature (17 us per call, twice per step)."""

    @staticmethod
    def forward(pred, gt, mask, params, save):
        return _forward(pred, gt, mask, *params, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs, output[1])

    @staticmethod
    def vmap(info, in_dims, pred, gt, mask, params, save):
        out = _Transformed.apply(*modes.fold(info, in_dims[:3], pred, gt, mask), params, save)
        return tuple(modes.unfold(info, t) for t in out), (0, 0)


class _EagerGrad(torch.autograd.Function):
    """_Eager's backward where it may be differentiated or transformed (create_graph=True,
    torch.func): a Function of its own that refuses a second derivative and has a vmap
    rule (vmap of grad: per-sample gradients)."""

    @staticmethod
    def forward(grad, pred, gt, mask, params, stats):
        return _backward(grad, pred, gt, mask, *params, stats)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(no_double_backward("cpu"))

    @staticmethod
    def vmap(info, in_dims, grad, pred, gt, mask, params, stats):
        grad, pred, gt, mask, stats = modes.fold(info, (*in_dims[:4], in_dims[5]), grad, pred, gt, mask, stats)
        return modes.unfold(info, _EagerGrad.apply(grad, pred, gt, mask, params, stats)), 0


# ---------------------------------------------------------------- entry point
def loss_space(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor | None,
    indices: Sequence[int],
    si_lambda: float = 1.0,
    si_sqrt: bool = False,
    si_scale: float = 1.0,
) -> Tensor:
    """(B, len(indices)) losses for (B, 1, H, W) CPU tensors; float64 for float64 pred, else float32.

    Called by mlrb.fused_loss_space after input checks. Non-contiguous and channels-last
    inputs are made contiguous; half/bfloat16 are computed in float32 (the gradient comes
    back in pred's dtype through autograd).
    """
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    pred = pred.to(dtype).contiguous()
    gt = gt.to(dtype).contiguous()
    if mask is not None:
        mask = mask.contiguous()
    save = torch.is_grad_enabled() and pred.requires_grad
    indices, si_lambda, si_sqrt, si_scale = list(indices), float(si_lambda), bool(si_sqrt), float(si_scale)
    route = modes.route(pred, gt, mask)
    if route == "ops":
        return loss_space_cpu_fwd(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, save)[0]
    _check("mlrb::loss_space_cpu_fwd", pred, gt, mask, indices, si_lambda, si_scale)
    params = (indices, si_lambda, si_sqrt, si_scale)
    if route == "plain":
        return _Eager.apply(pred, gt, mask, params, save)[0]
    # Under torch.func a wrapped pred need not say it requires grad (grad of vmap): save.
    return _Transformed.apply(pred, gt, mask, params, torch.is_grad_enabled())[0]
