"""Per-pixel formulas of the loss space as @triton.jit helpers, each beside its derivative:
the one place where the Triton kernels spell out the math of ../shared/spec/loss-space.md
(and of Yu & Heo 2023 for the AMLR pair). The kernels (loss_space_fwd.py, loss_space_bwd.py,
reduce.py) only read, accumulate and store; tiling.py says which pixels they read.

Operators are written as the spec's padded differences with explicit border factors
(pc = [j < w-1], pc2 = [j+1 < w-1], pr = [i < h-1], pr2 = [i+1 < h-1]), so that the
forward values (ops) and the coefficients of their transposes (ops_transposed) come from
the same expressions.
"""
import triton
import triton.language as tl

NORMAL_EPS = tl.constexpr(1e-8)  # in the denominator of the normal loss (Eq. 8)
LOG_EPS = tl.constexpr(1e-6)  # pred is clamped to >= LOG_EPS before the log (AMLR)
SQRT_FLOOR = tl.constexpr(1e-30)  # sqrt(Si) and its derivative are taken at >= this


@triton.jit
def sign(x):
    """torch.sign: the subgradient of abs, 0 at 0."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


# -------------------------------------------------------------------------------------- pyramid
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


# ----------------------------------------------------------------------------------- footprints
@triton.jit
def border(i, j, h, w):
    """pc, pc2, pr, pr2: which differences of ops() exist at (i, j) (zero padding)."""
    pc = (j < w - 1).to(tl.float32)
    pc2 = (j + 1 < w - 1).to(tl.float32)
    pr = (i < h - 1).to(tl.float32)
    pr2 = (i + 1 < h - 1).to(tl.float32)
    return pc, pc2, pr, pr2


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


# ------------------------------------------------------------------- D, r, c, rr, rc, cc: v |x|
@triton.jit
def l1(v, x):
    """v |x|: D (x = e, v = m) and the differences r, c, rr, rc, cc (x = ops(e), v their validity)."""
    return v * tl.abs(x)


@triton.jit
def l1_grad(v, x):
    """d l1 / dx = v sign(x) (torch.sign: 0 at 0)."""
    return v * sign(x)


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
def ops_transposed(SI: tl.constexpr, SJ: tl.constexpr, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2):
    """The coefficient sum that pixel x gathers from q = x - (SI, SJ): the upstream
    gradients (udx, ..., ucc) of ops at q times the weight of x in q's stencil (the
    transpose of ops; pc ... pr2 are q's border factors)."""
    if SI == 0 and SJ == 0:
        g = pc * udx + pr * udy + pc * urr + pc * pr * urc + pr * ucc
    elif SI == 0 and SJ == 1:
        g = -(pc * udx + (pc + pc2) * urr + pc * pr * urc)
    elif SI == 0 and SJ == 2:
        g = pc2 * urr
    elif SI == 1 and SJ == 0:
        g = -(pr * udy + pc * pr * urc + (pr + pr2) * ucc)
    elif SI == 1 and SJ == 1:
        g = pc * pr * urc
    else:  # (2, 0)
        g = pr2 * ucc
    return g


# ----------------------------------------------------------------------------- M: |e - mean(e)|
@triton.jit
def mean_loss(m, e, mu):
    """m |e - mu| with mu the mean of e over the valid pixels of the scale."""
    return l1(m, e - mu)


@triton.jit
def mean_loss_sign(m, e, mu):
    """m sign(e - mu): summed over the scale, what the gradient needs of the mean's path."""
    return l1_grad(m, e - mu)


@triton.jit
def mean_loss_grad(m, e, mu, smean):
    """d (sum of mean_loss / N) / de times N: m (sign(e - mu) - smean), smean the mean of
    mean_loss_sign over the valid pixels (mu depends on every e)."""
    return m * (sign(e - mu) - smean)


# --------------------------------------------------------------- M5, M17, M65: |e - local mean|
@triton.jit
def box_loss(m, e, box_sum, cnt):
    """m |e - box_sum / cnt| and Y = m sign(e - box_sum / cnt) / cnt, which the gradient
    reads back (box_sum: the box sum of e m, cnt: the valid count in the box, >= 1)."""
    diff = e - box_sum / cnt
    return m * tl.abs(diff), m * sign(diff) / cnt


