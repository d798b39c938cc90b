"""The layout shared by the Triton kernels and their host code (no triton import): loss
types and their bits, output columns, box radii, the geometry table, the workspace planes
and the partial-sum slots. Kernel bodies name these; they spell no layout number.

One float32 workspace per pass holds every intermediate map, as "planes" of size
PLANE = B * sum_k h_k * w_k (all six pyramid levels of one kind of map, level after level,
sample after sample inside a level), followed by the per-program partial sums.

The geometry table is an int32 tensor (NUM_SCALES, GW): one row per scale k with the
level size, its offset inside a plane, the bicubic taps of each axis, whether the scale is
selected, and for the per-scale kernels the first program id and the number of programs
at that scale (0 for a scale with no selected loss, so unselected scales cost nothing).
"""
from mlrb.names import BOX_SIZES, LOSS_TYPES, NUM_SCALES, NUM_TYPES

# --- loss types: slot t of type LOSS_TYPES[t], bit t of the kernels' selection mask SEL
T_D, T_M, T_M5, T_M17, T_M65, T_R, T_C, T_RR, T_RC, T_CC, T_N, T_NR, T_NC = range(NUM_TYPES)
assert LOSS_TYPES == ("D", "M", "M5", "M17", "M65", "r", "c", "rr", "rc", "cc", "N", "Nr", "Nc")
T_AMLR = NUM_TYPES  # bit of the AMLR pair (Si, Gr) in SEL
BOX_TYPES = (T_M5, T_M17, T_M65)
BOX_RADII = tuple((BOX_SIZES[LOSS_TYPES[t]] - 1) // 2 for t in BOX_TYPES)  # r = (n - 1) / 2: 2, 8, 32
R5, R17, R65 = BOX_RADII
BOX_BITS = sum(1 << t for t in BOX_TYPES)  # the part of SEL the horizontal box passes read
AMLR_BIT = 1 << T_AMLR


def selection_bits(types, amlr: bool) -> int:
    """SEL: bit t set for each selected loss type name, bit T_AMLR for the AMLR pair."""
    return sum(1 << LOSS_TYPES.index(t) for t in set(types)) | (AMLR_BIT if amlr else 0)


# --- output columns (make_plan's `cols` table): loss t at scale k is index k * NUM_TYPES + t
COL_SI = NUM_SCALES * NUM_TYPES  # 78
COL_GR = COL_SI + 1  # 79
NUM_COLS = COL_GR + 1

# --- geometry table columns
H_, W_, OFF, RS, RO, CS, CO, RODD, CODD, UOFF, ACTIVE = range(11)
ROW = 11  # row strips of the horizontal box pass (start, count)
COL = 13  # (column strip, row segment) programs of the loss / gradient kernels (start, count)
UT = 15  # tiles of the column stage of the transposed pyramid (start, count)
GW = 17
# The pyramid kernel runs one program per full-resolution block for all scales; its
# partials are (sum e * m, sum m) per scale: PYR_PARTS numbers per (sample, block).
PYR_SEM, PYR_SM = 0, 1  # slot 2 k + PYR_SEM / PYR_SM of scale k
PYR_PER_SCALE = 2
PYR_PARTS = PYR_PER_SCALE * NUM_SCALES

# --- forward workspace planes
P, G, M, EM = 0, 1, 2, 3  # pred^k, gt^k, validity^k (0/1), (pred^k - gt^k) * validity^k
HE = (4, 5, 6)  # horizontal window sums of EM for boxes 5, 17, 65
HM = (7, 8, 9)  # horizontal window sums of M
Y = (10, 11, 12)  # m * sign(e - local mean) / count: what backward needs of each M_n
NUM_FWD_PLANES = 13
NUM_FWD_PLANES_NO_BOX = 4  # without an M_n loss only P, G, M, EM are allocated

# --- backward workspace planes (then the column stage of the transposed pyramid)
GP = 0  # dL/dpred^k at every level
TB = (1, 2, 3)  # horizontal transposed box of each Y
NUM_BWD_PLANES = 4
NUM_BWD_PLANES_NO_BOX = 1

# --- per-level partial sums (quantities) written by the loss kernel
NQ = 32
Q_NUM = 0  # Q_NUM + t: sum of the per-pixel loss of type t over its valid set
Q_CNT = Q_NUM + NUM_TYPES  # 13..21: valid counts: m, r, c, rr, rc, cc, N, Nr, Nc
NUM_CNT = NUM_TYPES - T_R + 1  # D, M and the M_n share the count of m (tiling.count_slot)
Q_SIGN = Q_CNT + NUM_CNT  # 22: sum of m * sign(e - mean(e)) (backward of M)
Q_SEM, Q_SM = Q_SIGN + 1, Q_SIGN + 2  # sum of e * m and of m (the mean of M), from the pyramid kernel
# The AMLR pair, scale 0: valid count, sum of d, sum of squared deviations of d from the
# program's mean (in the reduced stats: from the sample's mean), the Gr sums and counts.
Q_AN, Q_AS1, Q_AS2, Q_AGX, Q_ANX, Q_AGY, Q_ANY = range(Q_SM + 1, Q_SM + 8)
assert Q_ANY < NQ
