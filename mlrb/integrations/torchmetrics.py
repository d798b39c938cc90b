"""``mlrb.metrics`` as ``torchmetrics.Metric`` classes, for trainers that log torchmetrics.

Each class keeps the per-image sums and counts that :class:`mlrb.metrics.MetricAccumulator`
keeps (float64, summed across processes by torchmetrics' sync), so ``compute()`` after any
number of ``update()`` calls equals the one-shot :mod:`mlrb.metrics` function on all the
images at once: per image over its valid pixels, then the mean over images.

    from mlrb.integrations.torchmetrics import DepthMetrics, KendallTau, WKDR

    metric = DepthMetrics(min_depth=1e-3, max_depth=10.0, crop="nyu_eigen")
    metric.update(pred, gt)            # (B,1,H,W), (B,H,W) or (H,W); mask= optional
    metric.compute()                   # {"d1": tensor, "abs_rel": tensor, ...}

``metric(pred, gt, mask)`` (torchmetrics' forward) also returns the batch's own values, and
so raises like ``compute()`` on a batch without a usable image; ``update()`` just skips it.

The ordinal metrics sample pixel pairs with ``seed + k`` for the k-th image this metric has
seen since its last ``reset()`` (on this process), which is what :func:`mlrb.metrics.wkdr`
does for image k of one big batch, so the numbers match it exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mlrb.integrations import require
from mlrb.metrics.depth import METRIC_KEYS, Crop, _check_caps, crop_box, depth_metrics_per_image
from mlrb.metrics.kendall import kendall_tau_per_image
from mlrb.metrics.ordinal import WKDR_KEYS, check_threshold, whdr_per_image, wkdr_per_image

Metric = require("torchmetrics", "torchmetrics", "mlrb.integrations.torchmetrics").Metric

__all__ = ["DepthMetrics", "KendallTau", "WHDR", "WKDR"]

_F64 = torch.float64


def _zeros(n: int | None = None) -> Tensor:
    return torch.zeros(() if n is None else (n,), dtype=_F64)


def _batch_size(gt) -> int:
    # The ordinal functions' own normalisation: (H,W) is one image, (B,H,W)/(B,1,H,W) are B.
    return 1 if gt.dim() == 2 else int(gt.shape[0])


class _PerImageMean(Metric):
    """Sums and image counts per key; ``compute`` is their ratio (keys with no image left out)."""

    is_differentiable = False
    full_state_update = False
    keys: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sums", default=_zeros(len(self.keys)), dist_reduce_fx="sum")
        self.add_state("counts", default=_zeros(len(self.keys)), dist_reduce_fx="sum")

    def _add(self, values: dict[str, Tensor], ok: dict[str, Tensor]) -> None:
        for j, key in enumerate(self.keys):
            v = values[key].to(self.sums.device, _F64)
            keep = ok[key].to(self.sums.device)
            self.sums[j] += v[keep].sum()
            self.counts[j] += keep.sum()

    def _means(self, what: str) -> dict[str, Tensor]:
        if not bool((self.counts > 0).any()):
            raise ValueError(f"{what}: no image with enough valid pixels was seen since the last reset()")
        return {k: self.sums[j] / self.counts[j] for j, k in enumerate(self.keys) if self.counts[j] > 0}


class DepthMetrics(_PerImageMean):
    """d1-d3, abs_rel, sq_rel, rmse, rmse_log, rmse_si, log10, silog (Lee & Kim 2020, Table 2).

    Same arguments and protocol as :func:`mlrb.metrics.depth_metrics`; ``compute()`` returns
    a dict of 0-d float64 tensors. Images without a valid pixel are skipped and counted in
    ``skipped``; ``compute()`` raises ``ValueError`` if no image had one.
    """

    keys = METRIC_KEYS
    higher_is_better = None  # mixed: d1-d3 higher, the errors lower

    def __init__(self, *, min_depth: float, max_depth: float, crop: Crop = None,
                 nonfinite: str = "clamp", **kwargs) -> None:
        super().__init__(**kwargs)
        self.options = dict(min_depth=float(min_depth), max_depth=float(max_depth), crop=crop, nonfinite=nonfinite)
        # Bad options fail here rather than at the first update.
        _check_caps(self.options["min_depth"], self.options["max_depth"])
        if isinstance(crop, str):
            crop_box(480, 640, crop)
        if nonfinite not in ("clamp", "raise"):
            raise ValueError(f"nonfinite must be 'clamp' or 'raise', got {nonfinite!r}")
        self.add_state("skipped", default=_zeros(), dist_reduce_fx="sum")

    def update(self, pred, gt, mask=None) -> None:
        values, n = depth_metrics_per_image(pred, gt, mask=mask, **self.options)
        ok = n > 0
        self.skipped += (~ok).sum().to(self.skipped.device, _F64)
        self._add(values, dict.fromkeys(self.keys, ok))

    def compute(self) -> dict[str, Tensor]:
        return self._means("DepthMetrics")


class KendallTau(_PerImageMean):
    """Kendall's tau-b over all valid pixel pairs, averaged over images
    (:func:`mlrb.metrics.kendall_tau`). Images with fewer than 2 valid pixels are skipped."""

    keys = ("kendall_tau",)
    higher_is_better = True

    def update(self, pred, gt, mask=None) -> None:
        taus, counts = kendall_tau_per_image(pred, gt, mask)
        self._add({"kendall_tau": taus}, {"kendall_tau": counts >= 2})

    def compute(self) -> Tensor:
        return self._means("KendallTau")["kendall_tau"]


class _Ordinal(_PerImageMean):
    """Pair-sampling metrics: image k since reset() is sampled with seed + k."""

    higher_is_better = False
    # forward() must update the accumulated state with the running seed offset; the
    # reduce-state shortcut would run update() from a reset state (offset 0).
    full_state_update = True

    def __init__(self, *, n_pairs: int, threshold: float, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(n_pairs) < 1:
            raise ValueError(f"n_pairs must be positive, got {n_pairs}")
        check_threshold(threshold)
        self.n_pairs, self.threshold, self.seed = int(n_pairs), float(threshold), int(seed)
        # Images seen on this process: the seed offset of the next batch. "sum" only matters
        # for a synced read; each process keeps counting its own images.
        self.add_state("images", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def _next_seed(self, gt) -> int:
        seed = self.seed + int(self.images)
        self.images += _batch_size(gt)
        return seed


class WKDR(_Ordinal):
    """WKDR, WKDR= and WKDR!= on sampled pixel pairs (:func:`mlrb.metrics.wkdr`, Table S-4).

    ``compute()`` returns ``{"wkdr", "wkdr_eq", "wkdr_neq"}`` (a key whose pair subset was
    empty in every image is absent, as in :func:`mlrb.metrics.wkdr`).
    """

    keys = WKDR_KEYS

    def __init__(self, *, n_pairs: int = 50_000, threshold: float = 0.02,
                 pred_threshold: float | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(n_pairs=n_pairs, threshold=threshold, seed=seed, **kwargs)
        if pred_threshold is not None and pred_threshold < 0:
            raise ValueError(f"pred_threshold must be >= 0, got {pred_threshold}")
        self.pred_threshold = pred_threshold

    def update(self, pred, gt, mask=None) -> None:
        rates, ok = wkdr_per_image(pred, gt, mask, n_pairs=self.n_pairs, threshold=self.threshold,
                                   pred_threshold=self.pred_threshold, seed=self._next_seed(gt))
        self._add(rates, ok)

    def compute(self) -> dict[str, Tensor]:
        return self._means("WKDR")


class WHDR(_Ordinal):
    """Weighted human disagreement rate on sampled pixel pairs (:func:`mlrb.metrics.whdr`)."""

    keys = ("whdr",)

    def __init__(self, *, n_pairs: int = 50_000, threshold: float = 0.03, seed: int = 0, **kwargs) -> None:
        super().__init__(n_pairs=n_pairs, threshold=threshold, seed=seed, **kwargs)

    def update(self, pred, gt, mask=None) -> None:
        rate, ok = whdr_per_image(pred, gt, mask, n_pairs=self.n_pairs, threshold=self.threshold,
                                  seed=self._next_seed(gt))
        self._add({"whdr": rate}, {"whdr": ok})

    def compute(self) -> Tensor:
        return self._means("WHDR")["whdr"]
