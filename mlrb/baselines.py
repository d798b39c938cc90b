"""Pure-PyTorch formulations of the loss space that the fused kernels are measured against.

Both compute the same numbers as mlrb.reference (tests/ops/test_ops_baselines.py) and
differentiate by autograd; ``bench/`` and ``mlrb bench`` time them.

- :func:`paper_loss_space`: the formulation of the paper's public trainer (Lee & Kim 2020,
  utils/loss.py): per scale, pred and gt are resized separately, every derivative is a
  replicate-padded conv2d applied to pred and to gt, every loss is a separate L1 between
  the two, local means are ``avg_pool2d`` of a replicate-padded map, normals come from the
  gradient maps. Hundreds of small tensor ops; masks are added in the same style.
- :func:`torch_loss_space`: the best pure-PyTorch formulation we have: pred and gt resized
  in one call, every linear loss on e = pred - gt, box means for all three sizes from one
  replicate padding and cumulative sums, derivatives of pred and gt batched, one masked
  mean for all types of a scale.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mlrb.names import LOSS_TYPES, NUM_TYPES
# Shared with the definition: input preparation, grouping by scale, the AMLR pair, the
# pyramid and its validity, the footprints, dx / dy and the masked mean. What follows
# is only what the two formulations do differently.
from mlrb.reference import (FOOTPRINTS, NORMAL_EPS, add_amlr_columns, by_scale, dx, dy, footprint_valid,
                            mask_level, masked_mean, prepare, pyramid_level)

__all__ = ["paper_loss_space", "torch_loss_space", "l1_loss"]


def l1_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The unit of the benchmarks: one L1 loss, (pred - gt).abs().mean()."""
    return (pred - gt).abs().mean()


# ----------------------------------------------------------------------------- paper style
def _gradient_dx(img):
    kernel = torch.tensor([[[[1.0, -1.0]]]], dtype=img.dtype, device=img.device)
    return F.conv2d(F.pad(img, (0, 1, 0, 0), mode="replicate"), kernel)


def _gradient_dy(img):
    kernel = torch.tensor([[[[1.0], [-1.0]]]], dtype=img.dtype, device=img.device)
    return F.conv2d(F.pad(img, (0, 0, 0, 1), mode="replicate"), kernel)


def _mean(x, valid):
    # The trainer's plain mean; masks are added by the reference's masked mean.
    return torch.mean(x, dim=[1, 2, 3]) if valid is None else masked_mean(x, valid)


def _l1(a, b, valid):
    return _mean(torch.abs(a - b), valid)


def _norm_loss(p1, p2, g1, g2, valid):
    inner_p = p1 * p1 + p2 * p2 + 1
    inner_g = g1 * g1 + g2 * g2 + 1
    inner_pg = p1 * g1 + p2 * g2 + 1
    loss_map = 1 - inner_pg / (torch.pow(inner_p, 0.5) * torch.pow(inner_g, 0.5) + NORMAL_EPS)
    return _mean(loss_map, valid)


def _normalized_depth(img, radius, valid):
    """img minus its global (radius 0) or local (replicate-padded box) mean."""
    if radius == 0:
        return img - _mean(img, valid)[:, None, None, None]
    k = 2 * radius + 1
    pad = (radius, radius, radius, radius)
    if valid is None:
        return img - F.avg_pool2d(F.pad(img, pad, mode="replicate"), k, stride=1)
    v = valid.to(img.dtype)
    num = F.avg_pool2d(F.pad(img * v, pad, mode="replicate"), k, stride=1)
    den = F.avg_pool2d(F.pad(v, pad, mode="replicate"), k, stride=1)
    return img - num / (den * k * k).clamp(min=1) * (k * k)


def paper_loss_space(pred, gt, mask=None, indices=None, *, si_lambda=1.0, si_sqrt=False, si_scale=1.0):
    """The loss space as the paper's public trainer computes it (separate ops per loss).

    Same signature and result as mlrb.reference.loss_space: (B, len(indices)).
    """
    pred, gt, indices = prepare(pred, gt, mask, indices)
    columns = {}
    for k, wanted in by_scale(indices).items():
        p, g = pyramid_level(pred, k), pyramid_level(gt, k)
        m = None if mask is None else mask_level(mask, k)
        fp = {} if m is None else {t: footprint_valid(m, FOOTPRINTS[t]) for t in FOOTPRINTS}
        p_dx, p_dy, g_dx, g_dy = _gradient_dx(p), _gradient_dy(p), _gradient_dx(g), _gradient_dy(g)
        p_dx2, p_dxy, p_dy2 = _gradient_dx(p_dx), _gradient_dx(p_dy), _gradient_dy(p_dy)
        g_dx2, g_dxy, g_dy2 = _gradient_dx(g_dx), _gradient_dx(g_dy), _gradient_dy(g_dy)
        losses = {
            "D": lambda: _l1(p, g, m),
            "M": lambda: _l1(_normalized_depth(p, 0, m), _normalized_depth(g, 0, m), m),
            "M5": lambda: _l1(_normalized_depth(p, 2, m), _normalized_depth(g, 2, m), m),
            "M17": lambda: _l1(_normalized_depth(p, 8, m), _normalized_depth(g, 8, m), m),
            "M65": lambda: _l1(_normalized_depth(p, 32, m), _normalized_depth(g, 32, m), m),
            "r": lambda: _l1(p_dx, g_dx, fp.get("r")),
            "c": lambda: _l1(p_dy, g_dy, fp.get("c")),
            "rr": lambda: _l1(p_dx2, g_dx2, fp.get("rr")),
            "rc": lambda: _l1(p_dxy, g_dxy, fp.get("rc")),
            "cc": lambda: _l1(p_dy2, g_dy2, fp.get("cc")),
            "N": lambda: _norm_loss(p_dx, p_dy, g_dx, g_dy, fp.get("N")),
            "Nr": lambda: _norm_loss(p_dx2, p_dxy, g_dx2, g_dxy, fp.get("Nr")),
            "Nc": lambda: _norm_loss(p_dxy, p_dy2, g_dxy, g_dy2, fp.get("Nc")),
        }
        for i in wanted:
            columns[i] = losses[LOSS_TYPES[i % NUM_TYPES]]()
    add_amlr_columns(columns, pred, gt, mask, indices, si_lambda=si_lambda, si_sqrt=si_sqrt, si_scale=si_scale)
    return torch.stack([columns[i] for i in indices], dim=1)


