"""Ordinal (relative-depth) metrics on point pairs: WHDR and the WKDR family.

Lee & Kim 2020, supplement Table S-4 (after Zoran et al. 2015 and Chen et al. 2016):

    WHDR = sum_ij w_ij 1(l_ij != l̂_ij) / sum_ij w_ij

where ``l_ij`` is the ground-truth ordinal relation of pixels i and j and ``l̂_ij`` the
predicted one. With dense ground truth (NYUv2, KITTI, ...) the pairs are sampled and both
relations come from a depth-ratio test with an *ordinal threshold* ``t``:

    l_ij = +1 if d_i > (1 + t) d_j      (i is farther)
           -1 if d_j > (1 + t) d_i      (i is closer)
            0 otherwise                 (equivalent depths)

(written multiplicatively so no division happens; for positive depths this is the ratio
test ``d_i / d_j > 1 + t``). Depths must be positive, and ``pred`` must be depth-like
(larger = farther): convert disparity/inverse-depth outputs first.

* :func:`whdr` samples ``n_pairs`` uniform pairs of distinct valid pixels per image
  (seeded, default 50,000 pairs as in Jun et al. 2022), weights ``w_ij = 1``, default
  threshold ``t = 0.03``; equivalent pairs are included.
* :func:`wkdr` returns WKDR (all pairs), WKDR= (pairs whose ground truth is equivalent,
  ``l_ij = 0``) and WKDR!= (``l_ij != 0``), default ``t = 0.02``. Chen et al. tune a separate
  threshold on the prediction so that WKDR= and WKDR!= are balanced: ``pred_threshold``.

Rates are computed per image and averaged over images (WKDR= / WKDR!= over the images that
have such pairs; NaN if no image has any). Images with fewer than 2 valid pixels are skipped; ``ValueError`` if all
are. Image ``i`` of a batch is sampled with ``torch.Generator().manual_seed(seed + i)``, so
results do not depend on the device.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._input import as_bhw, as_mask, check_pair

WKDR_KEYS: tuple[str, ...] = ("wkdr", "wkdr_eq", "wkdr_neq")


def threshold_ok(threshold: float) -> bool:
    """An ordinal threshold is a finite number >= 0 (NaN passes a "< 0" test and, like inf,
    calls every pair equal). The one rule for every caller that checks one."""
    return math.isfinite(threshold) and threshold >= 0


def check_threshold(threshold: float) -> None:
    if not threshold_ok(threshold):
        raise ValueError(f"ordinal threshold must be a finite number >= 0, got {threshold}")


def ordinal_labels(d_a: Tensor, d_b: Tensor, threshold: float) -> Tensor:
    """Ordinal relation of ``d_a`` to ``d_b``: +1 farther, -1 closer, 0 equivalent (int8)."""
    check_threshold(threshold)
    s = 1.0 + threshold
    return (d_a > s * d_b).to(torch.int8) - (d_b > s * d_a).to(torch.int8)


def ordinal_disagreement(labels: Tensor, pred_labels: Tensor, weights: Tensor | None = None
                         ) -> float:
    """Table S-4: ``sum w 1(l != l̂) / sum w`` for given pair labels (e.g. DIW annotations)."""
    if labels.shape != pred_labels.shape:
        raise ValueError(f"label shapes differ: {tuple(labels.shape)} vs {tuple(pred_labels.shape)}")
    wrong = (labels != pred_labels).to(torch.float64)
    w = torch.ones_like(wrong) if weights is None else weights.to(torch.float64)
    total = float(w.sum())
    if labels.numel() == 0 or total <= 0:
        raise ValueError("ordinal disagreement over an empty (or zero-weight) set of pairs")
    return float((w * wrong).sum()) / total


def sample_pairs(n_valid: int, n_pairs: int, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
    """``n_pairs`` uniform pairs (a, b), a != b, of positions in ``range(n_valid)``."""
    if n_valid < 2:
        raise ValueError(f"need at least 2 valid pixels to sample pairs, got {n_valid}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    a = torch.randint(0, n_valid, (n_pairs,), generator=generator)
    # b = a + k mod n with k uniform in 1..n-1: uniform over the other pixels.
    b = (a + torch.randint(1, n_valid, (n_pairs,), generator=generator)) % n_valid
    return a, b


def _pair_labels(pred, gt, mask, n_pairs, threshold, pred_threshold, seed):
    """Yield (image index, gt labels, pred labels) for images with >= 2 valid pixels."""
    pred, gt = as_bhw(pred, "pred"), as_bhw(gt, "gt")
    check_pair(pred, gt)
    valid = as_mask(mask, gt) & torch.isfinite(gt) & (gt > 0) & torch.isfinite(pred)
    pt = threshold if pred_threshold is None else pred_threshold
    for i in range(gt.shape[0]):
        p, g = pred[i][valid[i]], gt[i][valid[i]]
        if g.numel() < 2:
            continue
        gen = torch.Generator().manual_seed(seed + i)
        a, b = sample_pairs(g.numel(), n_pairs, gen)
        a, b = a.to(g.device), b.to(g.device)
        yield i, ordinal_labels(g[a], g[b], threshold), ordinal_labels(p[a], p[b], pt)


def whdr_per_image(pred, gt, mask=None, *, n_pairs: int = 50_000, threshold: float = 0.03,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-image WHDR (B,) float64 and a (B,) bool telling which images were evaluated."""
    b = as_bhw(gt, "gt").shape[0]
    rate = torch.zeros(b, dtype=torch.float64)
    ok = torch.zeros(b, dtype=torch.bool)
    for i, l, lp in _pair_labels(pred, gt, mask, n_pairs, threshold, None, seed):
        rate[i], ok[i] = ordinal_disagreement(l, lp), True
    return rate, ok


