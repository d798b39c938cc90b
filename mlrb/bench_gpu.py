"""GPU timings of the loss space (``mlrb bench --device cuda``), timed with CUDA events.

Providers and shapes are those of the CPU bench (mlrb.bench): the paper-style and best
pure-PyTorch formulations, torch.compile of the latter, the fused Triton kernels, and a
single L1 loss as the unit. On the GPU each is also timed for the loss sets of the
paper's Table 7: {D@0}, L^3 | L^4 | L^5 and all 78.

Targets (issue 4), on one H100 at 8x1x288x384, forward+backward of all 78:
fused <= 2x a single L1 loss in eager PyTorch, and >= 20x faster than "paper".
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from mlrb import bench as cpu_bench

# Table 7 of the paper: one loss, the coarse half of the space, the whole space.
SETS: dict[str, str] = {"{D0}": "D0", "L^3|L^4|L^5": "L^3 | L^4 | L^5", "all": "all"}
MODES = cpu_bench.MODES
PROVIDERS = cpu_bench.PROVIDERS


@dataclass
class Row:
    shape: str
    mode: str
    loss_set: str
    provider: str
    best_ms: float
    median_ms: float


def gpu_step(fn: Callable, mode: str, pred, gt, mask) -> Callable[[], None]:
    """One forward (or forward+backward) of fn, enqueued without synchronising."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "forward":
        def run():
            with torch.no_grad():
                fn(pred, gt, mask)
        return run
    p = pred.detach().clone().requires_grad_(True)

    def run():
        p.grad = None
        fn(p, gt, mask).sum().backward()
    return run


def cuda_event_times(run: Callable[[], None], repeat: int, warmup: int = 2) -> list[float]:
    """Milliseconds of ``repeat`` calls of run, each between two CUDA events on the
    current stream (GPU time of the work run enqueues, plus any host gap inside it)."""
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeat):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return out


def run_gpu_bench(
    shapes: Iterable[str] = ("paper",),
    providers: Iterable[str] = PROVIDERS,
    sets: Iterable[str] = tuple(SETS),
    modes: Iterable[str] = MODES,
    repeat: int = 20,
    progress: bool = True,
) -> list[Row]:
    """Time every (shape, mode, loss set, provider) on the current CUDA device.

    ``shapes`` are names of mlrb.bench.SHAPES or "BxCxHxW[@density]"; ``sets`` keys of
    SETS or any selection string. The l1 provider ignores the set (it is the unit).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("run_gpu_bench needs a CUDA GPU")
    from tqdm import tqdm

    shapes, providers, sets, modes = list(shapes), list(providers), list(sets), list(modes)
    jobs = [(s, m, ls, p) for s in shapes for m in modes for ls in sets for p in providers]
    rows: list[Row] = []
    cases: dict = {}
    for shape, mode, loss_set, provider in tqdm(jobs, desc="mlrb bench (cuda)", disable=not progress):
        if shape not in cases:
            cases = {shape: cpu_bench.make_case(cpu_bench.parse_shape(shape), "cuda")}
        pred, gt, mask = cases[shape]
        fn = cpu_bench.provider_fn(provider, SETS.get(loss_set, loss_set), "cuda")
        n = min(repeat, 5) if provider == "paper" else repeat
        times = cuda_event_times(gpu_step(fn, mode, pred, gt, mask), n,
                                 warmup=3 if "compile" in provider else 2)
        rows.append(Row(cpu_bench.shape_label(cpu_bench.parse_shape(shape)), mode, loss_set, provider,
                        min(times), statistics.median(times)))
    return rows


def format_rows(rows: list[Row]) -> str:
    """The table with each provider's best time relative to l1 and to fused."""
    lines = []
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.shape, r.mode, r.loss_set), {})[r.provider] = r
    for (shape, mode, loss_set), by in groups.items():
        lines.append(f"\n{shape}  {mode}  losses={loss_set}")
        lines.append(f"  {'provider':<14}{'best ms':>10}{'median ms':>11}{'x l1':>9}{'x fused':>10}")
        for name, r in by.items():
            rel_l1 = f"{r.best_ms / by['l1'].best_ms:9.2f}" if "l1" in by else f"{'-':>9}"
            rel_f = f"{r.best_ms / by['fused'].best_ms:10.2f}" if "fused" in by else f"{'-':>10}"
            lines.append(f"  {name:<14}{r.best_ms:10.3f}{r.median_ms:11.3f}{rel_l1}{rel_f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``mlrb bench --device cuda``: accepts the CPU bench's options plus --sets."""
    parser = argparse.ArgumentParser(prog="mlrb bench --device cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", default=None)
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--select", default=None, help="one loss set instead of the Table 7 sets")
    parser.add_argument("--sets", default=",".join(SETS),
                        help="comma-separated Table 7 sets: " + ", ".join(SETS))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", choices=("cuda",), default="cuda")
    parser.add_argument("--threads", type=int, default=None, help="ignored on the GPU")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mlrb bench --device cuda: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for p in providers:
        if p not in PROVIDERS:
            parser.error(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    sets = [args.select] if args.select else [s.strip() for s in args.sets.split(",") if s.strip()]
    modes = MODES if args.mode == "both" else (args.mode,)
    shapes = args.shape or ["paper"]
    for s in shapes:
        try:
            cpu_bench.parse_shape(s)
        except ValueError as exc:
            parser.error(str(exc))
    print(f"mlrb bench: device={torch.cuda.get_device_name()} torch={torch.__version__}; "
          f"CUDA-event times, best and median of --repeat calls, ms")
    print(format_rows(run_gpu_bench(shapes, providers, sets, modes, args.repeat)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
