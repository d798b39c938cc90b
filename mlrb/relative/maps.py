"""The 16 relative log-depth maps of Lee & Kim's supplement (S-3, Eq. S-2).

For scales k = 2..5 and the four types M17, M5, r, c, on L^k = log D^k (D^k the loss
space's bicubic pyramid level, 1x1 fallback included, ../shared/spec/loss-space.md):

    R^k_Mn = L^k - box_n(L^k)     (n = 17, 5; the spec's masked box mean)
    R^k_r  = dx(L^k)              (L[i, j] - L[i, j+1], the spec's row gradient)
    R^k_c  = dy(L^k)              (L[i, j] - L[i+1, j])

Validity (the loss space's mask rules): the level mask m^k (every pixel of the 4x4 bicubic
footprint valid); R_Mn is valid where m^k is, its box mean averages the valid pixels of the
window; R_r / R_c are valid iff both pixels of the difference are, and the last column /
row (where the spec's replicate padding gives a 0 that is no measurement) is invalid.
Values at invalid pixels are 0.

Readings where the supplement is silent (documented in the README too):
* Bicubic resampling can undershoot: D^k of positive depths may be <= 0 next to a strong
  edge. D^k is clamped from below to the smallest valid full-resolution depth of its
  sample before the log (an undershoot below the data's range is a resampling artefact).
* Arithmetic in float64 for float64 depth, float32 otherwise (as the loss space); each sample
  is divided by its largest depth before resampling (exact, as the pyramid is linear), so
  depths up to the float maximum do not overflow.
"""
from __future__ import annotations

import torch

from mlrb.reference import box_sum, dx, dy, level_shape, mask_level, pyramid_level

RELATIVE_SCALES = (2, 3, 4, 5)
RELATIVE_TYPES = ("M17", "M5", "r", "c")
RELATIVE_NAMES = tuple(f"{t}@{k}" for k in RELATIVE_SCALES for t in RELATIVE_TYPES)
BOX = {"M17": 17, "M5": 5}


