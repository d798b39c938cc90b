"""Plain PyTorch definition of the loss space (../shared/spec/loss-space.md).

Every fused backend is tested against this file. It favours clarity over speed, but
avoids needless cost: box filters use cumulative sums, scales with no selected loss are
skipped. Differentiable by autograd; per-sample output.

Notation (Lee & Kim 2020, Table 1): D^k is the depth map at scale k, e = pred - gt,
dx / dy are the row / column gradients (the paper's nabla_r / nabla_c), rr, rc, cc the
second-order ones, M_n the local-mean-removed loss with an n x n box.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mlrb.names import ALL_NAMES, BOX_SIZES, INDEX, LOSS_TYPES, NUM_SCALES, NUM_TYPES

NORMAL_EPS = 1e-8  # in the denominator of the normal loss (spec, Eq. 8)
LOG_EPS = 1e-6  # pred is clamped to >= LOG_EPS before the log of the AMLR pair


# ----------------------------------------------------------------------------- pyramid
def level_shape(H: int, W: int, k: int) -> tuple[int, int]:
    """Size of D^k: floor(H / 2^k) x floor(W / 2^k), or 1 x 1 when either is 0."""
    h, w = H >> k, W >> k
    return (1, 1) if h == 0 or w == 0 else (h, w)


def pyramid_level(x: torch.Tensor, k: int) -> torch.Tensor:
    """D^k of a (B, 1, H, W) map: bicubic resize of the full-resolution map (not of D^{k-1})."""
    if k == 0:
        return x
    if _fallback(*x.shape[-2:], k):
        # The paper's trainer falls back to a 1x1 resize for maps too small for scale k.
        return F.interpolate(x, size=[1, 1], mode="bicubic", align_corners=False)
    return F.interpolate(x, scale_factor=1.0 / 2**k, mode="bicubic", align_corners=False)


def _fallback(H: int, W: int, k: int) -> bool:
    return k > 0 and ((H >> k) == 0 or (W >> k) == 0)


def _taps(n_in: int, n_out: int, k: int, fallback: bool) -> torch.Tensor:
    """(n_out, 4) full-resolution indices (clamped) read by each output index of D^k, k >= 1.

    Bicubic source position (align_corners=False): 2^k * i + 2^(k-1) - 0.5, or n_in / 2 - 0.5
    for the 1x1 fallback (scale n_in); the taps are floor(src) - 1 ... floor(src) + 2.
    """
    if fallback:
        first = torch.tensor([math.floor(n_in / 2 - 0.5) - 1])
    else:
        first = (torch.arange(n_out) << k) + (1 << (k - 1)) - 2
    return (first[:, None] + torch.arange(4)).clamp(0, n_in - 1)


def mask_level(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Validity at scale k: every full-resolution pixel of the 4x4 bicubic footprint valid.

    The footprint is the 4 clamped taps per axis even where a tap's weight is 0 (the odd
    sizes of the 1x1 fallback), so the rule is one and the same for every size.
    """
    if k == 0:
        return mask
    H, W = mask.shape[-2:]
    h, w = level_shape(H, W, k)
    fb = _fallback(H, W, k)
    rows, cols = _taps(H, h, k, fb).to(mask.device), _taps(W, w, k, fb).to(mask.device)
    B = mask.shape[0]
    m = mask[:, :, rows.reshape(-1), :].reshape(B, 1, h, 4, W).all(dim=3)
    return m[:, :, :, cols.reshape(-1)].reshape(B, 1, h, w, 4).all(dim=4)


# ----------------------------------------------------------------------------- operators
def dx(x: torch.Tensor) -> torch.Tensor:
    """Row gradient x[i, j] - x[i, j+1]; 0 in the last column (replicate padding)."""
    return F.pad(x[..., :, :-1] - x[..., :, 1:], (0, 1))


def dy(x: torch.Tensor) -> torch.Tensor:
    """Column gradient x[i, j] - x[i+1, j]; 0 in the last row (replicate padding)."""
    return F.pad(x[..., :-1, :] - x[..., 1:, :], (0, 0, 0, 1))


def shifted(m: torch.Tensor, di: int, dj: int) -> torch.Tensor:
    """m read at (i + di, j + dj) with indices clamped to the border."""
    h, w = m.shape[-2:]
    rows = (torch.arange(h, device=m.device) + di).clamp(max=h - 1)
    cols = (torch.arange(w, device=m.device) + dj).clamp(max=w - 1)
    return m[..., rows, :][..., cols]


def footprint_valid(m: torch.Tensor, offsets) -> torch.Tensor:
    """A term at (i, j) is valid iff every (clamped) pixel it reads is valid."""
    out = m
    for di, dj in offsets:
        out = out & shifted(m, di, dj)
    return out


# Pixels (di, dj) read by each operator beyond (i, j) itself.
FOOTPRINTS = {
    "r": [(0, 1)],
    "c": [(1, 0)],
    "rr": [(0, 1), (0, 2)],
    "rc": [(0, 1), (1, 0), (1, 1)],
    "cc": [(1, 0), (2, 0)],
    "N": [(0, 1), (1, 0)],
    "Nr": [(0, 1), (0, 2), (1, 0), (1, 1)],
    "Nc": [(0, 1), (1, 0), (1, 1), (2, 0)],
}


