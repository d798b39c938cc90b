"""Workspace layout shared by the Triton kernels and their host code (no triton import).

One float32 workspace per pass holds every intermediate map, as "planes" of size
PLANE = B * sum_k h_k * w_k (all six pyramid levels of one kind of map, level after level,
sample after sample inside a level), followed by the per-program partial sums.

The geometry table is an int32 tensor (NUM_SCALES, GW): one row per scale k with the
level size, its offset inside a plane, the bicubic taps of each axis, whether the scale is
selected, and for the per-scale kernels the first program id and the number of programs
at that scale (0 for a scale with no selected loss, so unselected scales cost nothing).
"""
NUM_SCALES = 6

# --- geometry table columns
H_, W_, OFF, RS, RO, CS, CO, RODD, CODD, UOFF, ACTIVE = range(11)
ROW = 11  # row strips of the horizontal box pass (start, count)
COL = 13  # (column strip, row segment) programs of the loss / gradient kernels (start, count)
UT = 15  # tiles of the column stage of the transposed pyramid (start, count)
GW = 18
# The pyramid kernel runs one program per full-resolution block for all scales; its
# partials are (sum e * m, sum m) per scale: 12 numbers per (sample, block).
PYR_PARTS = 12

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

BOX_RADII = (2, 8, 32)  # M5, M17, M65: r = (n - 1) / 2

# --- per-level partial sums (quantities) written by the loss kernel
NQ = 32
Q_NUM = 0  # 0..12: sum of the per-pixel loss of type t over its valid set
Q_CNT = 13  # 13..21: valid counts: m, r, c, rr, rc, cc, N, Nr, Nc
Q_SIGN = 22  # sum of m * sign(e - mean(e)) (backward of M)
Q_SEM, Q_SM = 23, 24  # sum of e * m and of m (the mean of M), from the pyramid kernel
# The AMLR pair, scale 0: valid count, sum of d, sum of squared deviations of d from the
# program's mean (in the reduced stats: from the sample's mean), the Gr sums and counts.
Q_AN, Q_AS1, Q_AS2, Q_AGX, Q_ANX, Q_AGY, Q_ANY = range(25, 32)