# ----------------------------------------------------------------------------- best pure PyTorch
def _box_sums(x, radii):
    """{r: (2r+1)^2 replicate-padded box sums of x} from one padding and two cumsums per size."""
    R = max(radii)
    h, w = x.shape[-2:]
    xp = F.pad(x, (R, R, R, R), mode="replicate")
    cw = F.pad(xp.cumsum(-1), (1, 0))  # along W, shared by all sizes
    out = {}
    for r in radii:
        n = 2 * r + 1
        rows = cw[..., R - r: R + r + h, :]
        sw = rows[..., R - r + n: R - r + n + w] - rows[..., R - r: R - r + w]
        ch = F.pad(sw.cumsum(-2), (0, 0, 1, 0))
        out[r] = ch[..., n: n + h, :] - ch[..., :h, :]
    return out


def _scale_terms(p, g, m, types):
    """Per-pixel terms (B, T, h, w) and their validity (or None) of the wanted types at one scale."""
    e = p - g
    need = set(types)
    terms, valid = {}, {}
    if "D" in need:
        terms["D"] = e.abs()
    if need & {"M", "M5", "M17", "M65"}:
        if m is None:
            mu = e.mean(dim=(1, 2, 3), keepdim=True)
        else:
            mf = m.to(e.dtype)
            mu = masked_mean(e, m)[:, None, None, None]
        ec = e - mu  # centred: keeps the cumulative sums small
        if "M" in need:
            terms["M"] = ec.abs()
        boxes = [t for t in ("M5", "M17", "M65") if t in need]
        if boxes:
            radii = [{"M5": 2, "M17": 8, "M65": 32}[t] for t in boxes]
            if m is None:
                sums = _box_sums(ec, radii)
                for t, r in zip(boxes, radii):
                    terms[t] = (ec - sums[r] / (2 * r + 1) ** 2).abs()
            else:
                both = _box_sums(torch.cat([ec * mf, mf], dim=1), radii)
                for t, r in zip(boxes, radii):
                    s = both[r]
                    terms[t] = (ec - s[:, :1] / s[:, 1:].clamp(min=1)).abs()
    if need & {"r", "c", "rr", "rc", "cc"}:
        ex, ey = dx(e), dy(e)
        ops = {"r": lambda: ex, "c": lambda: ey, "rr": lambda: dx(ex), "rc": lambda: dx(ey), "cc": lambda: dy(ey)}
        for t in ("r", "c", "rr", "rc", "cc"):
            if t in need:
                terms[t] = ops[t]().abs()
    normals = [t for t in ("N", "Nr", "Nc") if t in need]
    if normals:
        x = torch.cat([p, g], dim=1)  # derivatives of pred and gt in one batch
        xx, xy = dx(x), dy(x)
        pairs = {"N": lambda: (xx, xy)}
        if {"Nr", "Nc"} & set(normals):
            xrc = dx(xy)
            pairs["Nr"] = lambda: (dx(xx), xrc)
            pairs["Nc"] = lambda: (xrc, dy(xy))
        for t in normals:
            a, b = pairs[t]()
            dot = a[:, :1] * a[:, 1:] + b[:, :1] * b[:, 1:] + 1
            sq = a * a + b * b + 1
            terms[t] = 1 - dot / ((sq[:, :1] * sq[:, 1:]).sqrt() + NORMAL_EPS)
    if m is not None:
        for t in types:
            valid[t] = m if t in ("D", "M", "M5", "M17", "M65") else footprint_valid(m, FOOTPRINTS[t])
    return terms, valid


def torch_loss_space(pred, gt, mask=None, indices=None, *, si_lambda=1.0, si_sqrt=False, si_scale=1.0):
    """The loss space in the fastest pure-PyTorch form we know; same result as the reference."""
    pred, gt, indices = prepare(pred, gt, mask, indices)
    columns = {}
    both = torch.cat([pred, gt], dim=1)
    for k, wanted in by_scale(indices).items():
        lvl = pyramid_level(both, k)  # pred and gt resized in one call
        p, g = lvl[:, :1], lvl[:, 1:]
        m = None if mask is None else mask_level(mask, k)
        types = [LOSS_TYPES[i % NUM_TYPES] for i in wanted]
        terms, valid = _scale_terms(p, g, m, types)
        stacked = torch.cat([terms[t] for t in types], dim=1)  # (B, T, h, w)
        if m is None:
            means = stacked.mean(dim=(2, 3))
        else:
            means = masked_mean(stacked, torch.cat([valid[t] for t in types], dim=1), dim=(2, 3))
        for j, i in enumerate(wanted):
            columns[i] = means[:, j]
    add_amlr_columns(columns, pred, gt, mask, indices, si_lambda=si_lambda, si_sqrt=si_sqrt, si_scale=si_scale)
    return torch.stack([columns[i] for i in indices], dim=1)
