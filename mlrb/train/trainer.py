"""The training loop of Lee & Kim (ECCV 2020), Sec. 4.1, on top of mlrb's pieces.

One step: image -> depth (DepthNet) -> the selected losses of the fused loss space, per
sample, (B, n) -> the weighter's overall loss -> Adam (lr 1e-4). Periods end at the paper's
points, four per epoch (the last step of period q of an epoch with I steps is
ceil(q*I/4) - 1); the weighter then initializes (first period, Eq. 9) or rebalances
(Eq. 11, lambda 3 -> -3 over the first five epochs), all-reducing its statistics itself
under torch.distributed. Every period writes one line of losses, weights and
contributions; every epoch is evaluated with mlrb.metrics.

Runs are exactly resumable: a checkpoint holds the model, optimizer, grad scaler,
weighter, the position (epoch, step in epoch, global step), the logging accumulators of the
current period and the RNG states. The data order and augmentation depend only on
(seed, epoch, index), so the batches after a resume are the ones the run would have seen.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mlrb.names import AMLR_NAMES, names_of, resolve_select
from mlrb.models import DEFAULT_MODEL, build_model
from mlrb.models.encoder import check_batch_norm_batch
from mlrb.weighting.rebalance import DEFAULT_MAX_RATIO
from mlrb.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_save, read_checkpoint
from mlrb.train.interrupt import InterruptGuard, TrainingInterrupted
from mlrb.train.runfolder import check_run_folder
from mlrb.errors import UserError, one_line


class NonFiniteLossError(UserError, FloatingPointError):
    """A training step produced a NaN/inf loss (divergence, or broken data in that batch)."""


SYNTHETIC_SIZE = (64, 96)
PAPER_SIZE = (288, 384)
WEIGHTINGS = ("rebalance", "amlr", "uncertainty", "fixed")
DATA_KINDS = ("synthetic", "nyu-csv", "bts-nyu", "bts-kitti", "make3d")


@dataclass
class TrainConfig:
    """Everything a run needs; ``mlrb train`` maps its options onto these fields."""

    # data
    data: str = "synthetic"
    train_list: str | None = None
    val_list: str | None = None
    data_root: str | None = None
    gt_root: str | None = None
    depth_scale: str = "paper"
    synthetic_train: int = 384
    synthetic_val: int = 32
    size: tuple[int, int] | None = None  # None: 288x384 for real data, SYNTHETIC_SIZE for synthetic
    augment: bool = True
    eval_crop: str | None = None
    # model
    model: str = DEFAULT_MODEL
    n_d: int = 1024
    pretrained: str | None = None
    random_if_missing: bool = False
    head: str = "auto"  # "auto": softplus when the selection has log-depth (AMLR) losses
    init_depth: float | str | None = "auto"  # output starts here; "auto": mean training depth; None: 0
    model_kwargs: dict | None = None  # extra timm model arguments (e.g. a tiny embed_dim in tests)
    # losses and weighting
    select: str = "all"
    backend: str = "auto"
    weighting: str = "rebalance"
    lambda_start: float = 3.0
    lambda_end: float = -3.0
    lambda_step: float = 1.5
    clip: tuple[float, float] | None = (0.5, 2.0)
    max_ratio: float | None = DEFAULT_MAX_RATIO  # cap on max(w)/min(w); None: the paper's uncapped weights
    amlr_lam: float = 1e-3
    fixed_weights: list[float] | None = None
    periods_per_epoch: int = 4
    # optimisation
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    max_steps: int | None = None
    amp: bool = True
    device: str = "auto"
    num_workers: int = 0
    threads: int | None = None  # torch intra-op threads of each process (None: torch's default)
    seed: int = 0
    # output
    out_dir: str = "runs/mlrb"
    ckpt_every: int = 0  # also save every this many steps (0: at epoch ends only)
    resume: str | None = None  # a checkpoint path, or "auto" for out_dir/checkpoints/last.pt
    eval_before: bool = True
    progress: bool = True
    dist_timeout_s: float = 600.0
    # paper recipes (mlrb.train.recipes); the defaults are the plain trainer's behaviour
    recipe: str | None = None  # the recipe whose settings were filled in (for run.json)
    decoder: str = "fig-s8"  # "fig-s8" (Lee & Kim's DepthNet) or "amlr" (mlrb.models.amlr)
    rotate: float = 0.0  # random rotation of up to this many degrees (Lee & Kim's public code: 5)
    random_crop: bool = False  # train on random crops of `size` from full-resolution samples (AMLR)
    lr_schedule: str = "constant"  # or "poly-updown" (AMLR), stepped every batch, see mlrb.train.schedule
    lr_min: float = 3e-5  # poly-updown: lr at the start and end (lr is the midpoint's)
    eval_gt: str = "resized"  # "resized": ground truth at `size`; "full": at its stored resolution
    eval_upsample: str = "bicubic"  # how predictions are brought to a full-resolution ground truth
    tta: str = "none"  # evaluation test-time augmentation: "none", "flip", "flip+sw" (mlrb.metrics.tta)
    rebalance_init: bool = True  # False: "R without I" (Lee & Kim Table 5(d) row 3)
    tensorboard: bool = False  # also write TensorBoard event files to <out>/tensorboard
    # task (mlrb.train.rde): "ode" (this Trainer) or "rde" (RDETrainer); extra RDE lists "KIND:PATH"
    task: str = "ode"
    rde_lists: list[str] | None = None

    def resolved_size(self) -> tuple[int, int]:
        if self.size is not None:
            return (int(self.size[0]), int(self.size[1]))
        return SYNTHETIC_SIZE if self.data == "synthetic" else PAPER_SIZE


# Fields that must match between a checkpoint and the run resuming from it.
_RESUME_KEYS = ("model", "n_d", "select", "weighting", "batch_size", "data", "synthetic_train", "seed",
                "periods_per_epoch", "size")


def _is_main(rank: int) -> bool:
    return rank == 0


class Trainer:
    """Builds data, model, loss selection, weighter and optimizer from a TrainConfig; ``fit()`` trains."""

    task = "ode"  # TrainConfig.task this class trains (subclasses: mlrb.train.rde.RDETrainer "rde")

    def __init__(self, cfg: TrainConfig):
        if cfg.task != self.task:
            raise ValueError(f"config task {cfg.task!r} needs its own trainer class (this is {type(self).__name__}, "
                             f"task {self.task!r}; --task rde: mlrb.train.rde.RDETrainer)")
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {cfg.weighting!r}")
        if cfg.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {cfg.data!r}")
        if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
            raise ValueError("batch_size and epochs must be >= 1 and lr > 0")
        self.cfg = cfg
        if cfg.tensorboard:
            from mlrb.train.tblog import require_tensorboard
            require_tensorboard()
        if cfg.lr_schedule != "constant":
            from mlrb.train.schedule import lr_at
            lr_at(cfg.lr_schedule, 0, 1, cfg.lr, cfg.lr_min)  # validates the name
            if not 0 <= cfg.lr_min <= cfg.lr:  # (NaN fails too) the schedule rises from lr_min to lr
                raise ValueError(f"--lr-min must be a number from 0 to --lr ({cfg.lr:g}) for the {cfg.lr_schedule} "
                                 f"schedule, got {cfg.lr_min:g}")
        if cfg.tta not in ("none", "flip", "flip+sw"):
            raise ValueError(f"tta must be 'none', 'flip' or 'flip+sw', got {cfg.tta!r}")
        # Before anything is built: never start over an existing run, fail early on a bad --out.
        self.run_dir = cfg.out_dir
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        resume_path = check_run_folder(self.run_dir, cfg.resume)
        self.interrupted = False
        if cfg.threads is not None:
            if cfg.threads < 1:
                raise ValueError(f"threads must be >= 1, got {cfg.threads}")
            torch.set_num_threads(int(cfg.threads))
        self._owns_pg = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
        self.rank, self.world, self.local_rank = _init_distributed(cfg.dist_timeout_s, cfg.device)
        self.device = _pick_device(cfg.device, self.local_rank)
        _check_backend(cfg.backend, self.device)  # before the run folder is written to
        self.main = _is_main(self.rank)
        self.size = cfg.resolved_size()

        self.names = self.loss_names()

        self.train_set, self.val_set = self.build_datasets()
        self.min_depth = float(getattr(self.val_set, "min_depth", 1e-3))
        self.max_depth = float(getattr(self.val_set, "max_depth", 10.0))
        per_rank = len(self.train_set) // self.world
        self.steps_per_epoch = per_rank // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.train_set)} training samples give no full batch of {cfg.batch_size} "
                             f"per process ({self.world} process(es)); lower --batch-size or add data")
        from mlrb.weighting.base import period_end_steps
        self.period_ends = frozenset(period_end_steps(self.steps_per_epoch, cfg.periods_per_epoch))

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = self.build_network()
        info = getattr(self.model, "info", None)
        if info is not None:  # before the run folder is written to (torch would raise at step 1)
            check_batch_norm_batch(self.model, info.reduction, cfg.batch_size, self.size)
        init_depth = cfg.init_depth
        if init_depth == "auto":
            init_depth = mean_depth(self.train_set)
        if init_depth is not None and hasattr(self.model, "init_output_depth"):
            self.model.init_output_depth(float(init_depth))
        self.model.to(self.device)
        self.weighter = _build_weighter(cfg, self.names).to(self.device)
        self.optimizer = self.build_optimizer()
        self.amp_dtype = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.net = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        # Position and logging state (all in the checkpoint).
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.period = 0
        self._reset_period_stats()
        self.metrics_before: dict[str, float] | None = None
        self.metrics_history: list[dict] = []
        self.train_seconds = 0.0

        if self.main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        if resume_path:
            self.load_checkpoint(resume_path)

    # ------------------------------------------------------------------ data order
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``: a permutation seeded by (seed, epoch), sharded by rank."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch)
        perm = torch.randperm(len(self.train_set), generator=g)[self.rank::self.world].tolist()
        b = self.cfg.batch_size
        return [perm[i * b:(i + 1) * b] for i in range(self.steps_per_epoch)]

    def _loader(self, epoch: int, start: int):
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        batches = self.epoch_batches(epoch)[start:]
        return torch.utils.data.DataLoader(self.train_set, batch_sampler=batches, num_workers=self.cfg.num_workers,
                                           pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ what is trained
    # The methods an architecture overrides (a subclass of Trainer): the loss columns, the
    # data, the network, the per-sample losses of one batch, and depth in metres for evaluation.
    # Everything else (data order, periods, weighting, logs, checkpoints, DDP, AMP) is shared.
    def loss_names(self) -> tuple[str, ...]:
        """The names of the loss columns the weighter sees."""
        return names_of(resolve_select(self.cfg.select))

    def build_datasets(self):
        """(train, val) datasets of dicts with "image", "depth", "mask" (see mlrb.train.datasets)."""
        return _build_datasets(self.cfg, self.size)

    def build_network(self) -> nn.Module:
        """The network, on the CPU (the trainer moves it to the device)."""
        cfg = self.cfg
        head = cfg.head
        if head == "auto":
            head = "softplus" if any(n in AMLR_NAMES for n in self.names) else "linear"
        if cfg.decoder == "amlr":
            from mlrb.models.amlr import build_amlr_model
            return build_amlr_model(cfg.model, max_depth=self.max_depth, pretrained=cfg.pretrained,
                                    random_if_missing=cfg.random_if_missing, input_size=self.size,
                                    model_kwargs=cfg.model_kwargs)
        if cfg.decoder != "fig-s8":
            raise ValueError(f"decoder must be 'fig-s8' or 'amlr', got {cfg.decoder!r}")
        return build_model(cfg.model, n_d=cfg.n_d, pretrained=cfg.pretrained,
                           random_if_missing=cfg.random_if_missing, head=head, input_size=self.size,
                           model_kwargs=cfg.model_kwargs)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the model's and the weighter's parameters (Adam, lr, no decay)."""
        params = list(self.model.parameters()) + list(self.weighter.parameters())
        return torch.optim.Adam(params, lr=self.cfg.lr)

    def autocast(self):
        """The autocast context of forward passes (AMP on CUDA, a no-op otherwise)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (B, n) per-sample losses of one training batch, in ``self.names`` order; or
        (losses, loss_mask) with a (B, n) bool of the losses each sample has."""
        from mlrb.loss_space import fused_loss_space

        image = batch["image"].to(self.device, non_blocking=True)
        gt = batch["depth"].to(self.device, non_blocking=True)
        mask = batch.get("mask")
        mask = mask.to(self.device, non_blocking=True) if mask is not None and not bool(mask.all()) else None
        with self.autocast():
            pred = self.net(image)
        return fused_loss_space(pred.float(), gt, mask, select=self.names, backend=self.cfg.backend)

    def predict_depth(self, image: torch.Tensor) -> torch.Tensor:
        """Depth in metres, (B, 1, H, W) float32, of the model in eval mode."""
        with self.autocast():
            return self.model(image).float()

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimisation step; returns the (detached) overall loss."""
        self.net.train()
        self.weighter.train()
        if self.cfg.lr_schedule != "constant":
            self._set_lr()
        losses = self.compute_losses(batch)
        loss_mask = None
        if isinstance(losses, tuple):  # (losses, (B, n) bool of the losses each sample has)
            losses, loss_mask = losses
        try:
            total = self.weighter(losses, loss_mask=loss_mask) if loss_mask is not None else self.weighter(losses)
        except FloatingPointError as exc:
            # The weighter checks before it accumulates, and nothing was updated yet: the run is
            # as it was before this step, so the error is reported like one between two steps.
            self._in_step = False
            ok = torch.isfinite(losses.detach())
            if loss_mask is not None:
                ok |= ~loss_mask
            bad = ~ok.reshape(-1, losses.shape[-1]).all(0)
            names = [n for n, b in zip(self.names, bad.tolist()) if b] or one_line(exc)
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step + 1} (epoch {self.epoch}): {names}; the model and "
                f"weighter are as before this step. A resumed run meets the same batch again: lower --lr, "
                f"or check this batch's data") from None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.world > 1:
            # DDP averages the model's gradients; learned loss weights are outside it.
            for p in self.weighter.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(self.world)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            # Sums over samples (each loss over the samples that have it), so that a period's
            # logged means are means over its samples whatever the batch sizes, as the weighter's.
            x = losses.detach().double()
            x = x.unsqueeze(0) if x.ndim == 1 else x
            samples = x.shape[0]
            if loss_mask is not None:
                x = torch.where(loss_mask, x, torch.zeros_like(x))
                self._p_samples += loss_mask.sum(0).double()
            else:
                self._p_samples += samples
            self._p_sum += x.sum(0)
            self._p_total += total.detach().double() * samples
            self._p_count += samples
        return total.detach()

    def _set_lr(self) -> None:
        # Stepped every batch from the global step alone, so a resumed run continues the curve.
        from mlrb.train.schedule import lr_at

        total = self.cfg.epochs * self.steps_per_epoch
        lr = lr_at(self.cfg.lr_schedule, self.global_step, total, self.cfg.lr, self.cfg.lr_min)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _reset_period_stats(self) -> None:
        n = len(self.names)
        dev = getattr(self, "device", torch.device("cpu"))
        self._p_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        self._p_samples = torch.zeros(n, dtype=torch.float64, device=dev)  # samples with each loss
        self._p_total = torch.zeros((), dtype=torch.float64, device=dev)
        self._p_count = 0

    # ------------------------------------------------------------------ periods
    def end_period(self) -> dict:
        """End a period: the weighter initializes/rebalances; log losses, weights, contributions."""
        n = len(self.names)
        stats = torch.cat([self._p_sum, self._p_samples, self._p_total.view(1), self._p_sum.new_tensor([self._p_count])])
        if self.world > 1:
            dist.all_reduce(stats)
        count = max(float(stats[-1]), 1.0)
        mean = (stats[:n] / stats[n:2 * n].clamp_min(1.0)).cpu()
        w_used = self.weighter.weights.detach().double().cpu().clone()
        self.weighter.end_period(epoch=self.epoch)
        w_new = self.weighter.weights.detach().double().cpu()
        record = {
            "period": self.period,
            "epoch": self.epoch,
            "step": self.global_step,
            "epoch_float": self.epoch + (self.step_in_epoch + 1) / self.steps_per_epoch,
            "lambda": self.weighter.lambda_at(self.epoch) if hasattr(self.weighter, "lambda_at") else None,
            "total": float(stats[-2] / count),
            "losses": mean.tolist(),
            "weights_used": w_used.tolist(),
            "weights": w_new.tolist(),
            "contributions": (w_used * mean).tolist(),
        }
        self.period += 1
        self._reset_period_stats()
        if self.main:
            self._write_period(record)
        return record

    def _tensorboard(self):
        # Created on first use (rank 0), so nothing is written for runs that fail at start-up.
        if not (self.cfg.tensorboard and self.main):
            return None
        if getattr(self, "_tb", None) is None:
            from mlrb.train.tblog import TensorBoardLog
            self._tb = TensorBoardLog(self.run_dir, self.names)
        return self._tb

    def _write_period(self, record: dict) -> None:
        if self._tensorboard() is not None:
            self._tb.period(record, self.optimizer.param_groups[0]["lr"])
        with open(os.path.join(self.run_dir, "periods.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for key in ("losses", "weights", "contributions"):
            path = os.path.join(self.run_dir, f"{key}.csv")
            new = not os.path.exists(path)
            with open(path, "a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(["period", "epoch", "step", *self.names])
                w.writerow([record["period"], record["epoch"], record["step"], *[f"{v:.8g}" for v in record[key]]])

    def val_loader(self) -> torch.utils.data.DataLoader:
        """This rank's share of the validation set (every world-th sample), in batches."""
        idx = list(range(self.rank, len(self.val_set), self.world))
        b = self.cfg.batch_size
        return torch.utils.data.DataLoader(self.val_set, batch_sampler=[idx[i:i + b] for i in range(0, len(idx), b)],
                                           num_workers=self.cfg.num_workers)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Depth metrics of the current model on the validation set (sharded over ranks)."""
        from mlrb.metrics.accumulator import MetricAccumulator

        self.model.eval()
        acc = MetricAccumulator()
        loader = self.val_loader()
        from mlrb.train.protocol import eval_mask, eval_prediction

        for batch in loader:
            gt = batch["depth"].to(self.device)
            pred = eval_prediction(self.predict_depth, batch["image"].to(self.device), tuple(gt.shape[-2:]),
                                   tta=self.cfg.tta, upsample=self.cfg.eval_upsample)
            crop, mask = eval_mask(batch, gt, self.cfg.eval_crop)
            acc.update_depth(pred, gt, min_depth=self.min_depth, max_depth=self.max_depth,
                             crop=crop, mask=mask.to(self.device))
        acc.all_reduce()
        self.model.train()
        return acc.compute()

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train to ``epochs`` (or ``max_steps``); returns the summary (also saved as summary.json).

        Ctrl-C stops between two steps after saving checkpoints/last.pt and raises
        TrainingInterrupted (a KeyboardInterrupt); ``resume="auto"`` continues from there.
        """
        with InterruptGuard() as self._interrupt:
            self._in_step = False
            try:
                return self._fit()
            except TrainingInterrupted:
                raise
            except Exception as exc:
                # An error between two steps (a broken image in the next batch, a failed
                # evaluation): the state is consistent, so keep the work done since the last
                # checkpoint. Inside a step it may not be; then the last checkpoint stands.
                if not self._in_step and self.global_step > 0:
                    try:
                        path = self.save_checkpoint()
                    except Exception:
                        path = None
                    if path and self._interrupt.requested:  # e.g. DataLoader workers stopped by the same Ctrl-C
                        raise TrainingInterrupted(self.global_step, path) from exc
                    if path:
                        exc.checkpoint = path
                        exc.add_note(f"the run up to step {self.global_step} is saved in {path}; "
                                     f"resume it with --resume auto")
                raise

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.main:
            self._write_run_info()
        if cfg.eval_before and self.metrics_before is None:
            self.metrics_before = self.evaluate()
            if self.main:
                self._log_metrics({"epoch": 0, "step": 0, "when": "before training", **self.metrics_before})
        total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        bar = None
        if self.main and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total_steps, initial=min(self.global_step, total_steps), desc="mlrb train",
                       unit="step", dynamic_ncols=True, file=sys.stderr,
                       mininterval=0.1 if sys.stderr.isatty() else 10.0)
        t0 = time.perf_counter()
        done = self.global_step >= total_steps
        while not done and self.epoch < cfg.epochs:
            for batch in self._loader(self.epoch, self.step_in_epoch):
                if self._interrupt.requested:  # Ctrl-C: stop here, between two steps, resumable
                    self.train_seconds += time.perf_counter() - t0
                    if bar is not None:
                        bar.close()
                    self.interrupted = True
                    raise TrainingInterrupted(self.global_step, self.save_checkpoint())
                self._in_step = True
                total = self.train_step(batch)
                self.global_step += 1
                if self.step_in_epoch in self.period_ends:
                    self.end_period()
                self.step_in_epoch += 1
                self._in_step = False
                if bar is not None:
                    bar.update(1)
                    if self.global_step % 10 == 1:  # reading the loss syncs with the GPU
                        bar.set_postfix(epoch=self.epoch, loss=f"{float(total):.4g}", refresh=False)
                if self.step_in_epoch >= self.steps_per_epoch:
                    break
                if cfg.ckpt_every and self.global_step % cfg.ckpt_every == 0:
                    self.train_seconds += time.perf_counter() - t0
                    self.save_checkpoint()
                    t0 = time.perf_counter()
                if self.global_step >= total_steps:
                    done = True
                    break
            if self.step_in_epoch >= self.steps_per_epoch:
                # Epoch finished: evaluate, move on, checkpoint (neither counts as training time).
                self.train_seconds += time.perf_counter() - t0
                metrics = self.evaluate()
                self.metrics_history.append({"epoch": self.epoch + 1, "step": self.global_step, **metrics})
                if self.main:
                    self._log_metrics(self.metrics_history[-1])
                    line = f"epoch {self.epoch + 1}: " + _fmt_metrics(metrics)
                    bar.write(line) if bar is not None else print(line, flush=True)
                self.epoch += 1
                self.step_in_epoch = 0
                self.save_checkpoint(tag=f"epoch{self.epoch:03d}")
                t0 = time.perf_counter()
                done = done or self.global_step >= total_steps
        self.train_seconds += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if not self.metrics_history or self.metrics_history[-1]["step"] != self.global_step:
            # Stopped inside an epoch (max_steps): evaluate where we are.
            metrics = self.evaluate()
            self.metrics_history.append({"epoch": self.epoch + self.step_in_epoch / self.steps_per_epoch,
                                         "step": self.global_step, **metrics})
            if self.main:
                self._log_metrics(self.metrics_history[-1])
            self.save_checkpoint()
        return self._summary()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "world_size": self.world,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighter": self.weighter.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "period": self.period,
            "period_stats": {"sum": self._p_sum.cpu(), "total": self._p_total.cpu(), "count": self._p_count,
                             "per": "sample", "samples": self._p_samples.cpu()},
            "metrics_before": self.metrics_before,
            "metrics_history": self.metrics_history,
            "train_seconds": self.train_seconds,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def save_checkpoint(self, tag: str | None = None) -> str | None:
        """Write checkpoints/last.pt (and checkpoints/<tag>.pt) atomically; rank 0 only."""
        state = self.state_dict()  # every rank: cheap, and keeps ranks in step
        if not self.main:
            return None
        path = os.path.join(self.ckpt_dir, "last.pt")
        if tag:
            atomic_save(state, os.path.join(self.ckpt_dir, f"{tag}.pt"))
        atomic_save(state, path)  # last: last.pt is never older than the newest tagged one
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore everything saved by save_checkpoint; the run continues with the next step."""
        state = read_checkpoint(path)  # CheckpointError: names the file and the other checkpoints
        missing = [k for k in self.state_dict() if k not in state and k != "world_size"]
        if missing or not isinstance(state["config"], dict):
            raise CheckpointError(f"cannot resume from {path}: an incomplete mlrb checkpoint (no "
                                  f"{', '.join(missing) or 'config'})")
        old = state["config"]
        mine = dataclasses.asdict(self.cfg)
        diff = [k for k in _RESUME_KEYS if _norm(old.get(k)) != _norm(mine.get(k))]
        if state.get("world_size", 1) != self.world:
            diff.append(f"world_size ({state.get('world_size')} -> {self.world})")
        if diff:
            run_json = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "run.json")
            see = f", see {run_json}" if os.path.isfile(run_json) else ""  # (the checkpoint's run folder)
            raise CheckpointError(f"cannot resume from {path}: settings differ: {', '.join(map(str, diff))} "
                                  f"(resume with the run's settings{see})")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.weighter.load_state_dict(state["weighter"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot resume from {path}: it does not fit this run's model, optimizer or "
                                  f"weighting ({reason})") from None
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.period = state["global_step"], state["period"]
        ps = state["period_stats"]
        self._p_sum = ps["sum"].to(self.device)
        self._p_total = ps["total"].to(self.device)
        self._p_count = ps["count"]
        if ps.get("per") != "sample":
            # Older checkpoints summed one batch mean per step (full batches of batch_size).
            b = self.cfg.batch_size
            self._p_sum, self._p_total, self._p_count = self._p_sum * b, self._p_total * b, self._p_count * b
        samples = ps.get("samples")  # absent in checkpoints from before loss masks
        self._p_samples = (samples.to(self.device) if samples is not None
                           else torch.full_like(self._p_sum, float(self._p_count)))
        self.metrics_before = state["metrics_before"]
        self.metrics_history = state["metrics_history"]
        self.train_seconds = state["train_seconds"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self._truncate_logs()

    def _truncate_logs(self) -> None:
        # Drop period lines written after the checkpoint (a crash between save and log).
        if not self.main:
            return
        # A line cut short by a kill during writing is dropped too.
        path = os.path.join(self.run_dir, "periods.jsonl")
        if os.path.exists(path):
            with open(path) as fh:
                lines = [ln.rstrip("\n") + "\n" for ln in fh if _period_of_json(ln) < self.period]
            with open(path, "w") as fh:
                fh.writelines(lines)
        # Evaluations after the checkpoint (resuming from an older epochNNN.pt) are redone.
        path = os.path.join(self.run_dir, "metrics.jsonl")
        if os.path.exists(path):
            with open(path) as fh:
                lines = [ln.rstrip("\n") + "\n" for ln in fh if _step_of_json(ln) <= self.global_step]
            with open(path, "w") as fh:
                fh.writelines(lines)
        for key in ("losses", "weights", "contributions"):
            p = os.path.join(self.run_dir, f"{key}.csv")
            if os.path.exists(p):
                with open(p, newline="") as fh:  # rows as csv.writer ended them (\r\n), kept byte for byte
                    rows = fh.readlines()
                width = rows[0].count(",") if rows else 0
                keep = rows[:1] + [r for r in rows[1:] if r.endswith("\n") and r.count(",") == width
                                   and _period_of_csv(r) < self.period]
                with open(p, "w", newline="") as fh:
                    fh.writelines(keep)

    # ------------------------------------------------------------------ outputs
    def _write_run_info(self) -> None:
        info = {
            "config": dataclasses.asdict(self.cfg),
            "names": list(self.names),
            "steps_per_epoch": self.steps_per_epoch,
            "period_end_steps": sorted(self.period_ends),
            "world_size": self.world,
            "device": str(self.device),
            "model": dataclasses.asdict(self.model.info) if self.model.info else None,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        if self.cfg.recipe:  # recipe_settings: what mlrb.train.recipes.apply_recipe applied (the CLI sets it)
            info["recipe"] = {"name": self.cfg.recipe, "settings": getattr(self, "recipe_settings", None)}
        from mlrb.train.protocol import describe_protocol
        info["eval_protocol"] = describe_protocol(self.cfg)
        with open(os.path.join(self.run_dir, "run.json"), "w") as fh:
            json.dump(info, fh, indent=1)

    def _log_metrics(self, record: dict) -> None:
        if self._tensorboard() is not None:
            self._tb.metrics(record)
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _summary(self) -> dict:
        after = {k: v for k, v in self.metrics_history[-1].items() if k not in ("epoch", "step")} if self.metrics_history else {}
        w = self.weighter.weights.detach().double().cpu()
        summary = {
            "steps": self.global_step,
            "epochs": self.epoch + self.step_in_epoch / self.steps_per_epoch,
            "periods": self.period,
            "train_seconds": self.train_seconds,
            "metrics_before": self.metrics_before,
            "metrics_after": after,
            "final_weights": dict(zip(self.names, w.tolist())),
            "checkpoint": os.path.join(self.ckpt_dir, "last.pt"),
        }
        if self.main:
            with open(os.path.join(self.run_dir, "summary.json"), "w") as fh:
                json.dump(summary, fh, indent=1)
        return summary

    def close(self) -> None:
        """Tear down the process group if this trainer created it."""
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
        if getattr(self, "_owns_pg", False) and dist.is_initialized():
            dist.destroy_process_group()


def mean_depth(dataset, n: int = 32) -> float:
    """Mean valid depth over (up to) ``n`` samples spread over the dataset."""
    base = getattr(dataset, "base", dataset)  # no augmentation needed for a mean
    idx = sorted({int(i * len(base) / n) for i in range(n)}) if len(base) > n else range(len(base))
    total, count = 0.0, 0
    for i in idx:
        s = base[i]
        valid = s["mask"] & torch.isfinite(s["depth"]) & (s["depth"] > 0)
        total += float(s["depth"][valid].double().sum())
        count += int(valid.sum())
    if count == 0:
        raise ValueError("no valid depth in the first training samples; check the data (or set init_depth)")
    return total / count


def _period_of_json(line: str) -> float:
    try:
        return json.loads(line)["period"]
    except (ValueError, KeyError, TypeError):
        return float("inf")  # empty or cut short: not a complete period record


def _step_of_json(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _period_of_csv(row: str) -> float:
    try:
        return int(row.split(",", 1)[0])
    except ValueError:
        return float("inf")


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _fmt_metrics(m: dict) -> str:
    keys = ("d1", "abs_rel", "rmse", "rmse_log", "rel_l1", "wkdr", "kendall_tau", "n_l1")  # RDE; DMD phase 1
    return "  ".join(f"{k}={m[k]:.4f}" for k in keys if k in m)


def _init_distributed(timeout_s: float, device: str) -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(dev)
    return dev


def _check_backend(backend: str, device: torch.device) -> None:
    from mlrb.loss_space import _pick_backend

    try:
        _pick_backend(backend, device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--backend {backend}: {exc}") from None


def _build_datasets(cfg: TrainConfig, size: tuple[int, int]):
    from mlrb.train.datasets import KITTI_CROP, Augment, AugmentedDataset, BTSSplit, NYUv2CSV
    from mlrb.train.synthetic import SyntheticDepth

    if cfg.eval_gt not in ("resized", "full"):
        raise ValueError(f"eval_gt must be 'resized' or 'full', got {cfg.eval_gt!r}")
    full = cfg.eval_gt == "full"
    if cfg.data == "synthetic":
        # Random crops need larger samples to crop from: render 1/8 larger.
        train_size = (size[0] + size[0] // 8, size[1] + size[1] // 8) if cfg.random_crop else size
        train = SyntheticDepth(cfg.synthetic_train, train_size, seed=cfg.seed)
        val = SyntheticDepth(cfg.synthetic_val, size, seed=cfg.seed + 1_000_000)
    else:
        if not cfg.train_list:
            raise ValueError(f"--data {cfg.data} needs --train-list")
        # Random crops are taken from the stored resolution (no resize), as AMLR does.
        train_size = None if cfg.random_crop else size
        if cfg.data == "nyu-csv":
            make = lambda p, sz, fg: NYUv2CSV(p, root=cfg.data_root, size=sz, depth_scale=cfg.depth_scale, full_gt=fg)
        elif cfg.data == "make3d":
            from mlrb.train.make3d import Make3DList
            make = lambda p, sz, fg: Make3DList(p, root=cfg.data_root, size=sz, full_gt=fg)
        else:
            if not cfg.data_root:
                raise ValueError(f"--data {cfg.data} needs --data-root (and --gt-root if depth lives elsewhere)")
            kind = "nyu" if cfg.data == "bts-nyu" else "kitti"
            if kind == "kitti" and train_size is None:
                train_size = KITTI_CROP  # the benchmark crop, itself the AMLR crop size at most
            make = lambda p, sz, fg: BTSSplit(p, cfg.data_root, cfg.gt_root, dataset=kind, size=sz, full_gt=fg)
        train = make(cfg.train_list, train_size, False)
        val = make(cfg.val_list, size, full) if cfg.val_list else make(cfg.train_list, size, full)
    if cfg.random_crop:
        h, w = train[0]["image"].shape[-2:]  # checked now, not at the first batch
        if h < size[0] or w < size[1]:
            raise ValueError(f"--random-crop: the {size[0]}x{size[1]} crop (--size) is larger than the "
                             f"{h}x{w} training images")
    if cfg.augment or cfg.rotate or cfg.random_crop:
        from mlrb.train.transforms import Chain, RandomCrop, RandomRotation
        train = AugmentedDataset(train, Chain(RandomCrop(size) if cfg.random_crop else None,
                                              RandomRotation(cfg.rotate) if cfg.rotate else None,
                                              Augment() if cfg.augment else None), seed=cfg.seed)
    return train, val


def _build_weighter(cfg: TrainConfig, names: tuple[str, ...]):
    from mlrb.weighting import AMLRRebalancer, FixedWeights, MultiLossRebalancer, paper_lambda_schedule

    n = len(names)
    common = dict(names=names, periods_per_epoch=cfg.periods_per_epoch)
    if cfg.weighting == "rebalance":
        start, end, step = cfg.lambda_start, cfg.lambda_end, cfg.lambda_step

        def lam(epoch: int) -> float:
            return paper_lambda_schedule(epoch, start=start, end=end, step=step)

        lam(0)  # a clear error now for a non-finite --lambda / --lambda-step, not at the first rebalancing

        return MultiLossRebalancer(n, lam=lam, clip=cfg.clip, max_ratio=cfg.max_ratio,
                                   initialize=cfg.rebalance_init, **common)
    if cfg.weighting == "amlr":
        return AMLRRebalancer(n, lam=cfg.amlr_lam, **common)
    if cfg.weighting == "uncertainty":
        from mlrb.weighting import UncertaintyWeighting
        return UncertaintyWeighting(n, **common)
    weights = cfg.fixed_weights
    if weights is not None and len(weights) == 1:
        weights = weights[0]
    return FixedWeights(n, weights, **common)