@triton.jit
def box_loss_grad(m, y, box_t_y):
    """m (sign(e - local mean) - box^T(Y)): the sign read back from Y, box_t_y the
    transposed box of Y at this pixel."""
    return m * (sign(y) - box_t_y)


# ---------------------------------------------------- N, Nr, Nc: 1 - cos of the normals (Eq. 8)
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


# ------------------------- AMLR pair: Si, Gr on d = log pred - log gt (Yu & Heo 2023, Eqs. 1-3)
@triton.jit
def log_depth(p, g, valid):
    """d = log(max(pred, LOG_EPS)) - log(gt) at valid pixels, 0 elsewhere (AMLR)."""
    lp = tl.log(tl.maximum(tl.where(valid, p, 1.0), LOG_EPS))
    lg = tl.log(tl.where(valid, g, 1.0))
    return tl.where(valid, lp - lg, 0.0)


@triton.jit
def amlr_valid(v, g):
    """Validity for the AMLR pair: v (inside the map and the mask) and gt > 0 (gt <= 0
    marks missing depth)."""
    return v & (g > 0)


@triton.jit
def log_depth_grad(p, valid, g):
    """g d(log max(p, LOG_EPS))/dp: g / p where p >= LOG_EPS (torch.clamp passes the
    gradient there), 0 elsewhere and at invalid pixels."""
    return tl.where(valid & (p >= LOG_EPS), g / tl.maximum(p, LOG_EPS), 0.0)


@triton.jit
def chan_merge(n, mu, m2, cn, cmu, cm2):
    """(count, mean, sum of squared deviations from the mean) of two sets merged (Chan
    et al.): Si from mean(d^2) - mean(d)^2 would cancel in float32 when |mean d| >> std d."""
    nn = n + cn
    delta = cmu - mu
    frac = cn / tl.maximum(nn, 1.0)
    return nn, mu + delta * frac, m2 + (cm2 + delta * delta * n * frac)


@triton.jit
def sq_dev(n, mu_part, mu):
    """n (mu_part - mu)^2: what a part of n values with mean mu_part adds to the sum of
    squared deviations from mu (the between-parts term of a merge)."""
    dev = mu_part - mu
    return n * dev * dev


@triton.jit
def si_value(m2, n, s1, si_lambda):
    """Si = mean(d^2) - lambda mean(d)^2 written as var(d) + (1 - lambda) mean(d)^2, from
    m2 = n var(d), the count n and s1 = mean(d)."""
    return m2 / n + (1.0 - si_lambda) * s1 * s1


@triton.jit
def si_grad(g, d, n, s1, si_lambda):
    """g dSi/dd at one pixel: 2 (d - lambda mean(d)) / n."""
    return g * 2.0 * (d - si_lambda * s1) / n


@triton.jit
def sqrt_si(si):
    """sqrt(Si) (si_sqrt=True), 0 where Si <= 0."""
    return tl.where(si > 0, tl.sqrt(tl.maximum(si, SQRT_FLOOR)), 0.0)


@triton.jit
def sqrt_si_grad(si, g):
    """g d sqrt(Si)/dSi = g / (2 sqrt(Si)), 0 where Si <= 0."""
    return tl.where(si > 0, g * 0.5 / tl.sqrt(tl.maximum(si, SQRT_FLOOR)), 0.0)


@triton.jit
def gr_term(d0, d1, v):
    """(d1 - d0)^2 of one neighbour pair of Gr where both are valid (v), else 0."""
    return tl.where(v, (d1 - d0) * (d1 - d0), 0.0)


@triton.jit
def gr_grad(g, d, d_prev, v_prev, d_next, v_next):
    """g d/dd of the two pairs of Gr along one axis that contain pixel d (g: the upstream
    gradient over the pair count; the pixel's own validity is applied by the caller)."""
    return g * (tl.where(v_prev, d - d_prev, 0.0) - tl.where(v_next, d_next - d, 0.0))


@triton.jit
def gr_value(sx, nx, sy, ny):
    """Gr: the mean of the squared log-depth steps along x and along y, averaged."""
    return (sx / tl.maximum(nx, 1.0) + sy / tl.maximum(ny, 1.0)) / 2
