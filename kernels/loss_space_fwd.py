"""Forward of the loss space: every selected loss of every selected scale in one launch.

A program owns a strip of CW columns of one scale and one sample and walks it in chunks
of RH rows: the vertical box sums run as carried prefix sums (box.py), every per-pixel
term comes from loss_math.py, and the program ends by writing its partial sums (one
number per quantity of layout.py), which reduce.py sums in a fixed order. Loss groups
are bits of the constexpr SEL (layout.py), so an unselected group compiles away.
"""
import triton
import triton.language as tl

from . import layout as L
from .box import box_cols_fwd_init, box_cols_fwd_step
from .loss_math import (amlr_valid, border, box_loss, chan_merge, gr_term, l1, log_depth, mean_loss,
                        mean_loss_sign, normal_loss, ops, sq_dev, validity)
from .tiling import count_slot, load6, strip_tile


@triton.jit
def _box_loss(he, hm, cb, i, ok, h, w, R: tl.constexpr, cE, cM, e00, m00, HAS_MASK: tl.constexpr):
    """|e - local mean| and Y = m * sign(e - local mean) / count for one box size."""
    BE, cE = box_cols_fwd_step(he, cb, i, ok, h, w, R, cE)
    if HAS_MASK:
        BM, cM = box_cols_fwd_step(hm, cb, i, ok, h, w, R, cM)
        cnt = tl.maximum(BM, 1.0)
    else:
        cnt = (2 * R + 1) * (2 * R + 1) * 1.0
    loss, y = box_loss(m00, e00, BE, cnt)
    return loss, y, cE, cM


@triton.jit
def _csum(x):
    return tl.sum(x, axis=0)


