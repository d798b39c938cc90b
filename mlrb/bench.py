"""``mlrb bench``: time the loss-space formulations against a single L1 loss.

Providers (all compute the same (B, n) losses, see mlrb.baselines):
  paper          the paper's public-code formulation (separate tensor ops per loss)
  torch          the best pure-PyTorch formulation (on e = pred - gt, cumsum box filters)
  torch_compile  torch.compile of "torch"
  fused          mlrb.fused_loss_space with the fused kernels (cpu: C++/OpenMP, cuda: Triton)
  l1             the unit: (pred - gt).abs().mean()
Modes: "forward" and "forward+backward" (backward of the sum of the losses w.r.t. pred).
The same helpers serve bench/test_bench_loss_space.py (pytest-benchmark).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from mlrb import baselines
from mlrb.names import names_of, resolve_select

# name -> (B, C, H, W, valid fraction of a random mask or None)
SHAPES: dict[str, tuple[int, int, int, int, float | None]] = {
    "paper": (8, 1, 288, 384, None),  # the paper's input size, batch 8
    "nyu": (4, 1, 480, 640, None),  # NYUv2 full size
    "kitti": (4, 1, 352, 1216, 0.05),  # KITTI crop with a 5%-dense (LiDAR-like) mask
}
# Run order: the cheap ones first, so that the memory churn of the big baselines (GBs of
# intermediates) does not land in their timings.
PROVIDERS = ("l1", "fused", "torch", "torch_compile", "paper")
MODES = ("forward", "forward+backward")


def parse_shape(text: str) -> tuple[int, int, int, int, float | None]:
    """A name of SHAPES, or "BxCxHxW" with an optional "@density" (e.g. 4x1x352x1216@0.05)."""
    if text in SHAPES:
        return SHAPES[text]
    dims, _, density = text.partition("@")
    try:
        B, C, H, W = (int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r}: use one of {', '.join(SHAPES)} or BxCxHxW[@density]") from None
    if C != 1:
        raise ValueError(f"shape {text!r}: depth maps have one channel")
    if min(B, H, W) < 1:
        raise ValueError(f"shape {text!r}: B, H and W must be >= 1")
    try:
        d = float(density) if density else None
    except ValueError:
        d = -1.0
    if d is not None and not 0 < d <= 1:
        raise ValueError(f"shape {text!r}: the mask density after '@' must be in (0, 1]")
    return B, C, H, W, d


def shape_label(shape) -> str:
    B, C, H, W, density = shape
    return f"{B}x{C}x{H}x{W}" + (f"@{density:g}" if density else "")


def make_case(shape, device="cpu", dtype=torch.float32, seed=0):
    """Positive pred/gt depth maps (and the mask, if the shape has a density)."""
    B, C, H, W, density = shape
    gen = torch.Generator().manual_seed(seed)
    gt = 1.0 + 9.0 * torch.rand(B, C, H, W, generator=gen)
    pred = (gt + 0.5 * torch.randn(B, C, H, W, generator=gen)).abs() + 0.1
    mask = None if density is None else torch.rand(B, C, H, W, generator=gen) < density
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(pred.to(dtype)), move(gt.to(dtype)), move(mask)


_compiled: dict = {}


def provider_fn(name: str, indices=None, device="cpu") -> Callable:
    """fn(pred, gt, mask) -> loss tensor ((B, n) for the loss space, a scalar for l1)."""
    indices = list(resolve_select(indices))
    if name == "paper":
        return lambda p, g, m: baselines.paper_loss_space(p, g, m, indices)
    if name == "torch":
        return lambda p, g, m: baselines.torch_loss_space(p, g, m, indices)
    if name == "torch_compile":
        key = tuple(indices)
        if key not in _compiled:
            _compiled[key] = torch.compile(lambda p, g, m: baselines.torch_loss_space(p, g, m, indices))
        return _compiled[key]
    if name == "fused":
        import mlrb

        backend = "cpu" if torch.device(device).type == "cpu" else "triton"
        # check_finite=False: the baselines do not check either (the check is one extra pass).
        names = names_of(indices)
        return lambda p, g, m: mlrb.fused_loss_space(p, g, m, select=names, backend=backend, check_finite=False)
    if name == "l1":
        return lambda p, g, m: baselines.l1_loss(p, g)
    raise ValueError(f"unknown provider {name!r}; choose from {', '.join(PROVIDERS)}")


def step_fn(fn: Callable, mode: str, pred, gt, mask) -> Callable[[], None]:
    """A no-argument callable running one forward (or forward+backward) of fn."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    sync = torch.cuda.synchronize if pred.is_cuda else (lambda: None)
    if mode == "forward":
        def run():
            with torch.no_grad():
                fn(pred, gt, mask)
            sync()
    else:
        p = pred.detach().clone().requires_grad_(True)

        def run():
            p.grad = None
            fn(p, gt, mask).sum().backward()
            sync()
    return run


