"""The loss space and a weighter inside a PyTorch Lightning ``LightningModule``.

    import lightning.pytorch as L
    from mlrb.integrations.lightning import LossSpaceMixin

    class DepthModel(LossSpaceMixin, L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.configure_loss_space(select="all")          # 78 losses, MultiLossRebalancer

        def training_step(self, batch, batch_idx):
            pred = self.net(batch["image"])
            return self.loss_space_step(pred, batch["depth"], batch["mask"])

The mix-in owns the weighter as the submodule ``self.weighter``, so its whole state (period
sums, weights, counters) is in the module's ``state_dict``: Lightning checkpoints carry it
and ``fit(ckpt_path=...)`` resumes it. Periods end at the paper's 4 points per epoch,
ceil(q * I / 4) - 1, with I = ``trainer.num_training_batches`` (unless the weighter was built
with its own ``steps_per_period`` / ``steps_per_epoch``). The period is ended inside the
training step, before any callback of that batch runs, so a checkpoint written at the end
of a batch already holds the rebalanced weights. Under DDP every rank reaches the same
period ends and the weighters all-reduce their statistics there, so all ranks hold
identical weights.

Logged through ``self.log``: ``mlrb/loss`` every step (``mlrb/val_loss`` outside training),
and at every period end ``mlrb/weight/<name>`` and ``mlrb/contribution/<name>`` for each loss
(w_i and w_i * Lbar_i), plus ``mlrb/period``.
"""
from __future__ import annotations

import math

from torch import Tensor

from mlrb.integrations import require
from mlrb.loss_space import LossSpace
from mlrb.weighting import MultiLossRebalancer
from mlrb.weighting.base import LossWeighting, period_end_steps

try:
    require("lightning.pytorch", "lightning", "mlrb.integrations.lightning")
except ImportError:
    # The older stand-alone package name works as well.
    require("pytorch_lightning", "lightning", "mlrb.integrations.lightning")

__all__ = ["LossSpaceMixin"]


class LossSpaceMixin:
    """Mix-in for a ``LightningModule``: put it first in the bases, call
    :meth:`configure_loss_space` in ``__init__`` and :meth:`loss_space_step` in the steps.

    If you override ``on_train_batch_start``, call ``super().on_train_batch_start(...)``:
    that is where the mix-in learns the batch index that places the period ends.
    """

    weighter: LossWeighting
    loss_space: LossSpace

    def configure_loss_space(self, select=None, *, weighter: LossWeighting | None = None,
                             periods_per_epoch: int | None = None, backend: str = "auto",
                             log_weights: bool = True, **loss_options) -> None:
        """Set the losses and the weighter.

        Args:
            select: the losses, as for :func:`mlrb.fused_loss_space` (default: all 78).
            weighter: any :mod:`mlrb.weighting` object with one entry per selected loss
                (default ``MultiLossRebalancer(n, names=...)``: the paper's rebalancing).
                Learned weights (UncertaintyWeighting) are parameters of this module, so
                ``self.parameters()`` in ``configure_optimizers`` includes them.
            periods_per_epoch: rebalancing points per epoch (default: the weighter's, 4).
            backend, loss_options: passed to :class:`mlrb.LossSpace` (si_lambda, ...).
            log_weights: log weights and contributions at every period end.
        """
        loss_space = LossSpace(select, backend=backend, **loss_options)
        n = len(loss_space.names)
        if weighter is None:
            weighter = MultiLossRebalancer(n, names=loss_space.names)
        if not isinstance(weighter, LossWeighting):
            raise TypeError(f"weighter must be an mlrb.weighting object, got {type(weighter).__name__}")
        if weighter.n != n:
            raise ValueError(f"weighter has {weighter.n} losses but select names {n}; build it with n={n}")
        if periods_per_epoch is not None and int(periods_per_epoch) < 1:
            raise ValueError(f"periods_per_epoch must be >= 1, got {periods_per_epoch}")
        self.loss_space = loss_space
        self.weighter = weighter
        self._mlrb_periods_per_epoch = int(periods_per_epoch or weighter.periods_per_epoch)
        self._mlrb_log_weights = bool(log_weights)
        self._mlrb_batch_idx: int | None = None
        self._mlrb_ends: tuple[int, tuple[int, ...]] | None = None  # (I, end steps) cache

    # ------------------------------------------------------------------ the step
    def loss_space_step(self, pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
        """The selected losses of ``pred`` against ``gt``, weighted: a scalar to return from
        ``training_step``. While training it also ends the period at its end step and logs.
        Outside training (validation) the current weights are applied and nothing is
        accumulated."""
        if not hasattr(self, "weighter"):
            raise RuntimeError("call self.configure_loss_space(...) in __init__ before loss_space_step")
        losses = self.loss_space(pred, gt, mask)
        total = self.weighter(losses)
        batch_size = int(losses.shape[0])
        self.log("mlrb/loss" if self.training else "mlrb/val_loss", total.detach(), prog_bar=True,
                 batch_size=batch_size, sync_dist=not self.training)
        if self.training and self._mlrb_owns_periods():
            self._mlrb_maybe_end_period(batch_size)
        return total

    def on_train_batch_start(self, batch, batch_idx: int):
        self._mlrb_batch_idx = int(batch_idx)
        return super().on_train_batch_start(batch, batch_idx)

    # ------------------------------------------------------------------ internals
    def _mlrb_owns_periods(self) -> bool:
        w = self.weighter
        return w.steps_per_period is None and w.steps_per_epoch is None and self._trainer is not None

    def _mlrb_maybe_end_period(self, batch_size: int) -> None:
        if self._mlrb_batch_idx is None:
            raise RuntimeError("LossSpaceMixin did not see on_train_batch_start; if you override it, "
                               "call super().on_train_batch_start(batch, batch_idx)")
        batch_idx, self._mlrb_batch_idx = self._mlrb_batch_idx, None
        total = self.trainer.num_training_batches
        if not math.isfinite(total):
            raise RuntimeError("the training dataloader has no length, so the period ends cannot be placed; "
                               "build the weighter with steps_per_period=K")
        total = int(total)
        if self._mlrb_ends is None or self._mlrb_ends[0] != total:
            self._mlrb_ends = (total, period_end_steps(total, self._mlrb_periods_per_epoch))
        if batch_idx in self._mlrb_ends[1]:
            if self.weighter.end_period(epoch=self.current_epoch) and self._mlrb_log_weights:
                logs = self.weighter.log_dict(prefix="mlrb/")
                logs["mlrb/period"] = float(self.weighter.periods_ended)
                self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
