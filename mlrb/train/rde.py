"""``mlrb train --task rde``: the relative depth estimator of Lee & Kim's supplement (S-3).

"Trained in the same way as the ordinary depth estimator": a Trainer subclass, so the run
folder, logs, periods, resume, DDP and AMP are the ODE trainer's. What differs:

* network: :class:`mlrb.models.relative.RelativeDepthNet` (n_d = 256 per decoder, S-4);
* losses: one masked L1 loss per relative map, |R_pred - R_gt| averaged over the map's
  valid pixels (mlrb.relative.relative_maps of the ground truth, computed per batch after
  augmentation) -> a (B, 16) tensor in RELATIVE_NAMES order, weighted by the configured
  weighter (default ``MultiLossRebalancer(16)`` with the paper's schedule), Adam 1e-4;
* evaluation: the relative-map L1 error on the validation set (``rel_l1``, the mean of
  the 16, and ``l1/<name>`` per map) and WKDR / WKDR= / WKDR!= of the "RDE only" fusion of
  the predicted maps (all gammas 1), so the log shows the error going down;
* data: several training lists in one run (relative maps are scale-free): the main
  ``--data`` / ``--train-list`` plus any number of ``--rde-list KIND:PATH``
  (mlrb.train.rde_data), including ``disparity-csv`` for relative-only data (the sign of
  log disparity is handled by training on 1 / disparity, see mlrb.relative.disparity_maps).

Readings: a sample with no valid pixel for a map contributes loss 0 for it (the loss
space's empty-set rule); the output starts near 0 (no init_output_depth).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from mlrb.relative.maps import RELATIVE_NAMES, relative_maps
from mlrb.train.trainer import Trainer, TrainConfig

# WKDR of the RDE-only fusion during training: a few pairs per image keep evaluation cheap.
EVAL_PAIRS = 4000


def relative_l1(pred: dict[str, torch.Tensor], target: dict[str, torch.Tensor], valid: dict[str, torch.Tensor],
                names=RELATIVE_NAMES) -> torch.Tensor:
    """(B, len(names)) masked L1 of predicted vs target maps; 0 for a sample with no valid pixel."""
    cols = []
    for n in names:
        v = valid[n].to(torch.float32)
        err = (pred[n].float() - target[n].float()).abs() * v
        cols.append(err.sum(dim=(1, 2, 3)) / v.sum(dim=(1, 2, 3)).clamp(min=1))
    return torch.stack(cols, dim=1)


def batch_targets(depth: torch.Tensor, mask: torch.Tensor | None):
    """Relative maps and masks of a batch's ground truth (missing / non-positive depth is invalid)."""
    depth = depth.float()
    valid = torch.isfinite(depth) & (depth > 0)
    if mask is not None:
        valid &= mask.bool()
    return relative_maps(torch.where(valid, depth, 1.0), valid)


class RDETrainer(Trainer):
    """Trainer of RelativeDepthNet; see the module docstring."""

    task = "rde"

    def __init__(self, cfg: TrainConfig):
        # The relative maps have mean ~0: no output initialisation from the mean depth.
        if cfg.init_depth == "auto":
            cfg = dataclasses.replace(cfg, init_depth=None)
        super().__init__(cfg)

    def loss_names(self) -> tuple[str, ...]:
        return RELATIVE_NAMES

    def build_datasets(self):
        train, val = super().build_datasets()
        lists = getattr(self.cfg, "rde_lists", None) or []
        if lists:
            from mlrb.train.rde_data import ConcatSamples, build_list

            extra = [build_list(spec, self.size, self.cfg) for spec in lists]
            if self.cfg.augment:
                from mlrb.train.datasets import Augment, AugmentedDataset
                extra = [AugmentedDataset(d, Augment(), seed=self.cfg.seed) for d in extra]
            train = ConcatSamples([train, *extra])
        return train, val

    def build_network(self) -> nn.Module:
        from mlrb.models.relative import build_relative_model

        cfg = self.cfg
        return build_relative_model(cfg.model, n_d=cfg.n_d, pretrained=cfg.pretrained,
                                    random_if_missing=cfg.random_if_missing)

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = batch["image"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True)
        mask = batch.get("mask")
        mask = None if mask is None else mask.to(self.device, non_blocking=True)
        with torch.no_grad():
            target, valid = batch_targets(depth, mask)
        with self.autocast():
            pred = self.net(image)
        return relative_l1(pred, target, valid, self.names)

    def predict_maps(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 16 relative maps (float32) of the model in eval mode."""
        with self.autocast():
            return {n: r.float() for n, r in self.model(image).items()}

    def predict_depth(self, image: torch.Tensor) -> torch.Tensor:
        """Relative depth (up to scale) of the "RDE only" fusion with every gamma 1."""
        from mlrb.relative.fusion import fuse

        return fuse(None, self.predict_maps(image), 1.0, size=tuple(image.shape[-2:]))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Relative-map L1 (rel_l1, l1/<name>) and WKDR of the RDE-only fusion on the validation set."""
        from mlrb.metrics.ordinal import WKDR_KEYS, wkdr_per_image

        self.model.eval()
        n = len(self.names)
        # sums of per-image L1 per map, image count, WKDR sums and counts
        stats = torch.zeros(n + 1 + 2 * len(WKDR_KEYS), dtype=torch.float64)
        loader = self.val_loader()
        from mlrb.relative.fusion import fuse

        for batch in loader:
            image = batch["image"].to(self.device)
            depth, mask = batch["depth"].to(self.device), batch["mask"].to(self.device)
            pred = self.predict_maps(image)
            target, valid = batch_targets(depth, mask)
            stats[:n] += relative_l1(pred, target, valid, self.names).double().sum(0).cpu()
            stats[n] += image.shape[0]
            rel = fuse(None, pred, 1.0, size=tuple(image.shape[-2:]))
            ok_gt = mask.bool() & torch.isfinite(depth) & (depth > 0)
            if bool(ok_gt.any()):
                rates, ok = wkdr_per_image(rel.cpu(), depth.cpu(), ok_gt.cpu(), n_pairs=EVAL_PAIRS)
                for j, key in enumerate(WKDR_KEYS):
                    stats[n + 1 + 2 * j] += float(rates[key][ok[key]].sum())
                    stats[n + 2 + 2 * j] += int(ok[key].sum())
        if self.world > 1:
            stats = stats.to(self.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        count = max(float(stats[n]), 1.0)
        per_map = stats[:n] / count
        out = {"rel_l1": float(per_map.mean())}
        for j, key in enumerate(WKDR_KEYS):
            if stats[n + 2 + 2 * j] > 0:
                out[key] = float(stats[n + 1 + 2 * j] / stats[n + 2 + 2 * j])
        out.update({f"l1/{name}": float(v) for name, v in zip(self.names, per_map)})
        self.model.train()
        return out

    def load_checkpoint(self, path: str) -> None:
        import os

        if os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=False)
            task = (state.get("config") or {}).get("task", "ode") if isinstance(state, dict) else None
            if task != "rde":
                raise ValueError(f"cannot resume from {path}: it is a {task!r} run, not an RDE run (--task rde)")
        super().load_checkpoint(path)
