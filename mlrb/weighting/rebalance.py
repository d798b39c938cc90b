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
import numbers
from typing import Callable, Sequence

import torch
from torch import Tensor

from mlrb.weighting.base import STATE_DTYPE, LossWeighting, as_number, as_vector

# Largest weight any rebalancer gives: float32's largest finite number, so that the weights
# stay finite also when cast to the float32 losses of a step (a float64 weight of 1e40,
# the paper's Eq. 9 for a loss of 1e-38 next to 1e3, would make the float32 total inf).
W_MAX = torch.finfo(torch.float32).max
LOG_W_MAX = math.log(W_MAX)

# Default cap on max(w)/min(w) of MultiLossRebalancer. The paper's Eq. 9 makes the initial
# weight ratio equal to the ratio of the largest to the smallest initial period mean: over
# the 78 losses of the default `mlrb train` run (synthetic data, resnet18, 10 epochs) it is
# 2.4e2 at initialization; rebalancing then widens it, slowly while lambda > 0 and by
# about 6x per 20 periods once lambda = -3 favours the hard losses (3e2 at period 16, 2.0e3
# at period 37 of 40). Extrapolated to the paper's 20 epochs (80 periods) that is ~1e5, so
# the cap is 1e6: ten times above the spread that normal training reaches (there it changes
# nothing, bit for bit), while a nearly-zero loss (the paper repository's issue #3: 1e-12
# next to 1e3 gives 1e15) can no longer take a weight that the [0.5, 2] clip would need
# some 40 periods (10 epochs) of halving to bring back to the others' range.
DEFAULT_MAX_RATIO = 1e6


def paper_lambda_schedule(epoch: int, start: float = 3.0, end: float = -3.0, step: float = 1.5) -> float:
    """The paper's default rebalancing parameter "lambda: 3 -> -3" for a 0-based epoch.

    lambda moves from ``start`` towards ``end`` by |step| per epoch, then stays at ``end``:
    with the defaults 3, 1.5, 0, -1.5, -3, -3, ... A positive lambda first favours the easy
    losses, a negative one later the difficult ones (Sec. 3.2). The direction comes from
    start and end (start < end gives an increasing schedule), so the sign of ``step`` does
    not matter; step = 0 keeps ``start``.
    """
    for name, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"lambda schedule: {name} must be a finite number, got {v!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"lambda schedule: epoch must be an int >= 0, got {epoch!r}")
    if start >= end:
        return max(start - abs(step) * epoch, end)
    return min(start + abs(step) * epoch, end)


