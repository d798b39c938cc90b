"""The pyramid D^0..D^5 (bicubic, each level from full resolution) and its transpose.

Forward: one launch builds every selected level of pred, gt, the level validity (the whole
4x4 footprint valid) and e * validity into the workspace, one program per 32 x 32 (or
larger) full-resolution block for all scales at once; each program also writes the
partial sums of e * m and m per scale (the mean of the M loss), reduced later in a fixed
order. Backward: the transpose of the separable 4-tap filter as two gathers
(columns, then rows), so that no program ever scatters (no atomics).
"""
import triton
import triton.language as tl

from . import layout as L
from .loss_math import tap_weight
from .tiling import level_of

GW = tl.constexpr(L.GW)
NUM_SCALES = tl.constexpr(L.NUM_SCALES)  # static_range needs a constexpr


@triton.jit
def _geom(geom, k, col: tl.constexpr):
    return tl.load(geom + k * GW + col)


@triton.jit
def _level_tile(pred, gt, mask, ws, part, geom, k: tl.constexpr, bi, bj, b, src, H, W, PLANE, pslot,
                HAS_MASK: tl.constexpr, TS: tl.constexpr):
    """Scale k of the block (bi, bj): its TS x TS outputs, whose 4x4 footprints lie in the
    block's full-resolution pixels plus a 2-pixel halo (already in L1/L2)."""
    h = _geom(geom, k, L.H_)
    w = _geom(geom, k, L.W_)
    i = bi * TS + tl.arange(0, TS)[:, None]
    j = bj * TS + tl.arange(0, TS)[None, :]
    # A 1x1 fallback level is made by block (0, 0) alone (h = w = 1 masks the others).
    inb = (i < h) & (j < w) & ((_geom(geom, k, L.ACTIVE) + i * 0) != 0)
    if k == 0:
        o = src + i * W + j
        p = tl.load(pred + o, mask=inb, other=0.0).to(tl.float32)
        g = tl.load(gt + o, mask=inb, other=0.0).to(tl.float32)
        if HAS_MASK:
            mv = inb & (tl.load(mask + o, mask=inb, other=0) != 0)
        else:
            mv = inb
        # Values at invalid pixels must never reach a loss (they may be NaN).
        p = tl.where(mv, p, 0.0)
        g = tl.where(mv, g, 0.0)
    else:
        rs = _geom(geom, k, L.RS)
        ro = _geom(geom, k, L.RO)
        cs = _geom(geom, k, L.CS)
        co = _geom(geom, k, L.CO)
        rodd = _geom(geom, k, L.RODD)
        codd = _geom(geom, k, L.CODD)
        p = tl.zeros((TS, TS), tl.float32)
        g = tl.zeros((TS, TS), tl.float32)
        mv = inb
        # Separable 4-tap filter, rows of taps first as in PyTorch's bicubic kernel.
        for a in tl.static_range(4):
            r = tl.minimum(tl.maximum(i * rs + ro + a, 0), H - 1)
            pr = tl.zeros((TS, TS), tl.float32)
            gr = tl.zeros((TS, TS), tl.float32)
            for c in tl.static_range(4):
                cc = tl.minimum(tl.maximum(j * cs + co + c, 0), W - 1)
                o = src + r * W + cc
                x = tl.load(pred + o, mask=inb, other=0.0).to(tl.float32)
                y = tl.load(gt + o, mask=inb, other=0.0).to(tl.float32)
                if HAS_MASK:
                    mm = tl.load(mask + o, mask=inb, other=0) != 0
                    mv = mv & mm
                    x = tl.where(mm, x, 0.0)
                    y = tl.where(mm, y, 0.0)
                wc = tap_weight(c, codd)
                pr += wc * x
                gr += wc * y
            wr = tap_weight(a, rodd)
            p += wr * pr
            g += wr * gr
    m = mv.to(tl.float32)
    em = tl.where(mv, p - g, 0.0)
    o = _geom(geom, k, L.OFF) + b * h * w + i * w + j
    tl.store(ws + L.P * PLANE + o, p, mask=inb)
    tl.store(ws + L.G * PLANE + o, g, mask=inb)
    tl.store(ws + L.EM * PLANE + o, em, mask=inb)
    if HAS_MASK:
        tl.store(ws + L.M * PLANE + o, m, mask=inb)
    # Partials of the M loss's mean, reduced per scale in a fixed order.
    tl.store(part + pslot + L.PYR_PER_SCALE * k + L.PYR_SEM, tl.sum(tl.sum(em, axis=1), axis=0))
    tl.store(part + pslot + L.PYR_PER_SCALE * k + L.PYR_SM, tl.sum(tl.sum(m, axis=1), axis=0))


