"""Make3D (Saxena et al.) as a list file, for Lee & Kim's Table S-7 (C1 protocol, 0-70 m).

Make3D releases depth as MATLAB files (``depth_sparse*.mat`` with ``Position3DGrid``, a
55x305x4 array whose 4th channel is depth in metres). Reading .mat needs scipy, which mlrb
does not depend on; convert once (README, "Make3D") to either
  - a 16-bit PNG holding round(depth * 256) (the KITTI convention; 70 m = 17920), or
  - a float32 .npy array of metres.
The list has one "rgb_path depth_path" pair per line (paths relative to ``root``, default
the list's folder). Depth keeps its own 55x305 grid, which covers the whole image: for
training it is resized (nearest) to the image size; for evaluation (``full_gt``) it stays at
55x305 and predictions are up-sampled to it. The C1 protocol scores pixels with depth < 70 m
(``max_depth``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mlrb.train.datasets import DataFileError, _check_exist, _read_image, _resolve

PNG_SCALE = 256.0


def read_make3d_depth(path: str) -> np.ndarray:
    """Depth in metres from a converted Make3D file (.png: value / 256, .npy: metres)."""
    if path.endswith(".npy"):
        if not os.path.isfile(path):
            raise DataFileError(f"missing depth file: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataFileError(f"cannot read depth file {path}: {exc}") from exc
        if arr.ndim != 2:
            raise DataFileError(f"depth file {path} holds a {arr.ndim}-d array; expected (H, W) metres")
        return arr.astype(np.float32)
    if path.endswith(".mat"):
        raise DataFileError(f"{path}: convert Make3D .mat depth to 16-bit PNG or .npy first (README, Make3D)")
    return _read_image(path, depth=True) / PNG_SCALE


class Make3DList(Dataset):
    """Make3D "rgb depth" list; items as mlrb.train.datasets (image, depth, mask)."""

    min_depth, max_depth = 1e-3, 70.0

    def __init__(self, list_path: str, *, root: str | None = None, size: tuple[int, int] | None = (288, 384),
                 full_gt: bool = False, check_files: bool = True):
        if not os.path.isfile(list_path):
            raise DataFileError(f"Make3D list not found: {list_path}")
        self.root = root if root is not None else os.path.dirname(os.path.abspath(list_path))
        self.size, self.full_gt = (tuple(size) if size is not None else None), bool(full_gt)
        self.rows: list[tuple[str, str]] = []
        with open(list_path) as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) < 2:
                    raise DataFileError(f"{list_path}:{lineno}: expected 'rgb_path depth_path', got {line.strip()!r}")
                self.rows.append((_resolve(parts[0], self.root), _resolve(parts[1], self.root)))
        if not self.rows:
            raise DataFileError(f"Make3D list {list_path} has no rows")
        if check_files:
            _check_exist(self.rows, list_path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, dep = self.rows[index]
        img = torch.from_numpy(np.ascontiguousarray(_read_image(rgb, depth=False))).permute(2, 0, 1)
        depth = torch.from_numpy(np.ascontiguousarray(read_make3d_depth(dep)))[None]
        size = self.size or tuple(img.shape[-2:])
        if tuple(img.shape[-2:]) != size:
            img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        if not self.full_gt and tuple(depth.shape[-2:]) != size:
            depth = F.interpolate(depth[None], size=size, mode="nearest")[0]
        depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
        return {"image": img, "depth": depth, "mask": depth > 0}
