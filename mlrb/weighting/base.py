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

Period means are means over *samples*: a step with (B, n) losses adds B samples, a step
with (n,) losses one, so a period whose last batch is smaller (the paper's DataLoader keeps
it) averages exactly like the paper's trainer. The statistics are checked at every step by
default: a step with a non-finite loss (or, for the rebalancers, a negative one) raises
before anything is accumulated, so the weighter is unchanged and training can skip the
batch (``finite_check="period"`` defers the check to the period end, see LossWeighting).
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

# Statistics and weights are kept in float64: a period sums thousands of steps and the
# rebalancing ratios (Eq. 11) divide small differences.
STATE_DTYPE = torch.float64

# Step counters: Python mirror attribute -> buffer name.
_COUNTERS = {
    "_count": "period_count",        # steps in the current period (this rank; skipped ones too)
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


def as_count(value, what: str) -> int:
    """A positive int from an int (or an integral float), with a clear error otherwise."""
    ok = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not ok or int(value) < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}")
    return int(value)


def as_number(value, what: str) -> float:
    """A finite float, with an error that names the argument otherwise."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return out


def as_vector(value, n: int, what: str) -> Tensor:
    """A float64 (n,) vector from a number or a sequence, with a clear error otherwise."""
    try:
        t = torch.as_tensor(value, dtype=STATE_DTYPE)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a number or {n} numbers, got {value!r}") from None
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
        finite_check: when a non-finite loss value (or, for the rebalancers, a negative
            one) is caught. ``"step"`` (default): at the step that brings it; the step
            raises ``FloatingPointError`` (``ValueError`` for a negative one) naming the
            losses *before* anything is accumulated, so the weighter is as it was and the
            caller may skip the batch (call :meth:`skip_step` to keep the automatic period
            ends in place) and go on. This costs one device synchronization per step on
            GPU (and is left out while torch.compile traces). ``"period"``: no per-step check (fully asynchronous steps); ``end_period``
            raises instead, naming the losses, and discards that period's statistics
            (weights unchanged, the period not counted) so the weighter can go on.
    """

    # Rebalancers divide by the period means (Eqs. 9, 11): negative losses are an error.
    requires_nonnegative = False

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
        finite_check: str = "step",
    ) -> None:
        super().__init__()
        if finite_check not in ("step", "period"):
            raise ValueError(f"finite_check must be 'step' or 'period', got {finite_check!r}")
        self.finite_check = finite_check
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:  # (numpy ints too)
            raise ValueError(f"n (the number of losses) must be a positive int, got {n!r}")
        self.n = n = int(n)
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
        self.steps_per_period = None if steps_per_period is None else as_count(steps_per_period, "steps_per_period")
        self.steps_per_epoch = None if steps_per_epoch is None else as_count(steps_per_epoch, "steps_per_epoch")
        self.periods_per_epoch = as_count(periods_per_epoch, "periods_per_epoch")
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
        # Running sums of the current period over its samples (detached), and the number of
        # samples per loss: a period mean is the mean over samples, whatever the batch sizes.
        self.register_buffer("period_sum", torch.zeros(n, dtype=STATE_DTYPE))
        self.register_buffer("period_samples", torch.zeros(n, dtype=STATE_DTYPE))
        # Mean losses of the last period ended (Lprev of Eq. 11); valid once period > 0.
        self.register_buffer("last_mean", torch.zeros(n, dtype=STATE_DTYPE))
        for attr, buf in _COUNTERS.items():
            setattr(self, attr, 0)
            self.register_buffer(buf, torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ interface
    def forward(self, losses: Tensor, loss_mask: Tensor | None = None) -> Tensor:
        """Overall loss of one step; accumulates the detached statistics while training.

        ``losses`` is (B, n) per-sample losses or (n,) already-reduced ones (one sample). Returns a
        0-d tensor in ``losses.dtype``, differentiable with respect to ``losses``.

        ``loss_mask`` (optional, with (B, n) losses): a bool (B, n) of the losses each sample
        has (e.g. relative-depth samples without the metric losses). Each loss is then the
        mean over the samples that have it, and its period mean the mean over the period's
        samples that had it; a loss no sample of the step has counts 0 in this step's total. Masked-out entries are ignored
        (they may hold anything, inf/NaN included).
        While training, raises (with ``finite_check="step"``) on a non-finite loss value,
        leaving the weighter unchanged.
        """
        mean, _ = self._step_means(losses, loss_mask)
        total = self._total(mean)
        if self.training:
            with torch.no_grad():
                step_sum, samples = self._step_sums(losses, loss_mask)
                if self.finite_check == "step" and not torch.compiler.is_compiling():
                    self._check_step(step_sum)  # before any state changes
                self.period_sum.add_(step_sum)
                self.period_samples.add_(samples)
            self._count += 1
            self._steps += 1
            self._auto_end_period()
        return total

    def skip_step(self) -> None:
        """Count a training step that adds no statistics (a batch skipped after an error).

        The automatic period ends (``steps_per_period`` / ``steps_per_epoch``) stay where
        they would have been; a period that ends here uses the steps it did accumulate.
        """
        if self.training:
            self._count += 1
            self._steps += 1
            self._auto_end_period()

    @torch.no_grad()
    def end_period(self, epoch: int | None = None) -> bool:
        """End the current period: all-reduce its statistics, then initialize/rebalance.

        ``epoch`` (0-based) selects lambda for schedules; by default it is the counted
        epoch (``steps_per_epoch`` mode) or ``periods_ended // periods_per_epoch``.
        Returns False (and changes nothing but the step count) when no rank accumulated a
        step in this period. Raises ``FloatingPointError`` (``ValueError`` for a negative
        mean of a rebalancer) naming the losses when a period mean is not usable; that
        period's statistics are then discarded and the weights stay as they were.
        """
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0):
            raise ValueError(f"epoch must be an int >= 0 (0-based), got {epoch!r}")
        n = self.n
        stats = torch.cat([self.period_sum, self.period_samples])
        if self.sync_distributed and _dist_ready():
            torch.distributed.all_reduce(stats, group=self.process_group)
        total, samples = stats[:n], stats[n:]
        if not bool((samples > 0).any()):
            self._reset_period()  # only skipped steps (or none): nothing to average
            warnings.warn("end_period() called on an empty period; nothing changed", stacklevel=2)
            return False
        has = self.enabled & (samples > 0)
        mean = torch.where(has, total / torch.where(has, samples, torch.ones_like(samples)), torch.zeros_like(total))
        try:
            self._check_values(mean, "period mean")
        except (FloatingPointError, ValueError) as exc:
            # Drop the poisoned period, so that the next one starts clean.
            self._reset_period()
            raise type(exc)(f"{exc}; this period's statistics were discarded, the weights are unchanged") from None
        if epoch is None:
            epoch = self._epoch if self.steps_per_epoch is not None else self._period // self.periods_per_epoch
        self._epoch = int(epoch)
        self._update(mean, self._epoch)
        self.last_mean.copy_(mean)
        self._reset_period()
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
        return self.period_sum / self.period_samples.clamp_min(1.0)

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
        # At least float32: a weight above 65504 must not overflow with float16 losses.
        dtype = torch.promote_types(mean.dtype, torch.float32)
        w = self.weights.detach().to(dtype=dtype, copy=True)  # copy: end_period edits in place
        return (w * mean.to(dtype)).sum().to(mean.dtype)

    # ------------------------------------------------------------------ internals
    def _require_nonnegative(self, mean: Tensor) -> None:
        # Ratios of losses (Eqs. 9, 11) only make sense for losses >= 0.
        neg = self.enabled & (mean < 0)
        if neg.any():
            raise ValueError(f"negative period mean for losses {self._which(neg)}; rebalancing needs losses >= 0")

    def _which(self, bad: Tensor) -> list[str]:
        return [self.names[i] for i in bad.nonzero().flatten().tolist()]

    def _check_values(self, values: Tensor, what: str) -> None:
        """Raise, naming the losses, on non-finite (or, if required, negative) ``values``."""
        bad = self.enabled & ~torch.isfinite(values)
        neg = self.enabled & (values < 0) if self.requires_nonnegative else torch.zeros_like(bad)
        if not bool((bad | neg).any()):  # the one device synchronization of the check
            return
        if bool(bad.any()):
            raise FloatingPointError(f"non-finite (NaN/inf) {what} for losses {self._which(bad)}")
        raise ValueError(f"negative {what} for losses {self._which(neg)}; rebalancing needs losses >= 0")

    def _check_step(self, step_sum: Tensor) -> None:
        try:
            self._check_values(step_sum, f"loss values at step {self._steps}")
        except (FloatingPointError, ValueError) as exc:
            raise type(exc)(f"{exc}; this step was not counted, the weighter is unchanged "
                            "(skip the batch to go on)") from None

    def _step_sums(self, losses: Tensor, loss_mask: Tensor | None = None) -> tuple[Tensor, Tensor | int]:
        """The step's float64 sums over its samples (0 for disabled losses) and its sample
        count: an int, or with ``loss_mask`` the (n,) count of the samples that have each loss
        (masked-out entries are never read, so they may hold anything)."""
        x = losses.detach().to(STATE_DTYPE)
        count: Tensor | int = x.shape[0] if x.ndim == 2 else 1
        if loss_mask is not None:
            loss_mask = loss_mask.to(x.device)
            x = torch.where(loss_mask, x, torch.zeros_like(x))
            count = loss_mask.sum(0).to(STATE_DTYPE)
        step_sum = x.sum(0) if x.ndim == 2 else x
        if self.n_enabled < self.n:
            step_sum = torch.where(self.enabled, step_sum, torch.zeros_like(step_sum))
        return step_sum, count

    def _reset_period(self) -> None:
        self.period_sum.zero_()
        self.period_samples.zero_()
        self._count = 0

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
            try:
                if self._step_in_epoch in self._period_ends:
                    self.end_period(self._epoch)
            finally:  # the position advances even if end_period raised
                self._step_in_epoch += 1
                if self._step_in_epoch >= self.steps_per_epoch:
                    self._step_in_epoch = 0
                    self._epoch += 1

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for attr, buf in _COUNTERS.items():
            getattr(self, buf).fill_(getattr(self, attr))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._check_state(state_dict, prefix)  # before anything is copied
        if prefix + "period_count" in state_dict and prefix + "period_samples" not in state_dict:
            # A state from before sample counts: its period_sum held one batch mean per step.
            state_dict[prefix + "period_samples"] = torch.full(
                (self.n,), float(state_dict[prefix + "period_count"]), dtype=STATE_DTYPE)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for attr, buf in _COUNTERS.items():
            setattr(self, attr, int(getattr(self, buf)))
        self.n_enabled = int(self.enabled.sum())

    def _check_state(self, state_dict, prefix: str) -> None:
        """Refuse a state that would poison the weighter: NaN/inf, negative counts, no loss enabled."""
        for key, value in state_dict.items():
            if not key.startswith(prefix) or "." in key[len(prefix):] or not isinstance(value, Tensor):
                continue
            name = key[len(prefix):]
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"state_dict entry {key!r} holds NaN/inf; refusing to load a broken weighter state")
            if name in _COUNTERS.values() or name == "period_samples":
                if bool((value < 0).any()):
                    raise ValueError(f"state_dict entry {key!r} is negative ({value.tolist()})")
            if name == "enabled" and value.numel() and not bool(value.any()):
                raise ValueError(f"state_dict entry {key!r} enables no loss")

    def extra_repr(self) -> str:
        mode = (
            f"steps_per_period={self.steps_per_period}" if self.steps_per_period is not None
            else f"steps_per_epoch={self.steps_per_epoch}" if self.steps_per_epoch is not None
            else "manual periods"
        )
        return f"n={self.n}, {mode}, periods_ended={self._period}"


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()

