"""The loss space and a weighter in Hugging Face transformers' ``Trainer``, and the helper a
plain loop needs.

transformers documents two ways to change the Trainer's loss: pass ``compute_loss_func``
(a function of the outputs, the labels and ``num_items_in_batch``, whose result the Trainer
takes as already normalised over the accumulated batch) or subclass and override
``compute_loss``. A weighter is stateful (period statistics, checkpoints, logging) and its
loss is a per-batch mean, so :class:`RebalancingTrainer` overrides ``compute_loss`` and
declares ``loss_is_scaled_for_ga = False`` (the Trainer divides by the gradient
accumulation steps, as for any per-batch mean).

    from mlrb.integrations.hf import RebalancingTrainer

    trainer = RebalancingTrainer(model=model, args=TrainingArguments(...), train_dataset=ds,
                                 select="all")            # MultiLossRebalancer over the 78
    trainer.train()

Batches hold ``pixel_values`` and ``labels`` (ground-truth depth (B, H, W) or (B, 1, H, W)
in metres; pixels <= 0 or non-finite are invalid, the sparse-depth convention). The
model's ``predicted_depth`` is resized bilinearly to the labels' size. Periods end at
ceil(q * I / 4) - 1 of every epoch of I batches (per process). The weighter's state is saved
as ``mlrb_weighter.pt`` next to the model in every checkpoint and in ``save_model``, and
``train(resume_from_checkpoint=...)`` restores it. Logged at every logging step:
``mlrb/weight/<name>``, ``mlrb/contribution/<name>`` and ``mlrb/period``.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from mlrb.integrations import require
from mlrb.loss_space import LossSpace
from mlrb.weighting import MultiLossRebalancer
from mlrb.weighting.base import LossWeighting, period_end_steps

transformers = require("transformers", "hf", "mlrb.integrations.hf")

__all__ = ["RebalancingTrainer", "predicted_depth", "depth_mask", "WEIGHTER_FILE"]

WEIGHTER_FILE = "mlrb_weighter.pt"


def predicted_depth(outputs, size) -> Tensor:
    """(B, 1, H, W) depth of a transformers depth-estimation output (``DPTForDepthEstimation``,
    Depth Anything, ...), resized bilinearly to ``size`` = (H, W) when it differs."""
    depth = outputs.get("predicted_depth") if isinstance(outputs, dict) else getattr(outputs, "predicted_depth", None)
    if not isinstance(depth, Tensor):
        raise TypeError(f"the model output has no predicted_depth tensor ({type(outputs).__name__}); "
                        "use a depth-estimation model such as DPTForDepthEstimation")
    if depth.dim() == 3:
        depth = depth.unsqueeze(1)
    size = tuple(int(s) for s in size)
    if tuple(depth.shape[-2:]) != size:
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
    return depth


def depth_mask(labels: Tensor) -> Tensor | None:
    """Valid ground truth (> 0 and finite), or None when every pixel is valid."""
    mask = torch.isfinite(labels) & (labels > 0)
    return None if bool(mask.all()) else mask


def _as_b1hw(x: Tensor) -> Tensor:
    return x.unsqueeze(1) if x.dim() == 3 else x


class _PeriodCallback(transformers.TrainerCallback):
    """Learns I, the batches per epoch of this process, from the Trainer's dataloader."""

    def __init__(self, owner: "RebalancingTrainer") -> None:
        self.owner = owner

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        try:
            self.owner._mlrb_batches_per_epoch = len(train_dataloader)
        except TypeError:
            self.owner._mlrb_batches_per_epoch = None


