"""Box filters (the local means of M5, M17, M65) by prefix sums, and their transposes.

A box sum of size n = 2r + 1 with replicate padding is separable. Along one axis it is a
running window: W[j] = W[j-1] + x[clamp(j + r)] - x[clamp(j - r - 1)], so a program walks
its rows (or columns) chunk by chunk with tl.cumsum and carries W across chunks; the
cost is independent of r (no unrolled taps). The transpose (backward) is the window sum
with zero padding plus the weight that replicate padding piles onto the two border
pixels: sum_{q<r} (r - q) y[q] at 0 and the mirror image at n - 1.

Horizontal passes are kernels of their own (rows, written to the workspace); the vertical
passes are the helpers box_cols_* used inside the loss and gradient kernels.
"""
import triton
import triton.language as tl

from . import layout as L
from .tiling import row_tile


# ----------------------------------------------------------------------------- rows
@triton.jit
def _rows_fwd(src, dst, rb, iok, w, R: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr):
    jj = tl.arange(0, CW)[None, :]
    # W[-1] = sum of x[clamp(t)] for t in [-R-1, R-1]
    carry = tl.zeros((RH,), tl.float32)
    for t0 in tl.static_range(-R - 1, R, CW):
        t = t0 + jj
        c = tl.minimum(tl.maximum(t, 0), w - 1)
        carry += tl.sum(tl.load(src + rb + c, mask=iok & (t < R), other=0.0), axis=1)
    for j0 in range(0, w, CW):
        j = j0 + jj
        ok = iok & (j < w)
        d = tl.load(src + rb + tl.minimum(j + R, w - 1), mask=ok, other=0.0) \
            - tl.load(src + rb + tl.maximum(j - R - 1, 0), mask=ok, other=0.0)
        tl.store(dst + rb + j, carry[:, None] + tl.cumsum(d, axis=1), mask=ok)
        carry += tl.sum(d, axis=1)


@triton.jit
def _rows_bwd(src, dst, rb, iok, w, R: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr):
    jj = tl.arange(0, CW)[None, :]
    carry = tl.zeros((RH,), tl.float32)  # zero-padded W[-1] = sum_{q < R} y[q]
    ex0 = tl.zeros((RH,), tl.float32)  # replicate weight piled on column 0
    exl = tl.zeros((RH,), tl.float32)  # ... and on column w - 1
    for q0 in tl.static_range(0, R, CW):
        q = q0 + jj
        v = tl.load(src + rb + q, mask=iok & (q < R) & (q < w), other=0.0)
        carry += tl.sum(v, axis=1)
        ex0 += tl.sum((R - q) * v, axis=1)
        ql = w - R + q
        vl = tl.load(src + rb + ql, mask=iok & (q < R) & (ql >= 0), other=0.0)
        exl += tl.sum((q + 1) * vl, axis=1)
    for j0 in range(0, w, CW):
        j = j0 + jj
        ok = iok & (j < w)
        d = tl.load(src + rb + j + R, mask=ok & (j + R < w), other=0.0) \
            - tl.load(src + rb + j - R - 1, mask=ok & (j - R - 1 >= 0), other=0.0)
        win = carry[:, None] + tl.cumsum(d, axis=1)
        win += tl.where(j == 0, ex0[:, None], 0.0) + tl.where(j == w - 1, exl[:, None], 0.0)
        tl.store(dst + rb + j, win, mask=ok)
        carry += tl.sum(d, axis=1)


@triton.jit
def box_rows_fwd_kernel(
    ws, geom, PLANE,
    HAS_MASK: tl.constexpr, SEL: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr,
):
    """Horizontal window sums of e * m and m for the selected box sizes, every scale."""
    DO5: tl.constexpr = (SEL >> L.T_M5) & 1 != 0  # only the box bits of SEL are passed
    DO17: tl.constexpr = (SEL >> L.T_M17) & 1 != 0
    DO65: tl.constexpr = (SEL >> L.T_M65) & 1 != 0
    pid = tl.program_id(0)
    b = tl.program_id(1)
    k, h, w, i, iok, rb = row_tile(pid, b, geom, RH)
    em = ws + L.EM * PLANE
    m = ws + L.M * PLANE
    if DO5:
        _rows_fwd(em, ws + L.HE[0] * PLANE, rb, iok, w, L.R5, RH, CW)
        if HAS_MASK:
            _rows_fwd(m, ws + L.HM[0] * PLANE, rb, iok, w, L.R5, RH, CW)
    if DO17:
        _rows_fwd(em, ws + L.HE[1] * PLANE, rb, iok, w, L.R17, RH, CW)
        if HAS_MASK:
            _rows_fwd(m, ws + L.HM[1] * PLANE, rb, iok, w, L.R17, RH, CW)
    if DO65:
        _rows_fwd(em, ws + L.HE[2] * PLANE, rb, iok, w, L.R65, RH, CW)
        if HAS_MASK:
            _rows_fwd(m, ws + L.HM[2] * PLANE, rb, iok, w, L.R65, RH, CW)


