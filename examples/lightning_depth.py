"""Train a small depth model with PyTorch Lightning, the 78-loss space and rebalancing.

    python examples/lightning_depth.py                      # synthetic rooms, CPU or GPU
    python examples/lightning_depth.py --epochs 3 --size 64x64 --devices 2 --strategy ddp
    python examples/lightning_depth.py --epochs 4 --resume runs/lightning/last.ckpt
    tensorboard --logdir runs/lightning                     # mlrb/loss, weights, contributions

Needs ``pip install mlrb[lightning]`` (tensorboard is optional: without it the logs go to CSV).
"""
from __future__ import annotations

import argparse
import os

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

from mlrb.integrations.lightning import LossSpaceMixin
from mlrb.integrations.torchmetrics import DepthMetrics
from mlrb.models import build_model
from mlrb.train import SyntheticDepth


class DepthModel(LossSpaceMixin, L.LightningModule):
    def __init__(self, encoder: str = "resnet18", n_d: int = 64, select: str = "all", lr: float = 3e-4):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_model(encoder, n_d=n_d)                  # random init: nothing downloaded
        self.net.init_output_depth(3.0)
        self.configure_loss_space(select=select)                  # MultiLossRebalancer over the selection
        self.val_metrics = DepthMetrics(min_depth=1e-3, max_depth=10.0)

    def training_step(self, batch, batch_idx):
        pred = self.net(batch["image"])
        return self.loss_space_step(pred, batch["depth"], batch["mask"])

    def validation_step(self, batch, batch_idx):
        pred = self.net(batch["image"])
        self.loss_space_step(pred, batch["depth"], batch["mask"])
        self.val_metrics.update(pred, batch["depth"], batch["mask"])

    def on_validation_epoch_end(self):
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()})
        self.val_metrics.reset()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 96x128, got {text!r}") from None
    return h, w


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    p.add_argument("--size", type=_size, default=(64, 64), help="HxW of the synthetic images")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--encoder", default="resnet18", help="timm encoder (random init; see mlrb.models)")
    p.add_argument("--n-d", type=int, default=64, help="decoder width (the paper: 1024)")
    p.add_argument("--select", default="all", help="losses, as mlrb.fused_loss_space's select=")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--out", default="runs/lightning", help="logs and checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    L.seed_everything(0, workers=True)
    train = SyntheticDepth(args.train_images, size=args.size, seed=0)
    val = SyntheticDepth(args.val_images, size=args.size, seed=1)
    model = DepthModel(encoder=args.encoder, n_d=args.n_d, select=args.select, lr=args.lr)
    try:
        logger = L.loggers.TensorBoardLogger(args.out, name="")
    except ModuleNotFoundError:
        logger = L.loggers.CSVLogger(args.out, name="")
    trainer = L.Trainer(
        max_epochs=args.epochs, max_steps=args.max_steps, accelerator=args.accelerator,
        devices=args.devices, strategy=args.strategy, logger=logger, log_every_n_steps=1,
        callbacks=[L.callbacks.ModelCheckpoint(dirpath=args.out, save_last=True)],
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(train, batch_size=args.batch_size, shuffle=True),
                DataLoader(val, batch_size=args.batch_size), ckpt_path=args.resume)
    if trainer.is_global_zero:
        w = model.weighter
        print(f"periods ended: {w.periods_ended}; "
              f"weights min {float(w.weights.min()):.4g} max {float(w.weights.max()):.4g}; "
              f"logs in {os.path.abspath(args.out)}")
    return model, trainer


if __name__ == "__main__":
    main()
