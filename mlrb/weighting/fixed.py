"""Fixed weights, for ablations (e.g. a single loss, or the paper's weights frozen)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from mlrb.weighting.base import STATE_DTYPE, LossWeighting, as_vector


class FixedWeights(LossWeighting):
    """total = sum_i w_i * L_i with constant weights.

    ``end_period`` only records the period's means, so contributions w_i * Lbar_i can be
    logged exactly as for the rebalancers.

    Args:
        n: number of losses.
        weights: a number or n values >= 0 (default 1/n over the enabled losses), at
            least one positive. Disabled losses get weight 0 whatever is given.
        **options: the period and logging options of
            :class:`~mlrb.weighting.base.LossWeighting` (names, enabled, steps_per_period,
            steps_per_epoch, periods_per_epoch, sync_distributed, process_group).
    """

    def __init__(
        self,
        n: int,
        weights: float | Sequence[float] | Tensor | None = None,
        **options,
    ) -> None:
        super().__init__(n, **options)
        w = as_vector(1.0 / self.n_enabled if weights is None else weights, n, "weights")
        if (w < 0).any():
            raise ValueError(f"weights must be >= 0 (a negative weight maximises its loss), got {w.tolist()}")
        if not (w[self.enabled] > 0).any():
            raise ValueError("weights are 0 for every enabled loss; the total would be 0")
        self.register_buffer("weights", w * self.enabled.to(STATE_DTYPE))
