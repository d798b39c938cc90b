"""Fine-tune a Hugging Face transformers depth model with the 78-loss space and rebalancing.

    python examples/hf_dpt_depth.py --mode trainer     # transformers.Trainer (RebalancingTrainer)
    python examples/hf_dpt_depth.py --mode loop        # the same in a plain PyTorch loop

The model is DPTForDepthEstimation built from a small random config, so nothing is
downloaded. With real pretrained weights only the model line changes, e.g. a metric-depth
checkpoint (the losses compare depth in metres; relative-depth checkpoints predict
inverse relative depth)::

    model = AutoModelForDepthEstimation.from_pretrained("depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf")

(normalise pixel_values with that model's image processor and use input sizes it accepts,
multiples of 14 for Depth Anything). Needs ``pip install mlrb[hf]``.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DPTConfig, DPTForDepthEstimation

import mlrb
from mlrb.integrations.hf import depth_mask, predicted_depth
from mlrb.train import SyntheticDepth


def tiny_dpt(image_size: int = 32) -> DPTForDepthEstimation:
    """A randomly initialised DPT (ViT backbone) small enough to train on a CPU."""
    config = DPTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=4,
                       num_attention_heads=2, intermediate_size=64, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    return DPTForDepthEstimation(config)


class DepthPairs(Dataset):
    """SyntheticDepth as the Trainer expects it: pixel_values (normalised as DPT's image
    processor does, mean 0.5, std 0.5) and labels (depth in metres, 0 where invalid)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.data = SyntheticDepth(n, size=(size, size), seed=seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        item = self.data[i]
        return {"pixel_values": (item["image"] - 0.5) / 0.5,
                "labels": torch.where(item["mask"], item["depth"], torch.zeros_like(item["depth"]))[0]}


def train_with_trainer(args):
    from transformers import TrainingArguments

    from mlrb.integrations.hf import RebalancingTrainer

    model = tiny_dpt(args.size)
    training_args = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, logging_steps=args.logging_steps,
        save_strategy="epoch", report_to=args.report_to, use_cpu=args.cpu, seed=0,
        dataloader_num_workers=0, disable_tqdm=not args.progress,
    )
    trainer = RebalancingTrainer(model=model, args=training_args,
                                 train_dataset=DepthPairs(args.train_images, args.size),
                                 select=args.select)
    trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model()
    return model, trainer


def train_with_loop(args):
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    model = tiny_dpt(args.size).to(device)
    loader = DataLoader(DepthPairs(args.train_images, args.size), batch_size=args.batch_size, shuffle=True)
    names = mlrb.names.names_of(mlrb.resolve_select(args.select))            # the selected losses
    weighter = mlrb.MultiLossRebalancer(len(names), names=names, steps_per_epoch=len(loader))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = 0
    for epoch in range(args.epochs):
        for batch in loader:
            gt = batch["labels"].to(device).unsqueeze(1)                          # (B, 1, H, W) metres
            out = model(pixel_values=batch["pixel_values"].to(device))
            pred = predicted_depth(out, gt.shape[-2:])                          # resized to the labels
            loss = weighter(mlrb.fused_loss_space(pred, gt, depth_mask(gt), select=names))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if steps == args.max_steps:
                break
        print(f"epoch {epoch}: loss {loss.item():.4f}, periods ended {weighter.periods_ended}")
        if steps == args.max_steps:
            break
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    torch.save(weighter.state_dict(), os.path.join(args.out, "mlrb_weighter.pt"))
    return model, weighter


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("trainer", "loop"), default="trainer")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    p.add_argument("--size", type=int, default=32, help="square image side (a multiple of the patch size, 8)")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--select", default="all", help="losses, as mlrb.fused_loss_space's select=")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    p.add_argument("--report-to", default="none", help="Trainer loggers, e.g. tensorboard")
    p.add_argument("--logging-steps", type=int, default=10, help="Trainer: log (loss, weights, contributions) every N steps")
    p.add_argument("--progress", action="store_true", help="show the Trainer's progress bar")
    p.add_argument("--out", default="runs/hf_dpt")
    p.add_argument("--resume", default=None, help="Trainer checkpoint folder to resume from")
    args = p.parse_args(argv)
    if args.size < 8 or args.size % 8:
        p.error(f"--size must be a positive multiple of 8, got {args.size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    return (train_with_trainer if args.mode == "trainer" else train_with_loop)(args)


if __name__ == "__main__":
    main()
