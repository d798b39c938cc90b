"""What torch is doing around a call, as far as the fused ops care: torch.compile, dispatch
modes (FakeTensorMode, FlopCounterMode, profilers), tensor subclasses and torch.func
transforms. The kernels read raw buffers, so they run only on plain tensors; these tell the
callers which route a call takes, and ``fold`` / ``unfold`` are the backends' vmap rules
(per-sample losses: a vmapped dimension becomes more samples).

The torch hooks used here are private; they are looked up once, and without them every
call is treated as "not plain" (the registered ops' route, which is always correct).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

try:
    _disable_functorch = torch._C._DisableFuncTorch
    _dispatch_modes = torch._C._len_torch_dispatch_stack
    _functorch = torch._C._functorch
    _wrapped = _functorch.is_functorch_wrapped_tensor
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters as _interpreters
    from torch._functorch.pyfunctorch import TransformType as _Transform
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except (AttributeError, ImportError):
    _dispatch_modes = None


def route(*tensors: Tensor | None) -> str:
    """How a call that reads raw buffers can run on these tensors:
    "plain": real tensors in eager mode (read them directly);
    "func": the same under torch.func transforms (grad, vjp, vmap wrap them), which an
    autograd.Function with setup_context (and a vmap rule) handles itself;
    "ops": torch.compile, a dispatch mode (FakeTensorMode, FlopCounterMode, profilers) or
    a tensor subclass, where only a registered op does what they expect."""
    tensors = [t for t in tensors if t is not None]
    if _dispatch_modes is None or torch.compiler.is_compiling() or _dispatch_modes() \
            or torch.overrides.has_torch_function(tensors):
        return "ops"
    return "func" if any(_wrapped(t) for t in tensors) else "plain"


def vmapped() -> bool:
    """True inside torch.func.vmap (at any level)."""
    return _dispatch_modes is not None and any(i.key() == _Transform.Vmap for i in _interpreters())


def fake(*tensors: Tensor | None) -> bool:
    """True if any tensor is a fake tensor (FakeTensorMode): shapes without values."""
    return _dispatch_modes is not None and any(t is not None and _is_fake(t) for t in tensors)


@contextlib.contextmanager
def unwrapped(*tensors: Tensor | None):
    """The plain tensors under torch.func.grad/vjp/jvp wrappers (the same values), with the
    transforms off while they are read (inside one, even a plain tensor's .numpy() fails).
    Not for vmap: a batched tensor's base holds all the batch, in another shape."""
    if _dispatch_modes is None or not any(t is not None and _wrapped(t) for t in tensors):
        yield tensors
        return
    plain_tensors = []
    for t in tensors:
        while t is not None and _wrapped(t):
            t = _functorch.get_unwrapped(t)
        plain_tensors.append(t)
    with _disable_functorch():
        yield plain_tensors


def total(t: Tensor) -> int:
    """The sum of t's values over all the instances of the torch.func transforms it is
    wrapped in (vmap's batched tensors hold every instance in their base), read once with
    the transforms off. For a count made under vmap, where no value can be read."""
    while _wrapped(t):
        if _functorch.is_batchedtensor(t):
            t = _functorch._unwrap_batched(t, _functorch.maybe_get_level(t))[0]
        else:
            t = _functorch.get_unwrapped(t)
    with _disable_functorch():
        return int(t.sum())


# ---------------------------------------------------------------- vmap rules
def fold(info, in_dims, *tensors):
    """The losses are per sample, so a vmapped dimension folds into the batch: (V, B, ...)
    -> (V * B, ...); an unbatched tensor is repeated V times."""
    folded = []
    for t, d in zip(tensors, in_dims):
        if t is not None:
            t = t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape)
            t = t.reshape(-1, *t.shape[2:])
        folded.append(t)
    return folded


def unfold(info, t: Tensor) -> Tensor:
    """(V * B, ...) -> (V, B, ...): the inverse of fold for a per-sample output."""
    return t.view(info.batch_size, -1, *t.shape[1:])
