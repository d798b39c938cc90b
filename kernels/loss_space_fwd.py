"""Forward of the loss space: every selected loss of every selected scale in one launch.

A program owns a strip of CW columns of one scale and one sample and walks it in chunks
of RH rows: the vertical box sums run as carried prefix sums (box.py), every per-pixel
term comes from loss_math.py, and the program ends by writing its partial sums (one
number per quantity of layout.py), which reduce.py sums in a fixed order. Loss groups
are constexpr flags, so an unselected group compiles away.
"""
import triton
import triton.language as tl

from . import layout as L
from .box import box_cols_fwd_init, box_cols_fwd_step
from .loss_math import border, strip_tile, load6, log_depth, normal_loss, ops, sign, validity



@triton.jit
def _box_loss(he, hm, cb, i, ok, h, w, R: tl.constexpr, cE, cM, e00, m00, HAS_MASK: tl.constexpr):
    """|e - local mean| and Y = m * sign(e - local mean) / count for one box size."""
    BE, cE = box_cols_fwd_step(he, cb, i, ok, h, w, R, cE)
    if HAS_MASK:
        BM, cM = box_cols_fwd_step(hm, cb, i, ok, h, w, R, cM)
        cnt = tl.maximum(BM, 1.0)
    else:
        cnt = (2 * R + 1) * (2 * R + 1) * 1.0
    diff = e00 - BE / cnt
    return m00 * tl.abs(diff), m00 * sign(diff) / cnt, cE, cM


@triton.jit
def _csum(x):
    return tl.sum(x, axis=0)


