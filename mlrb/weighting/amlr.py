"""Adaptive Momentum-based Loss Rebalancing (AMLR) of Yu & Heo (2023), Sec. III-C, Eqs. 8-12."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mlrb.names import AMLR_NAMES
from mlrb.weighting.base import STATE_DTYPE, LossWeighting, as_number, as_vector
from mlrb.weighting.rebalance import W_MAX, initialize_or_step

# The paper's initial weighting factors r for (scale-invariant, gradient), Sec. IV.
PAPER_INIT_RATIO = (0.99, 0.01)


class AMLRRebalancer(LossWeighting):
    """AMLR: Adam-style momentum on the relative change of each loss's share (Eqs. 8-12).

    Timestep t counts ended periods (or steps, ``timestep="step"``):

    * t = 0 (before anything ends): w_i = 1 / n_w (Eq. 8).
    * t = 1: w_i = (L_tot / L_i) * r_i (Eq. 9), L_tot = sum_j w_j L_j under the t = 0
      weights; r defaults to the paper's (0.99, 0.01) for the (Si, Gr) pair, else 1/n.
    * t >= 2: with P_i = L_i / sum_j w_j L_j, dP_i = P_i(t) - P_i(t-1) and
      g_i = (dP_i / P_i(t)) * w_i(t-1)::

          m_i(t) = b1 * m_i(t-1) + (1 - b1) * g_i                  (Eq. 10)
          v_i(t) = b2 * v_i(t-1) + (1 - b2) * g_i**2               (Eq. 11)
          w_i(t) = w_i(t-1) - lambda * m_i(t) / (sqrt(v_i(t)) + eps)  (Eq. 12)

    Index convention of Eq. 12. The paper prints m^{t-1} and v^{t-1} in Eq. 12; by default
    this class uses m^t and v^t, the moments that already include the current g. Reasons:
    Eqs. 10-11 define m^t, v^t from the current dP^t only to feed Eq. 12; the paper's own
    Adam review (Eq. 7) updates with m^t and v^t; and with m^{t-1}, v^{t-1} the first
    rebalancing (t = 2) would divide the zero initial moments (a no-op) and every update
    would lag the measured change by one timestep. ``delayed_moments=True`` gives the
    literal m^{t-1} / v^{t-1} reading.

    Both P_i(t) and P_i(t-1) are measured under the weights w(t-1) used during timestep t
    (the convention of Lee & Kim's public trainer): a literal P^t = L^t / sum w^t L^t is
    circular, and measuring P(t-1) under older weights would make the previous update read
    as a change of the losses. No bias correction is applied (the paper has none).

    Args:
        n: number of losses (the paper: 2, scale-invariant and gradient).
        lam: the step size lambda of Eq. 12. The paper does not state its value; weights
            move by about lambda per timestep (|m| / sqrt(v) is of order 1).
        betas: (b1, b2) of Eqs. 10-11 (Adam's defaults).
        eps: epsilon of Eq. 12.
        init_ratio: r_i of Eq. 9, a number or n values.
        timestep: "period" (default; a timestep ends with ``end_period`` or the automatic
            period settings) or "step" (every training step is a timestep).
        delayed_moments: use m^{t-1}, v^{t-1} in Eq. 12 (see above).
        min_weight: floor for the weights after each update (default 0: the paper does not
            bound w, but a negative weight would make training maximize that loss); None
            for no floor.
        min_share: keeps every weight positive (default 0.01): after each update
            w_i >= min_share * r_i * L_tot / L_i, i.e. each loss keeps at least min_share
            times the contribution share r_i that Eq. 9 gave it (L_tot = sum_j w_j L_j of the
            timestep). The paper has no such bound, but a weight that reaches 0 stays 0 for
            good (g_i of Eq. 10 is proportional to w_i), silently dropping that loss. None:
            no floor (the paper's behaviour).
        **options: the period and logging options of
            :class:`~mlrb.weighting.base.LossWeighting` (names, enabled, steps_per_period,
            steps_per_epoch, periods_per_epoch, sync_distributed, process_group).
    """

    def __init__(
        self,
        n: int = 2,
        lam: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        init_ratio: float | Sequence[float] | Tensor | None = None,
        timestep: str = "period",
        delayed_moments: bool = False,
        min_weight: float | None = 0.0,
        min_share: float | None = 0.01,
        **options,
    ) -> None:
        if timestep not in ("period", "step"):
            raise ValueError(f"timestep must be 'period' or 'step', got {timestep!r}")
        if timestep == "step":
            if options.get("steps_per_period") is not None or options.get("steps_per_epoch") is not None:
                raise ValueError("timestep='step' already ends a timestep every step; "
                                 "drop steps_per_period / steps_per_epoch")
            options["steps_per_period"] = 1
        if options.get("names") is None and n == len(AMLR_NAMES):
            options["names"] = AMLR_NAMES
        super().__init__(n, **options)
        self.timestep = timestep
        self.lam = as_number(lam, "lam")
        try:
            b1, b2 = (float(b) for b in betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be two numbers (b1, b2), got {betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not as_number(eps, "eps") > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.delayed_moments = bool(delayed_moments)
        self.min_weight = None if min_weight is None else as_number(min_weight, "min_weight")
        if min_share is not None and not 0.0 < as_number(min_share, "min_share") <= 1.0:
            raise ValueError(f"min_share must lie in (0, 1] (or None for no floor), got {min_share}")
        self.min_share = None if min_share is None else float(min_share)
        if init_ratio is None:
            init_ratio = PAPER_INIT_RATIO if n == 2 else 1.0 / self.n_enabled
        ratio = as_vector(init_ratio, n, "init_ratio")
        if (ratio < 0).any():
            raise ValueError("init_ratio must be >= 0")
        if not (ratio[self.enabled] > 0).any():
            raise ValueError("init_ratio is 0 for every enabled loss; every weight would become 0")

        en = self.enabled.to(STATE_DTYPE)
        self.register_buffer("weights", en / self.n_enabled)  # Eq. 8
        self.register_buffer("init_ratio", ratio)
        self.register_buffer("initialized", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("m", torch.zeros(n, dtype=STATE_DTYPE))
        self.register_buffer("v", torch.zeros(n, dtype=STATE_DTYPE))

    requires_nonnegative = True

    def _update(self, mean: Tensor, epoch: int) -> None:
        # Eq. 9 at t = 1 (and for a loss that was 0 so far when it appears), then Eqs. 10-12.
        total = (self.weights * mean).sum()  # L_tot under the weights used in this timestep
        new = initialize_or_step(self, mean, self.init_ratio, self._momentum_step)
        if self.min_share is not None and total > 0:
            floor_ok = self.enabled & self.initialized & (mean > 0)
            floor = self.min_share * self.init_ratio * total / torch.where(floor_ok, mean, torch.ones_like(mean))
            new = torch.where(floor_ok, torch.maximum(new, floor), new)
        if self.min_weight is not None:
            new = torch.where(self.enabled, new.clamp_min(self.min_weight), new)
        self.weights.copy_(new.clamp(max=W_MAX))  # finite also as float32

    def _momentum_step(self, w: Tensor, mean: Tensor, active: Tensor) -> Tensor:
        """Eqs. 10-12 on the losses positive in both timesteps; others get g = 0."""
        one = torch.ones_like(mean)
        total = (w * mean).sum()
        total_prev = (w * self.last_mean).sum()
        if not (total > 0 and total_prev > 0):
            active = torch.zeros_like(active)
        P = torch.where(active, mean, one) / (total if total > 0 else 1.0)
        P_prev = torch.where(active, self.last_mean, one) / (total_prev if total_prev > 0 else 1.0)
        g = torch.where(active, (P - P_prev) / P * w, torch.zeros_like(w))
        b1, b2 = self.betas
        m_old, v_old = self.m.clone(), self.v.clone()
        self.m.mul_(b1).add_((1.0 - b1) * g)          # Eq. 10
        self.v.mul_(b2).add_((1.0 - b2) * g * g)      # Eq. 11
        m, v = (m_old, v_old) if self.delayed_moments else (self.m, self.v)
        step = self.lam * m / (v.sqrt() + self.eps)   # Eq. 12
        return torch.where(self.enabled & self.initialized, w - step, w)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, lam={self.lam}, betas={self.betas}, eps={self.eps}, "
                f"timestep={self.timestep!r}, delayed_moments={self.delayed_moments}, min_share={self.min_share}")
