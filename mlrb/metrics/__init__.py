"""Depth-estimation metrics, evaluation protocol and test-time augmentation.

* :func:`depth_metrics`: d1-d3, abs_rel, sq_rel, rmse, rmse_log, rmse_si, log10, silog
  (Lee & Kim 2020, Table 2), per image then averaged over images.
* :func:`kendall_tau`: Kendall's tau-b over all valid pixels, O(N log N).
* :func:`whdr`, :func:`wkdr`: ordinal disagreement rates on sampled pairs (Table S-4).
* :func:`wkdr_sweep`: best WKDR / WKDR= / WKDR!= over prediction thresholds (Table S-5).
* :func:`read_diw_csv`, :func:`whdr_diw`: WHDR on DIW's annotation CSV (``mlrb diw``).
* :class:`MetricAccumulator`: streaming sums/counts, mergeable, ``all_reduce``-able.
* :func:`crop_box`, :func:`crop_mask`, :func:`valid_mask`: NYUv2/KITTI crops and caps.
* :func:`flip_average`, :func:`shifted_window`, :class:`TestTimeAugmentation`: TTA.
* ``mlrb eval`` (:mod:`mlrb.metrics.evaluate`): folder-vs-folder evaluation.
"""
from .accumulator import MetricAccumulator
from .depth import (CROPS, DATASET_PRESETS, METRIC_KEYS, clamp_prediction, crop_box,
                    crop_mask, depth_metrics, depth_metrics_per_image, valid_mask)
from .kendall import count_inversions, kendall_tau, kendall_tau_1d, kendall_tau_per_image
from .ordinal import (WKDR_KEYS, ordinal_disagreement, ordinal_labels, sample_pairs, whdr,
                      whdr_per_image, wkdr, wkdr_per_image)
from .diw import DIWFormatError, DIWPair, read_diw_csv, whdr_diw
from .sweep import wkdr_sweep, wkdr_sweep_per_image
from .tta import TestTimeAugmentation, flip_average, shifted_window, window_offsets

__all__ = [
    "CROPS", "DATASET_PRESETS", "METRIC_KEYS", "WKDR_KEYS",
    "MetricAccumulator",
    "clamp_prediction", "crop_box", "crop_mask", "valid_mask",
    "depth_metrics", "depth_metrics_per_image",
    "count_inversions", "kendall_tau", "kendall_tau_1d", "kendall_tau_per_image",
    "ordinal_disagreement", "ordinal_labels", "sample_pairs",
    "whdr", "whdr_per_image", "wkdr", "wkdr_per_image",
    "DIWFormatError", "DIWPair", "read_diw_csv", "whdr_diw", "wkdr_sweep", "wkdr_sweep_per_image",
    "TestTimeAugmentation", "flip_average", "shifted_window", "window_offsets",
]
