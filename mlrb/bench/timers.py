"""Clocks of the benchmarks, one interface: ``timer(run, repeat, warmup) -> seconds per call``.

  wall  time.perf_counter around each call (a GPU is synchronised inside the timed region);
  cpu   time.thread_time of the calling thread: robust on a busy machine for a
        single-threaded CPU run; on a GPU, the host's cost of enqueuing a call (the
        synchronisation after each call is outside the timed region);
  cuda  CUDA events on the current stream around each call: the GPU's own clock.
A clock that cannot run here is an error (``make_timer``), never a silent substitute.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

import torch

CLOCKS = ("wall", "cpu", "cuda")
Timer = Callable[..., list]


def default_clock(device) -> str:
    """CUDA events on a GPU, wall time on the CPU."""
    return "cuda" if torch.device(device).type == "cuda" else "wall"


def _no_sync() -> None:
    pass


def wall_times(run: Callable[[], None], repeat: int, warmup: int = 1, sync: Callable[[], None] = _no_sync) -> list:
    """Wall seconds of ``repeat`` calls of run after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    sync()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def thread_cpu_times(run: Callable[[], None], repeat: int, warmup: int = 1,
                     sync: Callable[[], None] = _no_sync) -> list:
    """CPU seconds of the calling thread in each of ``repeat`` calls of run (sync, if any,
    runs after each call, untimed: a GPU's queue is drained between calls)."""
    for _ in range(warmup):
        run()
    sync()
    out = []
    for _ in range(repeat):
        t0 = time.thread_time()
        run()
        out.append(time.thread_time() - t0)
        sync()
    return out


def cuda_event_times(run: Callable[[], None], repeat: int, warmup: int = 2) -> list:
    """Seconds of ``repeat`` calls of run, each between two CUDA events on the current
    stream (GPU time of the work run enqueues, plus any host gap inside it)."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA-event timing needs a CUDA GPU, and torch sees none "
                           f"(torch {torch.__version__}, cuda {torch.version.cuda})")
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
        out.append(start.elapsed_time(end) / 1e3)
    return out


def make_timer(clock: str, device) -> Timer:
    """The timer of ``clock`` for work on ``device``; ValueError if that clock cannot time
    it here (CUDA events without a GPU or for CPU work; an unknown clock)."""
    device = torch.device(device)
    if clock == "cuda":
        if device.type != "cuda":
            raise ValueError("the cuda clock (CUDA events) times GPU work: use it with --device cuda")
        if not torch.cuda.is_available():
            raise ValueError("the cuda clock (CUDA events) needs a CUDA GPU, and torch sees none")
        return cuda_event_times
    sync = torch.cuda.synchronize if device.type == "cuda" else _no_sync
    if clock == "wall":
        return functools.partial(wall_times, sync=sync)
    if clock == "cpu":
        return functools.partial(thread_cpu_times, sync=sync)
    raise ValueError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}")
