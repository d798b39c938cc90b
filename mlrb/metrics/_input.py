"""Shape normalisation shared by the metric functions (private)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_tensor(x, name: str) -> Tensor:
    """Accept a tensor or a numpy array; anything else is a clear error."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def as_bhw(x, name: str) -> Tensor:
    """(H,W), (B,H,W) or (B,1,H,W) -> (B,H,W) view."""
    x = as_tensor(x, name)
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    raise ValueError(f"{name} must have shape (H,W), (B,H,W) or (B,1,H,W); got {tuple(x.shape)}")


def check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ after normalisation to (B,H,W): "
                         f"{tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.numel() == 0:
        raise ValueError("pred and gt are empty")


def as_mask(mask, like: Tensor) -> Tensor:
    """Optional user mask, broadcast to (B,H,W) bool on like's device."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    m = as_bhw(mask, "mask").to(device=like.device)
    if m.dtype != torch.bool:
        m = m != 0
    if m.shape[-2:] != like.shape[-2:] or m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match {tuple(like.shape)}")
    return m.expand_as(like)
