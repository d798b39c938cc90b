"""mlrb.bench: the clocks, the argument handling of ``mlrb bench`` and one tiny run.

Nothing here is timed against a bound: the timers are checked with fake work and fake
clocks, the CLI with a stand-in for run_bench where a GPU would be needed.
"""
from __future__ import annotations

import pytest
import torch

from mlrb.bench import cases, cli, timers

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_thread_cpu_timer_synchronises_outside_the_timed_region(monkeypatch):
    events = []
    ticks = iter(range(100))
    monkeypatch.setattr(timers.time, "thread_time", lambda: events.append("t") or next(ticks))
    times = timers.thread_cpu_times(lambda: events.append("run"), 2, warmup=1, sync=lambda: events.append("sync"))
    assert times == [1, 1]
    # warmup, sync, then per call: clock, run, clock, sync
    assert events == ["run", "sync", "t", "run", "t", "sync", "t", "run", "t", "sync"]


def test_wall_timer_synchronises_inside_the_timed_region(monkeypatch):
    events = []
    ticks = iter(range(100))
    monkeypatch.setattr(timers.time, "perf_counter", lambda: events.append("t") or next(ticks))
    timers.wall_times(lambda: events.append("run"), 1, warmup=0, sync=lambda: events.append("sync"))
    assert events == ["sync", "t", "run", "sync", "t"]


def test_clocks_of_each_device():
    assert timers.default_clock("cpu") == "wall" and timers.default_clock("cuda") == "cuda"
    cpu_on_gpu = timers.make_timer("cpu", "cuda")  # no GPU needed to build it
    assert cpu_on_gpu.func is timers.thread_cpu_times and cpu_on_gpu.keywords["sync"] is torch.cuda.synchronize
    assert timers.make_timer("wall", "cpu").func is timers.wall_times
    with pytest.raises(ValueError, match="--device cuda"):
        timers.make_timer("cuda", "cpu")
    with pytest.raises(ValueError, match="unknown clock"):
        timers.make_timer("sundial", "cpu")


@no_cuda
def test_a_missing_gpu_timer_is_an_error():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        timers.make_timer("cuda", "cuda")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        timers.cuda_event_times(lambda: None, 1)


@no_cuda
def test_device_cuda_without_a_gpu_is_one_message(capsys):
    assert cli.main(["--device", "cuda", "--clock", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--clock" not in err


def test_device_cuda_changes_only_the_clock_and_adds_the_table7_sets(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(cli, "run_bench", lambda *a, **kw: calls.append((a, kw)) or [])
    assert cli.main(["--device", "cuda", "--clock", "cpu", "--shape", "1x1x8x8"]) == 0
    assert cli.main(["--device", "cuda", "--shape", "1x1x8x8", "--select", "D0"]) == 0
    assert cli.main(["--shape", "1x1x8x8"]) == 0
    (shapes, providers, sets, modes, repeat, device, clock), _ = calls[0]
    assert (sets, device, clock, repeat) == (list(cases.SETS), "cuda", "cpu", cli.REPEAT["cuda"])
    assert calls[1][0][2] == ["D0"] and calls[1][0][6] == "cuda"
    (shapes, providers, sets, modes, repeat, device, clock), _ = calls[2]
    assert (sets, device, clock, repeat) == (["all"], "cpu", "wall", cli.REPEAT["cpu"])
    assert providers == list(cases.PROVIDERS)


@pytest.mark.parametrize("argv, fragment", [
    (["--providers", "l1,magic"], "magic"),
    (["--sets", "nonsense"], "--sets"),
    (["--clock", "cuda"], "--device cuda"),
    (["--clock", "cpu", "--threads", "2"], "--threads 1"),
    (["--rounds", "0"], "--rounds"),
])
def test_wrong_arguments(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err


def test_tiny_run_prints_the_table(capsys):
    assert cli.main(["--shape", "1x1x16x24@0.5", "--providers", "l1,torch", "--mode", "forward",
                     "--repeat", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1x1x16x24@0.5  forward  losses=all" in out
    assert "torch" in out and "x l1" in out


def test_rounds_time_the_providers_in_turn(monkeypatch):
    """--rounds R: each provider's --repeat calls, provider after provider, R times over;
    best and median over all of a provider's calls."""
    order, clock = [], iter([5.0, 4.0, 3.0, 9.0, 1.0, 2.0, 7.0, 8.0])  # l1, torch, l1, torch (2 calls each)

    def fake_timer(step, n, warmup):  # a step here is its provider's name (the patches below)
        order.append((step, warmup))
        return [next(clock) for _ in range(n)]

    monkeypatch.setattr(timers, "make_timer", lambda clock, device: fake_timer)
    monkeypatch.setattr(cases, "provider_fn", lambda name, *a: name)
    monkeypatch.setattr(cases, "step_fn", lambda fn, *a: fn)
    rows = cli.run_bench(["1x1x8x8"], ["l1", "torch"], ["all"], ["forward"], repeat=2, rounds=2, progress=False)
    assert order == [("l1", 1), ("torch", 1), ("l1", 1), ("torch", 1)]
    best = {r.provider: (r.best_s, r.median_s) for r in rows}
    assert best == {"l1": (1.0, 3.0), "torch": (3.0, 7.5)}
    with pytest.raises(ValueError, match="rounds"):
        cli.run_bench(["1x1x8x8"], ["l1"], ["all"], ["forward"], rounds=0, progress=False)
