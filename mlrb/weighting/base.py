"""The interface every loss-weighting object shares, and its period bookkeeping.

A weighter turns the per-loss values of a step into one training loss and keeps detached
statistics per *period* (the paper's unit of rebalancing, Lee & Kim 2020 Sec. 3.2):

    total = weighter(losses)          # losses (B, n) or (n,) -> scalar, differentiable
    weighter.end_period(epoch=e)      # initialize / rebalance from the period's means

Periods end when the caller says so, every ``steps_per_period`` steps, or at the paper's
"4 periods per epoch" points (``steps_per_epoch=I``: the last step of period q is
ceil(q*I/4) - 1). Under torch.distributed the period sums and counts are all-reduced first,
so every rank computes identical weights.

All state lives in buffers (parameters for learned weights), so ``state_dict()`` /
``load_state_dict()`` resume training exactly, also in the middle of a period. The step
counters are mirrored in Python ints so that the per-step path never synchronizes with the
GPU; the buffers are refreshed from them whenever a state_dict is taken.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

# Statistics and weights are kept in float64: a period sums thousands of steps and the
# rebalancing ratios (Eq. 11) divide small differences.
STATE_DTYPE = torch.float64

# Step counters: Python mirror attribute -> buffer name.
_COUNTERS = {
    "_count": "period_count",        # steps accumulated in the current period (this rank)
    "_period": "period",             # periods ended so far
    "_epoch": "epoch",               # epoch of the last period ended (lambda position)
    "_step_in_epoch": "step_in_epoch",  # only used with steps_per_epoch
    "_steps": "steps",               # training steps seen in total (this rank)
}


def period_end_steps(steps_per_epoch: int, periods_per_epoch: int = 4) -> tuple[int, ...]:
    """0-based steps of an epoch after which a period ends: ceil(q*I/P) - 1, q = 1..P.

    The paper rebalances 4 times per epoch (P = 4). With fewer steps than periods some
    ends coincide; each step is listed once.
    """
    if int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if int(periods_per_epoch) < 1:
        raise ValueError(f"periods_per_epoch must be >= 1, got {periods_per_epoch}")
    ends = {math.ceil(q * steps_per_epoch / periods_per_epoch) - 1 for q in range(1, periods_per_epoch + 1)}
    return tuple(sorted(ends))


def as_vector(value, n: int, what: str) -> Tensor:
    """A float64 (n,) vector from a number or a sequence, with a clear error otherwise."""
    t = torch.as_tensor(value, dtype=STATE_DTYPE)
    if t.ndim == 0:
        t = t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"{what} must be a number or have {n} entries, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} must be finite, got {t.tolist()}")
    return t


class LossWeighting(nn.Module):
    """Base class: forward pass, period statistics, automatic period ends, distributed sync.

    Subclasses implement :meth:`_update` (what happens at the end of a period) and expose
    ``weights``; they may override :meth:`_total` (the overall loss from the step means).

    Args:
        n: number of losses (columns of ``losses``).
        names: one name per loss, used by :meth:`log_dict` (default "loss0", "loss1", ...).
        enabled: boolean mask of the losses that take part; disabled losses get weight 0
            forever and their values (even inf/NaN) are ignored. Default: all.
        steps_per_period: end a period automatically after this many training steps.
        steps_per_epoch: end periods automatically at the paper's points
            ceil(q * I / periods_per_epoch) - 1 of every epoch of I steps, and count epochs.
        periods_per_epoch: periods per epoch (the paper: 4). Also converts a period count
            into an epoch when ``end_period`` is called without one.
        sync_distributed: all-reduce the period statistics when torch.distributed is
            initialized (every rank must then call ``end_period`` together).
        process_group: the group to all-reduce over (default: the world).
    """

    def __init__(
        self,
        n: int,
        *,
        names: Sequence[str] | None = None,
        enabled: Sequence[bool] | Tensor | None = None,
        steps_per_period: int | None = None,
        steps_per_epoch: int | None = None,
        periods_per_epoch: int = 4,
        sync_distributed: bool = True,
        process_group=None,
    ) -> None:
        super().__init__()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n (the number of losses) must be a positive int, got {n!r}")
        self.n = n
        if names is None:
            names = tuple(f"loss{i}" for i in range(n))
        names = tuple(str(s) for s in names)
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries for n = {n} losses")
        if len(set(names)) != n:
            raise ValueError("names must be unique")
        self.names = names
        if steps_per_period is not None and steps_per_epoch is not None:
            raise ValueError("give steps_per_period or steps_per_epoch, not both")
        if steps_per_period is not None and int(steps_per_period) < 1:
            raise ValueError(f"steps_per_period must be >= 1, got {steps_per_period}")
        self.steps_per_period = None if steps_per_period is None else int(steps_per_period)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.periods_per_epoch = int(periods_per_epoch)
        if self.periods_per_epoch < 1:
            raise ValueError(f"periods_per_epoch must be >= 1, got {periods_per_epoch}")
        self._period_ends = (
            frozenset(period_end_steps(self.steps_per_epoch, self.periods_per_epoch))
            if self.steps_per_epoch is not None else frozenset()
        )
        self.sync_distributed = bool(sync_distributed)
        self.process_group = process_group

        if enabled is None:
            mask = torch.ones(n, dtype=torch.bool)
        else:
            mask = torch.as_tensor(enabled).to(torch.bool).flatten()
            if mask.shape != (n,):
                raise ValueError(f"enabled must have {n} entries, got shape {tuple(mask.shape)}")
            if not mask.any():
                raise ValueError("enabled masks out every loss; enable at least one")
        self.register_buffer("enabled", mask)
        self.n_enabled = int(mask.sum())
        # Running sums of the current period (detached per-step batch means).
        self.register_buffer("period_sum", torch.zeros(n, dtype=STATE_DTYPE))
        # Steps of the current period in which each loss had a sample (loss_mask); without
        # masks every entry equals the period's step count.
        self.register_buffer("period_steps", torch.zeros(n, dtype=STATE_DTYPE))
        # Mean losses of the last period ended (Lprev of Eq. 11); valid once period > 0.
        self.register_buffer("last_mean", torch.zeros(n, dtype=STATE_DTYPE))
        for attr, buf in _COUNTERS.items():
            setattr(self, attr, 0)
            self.register_buffer(buf, torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ interface
    def forward(self, losses: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        """Overall loss of one step; accumulates the detached batch means while training.

        ``losses`` is (B, n) per-sample losses or (n,) already-reduced ones. Returns a
        0-d tensor in ``losses.dtype``, differentiable with respect to ``losses``.

        ``loss_mask`` (optional, with (B, n) losses): a bool (B, n) of the losses each sample
        has (e.g. relative-depth samples without the metric losses). Each loss is then the
        mean over the samples that have it, and its period mean the mean over the steps in
        which some sample had it; a loss no sample of the step has counts 0 in this step's
        total and is left out of the period statistics. Masked-out entries are ignored
        (they may hold anything, inf/NaN included).
        """
        mean, present = self._step_means(losses, loss_mask)
        total = self._total(mean)
        if self.training:
            with torch.no_grad():
                self.period_sum.add_(mean.detach().to(STATE_DTYPE))
                self.period_steps.add_(present.to(STATE_DTYPE))
            self._count += 1
            self._steps += 1
            self._auto_end_period()
        return total

    @torch.no_grad()
    def end_period(self, epoch: int | None = None) -> bool:
        """End the current period: all-reduce its statistics, then initialize/rebalance.

        ``epoch`` (0-based) selects lambda for schedules; by default it is the counted
        epoch (``steps_per_epoch`` mode) or ``periods_ended // periods_per_epoch``.
        Returns False (and changes nothing) when no rank saw a step in this period.
        """
        n = self.n
        stats = torch.cat([self.period_sum, self.period_steps, self.period_sum.new_tensor([float(self._count)])])
        if self.sync_distributed and _dist_ready():
            torch.distributed.all_reduce(stats, group=self.process_group)
        count = float(stats[-1])
        if count == 0:
            warnings.warn("end_period() called on an empty period; nothing changed", stacklevel=2)
            return False
        steps = stats[n:2 * n]  # == count for every loss unless loss masks left some out
        had = self.enabled & (steps > 0)
        mean = torch.where(had, stats[:n] / torch.where(had, steps, torch.ones_like(steps)), torch.zeros_like(steps))
        bad = self.enabled & ~torch.isfinite(mean)
        if bad.any():
            which = [self.names[i] for i in bad.nonzero().flatten().tolist()]
            raise FloatingPointError(f"non-finite period mean for losses {which}; check the loss values")
        if epoch is None:
            epoch = self._epoch if self.steps_per_epoch is not None else self._period // self.periods_per_epoch
        self._epoch = int(epoch)
        self._update(mean, self._epoch)
        self.last_mean.copy_(mean)
        self.period_sum.zero_()
        self.period_steps.zero_()
        self._count = 0
        self._period += 1
        return True

    @property
    def contributions(self) -> Tensor:
        """Each loss's share w_i * Lbar_i of the overall loss (detached, float64).

        Lbar is the last ended period's mean (the current period's running mean before the
        first period ends), weighted by the current weights.
        """
        return self.weights.detach().to(STATE_DTYPE) * self.period_means()

    def period_means(self) -> Tensor:
        """Lbar: the last ended period's mean losses, or the running mean before that."""
        if self._period > 0:
            return self.last_mean.clone()
        return self.period_sum / self.period_steps.clamp_min(1.0)

    def log_dict(self, prefix: str = "") -> dict[str, float]:
        """{prefix + "weight/<name>": w_i, prefix + "contribution/<name>": w_i * Lbar_i}."""
        w = self.weights.detach().double().cpu().tolist()
        c = self.contributions.cpu().tolist()
        out = {f"{prefix}weight/{k}": v for k, v in zip(self.names, w)}
        out.update({f"{prefix}contribution/{k}": v for k, v in zip(self.names, c)})
        return out

    @property
    def periods_ended(self) -> int:
        return self._period

    @staticmethod
    def period_end_steps(steps_per_epoch: int, periods_per_epoch: int = 4) -> tuple[int, ...]:
        """See :func:`mlrb.weighting.base.period_end_steps`."""
        return period_end_steps(steps_per_epoch, periods_per_epoch)

    # ------------------------------------------------------------------ subclass hooks
    def _update(self, mean: Tensor, epoch: int) -> None:
        """Called by end_period with the period's (all-reduced) mean losses (float64)."""

    def _total(self, mean: Tensor) -> Tensor:
        w = self.weights.detach().to(dtype=mean.dtype, copy=True)  # copy: end_period edits in place
        return (w * mean).sum()

    # ------------------------------------------------------------------ internals
    def _require_nonnegative(self, mean: Tensor) -> None:
        # Ratios of losses (Eqs. 9, 11) only make sense for losses >= 0.
        neg = self.enabled & (mean < 0)
        if neg.any():
            which = [self.names[i] for i in neg.nonzero().flatten().tolist()]
            raise ValueError(f"negative period mean for losses {which}; rebalancing needs losses >= 0")

    def _step_means(self, losses: Tensor, loss_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the step's mean per loss, (n,) bool: whether any sample had that loss)."""
        if not isinstance(losses, Tensor):
            raise TypeError(f"losses must be a tensor, got {type(losses).__name__}")
        if losses.ndim not in (1, 2) or losses.shape[-1] != self.n:
            raise ValueError(f"losses must have shape (B, {self.n}) or ({self.n},), got {tuple(losses.shape)}")
        if losses.ndim == 2 and losses.shape[0] == 0:
            raise ValueError("losses has an empty batch (B = 0)")
        if not losses.is_floating_point():
            raise TypeError(f"losses must be floating point, got {losses.dtype}")
        if self.period_sum.device != losses.device:
            if any(True for _ in self.parameters()):
                # Moving parameters here would strand their optimizer state on the old device.
                raise RuntimeError(
                    f"{type(self).__name__} is on {self.period_sum.device} but the losses are on "
                    f"{losses.device}; call .to({str(losses.device)!r}) before building the optimizer"
                )
            # The state follows the losses, so a weighter built on CPU just works on GPU.
            self.to(losses.device)
        if loss_mask is None:
            mean = losses.mean(0) if losses.ndim == 2 else losses
            present = torch.ones(self.n, dtype=torch.bool, device=losses.device)
        else:
            if not isinstance(loss_mask, Tensor) or loss_mask.dtype != torch.bool:
                raise TypeError(f"loss_mask must be a bool tensor, got "
                                f"{getattr(loss_mask, 'dtype', type(loss_mask).__name__)}")
            if losses.ndim != 2 or loss_mask.shape != losses.shape:
                raise ValueError(f"loss_mask must have the shape of (B, n) losses {tuple(losses.shape)}, "
                                 f"got {tuple(loss_mask.shape)}")
            loss_mask = loss_mask.to(losses.device)
            count = loss_mask.sum(0)
            present = count > 0
            # where (not L*mask): a masked-out entry may hold inf/NaN.
            summed = torch.where(loss_mask, losses, torch.zeros_like(losses)).sum(0)
            mean = summed / count.clamp_min(1).to(losses.dtype)
        if self.n_enabled < self.n:
            # where (not w*L with w = 0): a disabled column may hold inf/NaN.
            mean = torch.where(self.enabled, mean, torch.zeros_like(mean))
        return mean, present

    def _auto_end_period(self) -> None:
        if self.steps_per_period is not None:
            if self._count >= self.steps_per_period:
                self.end_period()
        elif self.steps_per_epoch is not None:
            if self._step_in_epoch in self._period_ends:
                self.end_period(self._epoch)
            self._step_in_epoch += 1
            if self._step_in_epoch >= self.steps_per_epoch:
                self._step_in_epoch = 0
                self._epoch += 1

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for attr, buf in _COUNTERS.items():
            getattr(self, buf).fill_(getattr(self, attr))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "period_steps" not in state_dict and prefix + "period_count" in state_dict:
            # A state from before loss masks: every loss was present in every step.
            count = state_dict[prefix + "period_count"]
            state_dict[prefix + "period_steps"] = torch.full((self.n,), float(count), dtype=STATE_DTYPE)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for attr, buf in _COUNTERS.items():
            setattr(self, attr, int(getattr(self, buf)))
        self.n_enabled = int(self.enabled.sum())

    def extra_repr(self) -> str:
        mode = (
            f"steps_per_period={self.steps_per_period}" if self.steps_per_period is not None
            else f"steps_per_epoch={self.steps_per_epoch}" if self.steps_per_epoch is not None
            else "manual periods"
        )
        return f"n={self.n}, {mode}, periods_ended={self._period}"


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()

