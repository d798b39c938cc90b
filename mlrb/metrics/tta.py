"""Test-time augmentation around any depth model callable.

* :func:`flip_average`: the usual horizontal-flip test, ``(f(x) + flip(f(flip(x)))) / 2``.
* :func:`shifted_window`: the shifted-window test of AMLR (Yu & Heo 2023, Sec. III-D): the
  image is cut into overlapping windows (by default squares with side = the shorter image
  side, sliding along the longer side), each window is predicted (optionally with the flip
  test), and the full map is the per-pixel average over the windows covering each pixel.

``model`` is any callable mapping an image batch (B,C,h,w) to a depth batch (B,h',w'),
(B,1,h',w') or (B,K,h',w'). If the output size differs from the window size it is resized
bilinearly to the window before averaging (for models that predict at a lower resolution).
Gradients are not disabled here; wrap calls in ``torch.no_grad()`` for evaluation.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Model = Callable[[Tensor], Tensor]


def _call(model: Model, x: Tensor) -> Tensor:
    y = model(x)
    if not isinstance(y, Tensor):
        raise TypeError(f"model must return a tensor, got {type(y).__name__}")
    if y.dim() not in (3, 4) or y.shape[0] != x.shape[0]:
        raise ValueError(f"model output must be (B,h,w) or (B,K,h,w) with B={x.shape[0]}, "
                         f"got {tuple(y.shape)}")
    return y


def flip_average(model: Model, x: Tensor) -> Tensor:
    """Average of the prediction and the un-flipped prediction of the flipped image.

    ``x`` is (B,C,H,W); the output has the model's output shape. The flip is along the
    last (width) axis of both input and output.
    """
    _check_image(x)
    y = _call(model, x)
    y_f = _call(model, x.flip(-1)).flip(-1)
    if y_f.shape != y.shape:
        raise ValueError(f"model output shape changed under flip: {tuple(y.shape)} vs "
                         f"{tuple(y_f.shape)}")
    return 0.5 * (y + y_f)


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``window`` covering ``range(size)``.

    Offsets step by ``stride`` from 0; a last window aligned to the end is added so that
    every pixel is covered.
    """
    if not 0 < window <= size:
        raise ValueError(f"window {window} must be in 1..{size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    offs = list(range(0, size - window + 1, stride))
    if offs[-1] != size - window:
        offs.append(size - window)
    return offs


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or (h, w), got {v!r}")
    return (int(v[0]), int(v[1]))


def shifted_window(model: Model, x: Tensor, *, window: int | tuple[int, int] | None = None,
                   stride: int | tuple[int, int] | None = None, flip: bool = False) -> Tensor:
    """AMLR's shifted-window test: coverage-averaged predictions of overlapping windows.

    Args:
        model: callable, see module docstring.
        x: (B,C,H,W) image batch.
        window: window size, int (square) or (h, w); default ``min(H, W)`` (square windows
            as in AMLR).
        stride: step between windows, int or (h, w); default half the window.
        flip: apply :func:`flip_average` to every window.

    Returns the full-size prediction, (B,H,W) or (B,K,H,W) following the model's output.
    """
    _check_image(x)
    H, W = x.shape[-2:]
    wh, ww = _pair(min(H, W) if window is None else window, "window")
    sh, sw = _pair((max(wh // 2, 1), max(ww // 2, 1)) if stride is None else stride, "stride")
    rows, cols = window_offsets(H, wh, sh), window_offsets(W, ww, sw)
    predict = (lambda t: flip_average(model, t)) if flip else (lambda t: _call(model, t))
    total = None
    coverage = torch.zeros(H, W, dtype=x.dtype, device=x.device)
    squeeze = False
    for top in rows:
        for left in cols:
            y = predict(x[..., top:top + wh, left:left + ww])
            if y.dim() == 3:
                y, squeeze = y.unsqueeze(1), True
            if y.shape[-2:] != (wh, ww):
                y = F.interpolate(y, size=(wh, ww), mode="bilinear", align_corners=False)
            if total is None:
                total = y.new_zeros(y.shape[0], y.shape[1], H, W)
            total[..., top:top + wh, left:left + ww] += y
            coverage[top:top + wh, left:left + ww] += 1
    out = total / coverage.to(total.dtype)
    return out[:, 0] if squeeze else out


class TestTimeAugmentation(nn.Module):
    """Wrap a model so that ``forward`` applies the flip and/or shifted-window test.

    ``TestTimeAugmentation(model, flip=True, shifted_window=True)`` reproduces AMLR's
    "S/W, Flip" evaluation setting.
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, model: Model, *, flip: bool = True, shifted_window: bool = False,
                 window: int | tuple[int, int] | None = None,
                 stride: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.flip = flip
        self.use_shifted_window = shifted_window
        self.window = window
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.use_shifted_window:
            return shifted_window(self.model, x, window=self.window, stride=self.stride,
                                  flip=self.flip)
        if self.flip:
            return flip_average(self.model, x)
        return _call(self.model, x)


def _check_image(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B,C,H,W) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
