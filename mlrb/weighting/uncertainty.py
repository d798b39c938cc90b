"""Uncertainty weighting (Kendall et al. 2018), the baseline of Lee & Kim's Table 5(e)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mlrb.weighting.base import LossWeighting, as_vector


class UncertaintyWeighting(LossWeighting):
    """total = sum_i exp(-s_i) * L_i + s_i with learnable log-variances s_i.

    The s_i are an ``nn.Parameter`` (initially ``init`` = 0): add this module's parameters
    to the optimizer. The total can be negative once some s_i < 0; that is expected. The
    weights exp(-s_i) and contributions exp(-s_i) * Lbar_i are readable for logging like
    the other weighters; ``end_period`` only records the period's means (nothing is
    rebalanced). Disabled losses take no part in either term.

    Args:
        n: number of losses.
        init: initial s_i, a number or n values (default 0: every weight starts at 1).
        **options: the period and logging options of
            :class:`~mlrb.weighting.base.LossWeighting` (names, enabled, steps_per_period,
            steps_per_epoch, periods_per_epoch, sync_distributed, process_group).
    """

    def __init__(
        self,
        n: int,
        *,
        init: float | Sequence[float] | Tensor = 0.0,
        **options,
    ) -> None:
        super().__init__(n, **options)
        # float32 like the model's parameters; the optimizer steps it.
        self.log_var = nn.Parameter(as_vector(init, n, "init").float())

    @property
    def weights(self) -> Tensor:
        """exp(-s_i) (detached); 0 for disabled losses."""
        return torch.where(self.enabled, torch.exp(-self.log_var.detach()), torch.zeros_like(self.log_var))

    def _total(self, mean: Tensor) -> Tensor:
        dtype = torch.promote_types(mean.dtype, torch.float32)  # exp(-s) may exceed float16's range
        s = self.log_var.to(dtype)
        terms = torch.exp(-s) * mean.to(dtype) + s
        return torch.where(self.enabled, terms, torch.zeros_like(terms)).sum().to(mean.dtype)