def whdr(pred, gt, mask=None, *, n_pairs: int = 50_000, threshold: float = 0.03,
         seed: int = 0) -> float:
    """Weighted human disagreement rate on sampled pixel pairs, in [0, 1], mean over images.

    See the module docstring for the ordinal test and sampling. ``mask`` restricts the
    valid pixels (e.g. :func:`mlrb.metrics.valid_mask`).
    """
    rate, ok = whdr_per_image(pred, gt, mask, n_pairs=n_pairs, threshold=threshold, seed=seed)
    if not bool(ok.any()):
        raise ValueError("WHDR needs at least 2 valid pixels in some image")
    return float(rate[ok].mean())


def wkdr_per_image(pred, gt, mask=None, *, n_pairs: int = 50_000, threshold: float = 0.02,
                   pred_threshold: float | None = None, seed: int = 0
                   ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-image WKDR, WKDR=, WKDR!= as (B,) tensors, and per-key (B,) bool 'evaluated'."""
    b = as_bhw(gt, "gt").shape[0]
    rates = {k: torch.zeros(b, dtype=torch.float64) for k in WKDR_KEYS}
    ok = {k: torch.zeros(b, dtype=torch.bool) for k in WKDR_KEYS}
    for i, l, lp in _pair_labels(pred, gt, mask, n_pairs, threshold, pred_threshold, seed):
        eq = l == 0
        for key, sel in (("wkdr", None), ("wkdr_eq", eq), ("wkdr_neq", ~eq)):
            if sel is None:
                rates[key][i], ok[key][i] = ordinal_disagreement(l, lp), True
            elif bool(sel.any()):
                rates[key][i], ok[key][i] = ordinal_disagreement(l[sel], lp[sel]), True
    return rates, ok


def wkdr(pred, gt, mask=None, *, n_pairs: int = 50_000, threshold: float = 0.02,
         pred_threshold: float | None = None, seed: int = 0) -> dict[str, float]:
    """Weighted Kinect disagreement rates ``{"wkdr", "wkdr_eq", "wkdr_neq"}`` in [0, 1].

    ``wkdr_eq`` (WKDR=) is over ground-truth-equivalent pairs, ``wkdr_neq`` (WKDR!=) over the
    others. All three keys are always returned; a rate whose subset of pairs is empty in
    every image (e.g. ``wkdr_neq`` on a constant ground truth, where every pair is
    equivalent) is NaN, not a number that could be mistaken for a measurement.
    """
    rates, ok = wkdr_per_image(pred, gt, mask, n_pairs=n_pairs, threshold=threshold,
                               pred_threshold=pred_threshold, seed=seed)
    if not bool(ok["wkdr"].any()):
        raise ValueError("WKDR needs at least 2 valid pixels in some image")
    return {k: float(rates[k][ok[k]].mean()) if bool(ok[k].any()) else float("nan") for k in WKDR_KEYS}
