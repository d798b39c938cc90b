"""Ordinary depth metrics (Lee & Kim 2020, Table 2), caps and evaluation crops.

Protocol (the one of the common NYUv2/KITTI toolboxes, e.g. the Eigen/BTS/AdaBins scripts):

* **Valid ground truth**: finite and strictly inside ``(min_depth, max_depth)``, intersected
  with the optional evaluation crop and the optional user ``mask``.
* **Predictions** are clamped into ``[min_depth, max_depth]``; ``+inf`` becomes
  ``max_depth``, ``-inf`` becomes ``min_depth`` and ``NaN`` becomes ``min_depth`` (as the
  BTS/AdaBins scripts do), so a non-finite prediction counts as a (bad) prediction rather
  than silently shrinking the valid set. ``nonfinite="raise"`` turns it into an error.
* **Averaging**: every metric is computed per image over that image's valid pixels, then
  averaged over images (RMSE too: the mean of per-image RMSEs, as the toolboxes report).
* **Empty valid set**: an image without a single valid pixel is skipped (its count is 0 in
  :func:`depth_metrics_per_image`, and the accumulator counts it as skipped);
  :func:`depth_metrics` raises ``ValueError`` if *no* image has a valid pixel. No NaNs.

With ``e_i = log d̂_i - log d_i`` (natural log):

===========  ==============================================================
d1, d2, d3   fraction of pixels with ``max(d̂/d, d/d̂) < 1.25**n``
abs_rel      ARD  ``mean(|d̂ - d| / d)``
sq_rel       SRD  ``mean((d̂ - d)**2 / d)``
rmse         RMSE_lin ``sqrt(mean((d̂ - d)**2))``
rmse_log     RMSE_log ``sqrt(mean(e**2))``
rmse_si      RMSE_si, RMSE(log) with the global scale removed:
             ``min_s sqrt(mean((e + log s)**2)) = sqrt(mean(e**2) - mean(e)**2)``
log10        ``mean(|log10 d̂ - log10 d|)``
silog        ``100 * sqrt(mean(e**2) - mean(e)**2)`` (KITTI benchmark units; = 100 * rmse_si)
===========  ==============================================================
"""
from __future__ import annotations

import math
from typing import Literal, Union

import torch
from torch import Tensor

from ._input import as_bhw, as_mask, check_pair

METRIC_KEYS: tuple[str, ...] = (
    "d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "rmse_si", "log10", "silog",
)
"""Keys returned by :func:`depth_metrics`, in the order of the printed table."""

HIGHER_IS_BETTER: frozenset[str] = frozenset({"d1", "d2", "d3"})

# Dataset presets: depth caps, the standard crop, and the scale of 16-bit PNG depth files.
DATASET_PRESETS: dict[str, dict] = {
    "nyu": {"min_depth": 1e-3, "max_depth": 10.0, "crop": "nyu_eigen", "png_scale": 1000.0},
    "kitti": {"min_depth": 1e-3, "max_depth": 80.0, "crop": "kitti_garg", "png_scale": 256.0},
}

# NYUv2 Eigen crop on 480x640 (rows 45:471, cols 41:601).
_NYU_EIGEN = (45, 471, 41, 601)
_NYU_SIZE = (480, 640)
# KITTI crops as fractions of (H, H, W, W); bounds are truncated with int() like the
# reference scripts (Garg et al. 2016; Eigen et al. 2014).
_KITTI_FRACTIONS = {
    "kitti_garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "kitti_eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}
CROPS: tuple[str, ...] = ("nyu_eigen", "kitti_garg", "kitti_eigen")

Crop = Union[None, str, tuple[int, int, int, int]]


def crop_box(height: int, width: int, crop: Crop) -> tuple[int, int, int, int]:
    """Return the evaluation box ``(top, bottom, left, right)`` (half-open) for an image size.

    ``crop`` is ``None`` (whole image), one of :data:`CROPS`, or an explicit
    ``(top, bottom, left, right)`` tuple. ``"nyu_eigen"`` is exactly rows 45:471,
    cols 41:601 on 480x640; on other sizes it is scaled proportionally (rounded), so that
    evaluating a down-sampled map keeps the same field of view. The KITTI crops are
    fractions of H and W by definition.
    """
    if crop is None:
        return (0, height, 0, width)
    if isinstance(crop, str):
        if crop == "nyu_eigen":
            t, b, l, r = _NYU_EIGEN
            sh, sw = height / _NYU_SIZE[0], width / _NYU_SIZE[1]
            box = (round(t * sh), round(b * sh), round(l * sw), round(r * sw))
        elif crop in _KITTI_FRACTIONS:
            ft, fb, fl, fr = _KITTI_FRACTIONS[crop]
            box = (int(ft * height), int(fb * height), int(fl * width), int(fr * width))
        else:
            raise ValueError(f"unknown crop {crop!r}; expected None, one of {CROPS} or a "
                             "(top, bottom, left, right) tuple")
    else:
        if len(crop) != 4:
            raise ValueError(f"crop tuple must be (top, bottom, left, right), got {crop!r}")
        box = tuple(int(v) for v in crop)
    t, b, l, r = box
    if not (0 <= t < b <= height and 0 <= l < r <= width):
        raise ValueError(f"crop box {box} is empty or outside a {height}x{width} image")
    return box


def crop_mask(height: int, width: int, crop: Crop, device: torch.device | str | None = None
              ) -> Tensor:
    """(H, W) bool mask that is True inside :func:`crop_box`."""
    t, b, l, r = crop_box(height, width, crop)
    m = torch.zeros(height, width, dtype=torch.bool, device=device)
    m[t:b, l:r] = True
    return m