@triton.jit
def loss_space_fwd_kernel(
    ws, part_pyr, part, geom, PLANE, NTP, NTL,
    HAS_MASK: tl.constexpr, DO_D: tl.constexpr, DO_M: tl.constexpr,
    DO5: tl.constexpr, DO17: tl.constexpr, DO65: tl.constexpr,
    DO_R: tl.constexpr, DO_C: tl.constexpr, DO_RR: tl.constexpr, DO_RC: tl.constexpr,
    DO_CC: tl.constexpr, DO_N: tl.constexpr, DO_NR: tl.constexpr, DO_NC: tl.constexpr,
    DO_AMLR: tl.constexpr, SAVE_Y: tl.constexpr,
    RH: tl.constexpr, CW: tl.constexpr, SEG: tl.constexpr, PCH: tl.constexpr,
):
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
            slot = (b * NTP + r) * L.PYR_PARTS + 2 * k
            sem += tl.load(part_pyr + slot, mask=r < NTP, other=0.0)
            sm += tl.load(part_pyr + slot + 1, mask=r < NTP, other=0.0)
        mu = tl.sum(sem, axis=0) / tl.maximum(tl.sum(sm, axis=0), 1.0)

    zero = tl.zeros((CW,), tl.float32)
    cE5, cM5, cE17, cM17, cE65, cM65 = zero, zero, zero, zero, zero, zero
    if DO5:
        cE5 = box_cols_fwd_init(ws + L.HE[0] * PLANE, cb, jok, h, w, i_start, 2, RH, CW)
        if HAS_MASK:
            cM5 = box_cols_fwd_init(ws + L.HM[0] * PLANE, cb, jok, h, w, i_start, 2, RH, CW)
    if DO17:
        cE17 = box_cols_fwd_init(ws + L.HE[1] * PLANE, cb, jok, h, w, i_start, 8, RH, CW)
        if HAS_MASK:
            cM17 = box_cols_fwd_init(ws + L.HM[1] * PLANE, cb, jok, h, w, i_start, 8, RH, CW)
    if DO65:
        cE65 = box_cols_fwd_init(ws + L.HE[2] * PLANE, cb, jok, h, w, i_start, 32, RH, CW)
        if HAS_MASK:
            cM65 = box_cols_fwd_init(ws + L.HM[2] * PLANE, cb, jok, h, w, i_start, 32, RH, CW)

    # Per-column accumulators: loss numerators (13 types), valid counts, sign sum, AMLR.
    aD, aM, a5, a17, a65, ar, ac, arr, arc, acc_, aN, aNr, aNc = \
        zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero, zero
    nm, nr, nc, nrr, nrc, ncc, nN, nNr, nNc, sS = zero, zero, zero, zero, zero, zero, zero, zero, zero, zero
    # AMLR: per column the count, mean and sum of squared deviations of d (merged chunk by
    # chunk, Chan et al.): Si from mean(d^2) - mean(d)^2 would cancel in float32 when pred
    # is off by a large factor (|mean d| >> std d).
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
            aD += _csum(m00 * tl.abs(e00))
        if DO_M:
            aM += _csum(m00 * tl.abs(e00 - mu))
            sS += _csum(m00 * sign(e00 - mu))
        if DO5:
            l5, y5, cE5, cM5 = _box_loss(ws + L.HE[0] * PLANE, ws + L.HM[0] * PLANE, cb, i, ok, h, w, 2,
                                         cE5, cM5, e00, m00, HAS_MASK)
            a5 += _csum(l5)
            if SAVE_Y:
                tl.store(ws + L.Y[0] * PLANE + cb + i * w, y5, mask=ok)
        if DO17:
            l17, y17, cE17, cM17 = _box_loss(ws + L.HE[1] * PLANE, ws + L.HM[1] * PLANE, cb, i, ok, h, w, 8,
                                             cE17, cM17, e00, m00, HAS_MASK)
            a17 += _csum(l17)
            if SAVE_Y:
                tl.store(ws + L.Y[1] * PLANE + cb + i * w, y17, mask=ok)
        if DO65:
            l65, y65, cE65, cM65 = _box_loss(ws + L.HE[2] * PLANE, ws + L.HM[2] * PLANE, cb, i, ok, h, w, 32,
                                             cE65, cM65, e00, m00, HAS_MASK)
            a65 += _csum(l65)
            if SAVE_Y:
                tl.store(ws + L.Y[2] * PLANE + cb + i * w, y65, mask=ok)
        if OPS:
            pc, pc2, pr, pr2 = border(i, j, h, w)
            vr, vc, vrr, vrc, vcc, vn, vnr, vnc = validity(m00, m01, m02, m10, m11, m20)
            dx, dy, rr, rc, cc = ops(e00, e01, e02, e10, e11, e20, pc, pc2, pr, pr2)
            if DO_R:
                ar += _csum(vr * tl.abs(dx))
                nr += _csum(vr)
            if DO_C:
                ac += _csum(vc * tl.abs(dy))
                nc += _csum(vc)
            if DO_RR:
                arr += _csum(vrr * tl.abs(rr))
                nrr += _csum(vrr)
            if DO_RC:
                arc += _csum(vrc * tl.abs(rc))
                nrc += _csum(vrc)
            if DO_CC:
                acc_ += _csum(vcc * tl.abs(cc))
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
            V00 = on & (m00 > 0) & (t00 > 0)
            V01 = on & (m01 > 0) & (t01 > 0) & (j + 1 < w)
            V10 = on & (m10 > 0) & (t10 > 0) & (i + 1 < h)
            d00 = log_depth(q00, t00, V00)
            d01 = log_depth(q01, t01, V01)
            d10 = log_depth(q10, t10, V10)
            cn = _csum(V00.to(tl.float32))
            cmu = _csum(d00) / tl.maximum(cn, 1.0)
            cm2 = _csum(tl.where(V00, (d00 - cmu[None, :]) * (d00 - cmu[None, :]), 0.0))
            nn = xn + cn
            delta = cmu - xmu
            frac = cn / tl.maximum(nn, 1.0)
            xmu += delta * frac
            xm2 += cm2 + delta * delta * xn * frac
            xn = nn
            vx = V00 & V01
            vy = V00 & V10
            xgx += _csum(tl.where(vx, (d01 - d00) * (d01 - d00), 0.0))
            xnx += _csum(vx.to(tl.float32))
            xgy += _csum(tl.where(vy, (d10 - d00) * (d10 - d00), 0.0))
            xny += _csum(vy.to(tl.float32))

    o = part + (b * NTL + pid) * L.NQ
    tl.store(o + 0, tl.sum(aD))
    tl.store(o + 1, tl.sum(aM))
    tl.store(o + 2, tl.sum(a5))
    tl.store(o + 3, tl.sum(a17))
    tl.store(o + 4, tl.sum(a65))
    tl.store(o + 5, tl.sum(ar))
    tl.store(o + 6, tl.sum(ac))
    tl.store(o + 7, tl.sum(arr))
    tl.store(o + 8, tl.sum(arc))
    tl.store(o + 9, tl.sum(acc_))
    tl.store(o + 10, tl.sum(aN))
    tl.store(o + 11, tl.sum(aNr))
    tl.store(o + 12, tl.sum(aNc))
    tl.store(o + 13, tl.sum(nm))
    tl.store(o + 14, tl.sum(nr))
    tl.store(o + 15, tl.sum(nc))
    tl.store(o + 16, tl.sum(nrr))
    tl.store(o + 17, tl.sum(nrc))
    tl.store(o + 18, tl.sum(ncc))
    tl.store(o + 19, tl.sum(nN))
    tl.store(o + 20, tl.sum(nNr))
    tl.store(o + 21, tl.sum(nNc))
    tl.store(o + L.Q_SIGN, tl.sum(sS))
    tl.store(o + L.Q_SEM, 0.0)
    tl.store(o + L.Q_SM, 0.0)
    # This program's count, sum of d and squared deviations from its own mean.
    n_p = tl.sum(xn)
    s_p = tl.sum(xn * xmu)
    mu_p = s_p / tl.maximum(n_p, 1.0)
    tl.store(o + L.Q_AN, n_p)
    tl.store(o + L.Q_AS1, s_p)
    tl.store(o + L.Q_AS2, tl.sum(xm2 + xn * (xmu - mu_p) * (xmu - mu_p)))
    tl.store(o + L.Q_AGX, tl.sum(xgx))
    tl.store(o + L.Q_ANX, tl.sum(xnx))
    tl.store(o + L.Q_AGY, tl.sum(xgy))
    tl.store(o + L.Q_ANY, tl.sum(xny))
