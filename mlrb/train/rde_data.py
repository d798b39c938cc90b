"""Extra training lists of an RDE run (``mlrb train --task rde --rde-list KIND:PATH ...``).

Relative maps are scale-free, so RDE trains on several datasets at once (S-3: indoor,
outdoor and relative-only sets jointly, no domain adaptation). Each list is one of

* ``nyu-csv:LIST.csv``, ``bts-nyu:SPLIT``, ``bts-kitti:SPLIT``: as ``--data`` (BTS kinds use
  --data-root / --gt-root);
* ``disparity-csv:LIST.csv``: rows "rgb_path,disparity_path" (paths relative to the CSV's
  folder) of relative-only data (ReDWeb-style): the disparity is a ``.npy`` float map or a
  16-bit PNG, in any units; 0 = no measurement.

Disparity sign: log disparity = -log depth + const, so its relative maps are the negated
depth maps. A disparity sample is stored as depth = 1 / disparity (the constant is
irrelevant: every relative map removes it) and its maps are those of true depth.
All samples are resized to the run's --size.
"""
from __future__ import annotations

import csv
import os

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from mlrb.train.datasets import DataFileError, _check_exist, _read_image, _resolve, _to_sample

LIST_KINDS = ("nyu-csv", "bts-nyu", "bts-kitti", "disparity-csv")


class DisparityCSV(Dataset):
    """Relative-only RGB + disparity pairs; items carry depth = 1 / disparity (see the module docstring)."""

    min_depth, max_depth = 1e-3, float("inf")

    def __init__(self, csv_path: str, *, size: tuple[int, int] | None, check_files: bool = True):
        if not os.path.isfile(csv_path):
            raise DataFileError(f"disparity CSV list not found: {csv_path}")
        root = os.path.dirname(os.path.abspath(csv_path))
        self.size = tuple(size) if size is not None else None
        self.rows: list[tuple[str, str]] = []
        with open(csv_path, newline="") as fh:
            for lineno, row in enumerate(csv.reader(fh), 1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise DataFileError(f"{csv_path}:{lineno}: expected 'rgb_path,disparity_path', got {row!r}")
                self.rows.append((_resolve(row[0], root), _resolve(row[1], root)))
        if not self.rows:
            raise DataFileError(f"disparity CSV list {csv_path} has no rows")
        if check_files:
            _check_exist(self.rows, csv_path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, disp_path = self.rows[index]
        if disp_path.endswith(".npy"):
            try:
                disp = np.asarray(np.load(disp_path, allow_pickle=False), dtype=np.float32)
            except Exception as exc:  # numpy raises several types for corrupt files
                raise DataFileError(f"cannot read disparity file {disp_path}: {exc}") from exc
            disp = disp.reshape(disp.shape[-2:]) if disp.ndim == 3 and 1 in (disp.shape[0],) else disp
            if disp.ndim != 2:
                raise DataFileError(f"disparity file {disp_path} must hold one (H, W) map, got shape {disp.shape}")
        else:
            disp = _read_image(disp_path, depth=True)
        ok = np.isfinite(disp) & (disp > 0)
        depth = np.where(ok, 1.0 / np.where(ok, disp, 1.0), 0.0).astype(np.float32)
        return _to_sample(_read_image(rgb, depth=False), depth, self.size, files=(rgb, disp_path))


class ConcatSamples(ConcatDataset):
    """ConcatDataset that forwards ``set_epoch`` (augmentation seeds) to its parts."""

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)


def parse_list(spec: str) -> tuple[str, str]:
    """'KIND:PATH' -> (kind, path) with a clear error."""
    kind, sep, path = str(spec).partition(":")
    if not sep or kind not in LIST_KINDS or not path:
        raise ValueError(f"--rde-list {spec!r}: expected KIND:PATH with KIND one of {', '.join(LIST_KINDS)}")
    return kind, path


def build_list(spec: str, size: tuple[int, int], cfg) -> Dataset:
    """The dataset of one ``KIND:PATH`` list at ``size``."""
    from mlrb.train.datasets import BTSSplit, NYUv2CSV

    kind, path = parse_list(spec)
    if kind == "nyu-csv":
        return NYUv2CSV(path, root=None, size=size, depth_scale=cfg.depth_scale)
    if kind == "disparity-csv":
        return DisparityCSV(path, size=size)
    if not cfg.data_root:
        raise ValueError(f"--rde-list {spec!r} needs --data-root (and --gt-root if depth lives elsewhere)")
    return BTSSplit(path, cfg.data_root, cfg.gt_root, dataset="nyu" if kind == "bts-nyu" else "kitti", size=size)