@triton.jit
def pyramid_fwd_kernel(
    pred, gt, mask, ws, part, geom, H, W, PLANE, NBW, NBLK,
    HAS_MASK: tl.constexpr, BS: tl.constexpr,
):
    """All selected scales of one BS x BS full-resolution block (BS >= 2^5): scale k owns the
    (BS / 2^k)^2 outputs whose sampling points fall in the block, so every full-resolution
    pixel is fetched from memory once per pass (plus a 2-pixel halo)."""
    blk = tl.program_id(0)
    b = tl.program_id(1)
    bi = blk // NBW
    bj = blk % NBW
    src = b.to(tl.int64) * H * W
    pslot = (b * NBLK + blk) * L.PYR_PARTS
    for k in tl.static_range(NUM_SCALES):
        _level_tile(pred, gt, mask, ws, part, geom, k, bi, bj, b, src, H, W, PLANE, pslot,
                    HAS_MASK, BS >> k)


@triton.jit
def _transposed_taps(gp, base, step, x, n_in, n_out, s, o, odd, ok):
    """sum_i R[i, x] * gp[base + i * step]: the transpose of one axis of the 4-tap filter.

    Output index i reads input clamp(s * i + o + t) with weight w_t; gather, for input x,
    the i with s * i + o + t == x, plus the taps clamped onto the two border pixels.
    """
    acc = tl.zeros(x.shape, tl.float32)
    for t in tl.static_range(4):
        wt = tap_weight(t, odd)
        num = x - o - t
        i = num // s
        hit = ok & (num >= 0) & (num - i * s == 0) & (i < n_out)
        acc += wt * tl.load(gp + base + i * step, mask=hit, other=0.0)
        # Taps left of 0 (only output 0) and right of n_in - 1 (only the last output).
        lo = ok & (x == 0) & (x * 0 + o + t < 0)
        acc += wt * tl.load(gp + base + x * 0, mask=lo, other=0.0)
        hi = ok & (x == n_in - 1) & (x * 0 + s * (n_out - 1) + o + t > n_in - 1)
        acc += wt * tl.load(gp + base + (n_out - 1) * step + x * 0, mask=hi, other=0.0)
    return acc


@triton.jit
def pyramid_bwd_cols_kernel(
    bws, geom, W, PLANE, UBASE,
    TH: tl.constexpr, TW: tl.constexpr,
):
    """U^k = dL/dD^k times the column filter transposed: (h_k, W) per scale k >= 1."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    k = level_of(pid, geom, L.UT)
    h = _geom(geom, k, L.H_)
    w = _geom(geom, k, L.W_)
    t = pid - _geom(geom, k, L.UT)
    ntw = tl.cdiv(W, TW)
    i = (t // ntw) * TH + tl.arange(0, TH)[:, None]
    y = (t % ntw) * TW + tl.arange(0, TW)[None, :]
    ok = (i < h) & (y < W)
    gp = bws + L.GP * PLANE + _geom(geom, k, L.OFF) + b * h * w
    u = _transposed_taps(gp, i * w, 1, y, W, w, _geom(geom, k, L.CS), _geom(geom, k, L.CO),
                         _geom(geom, k, L.CODD), ok)
    uo = UBASE + _geom(geom, k, L.UOFF) + b * h * W + i * W + y
    tl.store(bws + uo, u, mask=ok)


@triton.jit
def pyramid_bwd_rows_kernel(
    bws, geom, mask, grad, H, W, PLANE, UBASE,
    HAS_MASK: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
):
    """grad_pred = m * (dL/dD^0 + sum_k R_k^T U^k), written in pred's dtype."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    ntw = tl.cdiv(W, TW)
    x = (t // ntw) * TH + tl.arange(0, TH)[:, None]
    y = (t % ntw) * TW + tl.arange(0, TW)[None, :]
    ok = (x < H) & (y < W)
    o = b.to(tl.int64) * H * W + x * W + y
    on0 = (x * 0 + y * 0 + _geom(geom, 0, L.ACTIVE)) != 0  # block-shaped: the interpreter wants full masks
    acc = tl.load(bws + L.GP * PLANE + b * H * W + x * W + y, mask=ok & on0, other=0.0)
    for k in tl.static_range(1, NUM_SCALES):
        on = (x * 0 + y * 0 + _geom(geom, k, L.ACTIVE)) != 0
        h = _geom(geom, k, L.H_)
        u = bws + UBASE + _geom(geom, k, L.UOFF) + b * h * W
        acc += _transposed_taps(u, y, W, x, H, h, _geom(geom, k, L.RS), _geom(geom, k, L.RO),
                                _geom(geom, k, L.RODD), ok & on)
    if HAS_MASK:
        acc = tl.where(tl.load(mask + o, mask=ok, other=0) != 0, acc, 0.0)
    tl.store(grad + o, acc.to(grad.dtype.element_ty), mask=ok)
