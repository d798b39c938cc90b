"""RGB-D datasets on disk, and the paper's training augmentation.

- ``NYUv2CSV``: the paper's release of NYUv2 (and the DenseDepth layout it follows): a CSV
  whose rows are "rgb_path,depth_path" of 8-bit RGB and 16-bit depth PNGs. Depth is
  value / (2^16 - 1) * 10 metres (``depth_scale="paper"``) or value / 1000 (``"mm"``).
- ``BTSSplit``: the split files of BTS (Lee et al. 2019) used by most later work: lines of
  "rgb_path depth_path focal", paths relative to a data root and a ground-truth root.
  NYUv2 depth is uint16 millimetres (value / 1000); KITTI is uint16 value / 256 and sparse
  (0 = no measurement), with the KITTI benchmark crop (352 x 1216, bottom-centred).
Every item is a dict with "image" (3, H, W) float in [0, 1], "depth" (1, H, W) metres and
"mask" (1, H, W) bool (depth > 0), resized to ``size`` (image bilinear, depth nearest so
that sparse and holed maps keep only measured values).

Augmentation (``Augment``) follows the policy the paper adopts from Hu et al. (WACV 2019)
and its public trainer: horizontal flip, colour jitter (brightness, contrast, saturation),
PCA lighting noise and an optional RGB channel swap. Its randomness comes from a generator
seeded by (seed, epoch, index), so resumed or re-sharded runs see the same samples.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from mlrb.errors import UserError

DEPTH_SCALES = {"paper": 10.0 / (2 ** 16 - 1), "mm": 1.0 / 1000.0}
KITTI_CROP = (352, 1216)


class DataFileError(UserError, RuntimeError):
    """A dataset file is missing, unreadable or has the wrong format."""


def _read_list(path: str) -> str:
    """The text of a list file; DataFileError naming it if it is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8-sig") as fh:  # a BOM (spreadsheet export) is not a path
            return fh.read()
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not a text list (byte {exc.start} is not UTF-8); give a CSV or "
                            f"split file") from None


