"""The trainer's evaluation protocols: which prediction is scored against which ground truth.

- Prediction: the model's depth at the input size, optionally with test-time augmentation
  (``tta``: "flip", or "flip+sw" = AMLR's shifted-window + flip test, mlrb.metrics.tta),
  then up-sampled (``upsample``: "bicubic" as Lee & Kim's public evaluation.py,
  "bilinear", "nearest") to the ground truth's resolution when that differs.
- Ground truth: at the training size ("resized", the quick default: cheap, but not the
  papers' numbers) or at its stored resolution ("full": 480x640 NYUv2, the 352x1216
  benchmark crop for KITTI).
- Crops: the names of mlrb.metrics.depth (nyu_eigen, kitti_garg, kitti_eigen) and
  ``lee_kim_nyu``: rows 20:460, cols 24:616 of 480x640, from Lee & Kim's public
  evaluation.py (``depth[:, :, 0 + 20:480 - 20, 0 + 24:640 - 24]``), scaled to other sizes.
  KITTI's Garg and Eigen crops are fractions of the full camera frame; on the 352x1216
  benchmark crop (BTSSplit's "kb_box") the box is computed on the full frame and shifted,
  which selects exactly the pixels the full-frame protocol scores (the crops lie inside the
  benchmark crop).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LEE_KIM_NYU = (20, 460, 24, 616)  # (top, bottom, left, right) on 480x640
NYU_SIZE = (480, 640)
TTAS = ("none", "flip", "flip+sw")
UPSAMPLES = ("bicubic", "bilinear", "nearest")


def eval_prediction(predict, image: torch.Tensor, gt_hw: tuple[int, int], *, tta: str = "none",
                    upsample: str = "bicubic") -> torch.Tensor:
    """(B, 1, h, w) float32 prediction of ``predict`` (image -> depth) at the ground truth's size."""
    from mlrb.metrics.tta import flip_average, shifted_window

    if tta == "none":
        pred = predict(image)
    elif tta == "flip":
        pred = flip_average(predict, image)
    elif tta == "flip+sw":
        # AMLR Sec. IV-A: square windows with side = the image height, each with the flip test.
        pred = shifted_window(predict, image, flip=True)
    else:
        raise ValueError(f"tta must be one of {TTAS}, got {tta!r}")
    if pred.dim() == 3:
        pred = pred.unsqueeze(1)
    pred = pred.float()
    if tuple(pred.shape[-2:]) != tuple(gt_hw):
        if upsample not in UPSAMPLES:
            raise ValueError(f"eval upsample must be one of {UPSAMPLES}, got {upsample!r}")
        kw = {} if upsample == "nearest" else {"align_corners": False}
        pred = F.interpolate(pred, size=tuple(gt_hw), mode=upsample, **kw)
    return pred


def eval_mask(batch: dict, gt: torch.Tensor, crop):
    """(crop for MetricAccumulator, (B, 1, H, W) bool mask): crops that depend on the
    sample (KITTI benchmark crops) or that mlrb.metrics does not know become part of the mask."""
    mask = batch.get("mask")
    mask = torch.ones(gt.shape, dtype=torch.bool) if mask is None else mask.bool()
    mask = mask.to(gt.device)
    h, w = gt.shape[-2:]
    if crop is None:
        return None, mask
    if crop == "lee_kim_nyu":
        t, b, l, r = LEE_KIM_NYU
        sh, sw = h / NYU_SIZE[0], w / NYU_SIZE[1]
        box = torch.zeros(h, w, dtype=torch.bool, device=gt.device)
        box[round(t * sh):round(b * sh), round(l * sw):round(r * sw)] = True
        return None, mask & box
    if crop in ("kitti_garg", "kitti_eigen") and "kb_box" in batch:
        from mlrb.metrics.depth import crop_box
        from mlrb.train.datasets import KITTI_CROP

        boxes = torch.zeros(gt.shape[0], 1, h, w, dtype=torch.bool, device=gt.device)
        for i, (top, left, H, W) in enumerate(batch["kb_box"].tolist()):
            ct, cb, cl, cr = crop_box(H, W, crop)
            region_h, region_w = KITTI_CROP if (top or left) else (H, W)
            sh, sw = h / region_h, w / region_w  # the stored depth may have been resized
            rows = (max(round((ct - top) * sh), 0), min(round((cb - top) * sh), h))
            cols = (max(round((cl - left) * sw), 0), min(round((cr - left) * sw), w))
            boxes[i, :, rows[0]:rows[1], cols[0]:cols[1]] = True
        return None, mask & boxes
    return crop, mask


def describe_protocol(cfg) -> str:
    """One line saying how the printed metrics are computed."""
    if cfg.eval_gt == "full":
        gt = f"against full-resolution ground truth ({cfg.eval_upsample} up-sampled predictions)"
    else:
        gt = f"against ground truth resized to the input size {cfg.resolved_size()[0]}x{cfg.resolved_size()[1]} " \
             "(quick; not the papers' protocol)"
    crop = {None: "no crop", "lee_kim_nyu": "crop rows 20:460, cols 24:616 of 480x640 (Lee & Kim's evaluation.py)"
            }.get(cfg.eval_crop, f"crop {cfg.eval_crop}")
    tta = {"none": "no test-time augmentation", "flip": "flip test",
           "flip+sw": "shifted-window + flip test (AMLR)"}.get(cfg.tta, cfg.tta)
    return f"metrics {gt}, {crop}, {tta}"
