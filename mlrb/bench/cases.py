"""What the benchmarks time: input shapes, providers, loss sets, and one step of each.

Providers (all compute the same (B, n) losses, see mlrb.baselines):
  paper          the paper's public-code formulation (separate tensor ops per loss)
  torch          the best pure-PyTorch formulation (on e = pred - gt, cumsum box filters)
  torch_compile  torch.compile of "torch"
  fused          mlrb.fused_loss_space with the fused kernels (cpu: C++/OpenMP, cuda: Triton)
  l1             the unit: (pred - gt).abs().mean()
Modes: "forward" and "forward+backward" (backward of the sum of the losses w.r.t. pred).
"""
from __future__ import annotations

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
# The loss sets of the paper's Table 7: one loss, the coarse half of the space, all 78.
SETS: dict[str, str] = {"{D0}": "D0", "L^3|L^4|L^5": "L^3 | L^4 | L^5", "all": "all"}


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


def check_providers(names) -> list[str]:
    """The provider names, each one of PROVIDERS (ValueError naming the first that is not)."""
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        if n not in PROVIDERS:
            raise ValueError(f"unknown provider {n!r}; choose from {', '.join(PROVIDERS)}")
    if not names:
        raise ValueError(f"no provider given; choose from {', '.join(PROVIDERS)}")
    return names


def loss_set(name: str) -> str:
    """The selection string of a Table 7 set name (SETS), or name itself."""
    return SETS.get(name, name)


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
    """A no-argument callable running one forward (or forward+backward) of fn. It only
    enqueues the work on a GPU: the timers (timers.py) synchronise as their clock needs."""
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
