"""Speed and memory of the loss space: paper-style, best pure-PyTorch (eager, compiled),
the fused CPU kernel, and one L1 loss as the unit. Run: ``pytest bench/``.

Targets, 8x1x288x384, forward+backward, all 78 losses, 2 cores: fused >= 100x
faster than paper-style, >= 10x faster than the best pure-PyTorch (eager or compiled),
<= 8x one L1 loss. Timing targets are reported (test_bench_ratios prints them), never
asserted; the memory targets are deterministic and asserted: saved bytes <= pred + gt +
mask (+ the CPU forward's scale statistics for its backward: 6 x 18 float64 per sample),
and the backward allocates at most 4 full-resolution maps beyond its output.
"""
from __future__ import annotations

import pytest
import torch

from mlrb.bench import cases as B
from mlrb.bench import memory, timers

SHAPES = ("paper", "nyu", "kitti")
ROUNDS = {"paper": 2, "torch": 5, "torch_compile": 5, "fused": 20, "l1": 50}


@pytest.fixture(scope="module", params=SHAPES)
def case(request):
    return request.param, B.make_case(B.SHAPES[request.param])


@pytest.mark.parametrize("mode", B.MODES)
@pytest.mark.parametrize("provider", B.PROVIDERS)
def test_bench_loss_space(benchmark, case, mode, provider):
    name, (pred, gt, mask) = case
    if provider == "fused":
        import mlrb.ops.cpu as cpu

        if cpu.unavailable_reason(pred.device) is not None:
            pytest.skip(cpu.unavailable_reason(pred.device))
    benchmark.group = f"{B.shape_label(B.SHAPES[name])} {mode}"
    run = B.step_fn(B.provider_fn(provider), mode, pred, gt, mask)
    warmup = 2 if provider == "torch_compile" else 1
    benchmark.pedantic(run, rounds=ROUNDS[provider], iterations=1, warmup_rounds=warmup)
    benchmark.extra_info["threads"] = torch.get_num_threads()


def test_bench_ratios(capsys):
    """The target ratios at 8x1x288x384, forward+backward, all 78, measured in one run."""
    pred, gt, mask = B.make_case(B.SHAPES["paper"])
    best = {}
    for provider in B.PROVIDERS:
        repeat = ROUNDS[provider]
        run = B.step_fn(B.provider_fn(provider), "forward+backward", pred, gt, mask)
        best[provider] = min(timers.wall_times(run, repeat, warmup=2 if provider == "torch_compile" else 1))
    fastest_torch = min(best["torch"], best["torch_compile"])
    lines = [
        f"threads={torch.get_num_threads()}; best of several calls, ms: "
        + ", ".join(f"{k}={v * 1e3:.2f}" for k, v in best.items()),
        f"paper / fused = {best['paper'] / best['fused']:.0f}x (target >= 100x)",
        f"best pure-PyTorch / fused = {fastest_torch / best['fused']:.1f}x (target >= 10x)",
        f"fused / l1 = {best['fused'] / best['l1']:.1f}x (target <= 8x)",
    ]
    with capsys.disabled():
        print("\n" + "\n".join("  " + line for line in lines))
    # The ratios compare like with like only if every provider computes the same losses.
    with torch.no_grad():
        out = {p: B.provider_fn(p)(pred, gt, mask) for p in ("fused", "torch", "torch_compile", "paper")}
    for provider, losses in out.items():
        torch.testing.assert_close(losses, out["torch"], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, provider=provider: f"{provider} vs torch: {m}")


@pytest.mark.parametrize("shape", SHAPES)
def test_memory_targets(shape, capsys):
    """Saved-for-backward bytes and full-resolution allocations of the backward."""
    import mlrb.ops.cpu as cpu
    from mlrb import _C

    if cpu.unavailable_reason(torch.device("cpu")) is not None:
        pytest.skip(cpu.unavailable_reason(torch.device("cpu")))
    pred, gt, mask = B.make_case(B.SHAPES[shape])
    inputs = sum(t.numel() * t.element_size() for t in (pred, gt, mask) if t is not None)
    full_map = pred.numel() * pred.element_size()
    report = {}
    for provider in ("fused", "torch", "l1"):
        fn = B.provider_fn(provider)
        allocs = memory.backward_allocations(fn, pred, gt, mask)
        report[provider] = (memory.saved_bytes(fn, pred, gt, mask), len(allocs), sum(allocs) / full_map)
    p = pred.detach().clone().requires_grad_(True)
    B.provider_fn("fused")(p, gt, mask).sum().backward()
    scratch = _C.last_workspace_bytes()  # of that fused backward
    with capsys.disabled():
        print(f"\n  {B.shape_label(B.SHAPES[shape])}: pred+gt+mask = {inputs / 2**20:.1f} MiB; one map = "
              f"{full_map / 2**20:.1f} MiB")
        for provider, (saved, n, maps) in report.items():
            print(f"    {provider:<6} saved {saved / 2**20:8.1f} MiB, backward allocates {n:4d} tensors >= one map "
                  f"({maps:.1f} maps)")
        print(f"    fused backward C++ scratch {scratch / full_map:.2f} maps (+ its output, 1 map)")
    saved, n, maps = report["fused"]
    stats = pred.shape[0] * 6 * _C.STAT_WIDTH * 8  # the scale statistics (mlrb/ops/cpu.py)
    assert saved <= inputs + stats
    assert maps + scratch / full_map <= 4
