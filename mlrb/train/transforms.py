"""Geometric training augmentations the papers' recipes add to ``Augment`` (flip / colour).

- ``RandomRotation``: the random rotation of Lee & Kim's public training code (up to 5
  degrees). Image bilinear; depth and mask nearest, so no depth is ever interpolated
  between surfaces; pixels rotated in from outside the frame are masked out (the public
  code instead fills depth with the image's mean depth and trains on it; masking keeps
  every supervised pixel a measured one). The image border is filled white as there.
- ``RandomCrop``: the random training crops of AMLR (KITTI 352x1216, NYUv2 448x576), taken
  instead of resizing.
- ``Chain``: applies several augmentations with one generator.

Every transform is ``t(sample, generator) -> sample`` on dicts with "image" (3, H, W),
"depth" (1, H, W) and "mask" (1, H, W) bool, the same interface as ``Augment``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RandomRotation:
    """Rotate image, depth and mask together by an angle uniform in [-degrees, degrees]."""

    def __init__(self, degrees: float = 5.0, fill: float = 1.0):
        if not (math.isfinite(degrees) and 0 <= degrees <= 180):
            raise ValueError(f"rotation degrees must be in [0, 180], got {degrees}")
        self.degrees, self.fill = float(degrees), float(fill)

    def __call__(self, sample: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        angle = self.degrees * (2 * torch.rand((), generator=g).item() - 1)
        if self.degrees == 0:
            return sample
        out = dict(sample)
        h, w = sample["image"].shape[-2:]
        grid = rotation_grid(h, w, angle)
        img = sample["image"][None]
        # White fill: sample (image - 1) with zero padding, then add 1 back.
        out["image"] = (F.grid_sample(img - self.fill, grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False) + self.fill)[0].clamp(0, 1)
        out["depth"] = F.grid_sample(sample["depth"][None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)[0]
        inside = F.grid_sample(torch.ones(1, 1, h, w), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[0] > 0.5
        mask = sample.get("mask")
        mask = torch.ones_like(inside) if mask is None else F.grid_sample(
            mask[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0] > 0.5
        out["mask"] = mask & inside
        return out


def rotation_grid(h: int, w: int, degrees: float) -> torch.Tensor:
    """(1, h, w, 2) sampling grid that rotates an image by ``degrees`` (counter-clockwise)
    about its centre, in pixel units (no stretching for non-square images)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    # Output pixel (x, y) reads the source at R(-a) (x, y); y points down.
    src_x = c * x - s * y
    src_y = s * x + c * y
    # align_corners=False: pixel i's centre is at (2 i + 1) / n - 1.
    return torch.stack([src_x * 2 / w, src_y * 2 / h], dim=-1)[None]


class RandomCrop:
    """A random (h, w) window of image, depth and mask (and anything else of that size).

    Samples smaller than the crop raise a ValueError naming both sizes.
    """

    def __init__(self, size: tuple[int, int]):
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            raise ValueError(f"crop size must be positive, got {size}")
        self.size = (h, w)

    def __call__(self, sample: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        H, W = sample["image"].shape[-2:]
        h, w = self.size
        if H < h or W < w:
            raise ValueError(f"random crop {h}x{w} is larger than the {H}x{W} sample; use --size at most "
                             f"{H} {W} or turn random crops off")
        top = int(torch.randint(0, H - h + 1, (), generator=g))
        left = int(torch.randint(0, W - w + 1, (), generator=g))
        return {k: v[..., top:top + h, left:left + w] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[-2:] == (H, W)
                else v for k, v in sample.items()}


class Chain:
    """Apply ``transforms`` in order with the same generator."""

    def __init__(self, *transforms):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, sample: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        for t in self.transforms:
            sample = t(sample, g)
        return sample
