"""WHDR on Depth in the Wild (DIW, Chen et al. 2016), Lee & Kim supplement Table S-4 / S-5.

DIW's released annotation CSV (e.g. ``DIW_test.csv``) has two lines per image: the image
path, then ``yA,xA,yB,xB,relation,width,height`` with 1-based pixel coordinates of the two
points in the original width x height image and relation ``>`` or ``<``.

Readings (documented in the README):
* ``>`` means point A is farther than B (depth_A > depth_B), ``<`` closer, as the DIW
  evaluation code reads it.
* A prediction of another size is sampled at the point's pixel scaled to the prediction:
  row = floor((y - 0.5) * H_pred / height), col likewise, clamped to the map.
* Predictions are depth-like (larger = farther); ``disparity=True`` flips the relation.
* The predicted relation of a pair is the ratio test of mlrb.metrics.ordinal with threshold
  t (default 0: the sign of the difference); a predicted "equal" counts as a disagreement
  (DIW has no equal pairs). WHDR = sum_ij w_ij 1(l_ij != l̂_ij) / sum_ij w_ij with w_ij = 1.
* Prediction files are matched by the image path without its extension and a leading
  "./" (``DIW_test/0001.thumb`` -> ``PRED/DIW_test/0001.npy``), else by the base name
  (``PRED/0001.npy``); .npy depth or 16-bit .png (any scale: only the order matters).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .ordinal import ordinal_labels, threshold_ok


class DIWFormatError(ValueError):
    """A malformed line in a DIW annotation CSV (the message names file and line)."""


@dataclass(frozen=True)
class DIWPair:
    image: str
    yA: float
    xA: float
    yB: float
    xB: float
    relation: int  # +1: A farther than B ('>'), -1: A closer ('<')
    width: int
    height: int


def read_diw_csv(path: str | os.PathLike) -> list[DIWPair]:
    """Parse DIW's annotation CSV; DIWFormatError for any malformed line."""
    path = str(path)
    if not os.path.isfile(path):
        raise DIWFormatError(f"DIW annotation CSV not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [(i, ln.strip()) for i, ln in enumerate(fh, 1) if ln.strip()]
    if not lines:
        raise DIWFormatError(f"{path}: no annotations")
    if len(lines) % 2:
        raise DIWFormatError(f"{path}:{lines[-1][0]}: image path without its annotation line "
                             f"(expected pairs of lines: path, then yA,xA,yB,xB,relation,width,height)")
    pairs = []
    for (li, image), (lj, ann) in zip(lines[::2], lines[1::2]):
        if "," in image and len(image.split(",")) == 7:
            raise DIWFormatError(f"{path}:{li}: expected an image path, got an annotation line")
        f = [x.strip() for x in ann.split(",")]
        if len(f) != 7:
            raise DIWFormatError(f"{path}:{lj}: expected 7 fields yA,xA,yB,xB,relation,width,height, got {len(f)}")
        try:
            nums = [float(x) for x in f[:4] + f[5:]]
        except ValueError:
            raise DIWFormatError(f"{path}:{lj}: non-numeric coordinate or size in {ann!r}") from None
        # float() takes "inf" and "nan" (and int() of them raises): refuse them here, with the line
        if not all(math.isfinite(v) for v in nums):
            raise DIWFormatError(f"{path}:{lj}: coordinates and size must be finite numbers, got {ann!r}")
        if any(v != int(v) for v in nums):  # DIW annotates whole pixels
            raise DIWFormatError(f"{path}:{lj}: coordinates and size must be whole pixels, got {ann!r}")
        yA, xA, yB, xB = nums[:4]
        width, height = int(nums[4]), int(nums[5])
        if f[4] not in (">", "<"):
            raise DIWFormatError(f"{path}:{lj}: relation must be '>' or '<', got {f[4]!r}")
        if width < 1 or height < 1:
            raise DIWFormatError(f"{path}:{lj}: width and height must be >= 1, got {width}x{height}")
        if not (1 <= yA <= height and 1 <= yB <= height and 1 <= xA <= width and 1 <= xB <= width):
            raise DIWFormatError(f"{path}:{lj}: a point lies outside the 1-based {width}x{height} image: {ann!r}")
        pairs.append(DIWPair(image, yA, xA, yB, xB, 1 if f[4] == ">" else -1, width, height))
    return pairs


def _pixel(c: float, size: int, n: int) -> int:
    return min(max(int(np.floor((c - 0.5) * n / size)), 0), n - 1)


def diw_relations(pairs: Sequence[DIWPair], predictions: Mapping[str, np.ndarray | torch.Tensor], *,
                  thresholds: Sequence[float] = (0.0,), disparity: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (N,), predicted labels (N, T)) int8 for every pair and threshold."""
    n, T = len(pairs), len(thresholds)
    lab = torch.empty(n, dtype=torch.int8)
    pa, pb = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.float64)
    for i, p in enumerate(pairs):
        if p.image not in predictions:
            raise KeyError(f"no prediction for DIW image {p.image!r}")
        d = torch.as_tensor(np.asarray(predictions[p.image], dtype=np.float64))
        d = d.reshape(d.shape[-2:]) if d.dim() == 3 and d.shape[0] == 1 else d
        if d.dim() != 2:
            raise ValueError(f"prediction for {p.image!r} must be one (H, W) map, got shape {tuple(d.shape)}")
        H, W = d.shape
        a = float(d[_pixel(p.yA, p.height, H), _pixel(p.xA, p.width, W)])
        b = float(d[_pixel(p.yB, p.height, H), _pixel(p.xB, p.width, W)])
        if disparity and a > 0 and b > 0:
            a, b = 1.0 / a, 1.0 / b  # larger disparity = closer: the ratio test on depth = 1 / disparity
        if not (np.isfinite(a) and np.isfinite(b) and a > 0 and b > 0):
            raise ValueError(f"prediction for {p.image!r} is not finite and > 0 at the annotated points")
        pa[i], pb[i], lab[i] = a, b, p.relation
    pred = torch.stack([ordinal_labels(pa, pb, float(t)) for t in thresholds], dim=1) if n else \
        torch.empty(0, T, dtype=torch.int8)
    return lab, pred


def whdr_diw(pairs: Sequence[DIWPair], predictions: Mapping[str, np.ndarray | torch.Tensor], *,
             threshold: float = 0.0, disparity: bool = False) -> float:
    """WHDR in [0, 1] of depth-like predictions (image path -> (H, W) map) on DIW pairs."""
    if not pairs:
        raise ValueError("no DIW pairs to score")
    lab, pred = diw_relations(pairs, predictions, thresholds=(threshold,), disparity=disparity)
    return float((pred[:, 0] != lab).double().mean())


def _keys(image: str) -> tuple[str, str]:
    p = image.replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    p = p.lstrip("/")
    stem = os.path.splitext(p)[0]
    return stem, os.path.basename(stem)


def load_prediction_folder(pairs: Sequence[DIWPair], folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The prediction map of every DIW image from ``folder`` (matching rule in the module docstring)."""
    from .evaluate import EvalError, index_folder, load_depth

    try:
        index = index_folder(Path(folder))
    except EvalError as exc:
        raise ValueError(str(exc)) from None
    by_base: dict[str, list[Path]] = {}
    for key, p in index.items():
        by_base.setdefault(os.path.basename(key), []).append(p)
    out, missing = {}, []
    for pair in pairs:
        if pair.image in out:
            continue
        full, base = _keys(pair.image)
        path = index.get(full)
        if path is None and len(by_base.get(base, [])) == 1:
            path = by_base[base][0]
        if path is None:
            missing.append(pair.image)
            continue
        try:
            out[pair.image] = load_depth(path, 1.0)
        except EvalError as exc:
            raise ValueError(str(exc)) from None
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"{len(missing)} DIW image(s) have no prediction in {folder}: {', '.join(missing[:3])}{more}")
    return out


