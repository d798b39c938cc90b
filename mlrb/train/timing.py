"""``mlrb time``: the Table 7 experiment of Lee & Kim (ECCV 2020) on the current device.

Seconds per training iteration (forward, the selected losses of the loss space, the
rebalancing weighter, backward, Adam step) with {D@0}, L^3 ∪ L^4 ∪ L^5 (39 losses) and all
78 losses, printed beside the paper's 1.63 / 1.70 / 1.97 s (TITAN X, PNASNet, batch 8) and
as overhead relative to {D@0}. Data loading is excluded: every iteration reuses one
synthetic batch, so the numbers isolate what the loss selection costs.

The settings are timed round-robin (one iteration of each in turn, the order reversed every
other round), so drifts of a shared machine's load hit all alike; the table gives the median
seconds per iteration and, as overhead, the median of the per-round ratios to {D@0}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import torch

from mlrb.errors import UserError
from mlrb.names import TABLE5_SETS, resolve_select

# Table 7 of the paper: training seconds per iteration on a TITAN X.
PAPER_TABLE7 = {"{D0}": 1.63, "L^3|L^4|L^5": 1.70, "all": 1.97}


def make_iteration(model: torch.nn.Module, select: str, image: torch.Tensor, gt: torch.Tensor, *,
                   backend: str = "auto", amp_dtype: torch.dtype | None = None, lr: float = 1e-4) -> Callable[[], float]:
    """A closure running one training iteration with the losses ``select``; returns its loss."""
    from mlrb.loss_space import fused_loss_space
    from mlrb.names import names_of
    from mlrb.weighting import MultiLossRebalancer

    names = names_of(resolve_select(select))
    weighter = MultiLossRebalancer(len(names), names=names).to(image.device)
    opt = torch.optim.Adam(list(model.parameters()), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def step() -> float:
        with torch.autocast(image.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            pred = model(image)
        total = weighter(fused_loss_space(pred.float(), gt, select=names, backend=backend))
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        return total.detach()

    return step


def measure(sets: dict[str, str], *, model_name: str = "resnet18", n_d: int = 1024, size=(288, 384),
            batch_size: int = 8, iters: int = 5, warmup: int = 1, device: str = "auto", backend: str = "auto",
            amp: bool = True, progress: bool = True, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per iteration for every selection in ``sets`` (label -> selection), round-robin."""
    from mlrb.models import build_model
    from mlrb.models.encoder import check_batch_norm_batch
    from mlrb.train.synthetic import render_scene

    if iters < 1 or warmup < 0:
        raise ValueError("iters must be >= 1 and warmup >= 0")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    torch.manual_seed(seed)
    model = build_model(model_name, n_d=n_d, input_size=tuple(size)).to(dev).train()
    check_batch_norm_batch(model, model.info.reduction, batch_size, size)  # before minutes of timing
    g = torch.Generator().manual_seed(seed)
    pairs = [render_scene(size[0], size[1], g) for _ in range(batch_size)]
    image = torch.stack([p[0] for p in pairs]).to(dev)
    gt = torch.stack([p[1] for p in pairs]).to(dev)
    amp_dtype = None
    if amp and dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    steps = {label: make_iteration(model, sel, image, gt, backend=backend, amp_dtype=amp_dtype)
             for label, sel in sets.items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {label: [] for label in sets}
    total = (warmup + iters) * len(sets)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="mlrb time", unit="iter", file=sys.stderr)
    for i in range(warmup + iters):
        order = list(steps.items())
        for label, step in (order if i % 2 == 0 else order[::-1]):  # alternate to cancel drift
            sync()
            t0 = time.perf_counter()
            loss = step()
            float(loss)  # the iteration is done when its loss is on the host
            sync()
            if i >= warmup:
                times[label].append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return times


def format_table(times: dict[str, list[float]], sets: dict[str, str], header: str) -> str:
    labels = list(times)
    base_label = labels[0]
    base = statistics.median(times[base_label])
    paper_base = PAPER_TABLE7.get(base_label)
    lines = [header,
             f"  {'losses':<14}{'n':>4}{'s/iter':>10}{'vs ' + base_label:>12}{'paper s/iter':>14}{'paper vs {D0}':>15}"]
    for label in labels:
        med = statistics.median(times[label])
        n = len(resolve_select(sets[label]))
        # Overhead: median of the per-round ratios (iterations of one round ran back to
        # back, so a drifting machine load cancels out).
        ratio = statistics.median(a / b for a, b in zip(times[label], times[base_label]))
        rel = f"{(ratio - 1) * 100:+.1f}%" if label != base_label else "-"
        paper = PAPER_TABLE7.get(label)
        p_s = f"{paper:.2f}" if paper is not None else "-"
        p_rel = f"{(paper / paper_base - 1) * 100:+.1f}%" if paper is not None and paper_base and label != base_label else "-"
        lines.append(f"  {label:<14}{n:>4}{med:>10.3f}{rel:>12}{p_s:>14}{p_rel:>15}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlrb time", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="resnet18", help="encoder (preset or timm name)")
    p.add_argument("--n-d", type=int, default=1024, help="decoder width n_d")
    p.add_argument("--size", type=int, nargs=2, default=(288, 384), metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5, help="timed iterations per setting")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per setting first")
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto", help="loss-space backend")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    p.add_argument("--sets", nargs="+", default=list(PAPER_TABLE7),
                   help="loss selections; the first is the baseline (Table 5 keys or selection strings)")
    p.add_argument("--json", default=None, help="also write the raw times here")
    p.add_argument("--no-progress", action="store_true")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Errors found before minutes of timing (ValueError or UserError naming the option)."""
    from mlrb.metrics.evaluate import check_json_target
    from mlrb.train.trainer import _check_backend, _pick_device

    for opt, value, low in (("--iters", args.iters, 1), ("--warmup", args.warmup, 0), ("--batch-size", args.batch_size, 1),
                            ("--n-d", args.n_d, 1), ("--size", min(args.size), 8)):
        if value < low:
            raise ValueError(f"{opt} must be >= {low}, got {value}")
    _check_backend(args.backend, _pick_device(args.device, 0))
    check_json_target(args.json)  # `mlrb eval`'s check: also refuses a folder (e.g. --json .)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sets = {s: TABLE5_SETS.get(s, s) for s in args.sets}
        for sel in sets.values():
            resolve_select(sel)
        _check_args(args)
    except (ValueError, UserError) as exc:
        print(f"mlrb time: error: {exc}", file=sys.stderr)
        return 2
    try:
        times = measure(sets, model_name=args.model, n_d=args.n_d, size=tuple(args.size), batch_size=args.batch_size,
                        iters=args.iters, warmup=args.warmup, device=args.device, backend=args.backend,
                        amp=not args.no_amp, progress=not args.no_progress)
    except ValueError as exc:  # the model's own checks (unknown encoder, n_d, input too small)
        print(f"mlrb time: error: {exc}", file=sys.stderr)
        return 2
    from mlrb.loss_space import _pick_backend

    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    backend = _pick_backend(args.backend, torch.device(dev))
    header = (f"Table 7: seconds per training iteration (median of {args.iters}) - {args.model}, n_d={args.n_d}, "
              f"{args.size[0]}x{args.size[1]}, batch {args.batch_size}, {dev}, loss backend {backend}, "
              f"{torch.get_num_threads()} threads; paper: TITAN X, PNASNet, batch 8")
    print(format_table(times, sets, header))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": vars(args), "backend": backend, "times": times}, fh, indent=1)
    return 0
