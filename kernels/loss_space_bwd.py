"""Backward of the loss space at every selected scale: dL/dD^k for pred, in one launch.

With G the incoming (B, n) gradient, a program (a strip of columns of one scale, walked
in row chunks like the forward) writes g^k = d(sum G * L)/d pred^k. Terms that read a
neighbourhood (differences, second order, normals) are differentiated by gathering: the
pixel x collects, from each pixel q = x - s that read it, the upstream value of q times
the coefficient of x in q's stencil (loss_math.ops), so no program ever scatters. M_n
uses the forward's saved Y = m * sign(e - local mean) / count and the transposed box
(box.py): dM_n/de = m * (sign - box^T(Y)) / N. The two stages of the transposed pyramid
(pyramid.py) then take g^k back to full resolution.
"""
import triton
import triton.language as tl

from . import layout as L
from .box import box_cols_bwd_init, box_cols_bwd_step
from .loss_math import (amlr_valid, border, box_loss_grad, gr_grad, l1_grad, log_depth, log_depth_grad,
                        mean_loss_grad, normal_loss_grad, ops, ops_transposed, si_grad, si_value, sqrt_si_grad,
                        validity)
from .tiling import count_slot, load6, strip_tile

NQ = tl.constexpr(L.NQ)


@triton.jit
def _coef(G, cols, st, k, t: tl.constexpr):
    """G[b, column of loss t at scale k] / its valid count; 0 if unselected or empty."""
    col = tl.load(cols + k * L.NUM_TYPES + t)
    g = tl.load(G + col, mask=col >= 0, other=0.0)
    n = tl.load(st + count_slot(t))
    return tl.where((col >= 0) & (n > 0), g / tl.maximum(n, 1.0), 0.0)


@triton.jit
def _upstream(ws, PLANE, lvl, qi, qj, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
              HAS_MASK: tl.constexpr, DO_R: tl.constexpr, DO_C: tl.constexpr, DO_RR: tl.constexpr,
              DO_RC: tl.constexpr, DO_CC: tl.constexpr, DO_N: tl.constexpr, DO_NR: tl.constexpr,
              DO_NC: tl.constexpr, NEED_DX: tl.constexpr, NEED_DY: tl.constexpr,
              NEED_RR: tl.constexpr, NEED_RC: tl.constexpr, NEED_CC: tl.constexpr):
    """Upstream gradient of each operator (dx, dy, rr, rc, cc) at the pixels q, summed over
    the losses that use it, and the border factors of q."""
    inq = ok & (qi >= 0) & (qj >= 0)
    e00, e01, e02, e10, e11, e20 = load6(ws + L.EM * PLANE + lvl, qi, qj, h, w, inq)
    if HAS_MASK:
        m00, m01, m02, m10, m11, m20 = load6(ws + L.M * PLANE + lvl, qi, qj, h, w, inq)
    else:
        f = inq.to(tl.float32)
        m00, m01, m02, m10, m11, m20 = f, f, f, f, f, f
    pc, pc2, pr, pr2 = border(qi, qj, h, w)
    vr, vc, vrr, vrc, vcc, vn, vnr, vnc = validity(m00, m01, m02, m10, m11, m20)
    dx, dy, rr, rc, cc_ = ops(e00, e01, e02, e10, e11, e20, pc, pc2, pr, pr2)
    zero = tl.zeros(e00.shape, tl.float32)
    udx, udy, urr, urc, ucc = zero, zero, zero, zero, zero
    if NEED_DX and DO_R:
        udx += cr * l1_grad(vr, dx)
    if NEED_DY and DO_C:
        udy += cc * l1_grad(vc, dy)
    if NEED_RR and DO_RR:
        urr += crr * l1_grad(vrr, rr)
    if NEED_RC and DO_RC:
        urc += crc * l1_grad(vrc, rc)
    if NEED_CC and DO_CC:
        ucc += ccc * l1_grad(vcc, cc_)
    WANT_N: tl.constexpr = DO_N and (NEED_DX or NEED_DY)
    WANT_NR: tl.constexpr = DO_NR and (NEED_RR or NEED_RC)
    WANT_NC: tl.constexpr = DO_NC and (NEED_RC or NEED_CC)
    if WANT_N or WANT_NR or WANT_NC:
        p00, p01, p02, p10, p11, p20 = load6(ws + L.P * PLANE + lvl, qi, qj, h, w, inq)
        g00, g01, g02, g10, g11, g20 = load6(ws + L.G * PLANE + lvl, qi, qj, h, w, inq)
        pdx, pdy, prr, prc, pcc = ops(p00, p01, p02, p10, p11, p20, pc, pc2, pr, pr2)
        gdx, gdy, grr, grc, gcc = ops(g00, g01, g02, g10, g11, g20, pc, pc2, pr, pr2)
        if WANT_N:
            a1, a2 = normal_loss_grad(pdx, pdy, gdx, gdy)
            udx += tl.where(vn > 0, cN * a1, 0.0)
            udy += tl.where(vn > 0, cN * a2, 0.0)
        if WANT_NR:
            a1, a2 = normal_loss_grad(prr, prc, grr, grc)
            urr += tl.where(vnr > 0, cNr * a1, 0.0)
            urc += tl.where(vnr > 0, cNr * a2, 0.0)
        if WANT_NC:
            a1, a2 = normal_loss_grad(prc, pcc, grc, gcc)
            urc += tl.where(vnc > 0, cNc * a1, 0.0)
            ucc += tl.where(vnc > 0, cNc * a2, 0.0)
    return udx, udy, urr, urc, ucc, pc, pc2, pr, pr2


