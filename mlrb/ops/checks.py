"""Input checks of the registered ops (torch.ops.mlrb.*, torch.ops.mlrb_triton.*).

mlrb.fused_loss_space validates and normalises its inputs before it dispatches, but the
ops are public too (torch.ops namespace, torch.compile graphs, opcheck): whatever reaches
the kernels must either work or raise a Python exception here, never crash the process.
The checks read metadata only (no device sync), so they also run in the fake
implementations, and a bad call fails at trace time under torch.compile too.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from mlrb.names import ALL_NAMES


def check_inputs(op: str, pred: Tensor, gt: Tensor, mask: Optional[Tensor], indices: Sequence[int],
                 si_lambda: float, si_scale: float, dtypes: tuple[torch.dtype, ...]) -> None:
    """Raise ValueError / TypeError unless the op's kernels can run on these inputs.

    pred, gt: (B, 1, H, W), B, H, W >= 1 (an empty batch is an error, as in
    mlrb.fused_loss_space), same shape and device, dtype in ``dtypes``; mask: None or bool
    of the same shape and device; indices: distinct columns of mlrb.names.ALL_NAMES.
    """
    for what, x in (("pred", pred), ("gt", gt)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: {what} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in dtypes:
            raise TypeError(f"{op}: {what} must be one of {', '.join(map(str, dtypes))}, got {x.dtype}")
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"{op}: pred must be (B, 1, H, W); got shape {tuple(pred.shape)}")
    if gt.shape != pred.shape:
        raise ValueError(f"{op}: pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.numel() == 0:
        raise ValueError(f"{op}: pred/gt are empty: shape {tuple(pred.shape)} (an empty batch or map has no losses)")
    if gt.device != pred.device:
        raise ValueError(f"{op}: pred is on {pred.device} but gt is on {gt.device}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"{op}: mask must be None or a bool tensor, got {got}")
        if mask.shape != pred.shape:
            raise ValueError(f"{op}: mask shape {tuple(mask.shape)} differs from pred shape {tuple(pred.shape)}")
        if mask.device != pred.device:
            raise ValueError(f"{op}: mask is on {mask.device} but pred is on {pred.device}")
    check_indices(op, indices)
    for what, v in (("si_lambda", si_lambda), ("si_scale", si_scale)):
        if not math.isfinite(v):
            raise ValueError(f"{op}: {what} must be finite, got {v}")


def check_indices(op: str, indices: Sequence[int]) -> None:
    """indices: a non-empty list of distinct ints in [0, len(ALL_NAMES))."""
    indices = [int(i) for i in indices]  # under torch.compile(dynamic=True): specialise SymInts
    if len(indices) == 0:
        raise ValueError(f"{op}: indices is empty (select at least one loss)")
    for i in indices:
        if not 0 <= i < len(ALL_NAMES):
            raise ValueError(f"{op}: loss index out of range: {i} (valid: 0..{len(ALL_NAMES) - 1})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{op}: indices must be distinct, got {list(indices)}")


def check_grad(op: str, grad: Tensor, pred: Tensor, n: int) -> None:
    """The incoming gradient of a backward op: floating (B, n) on pred's device."""
    if not isinstance(grad, Tensor) or not grad.is_floating_point():
        got = grad.dtype if isinstance(grad, Tensor) else type(grad).__name__
        raise TypeError(f"{op}: grad must be a floating-point tensor, got {got}")
    if tuple(grad.shape) != (pred.shape[0], n):
        raise ValueError(f"{op}: grad must be (B, len(indices)) = ({pred.shape[0]}, {n}); got {tuple(grad.shape)}")
    if grad.device != pred.device:
        raise ValueError(f"{op}: grad is on {grad.device} but pred is on {pred.device}")


def saveable(t: Optional[Tensor]) -> Optional[Tensor]:
    """t, or a copy of it if it is an inference tensor (autograd cannot save those): a gt or
    mask made under torch.inference_mode works like any other."""
    return t.clone() if t is not None and t.is_inference() else t


def no_double_backward(backend: str):
    """An autograd formula for a backward op that says why there is no second derivative."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"mlrb: the fused {backend!r} backend has no second derivative (double backward, "
            "e.g. torch.autograd.grad(..., create_graph=True) followed by a backward through that "
            "gradient); use backend='reference' for higher-order gradients")
    return backward