def initialize_weights(w: Tensor, mean: Tensor, scale: Tensor, fresh: Tensor) -> Tensor:
    """Eq. 9 scaled so the overall loss keeps its size: w_i = A * s_i / Lbar_i on ``fresh``.

    A = sum_j w_j * Lbar_j is the overall loss under the weights used in the period. With
    s_i = 1/n every contribution w_i * Lbar_i becomes A/n, so the sum stays A. Computed in
    log space and capped at W_MAX, so that even a loss of 1e-300 gets a finite weight.
    """
    terms = w * mean
    pos = terms > 0
    if not bool(pos.any()):
        return w.clone()
    log_terms = torch.where(pos, w.log() + mean.log(), torch.full_like(w, -math.inf))
    log_A = torch.logsumexp(log_terms, dim=0)  # log A without overflow
    safe = torch.where(fresh, mean, torch.ones_like(mean))  # only fresh losses have mean > 0
    log_w = log_A + scale.log() - safe.log()  # s_i = 0 gives log 0 = -inf, i.e. w_i = 0
    return torch.where(fresh, log_w.clamp(max=LOG_W_MAX).exp(), w)


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

    Safety, on by default (each departs from the paper only where its rule breaks down):

    * Weights stay positive: the factor is never below ``min_factor`` (default 0.01).
      Unclipped Eq. 11 with lambda = 3 gives a factor <= 0 as soon as a loss's share grew
      by half, and a negative weight would make the optimizer *maximise* that loss. With
      the default clip (0.5, 2) the floor never acts.
    * The weight ratio max(w)/min(w) is capped at ``max_ratio`` (default 1e6, see
      ``DEFAULT_MAX_RATIO`` in this module for why): a nearly-zero loss no longer gets a
      huge weight at initialization. ``max_ratio=None`` gives the paper's uncapped Eq. 9.
    * Weights are always finite: Eq. 9 is computed in log space and every weight is at
      most float32's largest number (3.4e38), also with ``max_ratio=None``.

    Args:
        n: number of losses.
        lam: lambda of Eq. 11, a number or a callable ``epoch -> lambda`` (default: the
            paper's schedule :func:`paper_lambda_schedule`, 3 -> -3 over 0-based epochs).
        init_scale: s_i of the initialization w_i = A * s_i / Lbar_i, a number or n values
            (default 1/n over the enabled losses: equal contributions).
        clip: bounds (lo, hi) of the per-period factor, with 0 <= lo <= 1 <= hi (default
            (0.5, 2), the public trainer's); None for the unclipped Eq. 11.
        min_factor: floor of the per-period factor (applied after ``clip``), in (0, 1];
            default 0.01. It keeps every weight positive; a factor of 0 or less from
            Eq. 11 asks for the weight to vanish, and 0.01 shrinks it by 100x in one period
            while leaving it positive and able to recover. It can be made smaller, not 0.
        max_ratio: cap on max(w)/min(w) over the enabled losses (default 1e6; None: no cap,
            the paper's behaviour). Weights are clamped, in log space, to a band of that
            ratio centred on their geometric median, then rescaled so the overall loss stays
            the same. It counters the known weakness that a nearly-zero loss receives a
            huge initial weight the clip cannot undo.
        initialize: False skips the Eq. 9 initialization ("R without I", Table 5(d) row 3):
            the weights stay 1/n until Eq. 11 rebalances them.
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
        max_ratio: float | None = DEFAULT_MAX_RATIO,
        min_factor: float = 0.01,
        initialize: bool = True,
        **options,
    ) -> None:
        super().__init__(n, **options)
        # initialize=False: "R without I" (Table 5(d) row 3): weights stay 1/n instead of Eq. 9.
        self.initialize = bool(initialize)
        if not callable(lam):
            lam = as_number(lam, "lam (a number or a callable epoch -> lambda)")
        self.lam = lam
        if clip is not None:
            try:
                lo, hi = (float(c) for c in clip)
            except (TypeError, ValueError):
                raise ValueError(f"clip must be None or two numbers (lo, hi), got {clip!r}") from None
            if not (0.0 <= lo <= 1.0 <= hi < math.inf):
                raise ValueError(f"clip must satisfy 0 <= lo <= 1 <= hi < inf, got {clip}")
            clip = (lo, hi)
        self.clip = clip
        if max_ratio is not None and not as_number(max_ratio, "max_ratio (or None for no cap)") >= 1.0:
            raise ValueError(f"max_ratio must be a number >= 1 (or None for no cap), got {max_ratio}")
        self.max_ratio = None if max_ratio is None else float(max_ratio)
        if not 0.0 < as_number(min_factor, "min_factor") <= 1.0:
            raise ValueError(f"min_factor must lie in (0, 1] (weights must stay positive), got {min_factor}")
        self.min_factor = float(min_factor)

        en = self.enabled.to(STATE_DTYPE)
        self.register_buffer("weights", en / self.n_enabled)  # 1/n before initialization
        scale = as_vector(1.0 / self.n_enabled if init_scale is None else init_scale, n, "init_scale")
        if (scale < 0).any():
            raise ValueError("init_scale must be >= 0")
        if not (scale[self.enabled] > 0).any():
            raise ValueError("init_scale is 0 for every enabled loss; every weight would become 0")
        self.register_buffer("init_scale", scale)
        self.register_buffer("initialized", torch.zeros(n, dtype=torch.bool))

    requires_nonnegative = True

    def lambda_at(self, epoch: int) -> float:
        """lambda of Eq. 11 for a 0-based epoch."""
        if not callable(self.lam):
            return self.lam
        value = self.lam(epoch)
        try:
            lam = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"lambda schedule returned {value!r} for epoch {epoch}; it must return a number") from None
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
        self.weights.copy_(new.clamp(max=W_MAX))

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
        if not bool(A > 0 and A_prev > 0):  # only zero weights active (init_scale 0): nothing to compare
            return w.clone()
        one = torch.ones_like(mean)
        ratio = (A / A_prev) * torch.where(active, Lprev, one) / torch.where(active, mean, one)
        ratio = ratio.clamp(max=1e300)  # Lprev / Lbar may overflow; 1e300 keeps lam * ratio finite
        adjust = 1.0 + lam * (ratio - 1.0)
        if self.clip is not None:
            adjust = adjust.clamp(*self.clip)
        adjust = adjust.clamp(min=self.min_factor)  # weights stay positive
        return torch.where(active, w * adjust, w)

    def _cap_ratio(self, w: Tensor, mean: Tensor) -> Tensor:
        sel = self.enabled & self.initialized & (w > 0)
        if int(sel.sum()) < 2:
            return w
        logw = w[sel].log()
        half = 0.5 * math.log(self.max_ratio)
        if float(logw.max() - logw.min()) <= 2 * half:
            return w  # within the cap: untouched (bit for bit)
        centre = torch.quantile(logw, 0.5)
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
        return (f"{super().extra_repr()}, lam={lam}, clip={self.clip}, max_ratio={self.max_ratio}, "
                f"min_factor={self.min_factor}")
