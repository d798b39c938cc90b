"""Drop-in replacement for the paper trainer's ``compute_multi_loss``.

A trainer written for the code of Lee & Kim (ECCV 2020) switches to mlrb by changing one
import: ``from mlrb.compat import compute_multi_loss``.
"""
from __future__ import annotations

import torch

from mlrb.loss_space import fused_loss_space
from mlrb.names import LOSS_NAMES, TRAINER_LOSS_NAMES


def compute_multi_loss(pred: torch.Tensor, gt: torch.Tensor, loss_valid=None, **kwargs) -> list[torch.Tensor]:
    """The 78 per-sample losses, each (B,), in the paper trainer's order (TRAINER_LOSS_NAMES).

    ``loss_valid``: optional 78 flags in that same order; only enabled entries are computed,
    disabled ones are zeros (no cost, no gradient). Keyword arguments go to
    :func:`mlrb.fused_loss_space` (mask, backend, ...).
    """
    n = len(TRAINER_LOSS_NAMES)
    if loss_valid is None:
        enabled = [True] * n
    else:
        enabled = [bool(v) for v in (loss_valid.tolist() if torch.is_tensor(loss_valid) else loss_valid)]
        if len(enabled) != n:
            raise ValueError(f"loss_valid must have {n} entries (trainer order), got {len(enabled)}")
    names = [name for name, on in zip(TRAINER_LOSS_NAMES, enabled) if on]
    if not names:  # the dtype the losses would have had (fused_loss_space: float64 for float64 pred)
        zeros = torch.zeros(pred.shape[0], device=pred.device,
                            dtype=torch.float64 if pred.dtype == torch.float64 else torch.float32)
        return [zeros.clone() for _ in range(n)]
    values = fused_loss_space(pred, gt, select=names, **kwargs)
    column = {name: values[:, j] for j, name in enumerate(names)}
    zeros = values.new_zeros(values.shape[0])
    return [column.get(name, zeros) for name in TRAINER_LOSS_NAMES]


__all__ = ["compute_multi_loss", "LOSS_NAMES", "TRAINER_LOSS_NAMES"]