def time_step(run: Callable[[], None], repeat: int, warmup: int = 1, clock=time.perf_counter) -> list[float]:
    """Seconds of `repeat` calls after `warmup` untimed ones (clock: wall time by default;
    time.thread_time gives the CPU time of a single-threaded run, robust on a busy machine)."""
    for _ in range(warmup):
        run()
    out = []
    for _ in range(repeat):
        t0 = clock()
        run()
        out.append(clock() - t0)
    return out


def saved_bytes(fn: Callable, pred, gt, mask) -> int:
    """Bytes of the tensors autograd saves for the backward of fn (saved-tensor hooks)."""
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    p = pred.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(p, gt, mask)
    return sum(sizes)


def backward_allocations(fn: Callable, pred, gt, mask, min_bytes: int | None = None) -> list[int]:
    """Sizes of the tensor allocations of at least one full-resolution map (pred.numel()
    elements of pred's dtype, or min_bytes) made while the backward of fn runs.

    Measured with the torch profiler (ops whose own net allocation is that large). Memory
    that torch does not allocate (the C++ kernels' scratch and the numpy buffer of the
    cpu backend's output) is not included: see mlrb._C.last_workspace_bytes().
    """
    from torch.profiler import ProfilerActivity, profile

    if min_bytes is None:
        min_bytes = pred.numel() * pred.element_size()
    p = pred.detach().clone().requires_grad_(True)
    out = fn(p, gt, mask).sum()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pred.is_cuda else [])
    with profile(activities=activities, profile_memory=True) as prof:
        out.backward()
    sizes = []
    for ev in prof.events():
        own = ev.self_cpu_memory_usage + getattr(ev, "self_device_memory_usage", 0)
        if own >= min_bytes:
            sizes.append(own)
    return sizes


def _run_gpu(argv) -> int | None:
    try:
        from mlrb import bench_gpu  # the Triton benchmark path, if present
    except ImportError:
        return None
    return int(bench_gpu.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mlrb bench``; prints a table of times and ratios."""
    parser = argparse.ArgumentParser(prog="mlrb bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", default=None,
                        help=f"{', '.join(SHAPES)} or BxCxHxW[@mask density]; repeatable (default: paper)")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help="comma-separated subset of " + ",".join(PROVIDERS))
    parser.add_argument("--select", default=None, help="losses to compute (default: all 78)")
    parser.add_argument("--repeat", type=int, default=10, help="timed calls per provider (paper: at most 3)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the CPU time of the calling thread (needs --threads 1)")
    # The GPU path has options of its own (mlrb/bench_gpu.py): hand it the raw arguments.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", default="cpu")
    if pre.parse_known_args(argv)[0].device == "cuda":
        if not torch.cuda.is_available():
            print("mlrb bench: --device cuda needs a CUDA GPU, and torch sees none "
                  f"(torch {torch.__version__}, cuda {torch.version.cuda}); run with --device cpu.",
                  file=sys.stderr)
            return 2
        code = _run_gpu(argv)
        if code is not None:
            return code
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.select is not None:
        try:
            resolve_select(args.select)
        except ValueError as exc:
            parser.error(f"--select: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for p in providers:
        if p not in PROVIDERS:
            parser.error(f"unknown provider {p!r}; choose from {', '.join(PROVIDERS)}")
    modes = MODES if args.mode == "both" else (args.mode,)
    try:
        shapes = [parse_shape(s) for s in (args.shape or ["paper"])]
    except ValueError as exc:
        parser.error(str(exc))

    print(f"mlrb bench: device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"select={args.select or 'all'} clock={args.clock}; best and median of --repeat calls, ms")
    for shape in shapes:
        pred, gt, mask = make_case(shape, args.device)
        for mode in modes:
            rows = {}
            for name in providers:
                fn = provider_fn(name, args.select, args.device)
                repeat = min(args.repeat, 3) if name == "paper" else args.repeat
                times = time_step(step_fn(fn, mode, pred, gt, mask), repeat,
                                  warmup=2 if "compile" in name else 1, clock=clock)
                rows[name] = (min(times), statistics.median(times))
            print(f"\n{shape_label(shape)}  {mode}")
            print(f"  {'provider':<14}{'best ms':>10}{'median ms':>11}{'x l1':>9}{'x fused':>10}")
            for name, (best, med) in rows.items():
                rel_l1 = f"{best / rows['l1'][0]:9.1f}" if "l1" in rows else f"{'-':>9}"
                rel_f = f"{best / rows['fused'][0]:10.1f}" if "fused" in rows else f"{'-':>10}"
                print(f"  {name:<14}{best * 1e3:10.2f}{med * 1e3:11.2f}{rel_l1}{rel_f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
