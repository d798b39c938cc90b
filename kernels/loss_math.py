"""Per-pixel formulas of the loss space as @triton.jit helpers: the one place where the
Triton kernels spell out the math of ../shared/spec/loss-space.md.

Operators are written as the spec's padded differences with explicit border factors
(pc = [j < w-1], pc2 = [j+1 < w-1], pr = [i < h-1], pr2 = [i+1 < h-1]), so that the
forward values and the coefficients of their transposes (backward) come from the same
expressions.
"""
import triton
import triton.language as tl

from . import layout as L

NORMAL_EPS = tl.constexpr(1e-8)  # in the denominator of the normal loss (Eq. 8)
LOG_EPS = tl.constexpr(1e-6)  # pred is clamped to >= LOG_EPS before the log (AMLR)
GW = tl.constexpr(L.GW)


@triton.jit
def sign(x):
    """torch.sign: the subgradient of abs, 0 at 0."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def tap_weight(t: tl.constexpr, odd):
    """Bicubic (A = -0.75) weight of tap t at fraction 0.5: (-3, 19, 19, -3) / 32.

    odd != 0 marks the 1x1 fallback of an odd-sized axis, where the fraction is 0 and the
    weights are (0, 1, 0, 0).
    """
    if t == 0 or t == 3:
        w = tl.where(odd != 0, 0.0, -0.09375)
    elif t == 1:
        w = tl.where(odd != 0, 1.0, 0.59375)
    else:
        w = tl.where(odd != 0, 0.0, 0.59375)
    return w


@triton.jit
def level_of(pid, geom, START: tl.constexpr):
    """Scale k whose programs (column START of the geometry table) contain program pid."""
    k = pid * 0
    for l in tl.static_range(6):
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
def ops(x00, x01, x02, x10, x11, x20, pc, pc2, pr, pr2):
    """dx, dy, rr = dx(dx), rc = dx(dy), cc = dy(dy) at one pixel, from x at the offsets
    (0,0) (0,1) (0,2) (1,0) (1,1) (2,0); zero padding of each difference at the border."""
    dx = pc * (x00 - x01)
    dy = pr * (x00 - x10)
    rr = dx - pc2 * (x01 - x02)
    rc = pc * pr * (x00 - x10 - x01 + x11)
    cc = dy - pr2 * (x10 - x20)
    return dx, dy, rr, rc, cc


@triton.jit
def inv_pow2_scale(x, y):
    """1 / 2^e for the power of two 2^e <= max(|x|, |y|, 1), e clamped to 126 so that the
    result stays a normal float32 (NaN / inf stay NaN / inf after scaling). Scaling by a
    power of two is exact: the normal loss scales its vectors before squaring, so depths
    up to the float32 range do not overflow, and gives the unscaled result bit for bit
    wherever that one does not overflow."""
    s = tl.maximum(tl.maximum(tl.abs(x), tl.abs(y)), 1.0)
    e = tl.minimum(s.to(tl.int32, bitcast=True) & 0x7F800000, 253 << 23)
    return ((254 << 23) - e).to(tl.float32, bitcast=True)


@triton.jit
def normal_loss(a1, a2, b1, b2):
    """1 - cos of the normals (-a1, -a2, 1) and (-b1, -b2, 1) (Eq. 8), computed on the
    vectors (a1, a2, 1) / sa and (b1, b2, 1) / sb (powers of two of inv_pow2_scale): the
    numerator, the denominator and eps all scale by 1 / (sa sb)."""
    ia = inv_pow2_scale(a1, a2)
    ib = inv_pow2_scale(b1, b2)
    iab = ia * ib
    a1 = a1 * ia
    a2 = a2 * ia
    b1 = b1 * ib
    b2 = b2 * ib
    num = a1 * b1 + a2 * b2 + iab
    den = tl.sqrt(a1 * a1 + a2 * a2 + ia * ia) * tl.sqrt(b1 * b1 + b2 * b2 + ib * ib) + NORMAL_EPS * iab
    return 1.0 - num / den


@triton.jit
def normal_loss_grad(a1, a2, b1, b2):
    """d normal_loss / d (a1, a2): only pred's side gets a gradient. On the scaled vectors
    x = (a1, a2, 1) / sa, y = (b1, b2, 1) / sb (see normal_loss) it is
    (q x - y / den) / sa with q = num |y| / (|x| den^2); written with one square root and
    few live values (the backward kernel is at the register limit)."""
    ia = inv_pow2_scale(a1, a2)
    ib = inv_pow2_scale(b1, b2)
    x1 = a1 * ia
    x2 = a2 * ia
    y1 = b1 * ib
    y2 = b2 * ib
    xx = x1 * x1 + x2 * x2 + ia * ia
    ab = tl.sqrt(xx * (y1 * y1 + y2 * y2 + ib * ib))
    iab = ia * ib
    den = ab + NORMAL_EPS * iab
    r = ia / den
    q = (x1 * y1 + x2 * y2 + iab) * ab * r / (xx * den)
    return q * x1 - y1 * r, q * x2 - y2 * r


@triton.jit
def log_depth(p, g, valid):
    """d = log(max(pred, LOG_EPS)) - log(gt) at valid pixels, 0 elsewhere (AMLR)."""
    lp = tl.log(tl.maximum(tl.where(valid, p, 1.0), LOG_EPS))
    lg = tl.log(tl.where(valid, g, 1.0))
    return tl.where(valid, lp - lg, 0.0)


@triton.jit
def load6(ptr, i, j, h, w, ok):
    """x at (i, j) + (0,0) (0,1) (0,2) (1,0) (1,1) (2,0), indices clamped to the map (the
    spec's replicate reads); float32."""
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
def validity(m00, m01, m02, m10, m11, m20):
    """0/1 validity of r, c, rr, rc, cc, N, Nr, Nc: every (clamped) pixel read is valid."""
    vr = m00 * m01
    vc = m00 * m10
    vrr = vr * m02
    vrc = vr * m10 * m11
    vcc = vc * m20
    vn = vr * m10
    vnr = vrr * m10 * m11
    vnc = vrc * m20
    return vr, vc, vrr, vrc, vcc, vn, vnr, vnc


@triton.jit
def border(i, j, h, w):
    """pc, pc2, pr, pr2: which differences of ops() exist at (i, j) (zero padding)."""
    pc = (j < w - 1).to(tl.float32)
    pc2 = (j + 1 < w - 1).to(tl.float32)
    pr = (i < h - 1).to(tl.float32)
    pr2 = (i + 1 < h - 1).to(tl.float32)
    return pc, pc2, pr, pr2