def _read_image(path: str, *, depth: bool) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(path):
        raise DataFileError(f"missing {'depth' if depth else 'image'} file: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if depth:
                if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise DataFileError(
                        f"depth file {path} has PIL mode {im.mode!r}; expected a 16-bit single-channel PNG")
                return np.asarray(im, dtype=np.float32)
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except DataFileError:
        raise
    except Exception as exc:  # PIL raises several types for corrupt files
        raise DataFileError(f"cannot read {'depth' if depth else 'image'} file {path}: {exc}") from exc


def _check_same_size(image: np.ndarray, depth: np.ndarray, files: tuple[str, str]) -> None:
    """files: the paths of the image and the depth map, named in the error."""
    if image.shape[:2] != depth.shape[:2]:
        raise DataFileError(f"image {files[0]} is {image.shape[0]}x{image.shape[1]} but depth {files[1]} is "
                            f"{depth.shape[0]}x{depth.shape[1]}")


def _to_sample(image: np.ndarray, depth: np.ndarray, size: tuple[int, int] | None,
               full_gt: bool = False, files: tuple[str, str] = ("image", "depth")) -> dict[str, torch.Tensor]:
    # full_gt: only the image is resized; depth and mask keep the stored resolution (the
    # papers' evaluation protocols score against full-resolution ground truth).
    _check_same_size(image, depth, files)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    dep = torch.from_numpy(np.ascontiguousarray(depth)).unsqueeze(0)
    if size is not None and tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        if not full_gt:
            dep = F.interpolate(dep[None], size=size, mode="nearest")[0]
    return {"image": img, "depth": dep, "mask": dep > 0}


class Augment:
    """The paper's training augmentation: flip, colour jitter, lighting, channel swap.

    flip: probability of a horizontal flip (image, depth and mask together).
    color: strength of brightness / contrast / saturation jitter (factors in
        [1 - color, 1 + color], random order as torchvision's ColorJitter).
    lighting: std of the AlexNet-style PCA lighting noise.
    channel_swap: probability of a random permutation of the RGB channels.
    """

    # ImageNet RGB eigenvalues / eigenvectors used by the lighting noise of Hu et al.
    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, flip: float = 0.5, color: float = 0.4, lighting: float = 0.1, channel_swap: float = 0.0):
        for name, v in (("flip", flip), ("channel_swap", channel_swap)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} is a probability, got {v}")
        if color < 0 or lighting < 0:
            raise ValueError("color and lighting must be >= 0")
        self.flip, self.color, self.lighting, self.channel_swap = flip, color, lighting, channel_swap

    def __call__(self, sample: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        out = dict(sample)
        img = out["image"]
        if torch.rand((), generator=g) < self.flip:
            out = {k: v.flip(-1) for k, v in out.items()}
            img = out["image"]
        if self.color > 0:
            gray = lambda x: (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
            for op in torch.randperm(3, generator=g).tolist():
                a = 1 + self.color * (2 * torch.rand((), generator=g).item() - 1)
                if op == 0:  # brightness
                    img = img * a
                elif op == 1:  # contrast
                    img = gray(img).mean() * (1 - a) + img * a
                else:  # saturation
                    img = gray(img) * (1 - a) + img * a
                img = img.clamp(0, 1)
        if self.lighting > 0:
            alpha = torch.randn(3, generator=g) * self.lighting
            img = (img + (self.EIGVEC @ (alpha * self.EIGVAL)).view(3, 1, 1)).clamp(0, 1)
        if torch.rand((), generator=g) < self.channel_swap:
            img = img[torch.randperm(3, generator=g)]
        out["image"] = img
        return out


class AugmentedDataset(Dataset):
    """Applies ``augment`` with a generator seeded by (seed, epoch, index); set_epoch() per epoch."""

    def __init__(self, base: Dataset, augment: Callable | None, seed: int = 0):
        self.base, self.augment, self.seed, self.epoch = base, augment, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.base[index]
        if self.augment is None:
            return sample
        g = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + self.epoch * 0x85EBCA77 + int(index)) % 2 ** 63)
        return self.augment(sample, g)

    def __getattr__(self, name):  # min_depth, max_depth, ... of the wrapped set
        if name in ("base", "augment", "seed", "epoch"):
            raise AttributeError(name)
        return getattr(self.base, name)


def _resolve(path: str, root: str) -> str:
    # BTS lists write paths with a leading "/" that are relative to the data root; a truly
    # absolute path (one that exists as such) is kept.
    path = path.strip()
    if os.path.isabs(path) and os.path.exists(path):
        return path
    return os.path.join(root, path.lstrip("/"))