def check_depth(depth, mask=None, *, name: str = "depth") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) float depth and bool mask from (B, H, W) / (B, 1, H, W) input; clear errors.

    Depth must be finite and > 0 at every valid pixel.
    """
    if not isinstance(depth, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(depth).__name__}")
    if depth.dim() == 3:
        depth = depth.unsqueeze(1)
    if depth.dim() != 4 or depth.shape[1] != 1 or depth.numel() == 0:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W) and be non-empty; got {tuple(depth.shape)}")
    if not depth.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {depth.dtype}")
    if mask is None:
        mask = torch.ones_like(depth, dtype=torch.bool)
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.shape != depth.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(depth.shape)}")
        mask = (mask != 0).to(depth.device)
    bad = mask & ~(torch.isfinite(depth) & (depth > 0))
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and > 0 at valid pixels; {int(bad.sum())} valid pixel(s) are not "
                         f"(mask them out: mask=... False there)")
    return depth, mask


def log_level(depth: torch.Tensor, mask: torch.Tensor, k: int, *, absolute: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log D^k, m^k) of checked (B, 1, H, W) depth and mask, in the working dtype.

    Invalid pixels are filled with the sample's smallest valid depth first (they only reach
    invalid level pixels; the fill keeps everything finite), and D^k is clamped from below
    to that same depth (bicubic undershoot, see the module docstring). ``absolute=False``:
    log D^k minus the log of the sample's largest depth (enough for the relative maps, which
    remove constants, and free of the rounding of adding a large log back).
    """
    dtype = torch.float64 if depth.dtype == torch.float64 else torch.float32
    d = depth.to(dtype)
    floor = torch.where(mask, d, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    floor = torch.where(torch.isfinite(floor), floor, torch.ones_like(floor))  # all-invalid sample
    d = torch.where(mask, d, floor)
    # Scale to (0, 1] before the (linear) resampling: taps summing to 1.19 x a value near the
    # float maximum would overflow; log D^k = log pyr(D / s) + log s exactly.
    scale = d.amax(dim=(1, 2, 3), keepdim=True)
    dk = torch.maximum(pyramid_level(d / scale, k), floor / scale)
    L = torch.log(dk) + torch.log(scale) if absolute else torch.log(dk)
    return L, mask_level(mask, k)


def box_mean(x: torch.Tensor, m: torch.Tensor, n: int) -> torch.Tensor:
    """The spec's masked box mean: box(x*m) / box(m), both replicate-padded (0 where no valid pixel)."""
    mf = m.to(x.dtype)
    return box_sum(x * mf, n) / box_sum(mf, n).clamp(min=1)


def maps_of_log_level(L: torch.Tensor, m: torch.Tensor, k: int) -> tuple[dict, dict]:
    """The four relative maps (and masks) at scale k from log D^k and its mask."""
    maps, valid = {}, {}
    for t, n in BOX.items():
        valid[f"{t}@{k}"] = m
        maps[f"{t}@{k}"] = torch.where(m, L - box_mean(L, m, n), 0.0)
    h, w = L.shape[-2:]
    vr = torch.zeros_like(m)
    vr[..., :, :-1] = m[..., :, :-1] & m[..., :, 1:]
    vc = torch.zeros_like(m)
    vc[..., :-1, :] = m[..., :-1, :] & m[..., 1:, :]
    valid[f"r@{k}"], valid[f"c@{k}"] = vr, vc
    maps[f"r@{k}"] = torch.where(vr, dx(L), 0.0)
    maps[f"c@{k}"] = torch.where(vc, dy(L), 0.0)
    return maps, valid


def relative_maps(depth, mask=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The 16 relative log-depth maps of ``depth`` and their validity masks.

    depth: (B, H, W) or (B, 1, H, W), > 0 at valid pixels (else ValueError);
    mask: optional bool of the same shape (True = valid).
    Returns two dicts keyed by RELATIVE_NAMES ("M17@2", "M5@2", "r@2", "c@2", "M17@3", ...):
    maps (B, 1, h_k, w_k) and bool masks of the same shape; h_k x w_k as the loss space's
    level k (288x384 -> 72x96, 36x48, 18x24, 9x12).
    """
    depth, mask = check_depth(depth, mask)
    maps, valid = {}, {}
    for k in RELATIVE_SCALES:
        L, m = log_level(depth, mask, k, absolute=False)
        mk, vk = maps_of_log_level(L, m, k)
        maps.update(mk)
        valid.update(vk)
    return {n: maps[n] for n in RELATIVE_NAMES}, {n: valid[n] for n in RELATIVE_NAMES}


def relative_shapes(H: int, W: int) -> dict[str, tuple[int, int]]:
    """(h_k, w_k) of every relative map for an H x W depth map."""
    return {f"{t}@{k}": level_shape(H, W, k) for k in RELATIVE_SCALES for t in RELATIVE_TYPES}


def disparity_maps(disparity, mask=None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Relative maps of depth from a disparity (or any inverse-depth-up-to-scale) map.

    log depth = -log disparity + const, and every relative map removes constants, so the
    maps are those of 1 / disparity: the sign is handled by inverting before the pyramid.
    (The pyramid of 1/disp is not exactly 1/pyramid(disp); inverting first keeps the maps
    identical to those of the true depth whenever depth = c / disparity.)
    """
    disparity, mask = check_depth(disparity, mask, name="disparity")
    return relative_maps(torch.where(mask, 1.0 / torch.where(mask, disparity, 1.0), 1.0), mask)


__all__ = ["RELATIVE_SCALES", "RELATIVE_TYPES", "RELATIVE_NAMES", "relative_maps", "relative_shapes",
           "disparity_maps", "check_depth", "log_level", "box_mean", "maps_of_log_level"]
