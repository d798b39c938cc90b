"""Which pixels a program owns and how it reads them: the tiling helpers shared by the
Triton kernels (no per-pixel math here, see loss_math.py).

A per-scale kernel's programs are numbered scale after scale; the geometry table
(layout.py) gives each scale's first program and count, so a program finds its scale k
with level_of and then its tile inside that scale.
"""
import triton
import triton.language as tl

from . import layout as L

GW = tl.constexpr(L.GW)
NUM_SCALES = tl.constexpr(L.NUM_SCALES)  # static_range needs a constexpr


@triton.jit
def level_of(pid, geom, START: tl.constexpr):
    """Scale k whose programs (column START of the geometry table) contain program pid."""
    k = pid * 0
    for l in tl.static_range(NUM_SCALES):
        s = tl.load(geom + l * GW + START)
        n = tl.load(geom + l * GW + START + 1)
        k = tl.where((pid >= s) & (n > 0), l, k)
    return k


@triton.jit
def strip_tile(pid, b, geom, CW: tl.constexpr, SEG: tl.constexpr):
    """Tile of a loss / gradient program: a strip of CW columns and a segment of SEG rows
    of scale k, sample b. Returns k, the level size h, w, the columns j (1, CW) with their
    bound jok, the rows [i_start, i_end) and the level's offset for sample b."""
    k = level_of(pid, geom, L.COL)
    h = tl.load(geom + k * GW + L.H_)
    w = tl.load(geom + k * GW + L.W_)
    t = pid - tl.load(geom + k * GW + L.COL)
    nstrips = tl.cdiv(w, CW)
    j = (t % nstrips) * CW + tl.arange(0, CW)[None, :]
    i_start = (t // nstrips) * SEG
    lvl = tl.load(geom + k * GW + L.OFF) + b * h * w
    return k, h, w, j, j < w, i_start, tl.minimum(i_start + SEG, h), lvl


@triton.jit
def row_tile(pid, b, geom, RH: tl.constexpr):
    """Tile of a horizontal box program: RH rows i (RH, 1) of scale k, sample b. Returns
    k, h, w, i, the bound iok and the offsets of the rows' starts."""
    k = level_of(pid, geom, L.ROW)
    h = tl.load(geom + k * GW + L.H_)
    w = tl.load(geom + k * GW + L.W_)
    i = (pid - tl.load(geom + k * GW + L.ROW)) * RH + tl.arange(0, RH)[:, None]
    return k, h, w, i, i < h, tl.load(geom + k * GW + L.OFF) + b * h * w + i * w


@triton.jit
def load6(ptr, i, j, h, w, ok):
    """x at (i, j) + (0,0) (0,1) (0,2) (1,0) (1,1) (2,0), indices clamped to the map (the
    spec's replicate reads); float32. The footprint of loss_math.ops."""
    i0 = tl.minimum(tl.maximum(i, 0), h - 1)
    i1 = tl.minimum(tl.maximum(i + 1, 0), h - 1)
    i2 = tl.minimum(tl.maximum(i + 2, 0), h - 1)
    j0 = tl.minimum(tl.maximum(j, 0), w - 1)
    j1 = tl.minimum(tl.maximum(j + 1, 0), w - 1)
    j2 = tl.minimum(tl.maximum(j + 2, 0), w - 1)
    x00 = tl.load(ptr + i0 * w + j0, mask=ok, other=0.0)
    x01 = tl.load(ptr + i0 * w + j1, mask=ok, other=0.0)
    x02 = tl.load(ptr + i0 * w + j2, mask=ok, other=0.0)
    x10 = tl.load(ptr + i1 * w + j0, mask=ok, other=0.0)
    x11 = tl.load(ptr + i1 * w + j1, mask=ok, other=0.0)
    x20 = tl.load(ptr + i2 * w + j0, mask=ok, other=0.0)
    return x00, x01, x02, x10, x11, x20


@triton.jit
def count_slot(t):
    """Slot of the valid count of loss type t in a program's partial sums (layout.py):
    D, M and the M_n share the count of m; r ... Nc have one each, in type order."""
    return tl.where(t < L.T_R, L.Q_CNT, t + (L.Q_CNT + 1 - L.T_R))