class NYUv2CSV(Dataset):
    """NYUv2 as a CSV of "rgb,depth" 16-bit PNG pairs (the paper's and DenseDepth's release).

    csv_path: the list; paths in it are relative to ``root`` (default: the CSV's folder).
    depth_scale: "paper" (value / (2^16 - 1) * 10) or "mm" (value / 1000) or a float factor.
    size: (H, W) to resize to, or None to keep the stored size.
    """

    min_depth, max_depth = 1e-3, 10.0

    def __init__(self, csv_path: str, *, root: str | None = None, size: tuple[int, int] | None = (288, 384),
                 depth_scale: str | float = "paper", check_files: bool = True, full_gt: bool = False):
        self.full_gt = bool(full_gt)
        if not os.path.isfile(csv_path):
            raise DataFileError(f"NYUv2 CSV list not found: {csv_path}")
        self.root = root if root is not None else os.path.dirname(os.path.abspath(csv_path))
        self.scale = DEPTH_SCALES[depth_scale] if isinstance(depth_scale, str) and depth_scale in DEPTH_SCALES else depth_scale
        if not isinstance(self.scale, (int, float)):
            raise ValueError(f"depth_scale must be 'paper', 'mm' or a number, got {depth_scale!r}")
        self.size = tuple(size) if size is not None else None
        self.rows: list[tuple[str, str]] = []
        for lineno, row in enumerate(csv.reader(io.StringIO(_read_list(csv_path), newline="")), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise DataFileError(f"{csv_path}:{lineno}: expected 'rgb_path,depth_path', got {row!r}")
            self.rows.append((_resolve(row[0], self.root), _resolve(row[1], self.root)))
        if not self.rows:
            raise DataFileError(f"NYUv2 CSV list {csv_path} has no rows")
        if check_files:
            _check_exist(self.rows, csv_path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, dep = self.rows[index]
        return _to_sample(_read_image(rgb, depth=False), _read_image(dep, depth=True) * self.scale, self.size,
                          self.full_gt, (rgb, dep))


class BTSSplit(Dataset):
    """BTS-style split file ("rgb_path depth_path focal" per line) for NYUv2 or KITTI.

    dataset: "nyu" (depth = value / 1000) or "kitti" (value / 256, sparse; images are
    cropped to the KITTI benchmark crop 352 x 1216 before resizing, as BTS does).
    Lines whose depth is "None" (frames without ground truth in the KITTI lists) are
    skipped and counted in ``skipped``.
    """

    def __init__(self, split_file: str, data_root: str, gt_root: str | None = None, *, dataset: str = "nyu",
                 size: tuple[int, int] | None = None, check_files: bool = True, full_gt: bool = False):
        self.full_gt = bool(full_gt)
        if dataset not in ("nyu", "kitti"):
            raise ValueError(f"dataset must be 'nyu' or 'kitti', got {dataset!r}")
        if not os.path.isfile(split_file):
            raise DataFileError(f"split file not found: {split_file}")
        self.dataset = dataset
        self.scale = 1 / 1000.0 if dataset == "nyu" else 1 / 256.0
        self.min_depth, self.max_depth = (1e-3, 10.0) if dataset == "nyu" else (1e-3, 80.0)
        self.size = tuple(size) if size is not None else ((288, 384) if dataset == "nyu" else (352, 704))
        gt_root = data_root if gt_root is None else gt_root
        self.rows: list[tuple[str, str]] = []
        self.focals: list[float] = []
        self.skipped = 0
        for lineno, line in enumerate(_read_list(split_file).splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) < 2:
                raise DataFileError(f"{split_file}:{lineno}: expected 'rgb_path depth_path focal', got {line.strip()!r}")
            if parts[1] == "None":
                self.skipped += 1
                continue
            try:
                focal = float(parts[2]) if len(parts) > 2 else float("nan")
            except ValueError:
                raise DataFileError(f"{split_file}:{lineno}: focal {parts[2]!r} is not a number") from None
            self.rows.append((_resolve(parts[0], data_root), _resolve(parts[1], gt_root)))
            self.focals.append(focal)
        if not self.rows:
            raise DataFileError(f"split file {split_file} lists no samples with ground truth")
        if check_files:
            _check_exist(self.rows, split_file)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, dep = self.rows[index]
        image, depth = _read_image(rgb, depth=False), _read_image(dep, depth=True) * self.scale
        orig = depth.shape[:2]
        _check_same_size(image, depth, (rgb, dep))  # before the crop, which could make them agree
        if self.dataset == "kitti":
            image, depth = _kb_crop(image), _kb_crop(depth)
        sample = _to_sample(image, depth, self.size, self.full_gt, (rgb, dep))
        if self.dataset == "kitti":
            # Where the benchmark crop sits in the full frame (top, left, H, W): the Garg / Eigen
            # crops are fractions of the full frame (mlrb.train.protocol).
            h, w = orig
            cropped = depth.shape[:2] != orig
            top, left = (h - KITTI_CROP[0], (w - KITTI_CROP[1]) // 2) if cropped else (0, 0)
            sample["kb_box"] = torch.tensor([top, left, h, w])
        sample["focal"] = torch.tensor(self.focals[index])
        return sample


def _kb_crop(x: np.ndarray) -> np.ndarray:
    # KITTI benchmark crop: bottom 352 rows, centred 1216 columns (BTS's do_kb_crop).
    h, w = x.shape[:2]
    ch, cw = KITTI_CROP
    if h < ch or w < cw:
        return x
    top, left = h - ch, (w - cw) // 2
    return x[top:top + ch, left:left + cw]


def _check_exist(rows: Sequence[tuple[str, str]], listing: str) -> None:
    missing = [p for row in rows for p in row if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataFileError(f"{len(missing)} file(s) listed in {listing} do not exist: "
                            f"{', '.join(missing[:3])}{more}")