class RebalancingTrainer(transformers.Trainer):
    """``transformers.Trainer`` whose loss is the selected losses of the loss space, weighted.

    Args (keyword, besides the Trainer's own):
        select: the losses, as for :func:`mlrb.fused_loss_space` (default: all 78).
        weighter: any :mod:`mlrb.weighting` object with one entry per selected loss
            (default: ``MultiLossRebalancer``, the paper's rebalancing). Learned weights
            (UncertaintyWeighting) are added to the optimizer.
        periods_per_epoch: rebalancing points per epoch (default: the weighter's, 4). A
            weighter built with its own ``steps_per_period``/``steps_per_epoch`` keeps them.
        backend, loss_options: passed to :class:`mlrb.LossSpace`.
    """

    # The loss is a per-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, select=None, weighter: LossWeighting | None = None,
                 periods_per_epoch: int | None = None, backend: str = "auto",
                 loss_options: dict | None = None, **kwargs) -> None:
        if importlib.util.find_spec("accelerate") is None:
            # transformers' Trainer needs it; say which mlrb extra brings it.
            raise ImportError("RebalancingTrainer needs the 'accelerate' package (transformers' Trainer uses it), "
                              "which is not installed: pip install mlrb[hf]")
        super().__init__(*args, **kwargs)
        self.loss_space = LossSpace(select, backend=backend, **(loss_options or {}))
        n = len(self.loss_space.names)
        if weighter is None:
            weighter = MultiLossRebalancer(n, names=self.loss_space.names)
        if not isinstance(weighter, LossWeighting):
            raise TypeError(f"weighter must be an mlrb.weighting object, got {type(weighter).__name__}")
        if weighter.n != n:
            raise ValueError(f"weighter has {weighter.n} losses but select names {n}; build it with n={n}")
        if periods_per_epoch is not None and int(periods_per_epoch) < 1:
            raise ValueError(f"periods_per_epoch must be >= 1, got {periods_per_epoch}")
        self.weighter = weighter.to(self.args.device)
        self.periods_per_epoch = int(periods_per_epoch or weighter.periods_per_epoch)
        # Older transformers (no loss_is_scaled_for_ga) skip the division when the model
        # takes loss kwargs; this loss never goes through the model.
        self.model_accepts_loss_kwargs = False
        self._mlrb_batches_per_epoch: int | None = None
        self.add_callback(_PeriodCallback(self))

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("RebalancingTrainer needs the ground-truth depth as 'labels' in every batch")
        mask = inputs.pop("mask", None)
        outputs = model(**inputs)
        gt = _as_b1hw(labels)
        valid = depth_mask(gt)
        if mask is not None:
            mask = _as_b1hw(mask).to(torch.bool)
            valid = mask if valid is None else valid & mask
        pred = predicted_depth(outputs, gt.shape[-2:])
        losses = self.loss_space(pred, gt.to(pred.dtype), valid)
        self.weighter.train(model.training)     # evaluation: current weights, nothing accumulated
        loss = self.weighter(losses)
        if model.training:
            self._mlrb_maybe_end_period()
        return (loss, outputs) if return_outputs else loss

    def _mlrb_maybe_end_period(self) -> None:
        w = self.weighter
        if w.steps_per_period is not None or w.steps_per_epoch is not None:
            return
        per_epoch = self._mlrb_batches_per_epoch
        if per_epoch is None or per_epoch < 1:
            raise RuntimeError("the training dataloader has no length, so the period ends cannot be placed; "
                               "build the weighter with steps_per_period=K")
        step = w._steps - 1                      # this batch, counted over the run (in the weighter's state)
        if step % per_epoch in period_end_steps(per_epoch, self.periods_per_epoch):
            w.end_period(epoch=step // per_epoch)

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        params = [p for p in self.weighter.parameters() if p.requires_grad]
        if params and not any(p is q for g in optimizer.param_groups for q in g["params"] for p in params):
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:                       # a training log, not an evaluation one
            logs = {**logs, **self.weighter.log_dict(prefix="mlrb/"),
                    "mlrb/period": float(self.weighter.periods_ended)}
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            folder = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, WEIGHTER_FILE)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save({k: v.cpu() for k, v in self.weighter.state_dict().items()}, tmp)
            os.replace(tmp, path)                # a checkpoint is never half written

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:
            path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
        if isinstance(path, (str, os.PathLike)):
            file = os.path.join(path, WEIGHTER_FILE)
            if os.path.isfile(file):
                self.weighter.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
            else:
                warnings.warn(f"{path} has no {WEIGHTER_FILE}: the loss weighting starts afresh", stacklevel=2)
        return super().train(resume_from_checkpoint, *args, **kwargs)