@triton.jit
def loss_space_fwd_kernel(
    ws, part_pyr, part, geom, PLANE, NTP, NTL,
    HAS_MASK: tl.constexpr, SEL: tl.constexpr, SAVE_Y: tl.constexpr,
    RH: tl.constexpr, CW: tl.constexpr, SEG: tl.constexpr, PCH: tl.constexpr,
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
    NORMALS: tl.constexpr = DO_N or DO_NR or DO_NC
    OPS: tl.constexpr = DO_R or DO_C or DO_RR or DO_RC or DO_CC or NORMALS

    mu = 0.0
    if DO_M:
        # Mean of e over the valid pixels of this scale, from the pyramid's partials.
        # Chunk after chunk in program order: the same fixed order in every program.
        sem = tl.zeros((PCH,), tl.float32)
        sm = tl.zeros((PCH,), tl.float32)
        for r0 in range(0, NTP, PCH):
            r = r0 + tl.arange(0, PCH)
            slot = (b * NTP + r) * L.PYR_PARTS + L.PYR_PER_SCALE * k
            sem += tl.load(part_pyr + slot + L.PYR_SEM, mask=r < NTP, other=0.0)
            sm += tl.load(part_pyr + slot + L.PYR_SM, mask=r < NTP, other=0.0)
        mu = tl.sum(sem, axis=0) / tl.maximum(tl.sum(sm, axis=0), 1.0)

    zero = tl.zeros((CW,), tl.float32)
    cE5, cM5, cE17, cM17, cE65, cM65 = zero, zero, zero, zero, zero, zero
    if DO5:
        cE5 = box_cols_fwd_init(ws + L.HE[0] * PLANE, cb, jok, h, w, i_start, L.R5, RH, CW)
        if HAS_MASK:
            cM5 = box_cols_fwd_init(ws + L.HM[0] * PLANE, cb, jok, h, w, i_start, L.R5, RH, CW)
    if DO17:
        cE17 = box_cols_fwd_init(ws + L.HE[1] * PLANE, cb, jok, h, w, i_start, L.R17, RH, CW)
        if HAS_MASK:
            cM17 = box_cols_fwd_init(ws + L.HM[1] * PLANE, cb, jok, h, w, i_start, L.R17, RH, CW)
    if DO65:
        cE65 = box_cols_fwd_init(ws + L.HE[2] * PLANE, cb, jok, h, w, i_start, L.R65, RH, CW)
        if HAS_MASK:
            cM65 = box_cols_fwd_init(ws + L.HM[2] * PLANE, cb, jok, h, w, i_start, L.R65, RH, CW)

    # Per-column accumulators: loss numerators (13 types), valid counts, sign sum, AMLR.
    aD, aM, a5, a17, a65, ar, ac, arr, arc, acc_, aN, aNr, aNc = \
        zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero
    nm, nr, nc, nrr, nrc, ncc, nN, nNr, nNc, sS = zero, zero, zero, zero, zero, zero, zero, zero, zero, zero
    # AMLR: per column the count, mean and sum of squared deviations of d, merged chunk by
    # chunk (loss_math.chan_merge).
    xn, xmu, xm2, xgx, xnx, xgy, xny = zero, zero, zero, zero, zero, zero, zero

    for i0 in range(i_start, i_end, RH):
        i = i0 + tl.arange(0, RH)[:, None]
        ok = (i < i_end) & jok
        okf = ok.to(tl.float32)
        e00, e01, e02, e10, e11, e20 = load6(ws + L.EM * PLANE + lvl, i, j, h, w, ok)
        if HAS_MASK:
            m00, m01, m02, m10, m11, m20 = load6(ws + L.M * PLANE + lvl, i, j, h, w, ok)
        else:
            m00, m01, m02, m10, m11, m20 = okf, okf, okf, okf, okf, okf
        nm += _csum(m00)
        if DO_D:
            aD += _csum(l1(m00, e00))
        if DO_M:
            aM += _csum(mean_loss(m00, e00, mu))
            sS += _csum(mean_loss_sign(m00, e00, mu))
        if DO5:
            l5, y5, cE5, cM5 = _box_loss(ws + L.HE[0] * PLANE, ws + L.HM[0] * PLANE, cb, i, ok, h, w, L.R5,
                                         cE5, cM5, e00, m00, HAS_MASK)
            a5 += _csum(l5)
            if SAVE_Y:
                tl.store(ws + L.Y[0] * PLANE + cb + i * w, y5, mask=ok)
        if DO17:
            l17, y17, cE17, cM17 = _box_loss(ws + L.HE[1] * PLANE, ws + L.HM[1] * PLANE, cb, i, ok, h, w, L.R17,
                                             cE17, cM17, e00, m00, HAS_MASK)
            a17 += _csum(l17)
            if SAVE_Y:
                tl.store(ws + L.Y[1] * PLANE + cb + i * w, y17, mask=ok)
        if DO65:
            l65, y65, cE65, cM65 = _box_loss(ws + L.HE[2] * PLANE, ws + L.HM[2] * PLANE, cb, i, ok, h, w, L.R65,
                                             cE65, cM65, e00, m00, HAS_MASK)
            a65 += _csum(l65)
            if SAVE_Y:
                tl.store(ws + L.Y[2] * PLANE + cb + i * w, y65, mask=ok)
        if OPS:
            pc, pc2, pr, pr2 = border(i, j, h, w)
            vr, vc, vrr, vrc, vcc, vn, vnr, vnc = validity(m00, m01, m02, m10, m11, m20)
            dx, dy, rr, rc, cc = ops(e00, e01, e02, e10, e11, e20, pc, pc2, pr, pr2)
            if DO_R:
                ar += _csum(l1(vr, dx))
                nr += _csum(vr)
            if DO_C:
                ac += _csum(l1(vc, dy))
                nc += _csum(vc)
            if DO_RR:
                arr += _csum(l1(vrr, rr))
                nrr += _csum(vrr)
            if DO_RC:
                arc += _csum(l1(vrc, rc))
                nrc += _csum(vrc)
            if DO_CC:
                acc_ += _csum(l1(vcc, cc))
                ncc += _csum(vcc)
            if NORMALS:
                p00, p01, p02, p10, p11, p20 = load6(ws + L.P * PLANE + lvl, i, j, h, w, ok)
                g00, g01, g02, g10, g11, g20 = load6(ws + L.G * PLANE + lvl, i, j, h, w, ok)
                pdx, pdy, prr, prc, pcc = ops(p00, p01, p02, p10, p11, p20, pc, pc2, pr, pr2)
                gdx, gdy, grr, grc, gcc = ops(g00, g01, g02, g10, g11, g20, pc, pc2, pr, pr2)
                if DO_N:
                    aN += _csum(tl.where(vn > 0, normal_loss(pdx, pdy, gdx, gdy), 0.0))
                    nN += _csum(vn)
                if DO_NR:
                    aNr += _csum(tl.where(vnr > 0, normal_loss(prr, prc, grr, grc), 0.0))
                    nNr += _csum(vnr)
                if DO_NC:
                    aNc += _csum(tl.where(vnc > 0, normal_loss(prc, pcc, grc, gcc), 0.0))
                    nNc += _csum(vnc)
        if DO_AMLR:
            # The AMLR pair at full resolution: d = log pred - log gt, gt <= 0 invalid.
            on = k == 0
            pl = ws + L.P * PLANE + lvl
            gl = ws + L.G * PLANE + lvl
            i1 = tl.minimum(i + 1, h - 1)
            j1 = tl.minimum(j + 1, w - 1)
            q00 = tl.load(pl + i * w + j, mask=ok, other=1.0)
            q01 = tl.load(pl + i * w + j1, mask=ok, other=1.0)
            q10 = tl.load(pl + i1 * w + j, mask=ok, other=1.0)
            t00 = tl.load(gl + i * w + j, mask=ok, other=0.0)
            t01 = tl.load(gl + i * w + j1, mask=ok, other=0.0)
            t10 = tl.load(gl + i1 * w + j, mask=ok, other=0.0)
            V00 = amlr_valid(on & (m00 > 0), t00)
            V01 = amlr_valid(on & (m01 > 0), t01) & (j + 1 < w)
            V10 = amlr_valid(on & (m10 > 0), t10) & (i + 1 < h)
            d00 = log_depth(q00, t00, V00)
            d01 = log_depth(q01, t01, V01)
            d10 = log_depth(q10, t10, V10)
            cn = _csum(V00.to(tl.float32))
            cmu = _csum(d00) / tl.maximum(cn, 1.0)
            cm2 = _csum(tl.where(V00, sq_dev(1.0, d00, cmu[None, :]), 0.0))
            xn, xmu, xm2 = chan_merge(xn, xmu, xm2, cn, cmu, cm2)
            vx = V00 & V01
            vy = V00 & V10
            xgx += _csum(gr_term(d00, d01, vx))
            xnx += _csum(vx.to(tl.float32))
            xgy += _csum(gr_term(d00, d10, vy))
            xny += _csum(vy.to(tl.float32))

    o = part + (b * NTL + pid) * L.NQ
    tl.store(o + L.Q_NUM + L.T_D, tl.sum(aD))
    tl.store(o + L.Q_NUM + L.T_M, tl.sum(aM))
    tl.store(o + L.Q_NUM + L.T_M5, tl.sum(a5))
    tl.store(o + L.Q_NUM + L.T_M17, tl.sum(a17))
    tl.store(o + L.Q_NUM + L.T_M65, tl.sum(a65))
    tl.store(o + L.Q_NUM + L.T_R, tl.sum(ar))
    tl.store(o + L.Q_NUM + L.T_C, tl.sum(ac))
    tl.store(o + L.Q_NUM + L.T_RR, tl.sum(arr))
    tl.store(o + L.Q_NUM + L.T_RC, tl.sum(arc))
    tl.store(o + L.Q_NUM + L.T_CC, tl.sum(acc_))
    tl.store(o + L.Q_NUM + L.T_N, tl.sum(aN))
    tl.store(o + L.Q_NUM + L.T_NR, tl.sum(aNr))
    tl.store(o + L.Q_NUM + L.T_NC, tl.sum(aNc))
    tl.store(o + count_slot(L.T_D), tl.sum(nm))  # D, M and the M_n share it
    tl.store(o + count_slot(L.T_R), tl.sum(nr))
    tl.store(o + count_slot(L.T_C), tl.sum(nc))
    tl.store(o + count_slot(L.T_RR), tl.sum(nrr))
    tl.store(o + count_slot(L.T_RC), tl.sum(nrc))
    tl.store(o + count_slot(L.T_CC), tl.sum(ncc))
    tl.store(o + count_slot(L.T_N), tl.sum(nN))
    tl.store(o + count_slot(L.T_NR), tl.sum(nNr))
    tl.store(o + count_slot(L.T_NC), tl.sum(nNc))
    tl.store(o + L.Q_SIGN, tl.sum(sS))
    tl.store(o + L.Q_SEM, 0.0)
    tl.store(o + L.Q_SM, 0.0)
    # This program's count, sum of d and squared deviations from its own mean.
    n_p = tl.sum(xn)
    s_p = tl.sum(xn * xmu)
    mu_p = s_p / tl.maximum(n_p, 1.0)
    tl.store(o + L.Q_AN, n_p)
    tl.store(o + L.Q_AS1, s_p)
    tl.store(o + L.Q_AS2, tl.sum(xm2 + sq_dev(xn, xmu, mu_p)))
    tl.store(o + L.Q_AGX, tl.sum(xgx))
    tl.store(o + L.Q_ANX, tl.sum(xnx))
    tl.store(o + L.Q_AGY, tl.sum(xgy))
    tl.store(o + L.Q_ANY, tl.sum(xny))
