"""Multi-loss rebalancing of Lee & Kim (ECCV 2020), Sec. 3.2, with its public trainer's
conventions (see ../shared/spec/rebalancing.md).

Before the first period ends every weight is 1/n. At the end of the first period the
weights are initialized so that every loss contributes equally (Eq. 9), scaled so the
overall loss keeps its size; at the end of every later period they are rebalanced (Eq. 11)
by how each loss's share of the overall loss moved, under a lambda that follows a schedule
(the paper: 3 -> -3).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from mlrb.weighting.base import STATE_DTYPE, LossWeighting, as_vector


def paper_lambda_schedule(epoch: int, start: float = 3.0, end: float = -3.0, step: float = 1.5) -> float:
    """The paper's default rebalancing parameter "lambda: 3 -> -3" for a 0-based epoch.

    lambda(epoch) = max(start - step * epoch, end): 3, 1.5, 0, -1.5, -3, -3, ... A positive
    lambda first favours the easy losses, a negative one later the difficult ones (Sec. 3.2).
    For an increasing schedule pass start < end and a negative step.
    """
    value = start - step * epoch
    return max(value, end) if step >= 0 else min(value, end)


def initialize_weights(w: Tensor, mean: Tensor, scale: Tensor, fresh: Tensor) -> Tensor:
    """Eq. 9 scaled so the overall loss keeps its size: w_i = A * s_i / Lbar_i on ``fresh``.

    A = sum_j w_j * Lbar_j is the overall loss under the weights used in the period. With
    s_i = 1/n every contribution w_i * Lbar_i becomes A/n, so the sum stays A.
    """
    A = (w * mean).sum()
    safe = torch.where(fresh, mean, torch.ones_like(mean))  # only fresh losses have mean > 0
    return torch.where(fresh, A * scale / safe, w)


def initialize_or_step(wt: LossWeighting, mean: Tensor, scale: Tensor, step) -> Tensor:
    """New weights at the end of a period, shared by the rebalancers.

    ``step(w, mean, active)`` updates the losses positive in this and the last period
    (after the first period); a loss positive for the first time is initialized by Eq. 9
    with scale s_i; the others keep their weight (no inf/NaN from zero losses).
    """
    wt._require_nonnegative(mean)
    w = wt.weights
    pos = wt.enabled & (mean > 0)
    new = step(w, mean, wt.initialized & pos & (wt.last_mean > 0)) if wt._period > 0 else w.clone()
    fresh = pos & ~wt.initialized
    if fresh.any():
        new = torch.where(fresh, initialize_weights(w, mean, scale, fresh), new)
        wt.initialized |= fresh
    return new


class MultiLossRebalancer(LossWeighting):
    """Loss rebalancing of Lee & Kim (2020): Eq. 9 initialization, then Eq. 11 per period.

    At the end of every period after the first, with Lbar the period's mean losses, Lprev
    the previous period's, A = sum_i w_i Lbar_i and Aprev = sum_i w_i Lprev_i (both under the
    current weights, as in the paper's public trainer)::

        adjust_i = clip(1 + lambda * ((A / Aprev) * (Lprev_i / Lbar_i) - 1), lo, hi)
        w_i <- w_i * adjust_i

    Unclipped this is w_i <- w_i * (1 - lambda * dP_i / P_i) of Eq. 11 with P_i = L_i / L_all,
    and it leaves the overall loss A unchanged.

    Args:
        n: number of losses.
        lam: lambda of Eq. 11, a number or a callable ``epoch -> lambda`` (default: the
            paper's schedule :func:`paper_lambda_schedule`, 3 -> -3 over 0-based epochs).
        init_scale: s_i of the initialization w_i = A * s_i / Lbar_i, a number or n values
            (default 1/n over the enabled losses: equal contributions).
        clip: bounds (lo, hi) of the per-period factor, with lo <= 1 <= hi (default
            (0.5, 2), the public trainer's); None for the unclipped Eq. 11.
        max_ratio: optional cap on max(w)/min(w) over the enabled losses. Weights are
            clamped, in log space, to a band of that ratio centred on their geometric median,
            then rescaled so the overall loss stays the same. It counters the known weakness
            that a nearly-zero loss receives a huge initial weight the clip cannot undo.
        **options: the period and logging options of
            :class:`~mlrb.weighting.base.LossWeighting` (names, enabled, steps_per_period,
            steps_per_epoch, periods_per_epoch, sync_distributed, process_group).

    A loss whose period mean is 0 keeps its weight (no inf/NaN): it is initialized at the
    first period in which its mean is positive and takes part in Eq. 11 only while both its
    current and previous means are positive. Disabled losses have weight 0 throughout.

    Example::

        w = MultiLossRebalancer(78, names=mlrb.LOSS_NAMES, steps_per_epoch=len(loader))
        for epoch in range(E):
            for pred, gt, mask in loader:
                loss = w(mlrb.fused_loss_space(pred, gt, mask))  # (B, 78) -> scalar
                loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        n: int,
        lam: float | Callable[[int], float] = paper_lambda_schedule,
        *,
        init_scale: float | Sequence[float] | Tensor | None = None,
        clip: tuple[float, float] | None = (0.5, 2.0),
        max_ratio: float | None = None,
        initialize: bool = True,
        **options,
    ) -> None:
        super().__init__(n, **options)
        # initialize=False: "R without I" (Table 5(d) row 3): weights stay 1/n instead of Eq. 9.
        self.initialize = bool(initialize)
        if not callable(lam):
            lam = float(lam)
            if not math.isfinite(lam):
                raise ValueError(f"lam must be finite, got {lam}")
        self.lam = lam
        if clip is not None:
            lo, hi = (float(c) for c in clip)
            if not (0.0 <= lo <= 1.0 <= hi):
                raise ValueError(f"clip must satisfy 0 <= lo <= 1 <= hi, got {clip}")
            clip = (lo, hi)
        self.clip = clip
        if max_ratio is not None and not float(max_ratio) >= 1.0:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        self.max_ratio = None if max_ratio is None else float(max_ratio)

        en = self.enabled.to(STATE_DTYPE)
        self.register_buffer("weights", en / self.n_enabled)  # 1/n before initialization
        scale = as_vector(1.0 / self.n_enabled if init_scale is None else init_scale, n, "init_scale")
        if (scale < 0).any():
            raise ValueError("init_scale must be >= 0")
        self.register_buffer("init_scale", scale)
        self.register_buffer("initialized", torch.zeros(n, dtype=torch.bool))

    def lambda_at(self, epoch: int) -> float:
        """lambda of Eq. 11 for a 0-based epoch."""
        lam = float(self.lam(epoch)) if callable(self.lam) else self.lam
        if not math.isfinite(lam):
            raise ValueError(f"lambda schedule gave {lam} for epoch {epoch}")
        return lam

    @property
    def current_lambda(self) -> float:
        """lambda used by the last rebalancing (the epoch of the last period ended)."""
        return self.lambda_at(self._epoch)

    def _update(self, mean: Tensor, epoch: int) -> None:
        was = self.initialized.clone()
        new = initialize_or_step(self, mean, self.init_scale,
                                 lambda w, m, active: self._rebalance(w, m, epoch, active))
        if not self.initialize:
            new = torch.where(self.initialized & ~was, self.weights, new)
        if self.max_ratio is not None:
            new = self._cap_ratio(new, mean)
        self.weights.copy_(new)

    def _rebalance(self, w: Tensor, mean: Tensor, epoch: int, active: Tensor) -> Tensor:
        """Eq. 11 on the losses ``active`` in both periods; the others keep their weight."""
        if not active.any():
            return w.clone()
        lam = self.lambda_at(epoch)
        Lprev = self.last_mean
        # A and Aprev over the active losses only: a loss that is zero in one of the two
        # periods then drops out without breaking sum_i w_i Lbar_i = A (Sec. 3.2).
        A = (w * mean * active).sum()
        A_prev = (w * Lprev * active).sum()
        one = torch.ones_like(mean)
        ratio = (A / A_prev) * torch.where(active, Lprev, one) / torch.where(active, mean, one)
        adjust = 1.0 + lam * (ratio - 1.0)
        if self.clip is not None:
            adjust = adjust.clamp(*self.clip)
        return torch.where(active, w * adjust, w)

    def _cap_ratio(self, w: Tensor, mean: Tensor) -> Tensor:
        sel = self.enabled & self.initialized & (w > 0)
        if int(sel.sum()) < 2:
            return w
        logw = w[sel].log()
        centre = torch.quantile(logw, 0.5)
        half = 0.5 * math.log(self.max_ratio)
        capped = (logw.clamp(centre - half, centre + half)).exp()
        before = (w[sel] * mean[sel]).sum()
        after = (capped * mean[sel]).sum()
        if after > 0:
            capped = capped * (before / after)  # keep the overall loss
        out = w.clone()
        out[sel] = capped
        return out

    def extra_repr(self) -> str:
        lam = getattr(self.lam, "__name__", repr(self.lam)) if callable(self.lam) else self.lam
        return f"{super().extra_repr()}, lam={lam}, clip={self.clip}, max_ratio={self.max_ratio}"