def valid_mask(gt, *, min_depth: float, max_depth: float, crop: Crop = None,
               mask=None) -> Tensor:
    """(B,H,W) bool: finite ground truth strictly inside the caps, in the crop and mask."""
    gt = as_bhw(gt, "gt")
    _check_caps(min_depth, max_depth)
    valid = torch.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if crop is not None:
        valid &= crop_mask(gt.shape[-2], gt.shape[-1], crop, gt.device)
    if mask is not None:
        valid &= as_mask(mask, gt)
    return valid


def clamp_prediction(pred: Tensor, *, min_depth: float, max_depth: float,
                     nonfinite: Literal["clamp", "raise"] = "clamp") -> Tensor:
    """Clamp into ``[min_depth, max_depth]``; ±inf go to the caps, NaN to ``min_depth``."""
    if nonfinite not in ("clamp", "raise"):
        raise ValueError(f"nonfinite must be 'clamp' or 'raise', got {nonfinite!r}")
    nan = torch.isnan(pred)
    if nonfinite == "raise" and not torch.isfinite(pred).all():
        raise ValueError("prediction contains inf/NaN (nonfinite='raise')")
    pred = pred.clamp(min_depth, max_depth)  # also maps +inf -> max, -inf -> min
    return torch.where(nan, torch.full_like(pred, min_depth), pred)


def depth_metrics_per_image(pred, gt, *, min_depth: float, max_depth: float,
                            crop: Crop = None, mask=None,
                            nonfinite: Literal["clamp", "raise"] = "clamp",
                            ) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image metrics.

    Returns ``(metrics, n_valid)``: ``metrics[key]`` is a float64 tensor of shape (B,), and
    ``n_valid`` (B,) int64 is the number of valid pixels per image. Images with
    ``n_valid == 0`` have every metric set to 0 (not NaN) and must be skipped by the caller
    (:func:`depth_metrics` and :class:`~mlrb.metrics.MetricAccumulator` do).
    """
    pred, gt = as_bhw(pred, "pred"), as_bhw(gt, "gt")
    check_pair(pred, gt)
    valid = valid_mask(gt, min_depth=min_depth, max_depth=max_depth, crop=crop, mask=mask)
    # float64: per-image sums over ~3e5 pixels, and metrics are reported to 3-4 digits.
    p = clamp_prediction(pred.to(torch.float64), min_depth=min_depth, max_depth=max_depth,
                         nonfinite=nonfinite)
    g = torch.where(valid, gt.to(torch.float64), torch.ones_like(p))  # safe values off-mask
    p = torch.where(valid, p, torch.ones_like(p))
    w = valid.to(torch.float64)
    n = w.sum(dim=(1, 2))
    n_safe = n.clamp_min(1.0)

    def mean(x: Tensor) -> Tensor:
        return (x * w).sum(dim=(1, 2)) / n_safe

    ratio = torch.maximum(p / g, g / p)
    e = torch.log(p) - torch.log(g)
    e_mean = mean(e)
    # Centred form of mean(e^2) - mean(e)^2: no negative values from cancellation.
    var_e = mean((e - e_mean[:, None, None]) ** 2)
    out = {
        "d1": mean((ratio < 1.25).to(torch.float64)),
        "d2": mean((ratio < 1.25 ** 2).to(torch.float64)),
        "d3": mean((ratio < 1.25 ** 3).to(torch.float64)),
        "abs_rel": mean((p - g).abs() / g),
        "sq_rel": mean((p - g) ** 2 / g),
        "rmse": mean((p - g) ** 2).sqrt(),
        "rmse_log": mean(e ** 2).sqrt(),
        "rmse_si": var_e.sqrt(),
        "log10": mean((torch.log10(p) - torch.log10(g)).abs()),
        "silog": 100.0 * var_e.sqrt(),
    }
    empty = n == 0
    if empty.any():
        out = {k: v.masked_fill(empty, 0.0) for k, v in out.items()}
    return out, n.to(torch.int64)


def depth_metrics(pred, gt, *, min_depth: float, max_depth: float, crop: Crop = None,
                  mask=None, nonfinite: Literal["clamp", "raise"] = "clamp",
                  ) -> dict[str, float]:
    """Standard depth metrics (keys :data:`METRIC_KEYS`), averaged over images.

    Args:
        pred, gt: depth in metres, (H,W), (B,H,W) or (B,1,H,W) tensors/arrays, same shape.
        min_depth, max_depth: caps (NYUv2 1e-3..10, KITTI 1e-3..80; see
            :data:`DATASET_PRESETS`).
        crop: ``None``, ``"nyu_eigen"``, ``"kitti_garg"``, ``"kitti_eigen"`` or an explicit
            ``(top, bottom, left, right)`` box (see :func:`crop_box`).
        mask: optional extra validity mask, broadcastable to (B,H,W).
        nonfinite: ``"clamp"`` (default, see module doc) or ``"raise"``.

    Images without valid pixels are skipped; if none has any, ``ValueError`` is raised.
    """
    per_image, n = depth_metrics_per_image(pred, gt, min_depth=min_depth,
                                           max_depth=max_depth, crop=crop, mask=mask,
                                           nonfinite=nonfinite)
    keep = n > 0
    if not bool(keep.any()):
        raise ValueError("no valid ground-truth pixel in any image (check caps, crop, mask)")
    return {k: float(v[keep].mean()) for k, v in per_image.items()}


def _check_caps(min_depth: float, max_depth: float) -> None:
    if not (math.isfinite(min_depth) and math.isfinite(max_depth) and 0 < min_depth < max_depth):
        raise ValueError(f"need 0 < min_depth < max_depth (finite), got {min_depth}, {max_depth}")