@triton.jit
def box_rows_bwd_kernel(
    ws, bws, geom, PLANE,
    SEL: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr,
):
    """Horizontal transposed box of each saved Y = m * sign(e - local mean) / count."""
    DO5: tl.constexpr = (SEL >> L.T_M5) & 1 != 0  # only the box bits of SEL are passed
    DO17: tl.constexpr = (SEL >> L.T_M17) & 1 != 0
    DO65: tl.constexpr = (SEL >> L.T_M65) & 1 != 0
    pid = tl.program_id(0)
    b = tl.program_id(1)
    k, h, w, i, iok, rb = row_tile(pid, b, geom, RH)
    if DO5:
        _rows_bwd(ws + L.Y[0] * PLANE, bws + L.TB[0] * PLANE, rb, iok, w, L.R5, RH, CW)
    if DO17:
        _rows_bwd(ws + L.Y[1] * PLANE, bws + L.TB[1] * PLANE, rb, iok, w, L.R17, RH, CW)
    if DO65:
        _rows_bwd(ws + L.Y[2] * PLANE, bws + L.TB[2] * PLANE, rb, iok, w, L.R65, RH, CW)


# ----------------------------------------------------------------------------- columns
@triton.jit
def box_cols_fwd_init(src, cb, jok, h, w, i_start, R: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr):
    """Carry of the vertical running window before row i_start (replicate padding): the
    window sum of row i_start - 1, so that a program can start anywhere in its column."""
    ii = tl.arange(0, RH)[:, None]
    carry = tl.zeros((CW,), tl.float32)
    for t0 in tl.static_range(-R - 1, R, RH):
        r = tl.minimum(tl.maximum(i_start + t0 + ii, 0), h - 1)
        carry += tl.sum(tl.load(src + cb + r * w, mask=jok & (t0 + ii < R), other=0.0), axis=0)
    return carry


@triton.jit
def box_cols_fwd_step(src, cb, i, ok, h, w, R: tl.constexpr, carry):
    """Vertical window sums of the row chunk i; returns them and the new carry."""
    d = tl.load(src + cb + tl.minimum(i + R, h - 1) * w, mask=ok, other=0.0) \
        - tl.load(src + cb + tl.maximum(i - R - 1, 0) * w, mask=ok, other=0.0)
    return carry[None, :] + tl.cumsum(d, axis=0), carry + tl.sum(d, axis=0)


@triton.jit
def box_cols_bwd_init(src, cb, jok, h, w, i_start, R: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr):
    """Carry (zero-padded window sum of row i_start - 1) and the border weights of the
    vertical transposed box (see the module doc)."""
    ii = tl.arange(0, RH)[:, None]
    carry = tl.zeros((CW,), tl.float32)
    ex0 = tl.zeros((CW,), tl.float32)
    exl = tl.zeros((CW,), tl.float32)
    for t0 in tl.static_range(-R - 1, R, RH):
        t = i_start + t0 + ii
        carry += tl.sum(tl.load(src + cb + t * w, mask=jok & (t0 + ii < R) & (t >= 0) & (t < h), other=0.0),
                        axis=0)
    for q0 in tl.static_range(0, R, RH):
        q = q0 + ii
        v = tl.load(src + cb + q * w, mask=jok & (q < R) & (q < h), other=0.0)
        ex0 += tl.sum((R - q) * v, axis=0)
        ql = h - R + q
        vl = tl.load(src + cb + ql * w, mask=jok & (q < R) & (ql >= 0), other=0.0)
        exl += tl.sum((q + 1) * vl, axis=0)
    return carry, ex0, exl


@triton.jit
def box_cols_bwd_step(src, cb, i, ok, h, w, R: tl.constexpr, carry, ex0, exl):
    d = tl.load(src + cb + (i + R) * w, mask=ok & (i + R < h), other=0.0) \
        - tl.load(src + cb + (i - R - 1) * w, mask=ok & (i - R - 1 >= 0), other=0.0)
    win = carry[None, :] + tl.cumsum(d, axis=0)
    win += tl.where(i == 0, ex0[None, :], 0.0) + tl.where(i == h - 1, exl[None, :], 0.0)
    return win, carry + tl.sum(d, axis=0)