def predict_with_rde(pairs: Sequence[DIWPair], args) -> dict[str, np.ndarray]:
    """Relative depth of every DIW image from an RDE run (mlrb.relative.predict)."""
    from tqdm.auto import tqdm

    from mlrb.relative.predict import RDEPredictor
    from mlrb.train.datasets import DataFileError, _read_image

    if not args.images or not os.path.isdir(args.images):
        raise ValueError(f"--rde needs --images, the root folder of the DIW images (got {args.images!r})")
    predictor = RDEPredictor(args.rde, gammas=args.gammas)
    out = {}
    for image in tqdm(sorted({p.image for p in pairs}), desc="mlrb diw", unit="image", file=sys.stderr):
        path = os.path.join(args.images, _keys(image)[0] + os.path.splitext(image)[1])
        try:
            out[image] = predictor(_read_image(path, depth=False))
        except DataFileError as exc:
            raise ValueError(str(exc)) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlrb diw", description="WHDR of a folder of depth predictions on DIW's "
                                "annotation CSV (Lee & Kim supplement, Table S-5).")
    p.add_argument("--csv", required=True, help="DIW annotation CSV (e.g. DIW_test.csv)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pred", help="folder of predictions (.npy / 16-bit .png), named as the images")
    src.add_argument("--rde", metavar="RUN_DIR", help="predict with this RDE run (mlrb train --task rde) instead: "
                     "RDE-only fusion of its maps; needs --images")
    p.add_argument("--images", help="--rde: root folder of the DIW image paths")
    p.add_argument("--gammas", help="--rde: gammas.json of mlrb fuse (its RDE-only gammas; default all 1)")
    p.add_argument("--disparity", action="store_true", help="predictions are disparity (larger = closer)")
    p.add_argument("--threshold", type=float, default=0.0, help="ratio-test threshold t of the predicted relation")
    p.add_argument("--sweep", type=float, nargs="*", default=None, metavar="T",
                   help="also report WHDR at these thresholds and the best (no values: 0, 0.005, ..., 0.2)")
    p.add_argument("--json", default=None, help="write the results here (must not exist)")
    return p


