"""``mlrb eval``: evaluate a folder of depth predictions against a folder of ground truth.

Files are matched by their path relative to each folder without the extension
(``pred/a/0001.npy`` <-> ``gt/a/0001.png``). Supported formats:

* ``.npy``: depth in metres, shape (H,W), (1,H,W) or (H,W,1);
* ``.png``: 16-bit depth divided by a scale (``--dataset nyu``: 1000, i.e. millimetres;
  ``kitti``: 256, the KITTI convention; override with ``--gt-png-scale`` /
  ``--pred-png-scale``). A zero pixel is 0 m, i.e. invalid ground truth.

Every ground-truth file needs a prediction (else exit code 1); extra predictions are
ignored. The standard table (per-image metrics averaged over images) is printed, optionally
with Kendall's tau and the WKDR family, and can be written as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .accumulator import MetricAccumulator
from .depth import (CROPS, DATASET_PRESETS, METRIC_KEYS, clamp_prediction,
                    depth_metrics_per_image, valid_mask)
from .kendall import kendall_tau_per_image
from .ordinal import WKDR_KEYS, threshold_ok, wkdr_per_image
from ..errors import UserError

EXTENSIONS = (".npy", ".png")
# --n-pairs: WKDR holds ~75 bytes per pair of an image at once, so 10M pairs is ~1 GB; more
# would run out of memory in the middle of the evaluation (200x the default is plenty).
MAX_N_PAIRS = 10_000_000
# --seed: image k is sampled with torch.Generator().manual_seed(seed + k), which takes
# -2**63 .. 2**64-1; an int64 seed leaves room for seed + k.
SEED_RANGE = (-2**63, 2**63 - 1)


class EvalError(UserError, RuntimeError):
    """A problem with the input folders/files (reported, exit code 1)."""


def load_depth(path: Path, png_scale: float) -> np.ndarray:
    """Load one depth map as float64 (H,W) metres; EvalError names the file if it is
    unreadable, truncated, corrupt, not numeric, not one map or empty."""
    if path.suffix == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:  # truncated, corrupt or object arrays
            raise EvalError(f"{path}: not a readable .npy array ({_first_line(exc)})") from None
        if not (np.issubdtype(d.dtype, np.number) or d.dtype == np.bool_) or np.iscomplexobj(d):
            raise EvalError(f"{path}: depth must be real numbers, the array holds {d.dtype}")
    elif path.suffix == ".png":
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise EvalError(f"{path}: PNG mode {im.mode!r} is not 16-bit depth")
                d = np.asarray(im).astype(np.float64) / png_scale
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: unidentified, truncated, bad chunks
            raise EvalError(f"{path}: not a readable PNG ({_first_line(exc)})") from None
    else:
        raise EvalError(f"{path}: unsupported extension (use {', '.join(EXTENSIONS)})")
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 3 and 1 in (d.shape[0], d.shape[-1]):
        d = d.reshape(d.shape[1:] if d.shape[0] == 1 else d.shape[:-1])
    if d.ndim != 2:
        raise EvalError(f"{path}: expected a single (H,W) depth map, got shape {d.shape}")
    if d.size == 0:
        raise EvalError(f"{path}: empty depth map, shape {d.shape}")
    return d


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def index_folder(root: Path) -> dict[str, Path]:
    """Map 'relative/path/stem' -> file for every supported file under ``root``."""
    if not root.is_dir():
        raise EvalError(f"{root} is not a directory")
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in EXTENSIONS:
            key = p.relative_to(root).with_suffix("").as_posix()
            if key in out:
                raise EvalError(f"two files for {key!r} in {root}: {out[key].name}, {p.name}")
            out[key] = p
    return out


def format_table(results: dict[str, float], keys: list[str]) -> str:
    """Two-line table: the metric keys and their values (4 decimals), one column each."""
    cols = [k for k in keys if k in results]
    widths = [max(8, len(k) + 2) for k in cols]
    line1 = "".join(k.rjust(w) for k, w in zip(cols, widths))
    line2 = "".join(f"{results[k]:.4f}".rjust(w) for k, w in zip(cols, widths))
    return f"{line1}\n{line2}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mlrb eval", description="Evaluate depth predictions against ground truth "
        "(files matched by relative path without extension; .npy metres or 16-bit .png).")
    ap.add_argument("pred_dir", type=Path, help="folder of predictions")
    ap.add_argument("gt_dir", type=Path, help="folder of ground-truth depth")
    ap.add_argument("--dataset", choices=sorted(DATASET_PRESETS),
                    help="preset caps, crop and PNG scale (nyu: 1e-3..10 m, nyu_eigen crop, "
                    "png/1000; kitti: 1e-3..80 m, kitti_garg crop, png/256)")
    ap.add_argument("--min-depth", type=float, help="lower cap (overrides the preset)")
    ap.add_argument("--max-depth", type=float, help="upper cap (overrides the preset)")
    ap.add_argument("--crop", choices=("none",) + CROPS, help="evaluation crop (overrides "
                    "the preset; default none without --dataset)")
    ap.add_argument("--gt-png-scale", type=float, help="divide 16-bit gt PNGs by this")
    ap.add_argument("--pred-png-scale", type=float, help="divide 16-bit pred PNGs by this")
    ap.add_argument("--resize", action="store_true", help="bilinearly resize predictions "
                    "to the ground-truth size instead of failing on a size mismatch")
    ap.add_argument("--kendall", action="store_true", help="also compute Kendall's tau-b")
    ap.add_argument("--wkdr", action="store_true", help="also compute WKDR, WKDR=, WKDR!=")
    ap.add_argument("--n-pairs", type=int, default=50_000, help="point pairs per image for "
                    "WKDR (default 50000)")
    ap.add_argument("--wkdr-threshold", type=float, default=0.02, help="ordinal threshold t "
                    "of the ratio test d_i > (1+t) d_j (default 0.02)")
    ap.add_argument("--seed", type=int, default=0, help="pair-sampling seed (image k uses "
                    "seed + k)")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return ap


def _settings(args: argparse.Namespace) -> dict:
    preset = dict(DATASET_PRESETS.get(args.dataset, {}))
    min_d = args.min_depth if args.min_depth is not None else preset.get("min_depth")
    max_d = args.max_depth if args.max_depth is not None else preset.get("max_depth")
    if min_d is None or max_d is None:
        raise EvalError("give --dataset nyu|kitti or both --min-depth and --max-depth")
    crop = args.crop if args.crop is not None else preset.get("crop", "none")
    png = preset.get("png_scale")
    gt_scale = args.gt_png_scale if args.gt_png_scale is not None else png
    pred_scale = args.pred_png_scale if args.pred_png_scale is not None else png
    bad = [f"{name} must be a positive number, got {v:g}" for name, v in
           (("--gt-png-scale", gt_scale), ("--pred-png-scale", pred_scale), ("--max-depth", max_d))
           if v is not None and not (np.isfinite(v) and v > 0)]
    # strictly > 0, as depth.valid_mask needs (0 would be reported as the first file's error)
    if not (np.isfinite(min_d) and 0 < min_d < max_d):
        bad.append(f"--min-depth must be > 0 and below --max-depth, got {min_d:g} and {max_d:g}")
    if not 1 <= args.n_pairs <= MAX_N_PAIRS:
        bad.append(f"--n-pairs must be between 1 and {MAX_N_PAIRS} (memory), got {args.n_pairs}")
    if not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
        bad.append(f"--seed must be a 64-bit integer ({SEED_RANGE[0]} .. {SEED_RANGE[1]}), got {args.seed}")
    if not threshold_ok(args.wkdr_threshold):
        bad.append(f"--wkdr-threshold must be >= 0, got {args.wkdr_threshold:g}")
    if bad:
        raise EvalError("; ".join(bad))
    return {"min_depth": min_d, "max_depth": max_d, "crop": None if crop == "none" else crop,
            "gt_png_scale": gt_scale, "pred_png_scale": pred_scale}


def check_json_target(path: str | os.PathLike | None) -> None:
    """EvalError naming --json if it cannot be written; also used by `mlrb diw` and `mlrb time`."""
    # Fail before the (long) evaluation, not after it.
    if path is None:
        return
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise EvalError(f"{path}: --json is a folder; give a file name")
    if not folder.is_dir():
        raise EvalError(f"{path}: folder {folder} does not exist (--json)")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EvalError(f"{path}: not writable (--json)")


def evaluate_folders(args: argparse.Namespace) -> tuple[dict[str, float], MetricAccumulator,
                                                        dict]:
    s = _settings(args)
    check_json_target(args.json)
    gts, preds = index_folder(args.gt_dir), index_folder(args.pred_dir)
    if not gts:
        raise EvalError(f"no {'/'.join(EXTENSIONS)} files in {args.gt_dir}")
    missing = [k for k in gts if k not in preds]
    if missing:
        raise EvalError(f"{len(missing)} ground-truth file(s) without a prediction, e.g. "
                        + ", ".join(missing[:5]))
    acc = MetricAccumulator()
    for k, key in enumerate(tqdm(sorted(gts), desc="mlrb eval", unit="img",
                                 disable=args.no_progress)):
        for name, scale in (("gt", s["gt_png_scale"]), ("pred", s["pred_png_scale"])):
            path = (gts if name == "gt" else preds)[key]
            if path.suffix == ".png" and scale is None:
                raise EvalError(f"{path}: PNG depth needs --dataset or --{name}-png-scale")
        gt = torch.from_numpy(load_depth(gts[key], s["gt_png_scale"] or 1.0))
        pred = torch.from_numpy(load_depth(preds[key], s["pred_png_scale"] or 1.0))
        if pred.shape != gt.shape:
            if not args.resize:
                raise EvalError(f"{preds[key]}: prediction {tuple(pred.shape)} vs ground truth "
                                f"{tuple(gt.shape)} (use --resize)")
            pred = F.interpolate(pred[None, None], size=gt.shape, mode="bilinear",
                                 align_corners=False)[0, 0]
        try:
            _add_image(acc, args, s, pred, gt, seed=args.seed + k)
        except ValueError as exc:  # e.g. a crop larger than this image
            raise EvalError(f"{gts[key]}: {_first_line(exc)}") from None
    if acc.num_images == 0:
        raise EvalError("no image has a valid ground-truth pixel (check caps and crop)")
    return acc.compute(), acc, s


def _add_image(acc: MetricAccumulator, args: argparse.Namespace, s: dict, pred, gt, seed: int) -> None:
    caps = {"min_depth": s["min_depth"], "max_depth": s["max_depth"]}
    values, n = depth_metrics_per_image(pred, gt, crop=s["crop"], **caps)
    ok = n > 0
    acc.skipped += int((~ok).sum())
    acc.update(values, ok)
    if args.kendall or args.wkdr:
        valid = valid_mask(gt, crop=s["crop"], **caps)
        p = clamp_prediction(pred, **caps)
        if args.kendall:
            tau, cnt = kendall_tau_per_image(p, gt, valid)
            acc.update({"kendall_tau": tau}, cnt >= 2)
        if args.wkdr:
            rates, okw = wkdr_per_image(p, gt, valid, n_pairs=args.n_pairs,
                                        threshold=args.wkdr_threshold, seed=seed)
            acc.update(rates, okw)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mlrb eval``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        results, acc, s = evaluate_folders(args)
    except EvalError as e:
        print(f"mlrb eval: error: {e}", file=sys.stderr)
        return 1
    crop = s["crop"] or "none"
    if args.json is not None:  # first: the results survive a closed stdout (`| head`)
        payload = {"metrics": results, "images": acc.num_images, "skipped": acc.skipped,
                   "min_depth": s["min_depth"], "max_depth": s["max_depth"], "crop": crop}
        try:
            args.json.write_text(json.dumps(payload, indent=2))
        except OSError as exc:
            print(f"mlrb eval: error: {args.json}: cannot write ({exc.strerror or exc})", file=sys.stderr)
            return 1
    print(f"images: {acc.num_images}  skipped (no valid gt): {acc.skipped}  "
          f"caps: ({s['min_depth']:g}, {s['max_depth']:g}) m  crop: {crop}")
    keys = list(METRIC_KEYS) + ["kendall_tau"] + list(WKDR_KEYS)
    print(format_table(results, keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