def _window_sum(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Sum of n consecutive entries along dim (valid windows only), by a cumulative sum."""
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    cs = torch.cat([zero, x.cumsum(dim)], dim)
    length = cs.shape[dim] - n
    return cs.narrow(dim, n, length) - cs.narrow(dim, 0, length)


def box_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """n x n window sums of x, replicate-padded by r = (n - 1) / 2 on every side; h x w out."""
    r = (n - 1) // 2
    xp = F.pad(x, (r, r, r, r), mode="replicate")
    return _window_sum(_window_sum(xp, n, -1), n, -2)


def masked_mean(v: torch.Tensor, valid: torch.Tensor, dim=(1, 2, 3)) -> torch.Tensor:
    """Per-sample mean of v over valid pixels; 0 (and no gradient) for an empty set. dim:
    the dimensions averaged over ((2, 3): one mean per channel of a (B, T, h, w) stack)."""
    valid = valid.to(v.dtype)
    count = valid.sum(dim=dim)
    return (v * valid).sum(dim=dim) / count.clamp(min=1)


_EXP_BITS = {  # dtype: (same-size int dtype, exponent mask, mantissa bits, biased exponent of 2^(bias+1))
    torch.float32: (torch.int32, 0x7F800000, 23, 254),
    torch.float64: (torch.int64, 0x7FF0000000000000, 52, 2046),
}


def inv_pow2_scale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 / 2^e for the power of two 2^e <= max(|x|, |y|, 1) (exponent clamped so that the
    result stays a normal number). Multiplying by it is exact; no gradient flows through it."""
    s = torch.maximum(torch.maximum(x.detach().abs(), y.detach().abs()), torch.ones_like(x))
    ity, mask, shift, two = _EXP_BITS[s.dtype]
    e = (s.contiguous().view(ity) & mask).clamp(max=(two - 1) << shift)
    return ((two << shift) - e).view(s.dtype)


def normal_loss(a1, a2, b1, b2) -> torch.Tensor:
    """1 - cos angle of the normals (-a1, -a2, 1) and (-b1, -b2, 1), per pixel (Eq. 8).

    Computed on (a1, a2, 1) / sa and (b1, b2, 1) / sb, with sa, sb the powers of two of
    inv_pow2_scale: numerator, denominator and eps all scale by 1 / (sa sb), so no square
    overflows (float32 depths up to the float range) and where the plain formula does not
    overflow the result is bit for bit the same. The scales are constants for autograd
    (the function of a1, a2 is unchanged), so the gradient is the formula's own."""
    ia, ib = inv_pow2_scale(a1, a2), inv_pow2_scale(b1, b2)
    iab = ia * ib
    a1, a2, b1, b2 = a1 * ia, a2 * ia, b1 * ib, b2 * ib
    num = a1 * b1 + a2 * b2 + iab
    den = torch.sqrt(a1 * a1 + a2 * a2 + ia * ia) * torch.sqrt(b1 * b1 + b2 * b2 + ib * ib) + NORMAL_EPS * iab
    return 1 - num / den


# ----------------------------------------------------------------------------- losses
def scale_losses(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, types) -> dict[str, torch.Tensor]:
    """The requested loss types at one scale; p, g (B, 1, h, w), m bool validity of D^k."""
    e = p - g
    out = {}
    for t in types:
        if t == "D":
            out[t] = masked_mean(e.abs(), m)
        elif t == "M":
            mu = masked_mean(e, m)[:, None, None, None]
            out[t] = masked_mean((e - mu).abs(), m)
        elif t in BOX_SIZES:
            n = BOX_SIZES[t]
            mf = m.to(e.dtype)
            # Mean over the valid pixels of the window; the center is valid so the count > 0.
            local = box_sum(e * mf, n) / box_sum(mf, n).clamp(min=1)
            out[t] = masked_mean((e - local).abs(), m)
        elif t in ("r", "c", "rr", "rc", "cc"):
            op = {"r": dx, "c": dy, "rr": lambda x: dx(dx(x)), "rc": lambda x: dx(dy(x)),
                  "cc": lambda x: dy(dy(x))}[t]
            out[t] = masked_mean(op(e).abs(), footprint_valid(m, FOOTPRINTS[t]))
        else:  # N, Nr, Nc: normals from first- or second-order gradients of p and g
            if t == "N":
                pa, ga = (dx(p), dy(p)), (dx(g), dy(g))
            else:
                dyp, dyg = dy(p), dy(g)
                rcp, rcg = dx(dyp), dx(dyg)
                pa, ga = ((dx(dx(p)), rcp), (dx(dx(g)), rcg)) if t == "Nr" else ((rcp, dy(dyp)), (rcg, dy(dyg)))
            out[t] = masked_mean(normal_loss(*pa, *ga), footprint_valid(m, FOOTPRINTS[t]))
    return out


def amlr_losses(pred, gt, mask, *, si_lambda=1.0, si_sqrt=False, si_scale=1.0):
    """The AMLR pair on log depth (Yu & Heo 2023, Eqs. 1-3) at full resolution.

    d = log(max(pred, LOG_EPS)) - log(gt) on valid pixels; pixels with gt <= 0 count as
    invalid (missing depth). Returns (Si, Gr), each (B,).
    """
    valid = mask & (gt > 0)
    # Log of 1 at invalid pixels: keeps -inf out of the graph (0 * inf would be NaN).
    d = torch.where(valid, torch.log(torch.where(valid, pred.clamp(min=LOG_EPS), 1.0)), 0.0) \
        - torch.where(valid, torch.log(torch.where(valid, gt, 1.0)), 0.0)
    mean_d = masked_mean(d, valid)
    # mean(d^2) - lambda mean(d)^2 written as var(d) + (1 - lambda) mean(d)^2: the same
    # number, but no cancellation when pred is off by a large factor (|mean d| >> std d,
    # exactly where a scale-invariant loss matters), which costs float32 digits.
    dev = d - mean_d[:, None, None, None]
    si = masked_mean(dev * dev, valid) + (1 - si_lambda) * mean_d * mean_d
    if si_sqrt:
        # sqrt(0) has an infinite slope; an exactly-zero loss contributes no gradient.
        si = torch.where(si > 0, si.clamp(min=1e-30).sqrt(), 0.0)
    si = si_scale * si
    vx = valid[..., :, :-1] & valid[..., :, 1:]
    vy = valid[..., :-1, :] & valid[..., 1:, :]
    gx = masked_mean((d[..., :, 1:] - d[..., :, :-1]) ** 2, vx)
    gy = masked_mean((d[..., 1:, :] - d[..., :-1, :]) ** 2, vy)
    return si, (gx + gy) / 2


def prepare(pred, gt, mask, indices):
    """(pred, gt, indices) as the loss space computes them: indices a list (default: the 78
    of the space), pred and gt in the arithmetic dtype (float64 for float64 pred, float32
    otherwise), and zero at invalid pixels, whose values (even NaN) must never reach a loss
    or a gradient. mask may be None (no invalid pixels)."""
    if indices is None:
        indices = range(NUM_SCALES * NUM_TYPES)
    indices = list(indices)
    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    pred, gt = pred.to(dtype), gt.to(dtype)
    if mask is not None:
        pred, gt = torch.where(mask, pred, 0.0), torch.where(mask, gt, 0.0)
    return pred, gt, indices


def by_scale(indices) -> dict[int, list[int]]:
    """{scale k: the selected indices of the 78 at scale k, in selection order}; the AMLR
    pair (indices 78, 79) is not in any scale."""
    per: dict[int, list[int]] = {}
    for i in indices:
        if i < NUM_SCALES * NUM_TYPES:
            per.setdefault(i // NUM_TYPES, []).append(i)
    return per


def add_amlr_columns(columns: dict, pred, gt, mask, indices, **options) -> None:
    """columns[78], columns[79] = the AMLR pair, if either is selected (mask None: all valid)."""
    if INDEX["Si"] in indices or INDEX["Gr"] in indices:
        m = mask if mask is not None else torch.ones_like(pred, dtype=torch.bool)
        columns[INDEX["Si"]], columns[INDEX["Gr"]] = amlr_losses(pred, gt, m, **options)


def loss_space(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    indices=None,
    *,
    si_lambda: float = 1.0,
    si_sqrt: bool = False,
    si_scale: float = 1.0,
) -> torch.Tensor:
    """Selected losses per sample, (B, len(indices)), for (B, 1, H, W) pred, gt and bool mask.

    ``indices`` index mlrb.names.ALL_NAMES (default: the 78 of the space). No input
    checking here: mlrb.fused_loss_space validates and normalises before calling.
    Arithmetic in float64 for float64 pred, float32 otherwise.
    """
    if mask is None:
        mask = torch.ones_like(pred, dtype=torch.bool)
    pred, gt, indices = prepare(pred, gt, mask, indices)

    columns: dict[int, torch.Tensor] = {}
    for k, wanted in sorted(by_scale(indices).items()):  # finest scale first
        types = [LOSS_TYPES[i % NUM_TYPES] for i in wanted]
        vals = scale_losses(pyramid_level(pred, k), pyramid_level(gt, k), mask_level(mask, k), types)
        for i, t in zip(wanted, types):
            columns[i] = vals[t]
    add_amlr_columns(columns, pred, gt, mask, indices, si_lambda=si_lambda, si_sqrt=si_sqrt, si_scale=si_scale)
    return torch.stack([columns[i] for i in indices], dim=1)


def losses_by_name(pred, gt, mask=None, names=None, **kw) -> dict[str, torch.Tensor]:
    """Convenience: {name: (B,) tensor} for the given names (default: all 78)."""
    idx = [INDEX[n] for n in names] if names is not None else list(range(NUM_SCALES * NUM_TYPES))
    out = loss_space(pred, gt, mask, idx, **kw)
    return {ALL_NAMES[i]: out[:, j] for j, i in enumerate(idx)}