def main(argv: list[str] | None = None) -> int:
    from mlrb.relative.fuse_cli import FuseError

    from .evaluate import EvalError, check_json_target
    from .sweep import DEFAULT_THRESHOLDS, best_of_curves

    args = build_parser().parse_args(argv)
    try:
        # option values first, before minutes of reading and predicting
        bad = [] if threshold_ok(args.threshold) else \
            [f"--threshold must be a finite number >= 0, got {args.threshold:g}"]
        wrong = [f"{t:g}" for t in args.sweep or () if not threshold_ok(t)]
        if wrong:
            bad.append(f"--sweep values must be finite numbers >= 0, got {', '.join(wrong)}")
        if bad:
            raise ValueError("; ".join(bad))
        if args.json and os.path.exists(args.json):
            raise ValueError(f"{args.json} already exists; choose another --json")
        check_json_target(args.json)
        pairs = read_diw_csv(args.csv)
        preds = load_prediction_folder(pairs, args.pred) if args.pred else predict_with_rde(pairs, args)
        ts = [args.threshold]
        if args.sweep is not None:
            ts += list(args.sweep or DEFAULT_THRESHOLDS)
        lab, pred = diw_relations(pairs, preds, thresholds=ts, disparity=args.disparity)
    except (ValueError, KeyError, FuseError, EvalError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"mlrb diw: error: {msg}", file=sys.stderr)
        return 2
    rates = (pred != lab[:, None]).double().mean(0)
    result = {"pairs": len(pairs), "whdr": float(rates[0]), "threshold": args.threshold}
    print(f"mlrb diw: {len(pairs)} pairs, WHDR {100 * result['whdr']:.2f}% at t = {args.threshold:g}")
    if args.sweep is not None:
        best = best_of_curves({"whdr": rates[1:]}, ts[1:])["whdr"]
        result["sweep"] = {"thresholds": ts[1:], **best}
        print(f"  sweep over {len(ts) - 1} thresholds: best WHDR {100 * best['best']:.2f}% at t = {best['threshold']:g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0