@triton.jit
def _box_grad(ws, bws, PLANE, yplane: tl.constexpr, tplane: tl.constexpr, cb, i, ok, h, w,
              R: tl.constexpr, carry, ex0, exl, m00):
    """m * (sign(e - local mean) - box^T(Y)) at the row chunk i (sign read back from Y)."""
    T, carry = box_cols_bwd_step(bws + tplane * PLANE, cb, i, ok, h, w, R, carry, ex0, exl)
    y = tl.load(ws + yplane * PLANE + cb + i * w, mask=ok, other=0.0)
    return box_loss_grad(m00, y, T), carry


@triton.jit
def loss_space_bwd_kernel(
    ws, bws, stats, G, geom, cols, PLANE, n_out, si_lambda, si_scale,
    HAS_MASK: tl.constexpr, SEL: tl.constexpr, SI_SQRT: tl.constexpr, RH: tl.constexpr, CW: tl.constexpr,
    SEG: tl.constexpr,
):
    # SEL: bit t for each selected loss type t, bit T_AMLR for the AMLR pair (layout.py).
    DO_D: tl.constexpr = (SEL >> L.T_D) & 1 != 0
    DO_M: tl.constexpr = (SEL >> L.T_M) & 1 != 0
    DO5: tl.constexpr = (SEL >> L.T_M5) & 1 != 0
    DO17: tl.constexpr = (SEL >> L.T_M17) & 1 != 0
    DO65: tl.constexpr = (SEL >> L.T_M65) & 1 != 0
    DO_R: tl.constexpr = (SEL >> L.T_R) & 1 != 0
    DO_C: tl.constexpr = (SEL >> L.T_C) & 1 != 0
    DO_RR: tl.constexpr = (SEL >> L.T_RR) & 1 != 0
    DO_RC: tl.constexpr = (SEL >> L.T_RC) & 1 != 0
    DO_CC: tl.constexpr = (SEL >> L.T_CC) & 1 != 0
    DO_N: tl.constexpr = (SEL >> L.T_N) & 1 != 0
    DO_NR: tl.constexpr = (SEL >> L.T_NR) & 1 != 0
    DO_NC: tl.constexpr = (SEL >> L.T_NC) & 1 != 0
    DO_AMLR: tl.constexpr = (SEL >> L.T_AMLR) & 1 != 0
    pid = tl.program_id(0)
    b = tl.program_id(1)
    # Program = (column strip, segment of SEG rows) of scale k.
    k, h, w, j, jok, i_start, i_end, lvl = strip_tile(pid, b, geom, CW, SEG)
    cb = lvl + j
    st = stats + (b * L.NUM_SCALES + k) * NQ
    Gb = G + b * n_out

    cD = _coef(Gb, cols, st, k, L.T_D)
    cM = _coef(Gb, cols, st, k, L.T_M)
    c5 = _coef(Gb, cols, st, k, L.T_M5)
    c17 = _coef(Gb, cols, st, k, L.T_M17)
    c65 = _coef(Gb, cols, st, k, L.T_M65)
    cr = _coef(Gb, cols, st, k, L.T_R)
    cc = _coef(Gb, cols, st, k, L.T_C)
    crr = _coef(Gb, cols, st, k, L.T_RR)
    crc = _coef(Gb, cols, st, k, L.T_RC)
    ccc = _coef(Gb, cols, st, k, L.T_CC)
    cN = _coef(Gb, cols, st, k, L.T_N)
    cNr = _coef(Gb, cols, st, k, L.T_NR)
    cNc = _coef(Gb, cols, st, k, L.T_NC)
    nm = tl.maximum(tl.load(st + count_slot(L.T_M)), 1.0)
    mu = tl.load(st + L.Q_SEM) / tl.maximum(tl.load(st + L.Q_SM), 1.0)
    smean = tl.load(st + L.Q_SIGN) / nm  # dM/de = m (sign(e - mu) - mean of m sign) / N

    zero = tl.zeros((CW,), tl.float32)
    k5, a5, b5, k17, a17, b17, k65, a65, b65 = zero, zero, zero, zero, zero, zero, zero, zero, zero
    if DO5:
        k5, a5, b5 = box_cols_bwd_init(bws + L.TB[0] * PLANE, cb, jok, h, w, i_start, L.R5, RH, CW)
    if DO17:
        k17, a17, b17 = box_cols_bwd_init(bws + L.TB[1] * PLANE, cb, jok, h, w, i_start, L.R17, RH, CW)
    if DO65:
        k65, a65, b65 = box_cols_bwd_init(bws + L.TB[2] * PLANE, cb, jok, h, w, i_start, L.R65, RH, CW)

    if DO_AMLR:
        s0 = stats + b * L.NUM_SCALES * NQ
        n = tl.maximum(tl.load(s0 + L.Q_AN), 1.0)
        s1 = tl.load(s0 + L.Q_AS1) / n
        c_si = tl.load(cols + L.COL_SI)
        c_gr = tl.load(cols + L.COL_GR)
        g_si = si_scale * tl.load(Gb + c_si, mask=c_si >= 0, other=0.0)
        if SI_SQRT:
            # Q_AS2 of the reduced stats: n var(d) (reduce.py)
            g_si = sqrt_si_grad(si_value(tl.load(s0 + L.Q_AS2), n, s1, si_lambda), g_si)
        g_gr = tl.load(Gb + c_gr, mask=c_gr >= 0, other=0.0)
        gxn = g_gr / tl.maximum(tl.load(s0 + L.Q_ANX), 1.0)
        gyn = g_gr / tl.maximum(tl.load(s0 + L.Q_ANY), 1.0)

    NDX: tl.constexpr = DO_R or DO_N
    NDY: tl.constexpr = DO_C or DO_N
    NRR: tl.constexpr = DO_RR or DO_NR
    NRC: tl.constexpr = DO_RC or DO_NR or DO_NC
    NCC: tl.constexpr = DO_CC or DO_NC

    for i0 in range(i_start, i_end, RH):
        i = i0 + tl.arange(0, RH)[:, None]
        ok = (i < i_end) & jok
        o = lvl + i * w + j
        e00 = tl.load(ws + L.EM * PLANE + o, mask=ok, other=0.0)
        if HAS_MASK:
            m00 = tl.load(ws + L.M * PLANE + o, mask=ok, other=0.0)
        else:
            m00 = ok.to(tl.float32)
        gp = tl.zeros((RH, CW), tl.float32)
        if DO_D:
            gp += cD * l1_grad(m00, e00)
        if DO_M:
            gp += cM * mean_loss_grad(m00, e00, mu, smean)
        if DO5:
            t5, k5 = _box_grad(ws, bws, PLANE, L.Y[0], L.TB[0], cb, i, ok, h, w, L.R5, k5, a5, b5, m00)
            gp += c5 * t5
        if DO17:
            t17, k17 = _box_grad(ws, bws, PLANE, L.Y[1], L.TB[1], cb, i, ok, h, w, L.R17, k17, a17, b17, m00)
            gp += c17 * t17
        if DO65:
            t65, k65 = _box_grad(ws, bws, PLANE, L.Y[2], L.TB[2], cb, i, ok, h, w, L.R65, k65, a65, b65, m00)
            gp += c65 * t65
        # Stencil terms: x gathers coef(s, q) * upstream(q) from q = x - s.
        if NDX or NDY or NRR or NRC or NCC:
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i, j, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, NDX, NDY, NRR, NRC, NCC)
            gp += ops_transposed(0, 0, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if NDX or NRR or NRC:  # s = (0, 1)
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i, j - 1, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, NDX, False, NRR, NRC, False)
            gp += ops_transposed(0, 1, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if NRR:  # s = (0, 2)
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i, j - 2, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, False, False, NRR, False, False)
            gp += ops_transposed(0, 2, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if NDY or NRC or NCC:  # s = (1, 0)
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i - 1, j, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, False, NDY, False, NRC, NCC)
            gp += ops_transposed(1, 0, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if NRC:  # s = (1, 1)
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i - 1, j - 1, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, False, False, False, NRC, False)
            gp += ops_transposed(1, 1, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if NCC:  # s = (2, 0)
            udx, udy, urr, urc, ucc, pc, pc2, pr, pr2 = _upstream(
                ws, PLANE, lvl, i - 2, j, h, w, ok, cr, cc, crr, crc, ccc, cN, cNr, cNc,
                HAS_MASK, DO_R, DO_C, DO_RR, DO_RC, DO_CC, DO_N, DO_NR, DO_NC, False, False, False, False, NCC)
            gp += ops_transposed(2, 0, udx, udy, urr, urc, ucc, pc, pc2, pr, pr2)
        if DO_AMLR:
            if k == 0:
                gp += _amlr_grad(ws, PLANE, lvl, i, j, h, w, ok, HAS_MASK, g_si, si_lambda, s1, n, gxn, gyn)
        tl.store(bws + L.GP * PLANE + o, gp, mask=ok)


@triton.jit
def _d_at(ws, PLANE, lvl, i, j, h, w, ok, HAS_MASK: tl.constexpr):
    """(d, valid, pred) at pixels (i, j) of scale 0; out-of-map pixels are invalid."""
    inb = ok & (i >= 0) & (i < h) & (j >= 0) & (j < w)
    o = lvl + i * w + j
    p = tl.load(ws + L.P * PLANE + o, mask=inb, other=1.0)
    g = tl.load(ws + L.G * PLANE + o, mask=inb, other=0.0)
    v = amlr_valid(inb, g)
    if HAS_MASK:
        v = v & (tl.load(ws + L.M * PLANE + o, mask=inb, other=0.0) > 0)
    return log_depth(p, g, v), v, p


@triton.jit
def _amlr_grad(ws, PLANE, lvl, i, j, h, w, ok, HAS_MASK: tl.constexpr, g_si, si_lambda, s1, n, gxn, gyn):
    """d(G_si * Si + G_gr * Gr)/d pred at scale 0 (Yu & Heo 2023, Eqs. 1-3)."""
    d, v, p = _d_at(ws, PLANE, lvl, i, j, h, w, ok, HAS_MASK)
    dl, vl, _ = _d_at(ws, PLANE, lvl, i, j - 1, h, w, ok, HAS_MASK)
    dr, vr, _ = _d_at(ws, PLANE, lvl, i, j + 1, h, w, ok, HAS_MASK)
    du, vu, _ = _d_at(ws, PLANE, lvl, i - 1, j, h, w, ok, HAS_MASK)
    dd, vd, _ = _d_at(ws, PLANE, lvl, i + 1, j, h, w, ok, HAS_MASK)
    gd = si_grad(g_si, d, n, s1, si_lambda)
    gd += gr_grad(gxn, d, dl, vl, dr, vr)
    gd += gr_grad(gyn, d, du, vu, dd, vd)
    return log_depth_grad(p, v, gd)
