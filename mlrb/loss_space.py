"""The public entry point: ``fused_loss_space`` and its nn.Module form ``LossSpace``.

This file checks and normalises inputs once, then dispatches to a backend:
- "reference": mlrb.reference, plain PyTorch (autograd), any device, the definition;
- "cpu": the fused C++/OpenMP kernels (mlrb.ops.cpu), CPU tensors;
- "triton": the fused Triton kernels (mlrb.ops.triton), CUDA tensors (CPU tensors too
  under TRITON_INTERPRET=1, which is how the tests run them without a GPU);
- "auto": the fastest available for the tensors' device, falling back to "reference"
  with one warning that says why.
A backend module exposes ``unavailable_reason(device) -> str | None`` and
``loss_space(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale) -> Tensor``.
"""
from __future__ import annotations

import importlib
import math
import warnings

import torch
from torch import nn

from mlrb import reference
from mlrb.names import names_of, resolve_select
from mlrb.ops import modes

_MODULES = {"cpu": "mlrb.ops.cpu", "triton": "mlrb.ops.triton"}
BACKENDS = ("auto", "reference", *_MODULES)
_warned: set[str] = set()
# Backend modules once imported. The dispatch below runs at trace time under torch.compile
# (assume_constant_result), and the traced code only reads this dict: dynamo cannot trace
# importlib, regular expressions or warnings.
_loaded: dict = {"reference": reference}


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:  # e.g. the extension was not built, or triton is missing
        return f"{_MODULES[name]} cannot be imported ({exc})"
    _loaded[name] = module
    return module.unavailable_reason(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on tensors of ``device``, fastest first ("reference" last)."""
    device = torch.device(device)
    return [b for b in _MODULES if _unavailable_reason(b, device) is None] + ["reference"]


@torch.compiler.assume_constant_result
def _pick_backend(backend: str, device: torch.device) -> str:
    """The backend that runs: ``backend`` itself (error if it cannot), or the choice of "auto"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return backend
    if backend != "auto":
        reason = _unavailable_reason(backend, device)
        if reason is not None:
            raise RuntimeError(f"backend {backend!r} cannot run on {device.type} tensors: {reason}")
        return backend
    preferred = "triton" if device.type == "cuda" else "cpu"
    reason = _unavailable_reason(preferred, device) if device.type in ("cpu", "cuda") else "no fused kernel for this device"
    if reason is None:
        return preferred
    key = f"{device.type}:{reason}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"mlrb: fused backend {preferred!r} is not available for {device.type} tensors "
            f"({reason}); using the slower 'reference' backend.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"


@torch.compiler.assume_constant_result
def _resolve(select) -> tuple[int, ...]:
    return resolve_select(select)


def _as_b1hw(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{what} must be (B, 1, H, W) or (B, H, W) depth maps; got shape {tuple(x.shape)}")


def _check_inputs(pred, gt, mask):
    for what, x in (("pred", pred), ("gt", gt)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.device != gt.device:
        raise ValueError(f"pred is on {pred.device} but gt is on {gt.device}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (True = valid ground truth), got {got}; "
                            "for sparse depth use e.g. mask = gt > 0")
        if mask.shape != pred.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from pred/gt shape {tuple(pred.shape)}")
        if mask.device != pred.device:
            raise ValueError(f"mask is on {mask.device} but pred is on {pred.device}")
    pred4 = _as_b1hw(pred, "pred")
    if pred4.numel() == 0:
        raise ValueError(f"pred/gt are empty: shape {tuple(pred.shape)}")
    return pred4, _as_b1hw(gt, "gt"), None if mask is None else _as_b1hw(mask, "mask")


def _nonfinite_counts(pred, gt, mask) -> list[int]:
    """NaN/Inf entries of pred and of gt at valid pixels (values at invalid pixels may be anything)."""
    if pred.device.type == "cpu" and pred.dtype in (torch.float32, torch.float64) and gt.dtype == pred.dtype \
            and modes.route(pred, gt, mask) == "plain":
        from mlrb.ops import cpu  # the extension, if built: one read of each map, no temporaries

        count = getattr(cpu._C, "count_nonfinite", None)  # None: not built (or an older build)
        maps = [x.detach().reshape(-1) for x in (pred, gt)] + ([] if mask is None else [mask.reshape(-1)])
        if count is not None and all(x.is_contiguous() for x in maps):
            n = count(maps[0].numpy(), maps[1].numpy(), None if mask is None else maps[2].numpy(), cpu._threads())
            return list(n)
    return _nonfinite_counts_torch(pred, gt, mask)


def _nonfinite_sums(pred, gt, mask) -> list[torch.Tensor]:
    """The two counts as 0-d tensors, in torch ops only (any device, dtype or transform)."""
    bad = [~torch.isfinite(x.detach()) for x in (pred, gt)]
    if mask is not None:
        bad = [b & mask for b in bad]
    return [b.sum() for b in bad]


def _nonfinite_counts_torch(pred, gt, mask) -> list[int]:
    """The same in torch, for any device and dtype: one device sync for both tensors."""
    return torch.stack(_nonfinite_sums(pred, gt, mask)).tolist()


def _check_finite(pred, gt, mask) -> None:
    if modes.fake(pred, gt, mask):  # FakeTensorMode: shapes without values; the real call checks
        return
    if modes.vmapped():  # counted under the transforms, then added up over the vmapped instances
        counts = [modes.total(n) for n in _nonfinite_sums(pred, gt, mask)]
    else:
        with modes.unwrapped(pred, gt, mask) as maps:
            counts = _nonfinite_counts(*maps)
    for what, n in zip(("pred", "gt"), counts):
        if n:
            where = "valid " if mask is not None else ""
            raise ValueError(
                f"{what} has {n} NaN/Inf value(s) at {where}pixels; mask them out (mask=False) "
                "or pass check_finite=False to let them propagate"
            )


def fused_loss_space(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    select=None,
    backend: str = "auto",
    si_lambda: float = 1.0,
    si_sqrt: bool = False,
    si_scale: float = 1.0,
    check_finite: bool = True,
) -> torch.Tensor:
    """Per-sample losses of the multi-scale loss space, shape (B, n).

    Args:
        pred, gt: depth maps (B, 1, H, W) or (B, H, W), any float dtype (arithmetic in
            float32, or float64 for float64 pred). Gradients flow to ``pred`` only.
        mask: optional bool tensor of the same shape, True = valid ground truth.
        select: which losses and in which column order (default: all 78 in paper order);
            names "M17@2", sets "all", "D0", "L_D", "L_M", "L_G", "L_N", "L^k", "AMLR",
            unions "L^3 | L^4 | L^5" or lists of those. See mlrb.names.resolve_select.
        backend: "auto", "reference", "cpu" or "triton".
        si_lambda, si_sqrt, si_scale: the AMLR scale-invariant loss
            si_scale * [sqrt](mean(d^2) - si_lambda * mean(d)^2) (BTS: 0.85, True, 10).
        check_finite: raise ValueError on NaN/Inf in pred or gt at valid pixels (one
            device sync, two under torch.func.vmap; skipped under torch.compile and for
            fake tensors). Invalid pixels are never read.

    Returns:
        float32 (float64 for float64 pred) tensor (B, n); column j is the loss
        ``mlrb.names.names_of(mlrb.resolve_select(select))[j]``.
    """
    indices = _resolve(select)
    pred4, gt4, mask4 = _check_inputs(pred, gt, mask)
    for what, v in (("si_lambda", si_lambda), ("si_scale", si_scale)):
        # (under torch.compile(dynamic=True) they can be symbolic: the ops check the real values)
        if not torch.compiler.is_compiling() and not math.isfinite(v):
            raise ValueError(f"{what} must be finite, got {v}")
    if check_finite and not torch.compiler.is_compiling():
        _check_finite(pred4, gt4, mask4)
    name = _pick_backend(backend, pred4.device)
    # Gradients flow to pred only (spec), the same on every backend: gt and mask leave the
    # graph here, and inference tensors among them (which autograd cannot save) are copied
    # when a graph will be recorded.
    gt4 = gt4.detach()
    if torch.is_grad_enabled() and pred4.requires_grad and not torch.compiler.is_compiling():
        gt4, mask4 = (None if t is None else t.clone() if t.is_inference() else t for t in (gt4, mask4))
    params = dict(si_lambda=float(si_lambda), si_sqrt=bool(si_sqrt), si_scale=float(si_scale))
    return _loaded[name].loss_space(pred4, gt4, mask4, indices, **params)


class LossSpace(nn.Module):
    """nn.Module form of :func:`fused_loss_space`; ``names`` lists its output columns."""

    def __init__(self, select=None, *, backend: str = "auto", si_lambda: float = 1.0,
                 si_sqrt: bool = False, si_scale: float = 1.0, check_finite: bool = True):
        super().__init__()
        self.indices = resolve_select(select)
        self.names = names_of(self.indices)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.options = dict(si_lambda=si_lambda, si_sqrt=si_sqrt, si_scale=si_scale, check_finite=check_finite)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return fused_loss_space(pred, gt, mask, select=self.names, backend=self.backend, **self.options)

    def extra_repr(self) -> str:
        return f"n={len(self.names)}, backend={self.backend!r}"
