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

SYNTHETIC_SIZE = (64, 96)
PAPER_SIZE = (288, 384)
WEIGHTINGS = ("rebalance", "amlr", "uncertainty", "fixed")
DATA_KINDS = ("synthetic", "nyu-csv", "bts-nyu", "bts-kitti")


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
    # losses and weighting
    select: str = "all"
    backend: str = "auto"
    weighting: str = "rebalance"
    lambda_start: float = 3.0
    lambda_end: float = -3.0
    lambda_step: float = 1.5
    clip: tuple[float, float] | None = (0.5, 2.0)
    max_ratio: float | None = None
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

    def __init__(self, cfg: TrainConfig):
        if cfg.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {cfg.weighting!r}")
        if cfg.data not in DATA_KINDS:
            raise ValueError(f"data must be one of {DATA_KINDS}, got {cfg.data!r}")
        if cfg.batch_size < 1 or cfg.epochs < 1 or cfg.lr <= 0:
            raise ValueError("batch_size and epochs must be >= 1 and lr > 0")
        self.cfg = cfg
        if cfg.threads is not None:
            if cfg.threads < 1:
                raise ValueError(f"threads must be >= 1, got {cfg.threads}")
            torch.set_num_threads(int(cfg.threads))
        self._owns_pg = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
        self.rank, self.world, self.local_rank = _init_distributed(cfg.dist_timeout_s, cfg.device)
        self.device = _pick_device(cfg.device, self.local_rank)
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

        self.run_dir = cfg.out_dir
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        has_logs = any(os.path.exists(os.path.join(self.run_dir, f)) for f in ("periods.jsonl", "metrics.jsonl"))
        has_ckpt = os.path.isfile(os.path.join(self.ckpt_dir, "last.pt"))
        if has_logs and not cfg.resume:
            raise ValueError(f"run folder {self.run_dir} already holds a run; resume it (--resume auto) "
                             f"or choose another --out")
        if has_logs and cfg.resume == "auto" and not has_ckpt:
            raise ValueError(f"run folder {self.run_dir} holds logs but no checkpoints/last.pt to resume from; "
                             f"choose another --out")
        if self.main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
        if cfg.resume:
            path = os.path.join(self.ckpt_dir, "last.pt") if cfg.resume == "auto" else cfg.resume
            if cfg.resume != "auto" or os.path.isfile(path):
                self.load_checkpoint(path)

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
        return build_model(cfg.model, n_d=cfg.n_d, pretrained=cfg.pretrained,
                           random_if_missing=cfg.random_if_missing, head=head)

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
        losses = self.compute_losses(batch)
        loss_mask = None
        if isinstance(losses, tuple):
            losses, loss_mask = losses
        total = self.weighter(losses, loss_mask=loss_mask) if loss_mask is not None else self.weighter(losses)
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
            if loss_mask is None:
                self._p_sum += losses.detach().double().mean(0)
                self._p_steps += 1
            else:  # each loss over the samples (and steps) that have it, as the weighter does
                count = loss_mask.sum(0)
                self._p_sum += torch.where(loss_mask, losses.detach().double(), 0.0).sum(0) / count.clamp_min(1)
                self._p_steps += (count > 0).double()
            self._p_total += total.detach().double()
            self._p_count += 1
        return total.detach()

    def _reset_period_stats(self) -> None:
        n = len(self.names)
        dev = getattr(self, "device", torch.device("cpu"))
        self._p_sum = torch.zeros(n, dtype=torch.float64, device=dev)
        self._p_steps = torch.zeros(n, dtype=torch.float64, device=dev)  # steps with each loss
        self._p_total = torch.zeros((), dtype=torch.float64, device=dev)
        self._p_count = 0

    # ------------------------------------------------------------------ periods
    def end_period(self) -> dict:
        """End a period: the weighter initializes/rebalances; log losses, weights, contributions."""
        n = len(self.names)
        stats = torch.cat([self._p_sum, self._p_steps, self._p_total.view(1), self._p_sum.new_tensor([self._p_count])])
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

    def _write_period(self, record: dict) -> None:
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

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Depth metrics of the current model on the validation set (sharded over ranks)."""
        from mlrb.metrics.accumulator import MetricAccumulator

        self.model.eval()
        acc = MetricAccumulator()
        idx = list(range(self.rank, len(self.val_set), self.world))
        b = self.cfg.batch_size
        loader = torch.utils.data.DataLoader(self.val_set, batch_sampler=[idx[i:i + b] for i in range(0, len(idx), b)],
                                             num_workers=self.cfg.num_workers)
        for batch in loader:
            pred = self.predict_depth(batch["image"].to(self.device))
            gt = batch["depth"].to(self.device)
            acc.update_depth(pred, gt, min_depth=self.min_depth, max_depth=self.max_depth,
                             crop=self.cfg.eval_crop, mask=batch["mask"].to(self.device))
        acc.all_reduce()
        self.model.train()
        return acc.compute()

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train to ``epochs`` (or ``max_steps``); returns the summary (also saved as summary.json)."""
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
                total = self.train_step(batch)
                self.global_step += 1
                if self.step_in_epoch in self.period_ends:
                    self.end_period()
                self.step_in_epoch += 1
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
            "format": "mlrb-train-1",
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
                             "steps": self._p_steps.cpu()},
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
        tmp = path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
        if tag:
            tagged = os.path.join(self.ckpt_dir, f"{tag}.pt")
            torch.save(state, tagged + ".tmp")
            os.replace(tagged + ".tmp", tagged)
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore everything saved by save_checkpoint; the run continues with the next step."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != "mlrb-train-1":
            raise ValueError(f"{path} is not an mlrb training checkpoint")
        old = state["config"]
        mine = dataclasses.asdict(self.cfg)
        diff = [k for k in _RESUME_KEYS if _norm(old.get(k)) != _norm(mine.get(k))]
        if state.get("world_size", 1) != self.world:
            diff.append(f"world_size ({state.get('world_size')} -> {self.world})")
        if diff:
            raise ValueError(f"cannot resume from {path}: settings differ: {', '.join(map(str, diff))}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.weighter.load_state_dict(state["weighter"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.period = state["global_step"], state["period"]
        ps = state["period_stats"]
        self._p_sum = ps["sum"].to(self.device)
        self._p_total = ps["total"].to(self.device)
        self._p_count = ps["count"]
        steps = ps.get("steps")  # absent in checkpoints from before loss masks
        self._p_steps = (steps.to(self.device) if steps is not None
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
        path = os.path.join(self.run_dir, "periods.jsonl")
        if os.path.exists(path):
            with open(path) as fh:
                lines = [ln for ln in fh if ln.strip() and json.loads(ln)["period"] < self.period]
            with open(path, "w") as fh:
                fh.writelines(lines)
        for key in ("losses", "weights", "contributions"):
            p = os.path.join(self.run_dir, f"{key}.csv")
            if os.path.exists(p):
                with open(p) as fh:
                    rows = fh.readlines()
                keep = rows[:1] + [r for r in rows[1:] if int(r.split(",", 1)[0]) < self.period]
                with open(p, "w") as fh:
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
        with open(os.path.join(self.run_dir, "run.json"), "w") as fh:
            json.dump(info, fh, indent=1)

    def _log_metrics(self, record: dict) -> None:
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


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _fmt_metrics(m: dict) -> str:
    keys = ("d1", "abs_rel", "rmse", "rmse_log", "kendall_tau", "n_l1")  # the last two: DMD phase 1
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
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def _build_datasets(cfg: TrainConfig, size: tuple[int, int]):
    from mlrb.train.datasets import Augment, AugmentedDataset, BTSSplit, NYUv2CSV
    from mlrb.train.synthetic import SyntheticDepth

    if cfg.data == "synthetic":
        train = SyntheticDepth(cfg.synthetic_train, size, seed=cfg.seed)
        val = SyntheticDepth(cfg.synthetic_val, size, seed=cfg.seed + 1_000_000)
    else:
        if not cfg.train_list:
            raise ValueError(f"--data {cfg.data} needs --train-list")
        if cfg.data == "nyu-csv":
            make = lambda p: NYUv2CSV(p, root=cfg.data_root, size=size, depth_scale=cfg.depth_scale)
        else:
            if not cfg.data_root:
                raise ValueError(f"--data {cfg.data} needs --data-root (and --gt-root if depth lives elsewhere)")
            kind = "nyu" if cfg.data == "bts-nyu" else "kitti"
            make = lambda p: BTSSplit(p, cfg.data_root, cfg.gt_root, dataset=kind, size=size)
        train = make(cfg.train_list)
        val = make(cfg.val_list) if cfg.val_list else train
    if cfg.augment:
        train = AugmentedDataset(train, Augment(), seed=cfg.seed)
    return train, val


def _build_weighter(cfg: TrainConfig, names: tuple[str, ...]):
    from mlrb.weighting import AMLRRebalancer, FixedWeights, MultiLossRebalancer, paper_lambda_schedule

    n = len(names)
    common = dict(names=names, periods_per_epoch=cfg.periods_per_epoch)
    if cfg.weighting == "rebalance":
        start, end, step = cfg.lambda_start, cfg.lambda_end, cfg.lambda_step

        def lam(epoch: int) -> float:
            return paper_lambda_schedule(epoch, start=start, end=end, step=step)

        return MultiLossRebalancer(n, lam=lam, clip=cfg.clip, max_ratio=cfg.max_ratio, **common)
    if cfg.weighting == "amlr":
        return AMLRRebalancer(n, lam=cfg.amlr_lam, **common)
    if cfg.weighting == "uncertainty":
        from mlrb.weighting import UncertaintyWeighting
        return UncertaintyWeighting(n, **common)
    weights = cfg.fixed_weights
    if weights is not None and len(weights) == 1:
        weights = weights[0]
    return FixedWeights(n, weights, **common)
