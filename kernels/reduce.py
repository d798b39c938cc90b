"""Fixed-order reduction of the per-program partial sums into the losses (one program per
sample): no float atomics anywhere, so a call is bitwise reproducible.

Also writes the per-scale sums (``stats``) that the backward pass needs: valid counts,
the mean of e and the sign sum of M, and the sums of the AMLR pair.
"""
import triton
import triton.language as tl

from . import layout as L
from .loss_math import gr_value, si_value, sq_dev, sqrt_si
from .tiling import count_slot, level_of

NQ = tl.constexpr(L.NQ)
NUM_SCALES = tl.constexpr(L.NUM_SCALES)  # static_range needs a constexpr
# Power-of-two extents of the per-scale, per-type and pyramid-partial vectors.
KP = tl.constexpr(triton.next_power_of_2(L.NUM_SCALES))
TP = tl.constexpr(triton.next_power_of_2(L.NUM_TYPES))
PP = tl.constexpr(triton.next_power_of_2(L.PYR_PARTS))


@triton.jit
def _pick(S, q, idx):
    """S[idx] for an index vector idx (S indexed by q), without a register gather."""
    return tl.sum(tl.where(q[None, :] == idx[:, None], S[None, :], 0.0), axis=1)


@triton.jit
def _sums_per_level(part, b, geom, n, START: tl.constexpr, NQP: tl.constexpr, CH: tl.constexpr):
    """(KP, NQP) sums of the partials (n programs of NQP numbers) per scale, chunk after
    chunk in program order: a fixed order, whatever the number of programs."""
    kk = tl.arange(0, KP)
    q = tl.arange(0, NQP)
    acc = tl.zeros((KP, NQP), tl.float32)
    for p0 in range(0, n, CH):
        p = p0 + tl.arange(0, CH)
        P = tl.load(part + (b * n + p[:, None]) * NQP + q[None, :], mask=(p < n)[:, None], other=0.0)
        k = level_of(p, geom, START)
        acc += tl.sum(tl.where(k[:, None, None] == kk[None, :, None], P[:, None, :], 0.0), axis=0)
    return acc


@triton.jit
def reduce_kernel(
    part_pyr, part, geom, cols, out, stats, NTP, NTL, n_out, si_lambda, si_scale,
    SI_SQRT: tl.constexpr, SEL: tl.constexpr, CH: tl.constexpr,
):
    DO_AMLR: tl.constexpr = (SEL >> L.T_AMLR) & 1 != 0  # only this bit of SEL is passed
    b = tl.program_id(0)
    q = tl.arange(0, NQ)
    kk = tl.arange(0, KP)
    Sl = _sums_per_level(part, b, geom, NTL, L.COL, NQ, CH)  # (KP, NQ)
    # Pyramid partials: (sum e*m, sum m) of each scale per block, summed over the blocks.
    u = tl.arange(0, PP)
    Sp = tl.zeros((PP,), tl.float32)
    for p0 in range(0, NTP, CH):
        p = p0 + tl.arange(0, CH)
        Sp += tl.sum(tl.load(part_pyr + (b * NTP + p[:, None]) * L.PYR_PARTS + u[None, :],
                             mask=(p < NTP)[:, None] & (u < L.PYR_PARTS)[None, :], other=0.0), axis=0)
    # The AMLR pair (Yu & Heo 2023, Eqs. 1-3) from the scale-0 sums. Si = mean(d^2) -
    # lambda mean(d)^2 as var(d) + (1 - lambda) mean(d)^2: the programs' squared deviations
    # (Q_AS2) plus n_p (mean_p - mean)^2 between programs, in program order.
    S0 = tl.sum(tl.where(kk[:, None] == 0, Sl, 0.0), axis=0)
    n = tl.maximum(tl.sum(tl.where(q == L.Q_AN, S0, 0.0)), 1.0)
    s1 = tl.sum(tl.where(q == L.Q_AS1, S0, 0.0)) / n
    m2 = tl.sum(tl.where(q == L.Q_AS2, S0, 0.0))
    if DO_AMLR:
        between = tl.zeros((CH,), tl.float32)
        for p0 in range(0, NTL, CH):
            p = p0 + tl.arange(0, CH)
            on = (p < NTL) & (level_of(p, geom, L.COL) == 0)
            n_p = tl.load(part + (b * NTL + p) * NQ + L.Q_AN, mask=on, other=0.0)
            s_p = tl.load(part + (b * NTL + p) * NQ + L.Q_AS1, mask=on, other=0.0)
            between += tl.where(n_p > 0, sq_dev(n_p, s_p / tl.maximum(n_p, 1.0), s1), 0.0)
        m2 += tl.sum(between)
    t = tl.arange(0, TP)
    cnt_idx = count_slot(t)
    for k in tl.static_range(NUM_SCALES):
        S = tl.sum(tl.where(kk[:, None] == k, Sl, 0.0), axis=0)
        S = tl.where(q == L.Q_SEM, tl.sum(tl.where(u == L.PYR_PER_SCALE * k + L.PYR_SEM, Sp, 0.0)), S)
        S = tl.where(q == L.Q_SM, tl.sum(tl.where(u == L.PYR_PER_SCALE * k + L.PYR_SM, Sp, 0.0)), S)
        if k == 0:
            S = tl.where(q == L.Q_AS2, m2, S)  # backward reads n var(d) from here
        tl.store(stats + (b * L.NUM_SCALES + k) * NQ + q, S)
        num = _pick(S, q, L.Q_NUM + t)
        cnt = _pick(S, q, cnt_idx)
        val = tl.where(cnt > 0, num / tl.maximum(cnt, 1.0), 0.0)  # an empty set gives 0
        col = tl.load(cols + k * L.NUM_TYPES + t, mask=t < L.NUM_TYPES, other=-1)
        tl.store(out + b * n_out + col, val, mask=(t < L.NUM_TYPES) & (col >= 0))
    si = si_value(m2, n, s1, si_lambda)
    if SI_SQRT:
        si = sqrt_si(si)
    si = si_scale * si
    gr = gr_value(tl.sum(tl.where(q == L.Q_AGX, S0, 0.0)), tl.sum(tl.where(q == L.Q_ANX, S0, 0.0)),
                  tl.sum(tl.where(q == L.Q_AGY, S0, 0.0)), tl.sum(tl.where(q == L.Q_ANY, S0, 0.0)))
    c_si = tl.load(cols + L.COL_SI)
    c_gr = tl.load(cols + L.COL_GR)
    tl.store(out + b * n_out + c_si, si, mask=c_si >= 0)
    tl.store(out + b * n_out + c_gr, gr, mask=c_gr >= 0)
