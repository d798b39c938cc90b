"""A procedural RGB-D dataset: ray-cast rooms with boxes, deterministic by seed.

Used when no data is given, so that ``mlrb train`` runs anywhere. Every sample is a room
(floor, ceiling, side walls, back wall) seen by a pinhole camera with a small random
yaw and pitch, holding a few boxes that stand on the floor. Depth is the camera z of the
first surface hit. The image carries the cues a network can learn depth from: perspective
of world-space textures (checkers and stripes shrink with distance), Lambertian shading
from a light near the camera that falls off with distance, and atmospheric attenuation.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

MAX_DEPTH = 10.0  # metres, as NYUv2


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def render_scene(height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one random scene: returns image (3, H, W) in [0, 1] and depth (1, H, W) in metres."""
    g = generator
    f = width * _u(g, 0.75, 0.95)  # focal length in pixels (NYUv2: ~0.81 W)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32) + 0.5,
                          torch.arange(width, dtype=torch.float32) + 0.5, indexing="ij")
    # Camera-frame rays with z = 1, so the ray parameter t of a hit is its depth.
    d_cam = torch.stack([(u - width / 2) / f, -(v - height / 2) / f, torch.ones_like(u)])
    yaw, pitch = _u(g, -0.35, 0.35), _u(g, -0.2, 0.15)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    rot = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]]) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    d = torch.einsum("ij,jhw->ihw", rot, d_cam)  # world directions

    floor, ceil = -_u(g, 1.1, 1.7), _u(g, 0.9, 1.5)
    half_w, back = _u(g, 1.6, 3.2), _u(g, 5.5, 9.5)
    inf = torch.full((height, width), float("inf"))
    t_best, surf = inf.clone(), torch.zeros(height, width, dtype=torch.long)
    # Axis-aligned planes: (axis, offset, surface id).
    planes = [(1, floor, 1), (1, ceil, 2), (0, -half_w, 3), (0, half_w, 4), (2, back, 5)]
    for axis, off, sid in planes:
        with torch.no_grad():
            t = off / d[axis]
        t = torch.where(t > 1e-4, t, inf)
        hit = t < t_best
        t_best, surf = torch.where(hit, t, t_best), torch.where(hit, torch.full_like(surf, sid), surf)
    normals = {1: (0, 1.0), 2: (1, -1.0), 3: (0, 1.0), 4: (0, -1.0), 5: (2, -1.0)}
    normal = torch.zeros(3, height, width)
    for sid, (axis, sign) in normals.items():
        normal[axis][surf == sid] = sign
    # Boxes standing on the floor (slab method); ids 6, 7, ...
    n_boxes = int(torch.randint(1, 5, (), generator=g))
    for b in range(n_boxes):
        sx, sz, sh = _u(g, 0.3, 1.2), _u(g, 0.3, 1.2), _u(g, 0.3, min(1.6, ceil - floor - 0.2))
        cx, cz = _u(g, -half_w + sx / 2, half_w - sx / 2), _u(g, 1.2 + sz / 2, back - sz / 2 - 0.1)
        lo = torch.tensor([cx - sx / 2, floor, cz - sz / 2]).view(3, 1, 1)
        hi = torch.tensor([cx + sx / 2, floor + sh, cz + sz / 2]).view(3, 1, 1)
        inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
        t0, t1 = lo * inv, hi * inv
        t_near_ax, t_far_ax = torch.minimum(t0, t1), torch.maximum(t0, t1)
        t_near, axis_near = t_near_ax.max(0)
        t_far = t_far_ax.min(0).values
        hit = (t_near < t_far) & (t_near > 1e-4) & (t_near < t_best)
        t_best = torch.where(hit, t_near, t_best)
        surf = torch.where(hit, torch.full_like(surf, 6 + b), surf)
        # The entry face's normal points against the ray along the entry axis.
        n_box = torch.zeros(3, height, width)
        n_box.scatter_(0, axis_near.unsqueeze(0), -torch.sign(d.gather(0, axis_near.unsqueeze(0))))
        normal = torch.where(hit.unsqueeze(0), n_box, normal)

    depth = t_best.clamp(max=MAX_DEPTH)
    p = d * t_best  # world hit points
    # Albedo and world-space texture per surface: checkers (floor, boxes) or stripes.
    image = torch.zeros(3, height, width)
    n_surf = 6 + n_boxes
    for sid in range(1, n_surf):
        sel = surf == sid
        if not sel.any():
            continue
        albedo = torch.rand(3, generator=g) * 0.55 + 0.3
        period, contrast = _u(g, 0.2, 0.6), _u(g, 0.1, 0.3)
        axis = normal[:, sel].abs().mean(1).argmax().item()
        a, b_ = [i for i in range(3) if i != axis]
        pa, pb = p[a][sel] / period, p[b_][sel] / period
        if sid in (1,) or sid >= 6 or torch.rand((), generator=g).item() < 0.5:
            tex = ((torch.floor(pa) + torch.floor(pb)) % 2) * 2 - 1  # checkers
        else:
            tex = torch.sin(2 * math.pi * pa)  # stripes
        image[:, sel] = albedo.view(3, 1) * (1 + contrast * tex).unsqueeze(0)
    # Lambertian shading from a light slightly above the camera, inverse-square-ish falloff.
    light = torch.tensor([_u(g, -0.5, 0.5), _u(g, 0.2, 0.6), 0.0]).view(3, 1, 1)
    to_l = light - p
    dist = to_l.norm(dim=0).clamp(min=1e-3)
    lambert = ((normal * to_l).sum(0) / dist).clamp(min=0)
    shade = 0.25 + 0.9 * lambert / (1 + 0.04 * dist ** 2)
    fog = torch.exp(-0.06 * depth)
    image = image * shade * fog + 0.5 * (1 - fog)
    image = image + 0.01 * torch.randn(3, height, width, generator=g)
    return image.clamp(0, 1), depth.unsqueeze(0)


class SyntheticDepth(Dataset):
    """``n`` procedurally rendered RGB-D samples of size ``size`` = (H, W).

    Sample i depends only on (seed, i), so any subset, order or worker split gives the
    same data. Items are dicts with "image" (3, H, W) in [0, 1], "depth" (1, H, W) in
    metres (0.3 .. 10) and "mask" (1, H, W), all True (dense ground truth).
    """

    def __init__(self, n: int = 512, size: tuple[int, int] = (96, 128), seed: int = 0, cache: bool = True):
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be (H, W) with both >= 8, got {size}")
        self.n, self.size, self.seed, self.cache = int(n), (int(size[0]), int(size[1])), int(seed), cache
        self._items: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.min_depth, self.max_depth = 1e-3, MAX_DEPTH

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        item = self._items.get(index)
        if item is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            item = render_scene(*self.size, g)
            if self.cache:
                self._items[index] = item
        image, depth = item
        return {"image": image.clone(), "depth": depth.clone(), "mask": torch.ones_like(depth, dtype=torch.bool)}
