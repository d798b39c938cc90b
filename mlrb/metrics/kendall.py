"""Kendall's tau-b between a predicted and a ground-truth depth map, in O(N log N).

Jun et al. (ECCV 2022, Eq. 14) use Kendall's tau over *all* valid pixel pairs as a stable
alternative to sampled-pair WHDR. With ties (quantised ground truth, constant regions) the
tau-b normalisation is used:

    tau_b = (n_c - n_d) / sqrt((n0 - n1) * (n0 - n2))

n0 = N(N-1)/2, n1 / n2 = pairs tied in pred / in gt, n3 = pairs tied in both,
n_c - n_d = n0 - n1 - n2 + n3 - 2 n_d. Without ties it equals Eq. 14.

The discordant count n_d is the number of inversions of the gt ranks once pixels are sorted
by (pred, gt). Inversions are counted level by level over the bits of the ranks (a wavelet
tree): at each bit, inside groups sharing the higher bits, every 0 preceded by a 1 is one
inversion; a stable partition by that bit then forms the next level's groups. Each level is
a handful of O(N) cumsum/scatter ops, so the whole count is O(N log N) (sorting included),
fully vectorised in torch and therefore usable on GPU tensors as well.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._input import as_bhw, as_mask, check_pair


def _tied_pairs(sorted_vals: Tensor) -> int:
    """Sum of t(t-1)/2 over runs of equal values in a sorted 1-D tensor."""
    if sorted_vals.numel() < 2:
        return 0
    _, counts = torch.unique_consecutive(sorted_vals, return_counts=True)
    counts = counts.to(torch.int64)
    return int((counts * (counts - 1) // 2).sum())


def count_inversions(r: Tensor) -> int:
    """Number of pairs i < j with r[i] > r[j], for non-negative integer ranks ``r`` (1-D)."""
    n = r.numel()
    if n < 2:
        return 0
    r = r.to(torch.int64)
    max_r = int(r.max())
    if max_r == 0:
        return 0
    levels = max_r.bit_length()
    idx = torch.arange(n, device=r.device)
    big = torch.full_like(idx, n)
    v = r
    total = torch.zeros((), dtype=torch.int64, device=r.device)
    for b in range(levels - 1, -1, -1):
        g = v >> (b + 1)  # group = shared higher bits; groups are contiguous in v's order
        bit = (v >> b) & 1
        new_group = torch.ones_like(bit, dtype=torch.bool)
        new_group[1:] = g[1:] != g[:-1]
        start = torch.cummax(torch.where(new_group, idx, torch.zeros_like(idx)), 0).values
        is_end = torch.ones_like(new_group)
        is_end[:-1] = new_group[1:]
        end = torch.where(is_end, idx, big).flip(0).cummin(0).values.flip(0)
        ones_incl = torch.cumsum(bit, 0)
        ones_before = ones_incl - bit
        ones_in_group_before = ones_before - ones_before[start]
        zero = bit == 0
        total += ones_in_group_before[zero].sum()
        # Stable partition inside each group: zeros first, then ones (order kept).
        zeros_in_group_before = (idx - start) - ones_in_group_before
        group_ones = ones_incl[end] - ones_before[start]
        group_zeros = (end - start + 1) - group_ones
        new_pos = torch.where(zero, start + zeros_in_group_before,
                              start + group_zeros + ones_in_group_before)
        v = torch.empty_like(v).scatter_(0, new_pos, v)
    return int(total)


def _lexsort(primary: Tensor, secondary: Tensor) -> Tensor:
    """Indices sorting by primary, ties broken by secondary."""
    o = torch.sort(secondary, stable=True).indices
    return o[torch.sort(primary[o], stable=True).indices]


def kendall_tau_1d(x: Tensor, y: Tensor) -> float:
    """Kendall's tau-b of two 1-D samples (N >= 2). 0.0 if either sample is constant."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"need two 1-D tensors of equal length, got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}")
    n = x.numel()
    if n < 2:
        raise ValueError(f"Kendall's tau needs at least 2 samples, got {n}")
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    order = _lexsort(x, y)
    xs, ys = x[order], y[order]
    n0 = n * (n - 1) // 2
    n1 = _tied_pairs(xs)
    n2 = _tied_pairs(torch.sort(y).values)
    # Joint ties: runs where both coordinates repeat in the (x, y)-sorted order.
    same = torch.zeros(n, dtype=torch.bool, device=x.device)
    same[1:] = (xs[1:] == xs[:-1]) & (ys[1:] == ys[:-1])
    run_id = torch.cumsum(~same, 0)
    n3 = _tied_pairs(run_id)
    if n0 == n1 or n0 == n2:
        return 0.0  # a constant map orders nothing: neither concordant nor discordant pairs
    ranks = torch.unique(ys, return_inverse=True)[1]
    n_d = count_inversions(ranks)
    num = n0 - n1 - n2 + n3 - 2 * n_d
    tau = num / math.sqrt((n0 - n1) * (n0 - n2))  # exact integers until the sqrt
    return min(1.0, max(-1.0, tau))


def kendall_tau_per_image(pred, gt, mask=None) -> tuple[Tensor, Tensor]:
    """Per-image tau-b and valid counts, both of shape (B,).

    Valid pixels: ``mask`` (if given) and finite pred and gt. Images with fewer than 2 valid
    pixels get tau 0 and count < 2; callers skip them.
    """
    pred, gt = as_bhw(pred, "pred"), as_bhw(gt, "gt")
    check_pair(pred, gt)
    valid = as_mask(mask, gt) & torch.isfinite(pred) & torch.isfinite(gt)
    taus = torch.zeros(pred.shape[0], dtype=torch.float64)
    counts = valid.sum(dim=(1, 2)).cpu()
    for i in range(pred.shape[0]):
        if counts[i] >= 2:
            taus[i] = kendall_tau_1d(pred[i][valid[i]], gt[i][valid[i]])
    return taus, counts


def kendall_tau(pred, gt, mask=None) -> float:
    """Kendall's tau-b over all valid pixel pairs, averaged over images.

    Args:
        pred, gt: (H,W), (B,H,W) or (B,1,H,W) tensors/arrays (depth, disparity or any
            monotone relative depth: only the orderings matter).
        mask: optional validity mask; pass :func:`mlrb.metrics.valid_mask` to apply the
            dataset caps and crop. Non-finite values are always excluded.

    Returns tau-b in [-1, 1] (1 = same ordering). A constant map gives 0. Images with fewer
    than 2 valid pixels are skipped; ``ValueError`` if no image has 2.
    """
    taus, counts = kendall_tau_per_image(pred, gt, mask)
    keep = counts >= 2
    if not bool(keep.any()):
        raise ValueError("Kendall's tau needs at least 2 valid pixels in some image")
    return float(taus[keep].mean())
