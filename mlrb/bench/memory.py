"""Memory of a provider's backward: what autograd saves and what the backward allocates."""
from __future__ import annotations

from typing import Callable

import torch


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
