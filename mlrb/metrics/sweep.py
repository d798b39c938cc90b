"""Prediction-threshold sweep of the WKDR family (Lee & Kim supplement, Tables S-4, S-5).

A pair's predicted relation uses a ratio test with a threshold t on the prediction
(mlrb.metrics.ordinal). With one fixed t, WKDR is the pair-weighted mix of WKDR= and WKDR!=,
so it lies between them; the supplement's RDE row (WKDR 15.5% < WKDR= 16.1%, WKDR!= 17.0%)
cannot come from a single t. As relative-depth benchmarks do (Chen et al. 2016 tune the
threshold), the sweep reports, for each metric separately, its best value and the t giving it:
that is the reading needed for the paper's numbers. Pairs are sampled once per image (the
same pairs and seeds as :func:`mlrb.metrics.wkdr`) and scored at every threshold.

Caveat: alone, WKDR= is minimised by a large threshold (everything predicted "equal" gives
WKDR= = 0), so its per-metric best depends on the range swept (default 0 .. 0.2). The
sweep therefore also reports the *balanced* threshold of Chen et al. (2016), where WKDR= and
WKDR!= are closest, with the three rates there (``balanced``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ._input import as_bhw, as_mask, check_pair
from .ordinal import WKDR_KEYS, ordinal_labels, sample_pairs, threshold_ok

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.005 * i, 3) for i in range(41))  # 0 .. 0.2


def wkdr_sweep_per_image(pred, gt, mask=None, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         n_pairs: int = 50_000, threshold: float = 0.02, seed: int = 0
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-image rates for every prediction threshold: key -> (B, T) float64, and key -> (B,) bool."""
    ts = [float(t) for t in thresholds]
    if not ts or not all(threshold_ok(t) for t in ts):
        raise ValueError(f"thresholds must be a non-empty list of finite numbers >= 0, got {thresholds!r}")
    pred, gt = as_bhw(pred, "pred"), as_bhw(gt, "gt")
    check_pair(pred, gt)
    valid = as_mask(mask, gt) & torch.isfinite(gt) & (gt > 0) & torch.isfinite(pred)
    B, T = gt.shape[0], len(ts)
    rates = {k: torch.zeros(B, T, dtype=torch.float64) for k in WKDR_KEYS}
    ok = {k: torch.zeros(B, dtype=torch.bool) for k in WKDR_KEYS}
    for i in range(B):
        p, g = pred[i][valid[i]], gt[i][valid[i]]
        if g.numel() < 2:
            continue
        a, b = sample_pairs(g.numel(), n_pairs, torch.Generator().manual_seed(seed + i))
        a, b = a.to(g.device), b.to(g.device)
        lab = ordinal_labels(g[a], g[b], threshold)
        eq = lab == 0
        sets = {"wkdr": torch.ones_like(eq), "wkdr_eq": eq, "wkdr_neq": ~eq}
        for j, t in enumerate(ts):
            wrong = ordinal_labels(p[a], p[b], t) != lab
            for key, sel in sets.items():
                n = int(sel.sum())
                if n:
                    rates[key][i, j] = float(wrong[sel].sum()) / n
                    ok[key][i] = True
    return rates, ok


def wkdr_sweep(pred, gt, mask=None, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, n_pairs: int = 50_000,
               threshold: float = 0.02, seed: int = 0) -> dict[str, dict]:
    """Best value and threshold per metric: ``{key: {"best": rate, "threshold": t, "curve": [...]}}``.

    ``curve`` is the image-averaged rate at every threshold (same order as ``thresholds``);
    ``"balanced"``: ``{"threshold", "wkdr", "wkdr_eq", "wkdr_neq"}`` where WKDR= ~ WKDR!=.
    """
    rates, ok = wkdr_sweep_per_image(pred, gt, mask, thresholds=thresholds, n_pairs=n_pairs,
                                     threshold=threshold, seed=seed)
    if not bool(ok["wkdr"].any()):
        raise ValueError("WKDR needs at least 2 valid pixels in some image")
    curves = {k: rates[k][ok[k]].mean(0) for k in WKDR_KEYS if bool(ok[k].any())}
    out = best_of_curves(curves, thresholds)
    bal = balanced(curves, thresholds)
    if bal is not None:
        out["balanced"] = bal
    return out


def balanced(curves: dict[str, torch.Tensor], thresholds: Sequence[float]) -> dict | None:
    """The threshold where WKDR= and WKDR!= are closest, with the three rates there (None if either is missing)."""
    if "wkdr_eq" not in curves or "wkdr_neq" not in curves:
        return None
    j = int(torch.argmin((curves["wkdr_eq"] - curves["wkdr_neq"]).abs()))
    return {"threshold": float(thresholds[j]), **{k: float(c[j]) for k, c in curves.items()}}


def best_of_curves(curves: dict[str, torch.Tensor], thresholds: Sequence[float]) -> dict[str, dict]:
    """{key: {"best", "threshold", "curve"}} from image-averaged curves over ``thresholds``."""
    out = {}
    for key, c in curves.items():
        j = int(torch.argmin(c))  # the smallest threshold among ties
        out[key] = {"best": float(c[j]), "threshold": float(thresholds[j]), "curve": [float(v) for v in c]}
    return out
