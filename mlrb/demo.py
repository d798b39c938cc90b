"""``mlrb demo``: the 78 losses of a synthetic pred/gt pair and the gradient norm."""
from __future__ import annotations

import argparse
import time

import torch

from mlrb.loss_space import BACKENDS, _pick_backend, fused_loss_space
from mlrb.names import LOSS_TYPES, NUM_SCALES, NUM_TYPES


def synthetic_pair(batch: int, height: int, width: int, seed: int = 0):
    """A smooth depth map (tilted plane + bumps, 1..10 m) and a perturbed prediction of it."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    gt = []
    for _ in range(batch):
        a, b, c = torch.rand(3, generator=gen)
        depth = 2 + 6 * (a * y + b * x) + 1.5 * torch.sin(6.28 * (c + 2 * x)) * torch.cos(6.28 * y)
        gt.append(depth.clamp(1, 10))
    gt = torch.stack(gt)[:, None]
    noise = torch.nn.functional.avg_pool2d(torch.randn(gt.shape, generator=gen), 5, 1, 2)
    pred = (0.9 * gt + 0.3 + 0.5 * noise).clamp(min=0.1)
    return pred, gt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mlrb demo", description=__doc__)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", default="288x384", help="HxW (default: the paper's 288x384)")
    ap.add_argument("--backend", default="auto", choices=BACKENDS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size must look like 288x384, got {args.size!r}")
    if height < 1 or width < 1:
        ap.error(f"--size must be at least 1x1, got {args.size!r}")
    if args.batch < 1:
        ap.error(f"--batch must be at least 1, got {args.batch}")

    pred, gt = synthetic_pair(args.batch, height, width, args.seed)
    pred.requires_grad_(True)
    try:
        backend = _pick_backend(args.backend, pred.device)
    except (RuntimeError, ValueError) as exc:  # e.g. triton without a GPU, cpu without the extension
        ap.error(f"--backend {args.backend}: {exc}")
    start = time.perf_counter()
    losses = fused_loss_space(pred, gt, backend=backend)  # (B, 78)
    losses.sum().backward()
    elapsed = time.perf_counter() - start

    table = losses.detach().mean(0).view(NUM_SCALES, NUM_TYPES)
    print(f"78 losses of a synthetic {args.batch}x1x{height}x{width} pair (mean over the batch), "
          f"backend {backend!r}")
    print("scale " + "".join(f"{t:>8}" for t in LOSS_TYPES))
    for k in range(NUM_SCALES):
        print(f"k={k:<3} " + "".join(f"{v:8.4f}" for v in table[k].tolist()))
    print(f"gradient norm of the sum of all losses w.r.t. pred: {pred.grad.norm().item():.6f}")
    print(f"forward + backward: {elapsed * 1e3:.1f} ms")
    return 0
