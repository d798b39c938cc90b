"""Every Triton launch of mlrb goes through :func:`launch`, so launches can be counted.

A forward must take at most 6 launches and a backward at most 6, whatever the selection
(mlrb/ops/triton.py: 4 each today); tests read :data:`counts` around a call to hold the
kernels to it.
"""
from __future__ import annotations

from collections import Counter

counts: Counter = Counter()  # kernel name -> launches since the last reset


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, counted under the kernel's name."""
    counts[getattr(kernel, "__name__", None) or kernel.fn.__name__] += 1
    return kernel[grid](*args, **kwargs)


def reset() -> None:
    counts.clear()


def total() -> int:
    return sum(counts.values())
