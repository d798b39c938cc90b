"""Floor model of the fused CPU kernels (issue #17): ``mlrb bench floor``.

The kernels of csrc/loss_space/ are split into STAGES (the table below). Each stage does a
fixed amount of work per element of a pixel set (full-resolution pixels, pixels of scale
k, filtered rows of the box windows, ...): fp add-class ops (add, sub, min, max, abs,
compare, select, blend, mask logic), fp multiplies, square roots, divisions, and loads
and stores counted in elements (what the code does per pixel: a ring-buffer copy is one
load and one store; two overlapping reads x[j], x[j+1] are two loads).

The floor of a stage on this machine is the largest of
  FP pipes   max(adds / peak_add, muls / peak_mul, (adds + muls) / peak_add_mul)
  divider    sqrts / peak_sqrt + divs / peak_div
  loads      loads / peak_load        (L1)
  stores     stores / peak_store      (L1)
  DRAM       bytes / peak_dram        (compulsory traffic: the full-resolution inputs read
             once per pass, charged to the first stage that touches them; the backward's
             gradient written once (plus its read for ownership) and the pyramid levels
             its forward kept read once, charged to its first stage)
with the single-thread peaks measured by ``mlrb._C.machine_peaks`` (csrc/bench/peaks.cpp,
the kernels' instruction set); the floor of a pass is the sum over its stages. The floor
assumes every stage runs at the vector peaks, so the fraction floor / measured says how
far the code is from what its own work could cost on this core.

Not modelled: the AMLR pair (Si, Gr), the scaled normal formula (taken only for depths
beyond 2^28), constant per-row or per-band work (index set-up, reductions of partial
sums), and the exact bits of the masked variants: their mask reads and byte/float
conversions are counted coarsely (one load and one add-class op per mask read or select).

Usage: ``mlrb bench floor [--shape paper] [--select all] [--repeat N] [--rounds R] [--json FILE]``
(or ``python -m mlrb.bench.floor``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable

from mlrb.bench import cases
from mlrb.names import ALL_NAMES, LOSS_NAMES, LOSS_TYPES, NUM_SCALES, NUM_TYPES, names_of, resolve_select

# ---------------------------------------------------------------------------- op counts


@dataclass(frozen=True)
class Ops:
    """Work per element of a stage's pixel set (loads / stores in elements of the dtype)."""
    add: float = 0.0  # add-class: add, sub, min, max, abs, compare, select, blend, mask logic
    mul: float = 0.0
    sqrt: float = 0.0
    div: float = 0.0
    load: float = 0.0
    store: float = 0.0

    def __add__(self, other: "Ops") -> "Ops":
        return Ops(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Ops)))

    def __mul__(self, n: float) -> "Ops":
        return Ops(*(getattr(self, f.name) * n for f in fields(Ops)))

    __rmul__ = __mul__

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(Ops)}


O = Ops
SAME = "same"  # Stage.masked: the masked variant does the same work per element

# Loss-type groups (csrc/loss_space/cpu/selection.h, backward_band.h).
BOX = frozenset({"M5", "M17", "M65"})
MEAN = BOX | {"M"}  # kMeanBits: need the global mean of e
DEEP = frozenset(LOSS_TYPES) - MEAN - {"D"}  # kRowWindowBits: read rows i+1, i+2
NORMAL = frozenset({"N", "Nr", "Nc"})
GRAD = ("r", "c", "rr", "rc", "cc")
T0_ONE_LOOP = frozenset({"D", "M"}) | BOX  # backward_band.h:t0_in_one_loop (without a mask)
FX, FY = frozenset({"r", "N"}), frozenset({"c", "N"})  # backward coefficient fields
FXX, FXY, FYY = frozenset({"rr", "Nr"}), frozenset({"rc", "Nr", "Nc"}), frozenset({"cc", "Nc"})
ROWS = FY | FYY | FXY  # fields that need dy^T (Fields::has_rows)
BOX_RADIUS = {"M5": 2, "M17": 8, "M65": 32}  # loss_math.h kBoxRadius

# Stencils of the per-pixel terms (loss_math.h grad_term / normal_args / valid_of):
# (points read per map, subtractions). The mask footprint is the same set of points.
GRAD_STENCIL = {"r": (2, 1), "c": (2, 1), "rr": (3, 3), "rc": (4, 3), "cc": (3, 3)}
NORMAL_STENCIL = {"N": (3, 2), "Nr": (5, 6), "Nc": (5, 6)}
SGN = 4  # sgn(x): 1 compare (x < 0 or x > 0), copysign(1, x) as and + or, and with the compare (loss_math.h)


def always(types: frozenset) -> int:
    return 1


def any_of(group: Iterable[str]) -> Callable[[frozenset], int]:
    group = frozenset(group)
    return lambda types: int(bool(types & group))


def each_of(group: Iterable[str]) -> Callable[[frozenset], int]:
    group = frozenset(group)
    return lambda types: len(types & group)


def alone_in(t: str, group: frozenset) -> Callable[[frozenset], int]:
    """1 when t runs in its own loop: selected, but not all of its group (selection.h for_group)."""
    return lambda types: int(t in types and not group <= types)


def whole(group: frozenset) -> Callable[[frozenset], int]:
    """1 when all of the group is selected: its types run in one loop (selection.h for_group)."""
    return lambda types: int(group <= types)


@dataclass(frozen=True)
class Stage:
    """One stage: ``ops`` per element of the pixel set ``over`` (PIXEL_SETS), times
    ``mult(types)`` (the selected loss types of the scale; 0: the stage does not run).
    ``ops=None``: runs only with a mask; ``masked=SAME``: same work with a mask."""
    name: str
    passes: str  # "fwd", "bwd" or "fwd+bwd"
    over: str
    ops: Ops | None
    masked: Ops | str | None = SAME
    mult: Callable[[frozenset], int] = always
    source: str = ""
    inputs: bool = False  # reads the full-resolution inputs when it runs at scale 0 (or always, pyramid)

    def work(self, masked: bool) -> Ops | None:
        if not masked:
            return self.ops
        return self.ops if self.masked == SAME else self.masked


# ---------------------------------------------------------------------------- the stages
# In pass order. Counts per element of `over`; the source of each entry is named after it.
# Update an entry when its code changes; box_row_sum_transpose and the normal formulas
# have entries of their own.


def _grad_fwd(t: str) -> Stage:
    pts, subs = GRAD_STENCIL[t]
    # forward_band.h:grad_sums, one type alone: acc += |stencil(e)| (* valid; c += valid)
    return Stage(f"{t}: |stencil(e)| sums", "fwd", "grad_rows",
                 O(add=subs + 2, load=pts),
                 O(add=subs + 3, mul=pts, load=2 * pts),  # valid_of: pts mask reads, pts - 1 products; * v
                 alone_in(t, frozenset(GRAD)), "cpu/forward_band.h:grad_sums + loss_math.h:grad_term")


def _grad_bwd(t: str) -> Stage:
    pts, subs = GRAD_STENCIL[t]
    # grad_fields, one type alone: field[j] += wg * sgn(stencil(e)) (* valid): the field row is read and written
    return Stage(f"{t}: sgn(stencil(e)) into its field", "bwd", "grad_rows",
                 O(add=subs + SGN + 1, mul=1, load=pts + 1, store=1),
                 O(add=subs + SGN + 1, mul=1 + pts, load=2 * pts + 1, store=1),
                 alone_in(t, frozenset(GRAD)), "cpu/backward_band.h:grad_fields + loss_math.h:dloss_grad_type")


# All five gradient types in one loop: the 6 points e(i..i+2, j..j+2) they read are loaded
# once and the shared differences (dx, dy of row i) computed once: 8 subtractions instead of
# 11; with a mask 6 mask reads and 6 products for the five footprints.
GRAD_GROUP_FWD = Stage("gradient types: |stencil(e)| sums (one loop)", "fwd", "grad_rows",
                       O(add=8 + 5 + 5, load=6), O(add=8 + 5 + 5 + 5, mul=6 + 5, load=12),
                       whole(frozenset(GRAD)), "cpu/forward_band.h:grad_sums + loss_math.h:grad_term")
GRAD_GROUP_BWD = Stage("gradient types: sgn(stencil(e)) into the fields (one loop)", "bwd", "grad_rows",
                       O(add=8 + 5 * SGN + 5, mul=5, load=6, store=5),  # assigns 0 + term: no field reads
                       O(add=8 + 5 * SGN + 5, mul=5 + 6 + 5, load=12, store=5),
                       whole(frozenset(GRAD)), "cpu/backward_band.h:grad_fields + loss_math.h:dloss_grad_type")


def _normal_args(t: str) -> Stage:
    pts, subs = NORMAL_STENCIL[t]
    # the two derivatives of pred and of gt; with a mask also the footprint's validity (pts
    # mask reads, pts - 1 products) and its product with the loss / the weight (1 mul)
    return Stage(f"{t}: normal arguments (pred, gt)", "fwd+bwd", "normal_rows",
                 O(add=2 * subs, load=2 * pts),
                 O(add=2 * subs, mul=pts, load=3 * pts),
                 alone_in(t, NORMAL), "loss_math.h:normal_args, valid_of")


# N, Nr, Nc in one loop: 6 points per map loaded once, 8 subtractions per map instead of 14
# (dx, dy and rc shared); with a mask 6 mask reads and 7 products for the three footprints.
NORMAL_GROUP_ARGS = Stage("normal arguments (pred, gt), N, Nr, Nc in one loop", "fwd+bwd", "normal_rows",
                          O(add=16, load=12), O(add=16, mul=7 + 3, load=18),
                          whole(NORMAL), "loss_math.h:normal_args, valid_of (forward_band.h:normal_sums, "
                          "backward_band.h:normal_fields)")


STAGES: tuple[Stage, ...] = (
    # ---- backward: the gradient starts at 0
    Stage("zero the gradient", "bwd", "full", O(store=1),  # row by row, as the band pass reaches it
          source="cpu/backward_band.h:scale_backward_band (std::fill of each row)"),
    # ---- pyramid D^k, k >= 1; with a mask its levels come first, for every sample (bytes: a
    # quarter of a float lane's work per entry). The backward reads the levels its forward
    # kept (cpu/kept_levels.h, as under autograd) and only rebuilds the mask levels.
    Stage("pyramid: mask levels, column taps (4 mask rows, and)", "fwd+bwd", "mask_level_rows_x_W", None,
          O(add=3 / 4, load=4 / 4, store=1 / 4), source="pyramid.h:build_level_mask (column pass)"),
    Stage("pyramid: mask levels, row taps and the any-valid test", "fwd+bwd", "mask_level", None,
          O(add=4 / 4, load=5 / 4, store=1 / 4), source="pyramid.h:build_level_mask (row pass)"),
    Stage("pyramid: column taps (4 rows of pred, gt)", "fwd", "level_rows_x_W",
          O(add=6, mul=8, load=8, store=2),
          O(add=18, mul=8, load=12, store=2),  # + 4 mask reads, 4 compares, 8 selects
          source="pyramid.h:build_level (column pass)", inputs=True),
    Stage("pyramid: row taps (strided reads of the column pass)", "fwd", "level",
          O(add=6, mul=8, load=8, store=2),
          source="pyramid.h:build_level (row pass)"),
    Stage("pyramid: zero the level gradient", "bwd", "level", O(store=1),
          source="cpu/backward_band.h:scale_backward_band (std::fill of each row)"),
    # ---- global mean of e (M and the box losses). The backward reads it, the counts of the
    # valid sets and M's sign sum from the forward (kStat*, loss_space.h), as autograd does:
    # its own pre-passes (backward_band.h:scale_backward_stats) only run without them.
    Stage("global mean of e", "fwd", "scale", O(add=2, load=2), O(add=6, load=3),
          mult=any_of(MEAN), source="cpu/scale_stats.h:scale_stats_pass", inputs=True),
    # ---- per row of a band: the row window and the fields
    Stage("row window: rows of p, g, e (padded)", "fwd", "window_rows",
          O(add=1, load=2, store=3), O(add=5, load=3, store=4),
          source="cpu/row_window.h:RowWindow::load", inputs=True),
    # the backward's window reads p and g in place without a mask (RowWindow::direct)
    Stage("row window: row of e (padded; p, g in place)", "bwd", "window_rows",
          O(add=1, load=2, store=1), O(add=5, load=3, store=4),
          source="cpu/row_window.h:RowWindow::load (direct)", inputs=True),
    Stage("valid count of the row (mask)", "fwd", "scale", None, O(add=1, load=1),
          source="cpu/forward_band.h:scale_forward_band (c0)"),
    Stage("fields: clear t0", "bwd", "bwd_rows_t0", O(store=1),
          source="cpu/backward_band.h:Fields::clear"),
    Stage("fields: clear the active fields", "bwd", "cleared_rows", O(store=1),
          # all gradient types selected: their loop assigns the five fields (grad_first) where it runs
          mult=lambda s: sum(bool(s & f) for f in (FX, FY, FXX, FXY, FYY)),
          source="cpu/backward_band.h:Fields::clear"),
    # with a mask, per row: can a footprint of the gradient or normal group be valid (3 mask
    # rows read; M0 (M0' + M1) and M0 M0' M1 summed)
    Stage("row test: valid footprints of the groups (mask)", "fwd+bwd", "scale", None,
          O(add=3, mul=3, load=3), mult=lambda s: int(bool(s & (frozenset(GRAD) | NORMAL))),
          source="cpu/row_window.h:RowWindow::row_types"),
    # ---- D and M
    Stage("D: |e| sums", "fwd", "scale", O(add=2, load=1), O(add=2, mul=1, load=2),
          mult=any_of({"D"}), source="cpu/forward_band.h:scale_forward_band + loss_math.h:loss_D"),
    Stage("M: |e - mu| sums", "fwd", "scale", O(add=3, load=1), O(add=3, mul=1, load=2),
          mult=any_of({"M"}), source="cpu/forward_band.h:scale_forward_band + loss_math.h:loss_M"),
    # the backward's M shift, in the same loop (e - mu and the mask shared)
    Stage("M: sign sum of sgn(e - mu) for the backward", "fwd", "scale", O(add=SGN + 1), O(add=SGN + 1, mul=1),
          mult=any_of({"M"}), source="cpu/forward_band.h:scale_forward_band (sign_sum)"),
    # With D, M and the three box sizes (t0_in_one_loop) D and M run in the M_n loop, which
    # assigns t0: their e load and t0 load / store are shared there (their FP work binds).
    Stage("D: sgn(e) into t0", "bwd", "scale", O(add=SGN + 1, mul=1, load=2, store=1),
          O(add=SGN + 1, mul=2, load=3, store=1),
          mult=any_of({"D"}), source="cpu/backward_band.h:accumulate_fields + loss_math.h:dloss_D"),
    Stage("M: sgn(e - mu) - shift into t0", "bwd", "scale", O(add=SGN + 3, mul=1, load=2, store=1),
          O(add=SGN + 3, mul=2, load=3, store=1),
          mult=any_of({"M"}), source="cpu/backward_band.h:accumulate_fields + loss_math.h:dloss_M"),
    # ---- box means of M5, M17, M65: horizontal window sums of each filtered row (one
    # chain of quad passes for all selected sizes), running vertical sums per size. With a mask
    # the same runs on the 0/1 map as well (S = 2 maps); the rings keep its counts as bytes
    # (counted in elements like the floats), one add-class conversion per byte stored or read.
    # written straight into the padded row of the filter (box.h:window_sums_row): no copy
    Stage("box: row x = e - mu", "fwd+bwd", "box_rows", O(add=2, load=2, store=1), O(add=5, load=3, store=2),
          mult=any_of(BOX), source="cpu/box_means.h:BoxMeans::filter_upto", inputs=True),
    Stage("box: padding fill", "fwd+bwd", "box_pad", O(store=1), O(store=2),
          mult=any_of(BOX), source="box.h:window_sums_doubling (std::fill)"),
    # quad passes: S_4m[u] = (S_m[u] + S_m[u+m]) + (S_m[u+2m] + S_m[u+3m]), stored but the last
    Stage("box: quad passes", "fwd+bwd", "box_doubling", O(add=3, load=4, store=1),
          O(add=6, load=8, store=2), mult=any_of(BOX), source="box.h:window_sums_doubling (quad_pass)"),
    Stage("box: window sums of the smaller sizes (ring rows)", "fwd+bwd", "box_rows_smaller",
          O(add=1, load=2, store=1), O(add=3, load=4, store=2), mult=any_of(BOX),
          source="box.h:window_sums_doubling (outputs)"),
    Stage("box: last quad pass into the largest size's sums", "fwd+bwd", "box_rows", O(add=4, load=5, store=1),
          O(add=9, load=10, store=2), mult=any_of(BOX), source="box.h:window_sums_doubling (last pass)"),
    Stage("box: vertical sums, first window", "fwd+bwd", "box_vert_init", O(add=1, load=2, store=1),
          O(add=3, load=4, store=2), mult=any_of(BOX), source="cpu/box_means.h:BoxMeans::add"),
    # v += in - out inside the loops below (Slide): their own read of v is this one
    Stage("box: vertical sums, sliding", "fwd+bwd", "box_vert_slide", O(add=2, load=3, store=1),
          O(add=6, load=6, store=2), mult=any_of(BOX), source="cpu/box_means.h:BoxMeans::SlideOf"),
    # with a mask local = box(x) / max(box(m), 1), fused into the loops below (BoxMeans::count)
    Stage("M_n: |e - mu - local| sums", "fwd", "scale", O(add=4, mul=1, load=1), O(add=5, mul=1, div=1, load=2),
          mult=each_of(BOX), source="cpu/forward_band.h:scale_forward_band + loss_math.h:loss_Mn"),
    Stage("M_n: sgn into t0 and tb", "bwd", "scale", O(add=2 + SGN + 1, mul=3, load=2, store=2),
          O(add=2 + SGN + 2, mul=2, div=2, load=3, store=2),  # local and tb: two divisions by the count
          mult=each_of(BOX), source="cpu/backward_band.h:accumulate_fields + loss_math.h:dloss_Mn"),
    # ---- gradient types
    *(_grad_fwd(t) for t in GRAD),
    GRAD_GROUP_FWD,
    *(_grad_bwd(t) for t in GRAD),
    GRAD_GROUP_BWD,
    # ---- normal types: the overflow check (once per scale), the arguments, the formulas
    # in the pass of the global mean when M or a box loss is selected (the loads are shared)
    Stage("normals: far-depth check of the scale", "fwd", "scale", O(add=7, load=2), O(add=8, load=3),
          mult=lambda s: int(bool(s & NORMAL) and not (s & MEAN)), source="cpu/scale_stats.h:depth_magnitude",
          inputs=True),
    Stage("normals: far-depth check in the pass of the mean", "fwd", "scale", O(add=7), O(add=8),
          mult=lambda s: int(bool(s & NORMAL) and bool(s & MEAN)), source="cpu/scale_stats.h:depth_magnitude"),
    *(_normal_args(t) for t in ("N", "Nr", "Nc")),
    NORMAL_GROUP_ARGS,
    # normal_loss<Scaled=false>: num 2 mul 2 add; |a|^2 |b|^2: 5 mul 4 add; sqrt; 1 - num / (AB + eps): 2 add, div
    Stage("normal_loss formula", "fwd", "normal_rows", O(add=8, mul=7, sqrt=1, div=1),
          mult=each_of(NORMAL), source="loss_math.h:normal_loss"),
    Stage("normal sums (acc, count)", "fwd", "normal_rows", O(add=2), mult=each_of(NORMAL),
          source="cpu/forward_band.h:scale_forward_band (normal types)"),
    # normal_loss_grad<Scaled=false>: num, A2, B2: 6 mul 6 add; AB: 1 mul, sqrt; den: 1 add;
    # inv: 1 mul, div; c, s: 4 mul; g1, g2: 4 mul, 2 add
    Stage("normal_loss_grad formula", "bwd", "normal_rows", O(add=9, mul=16, sqrt=1, div=1),
          mult=each_of(NORMAL), source="loss_math.h:normal_loss_grad"),
    Stage("normal gradient into two fields", "bwd", "normal_rows", O(add=2, load=2, store=2),
          mult=lambda s: 0 if NORMAL <= s else len(s & NORMAL),
          source="cpu/backward_band.h:normal_fields (one type)"),
    Stage("normal gradients into five fields (one loop)", "bwd", "normal_rows", O(add=6, load=5, store=5),
          mult=whole(NORMAL), source="cpu/backward_band.h:normal_fields (N, Nr, Nc: txy read and written once)"),
    # ---- B_n^T: box_row_sum_transpose of each row's tb, per selected size
    # quad passes over t padded by zeros: the first reads t itself, the last one (S_2r) adds
    # the centre term and writes out: no padded copy of t, no separate + t or copy-out passes
    Stage("box^T row: zero padding (first pass)", "bwd", "boxT_pad", O(store=1), mult=any_of(BOX),
          source="box.h:box_row_sum_transpose (std::fill)"),
    Stage("box^T row: quad passes but the last", "bwd", "boxT_doubling", O(add=3, load=4, store=1),
          mult=any_of(BOX), source="box.h:box_row_sum_transpose (quad_pass)"),
    Stage("box^T row: last quad pass + centre term into out", "bwd", "boxT_inner", O(add=4, load=5, store=1),
          mult=any_of(BOX), source="box.h:box_row_sum_transpose (out[c])"),
    Stage("box^T row: border entries (weighted sums)", "bwd", "boxT_fold", O(add=1, mul=1, load=1),
          mult=any_of(BOX), source="box.h:box_row_sum_transpose (border)"),
    # B_n^T vertical: running window Z over the ring rows, out -= Z (* mask)
    Stage("box^T emit: Z += in - out", "bwd", "emit_both", O(add=3, load=4, store=2),
          O(add=5, load=5, store=2), mult=any_of(BOX), source="cpu/backward_band.h:box_emit"),
    Stage("box^T emit: Z += in or -= out", "bwd", "emit_one", O(add=2, load=3, store=2),
          O(add=4, load=4, store=2), mult=any_of(BOX), source="cpu/backward_band.h:box_emit"),
    Stage("box^T emit: Z unchanged", "bwd", "emit_none", O(add=1, load=2, store=1),
          O(add=3, load=3, store=1), mult=any_of(BOX), source="cpu/backward_band.h:box_emit"),
    # ---- transposed stencils, per row: one pass over the active fields (apply_stencils_pass)
    Stage("stencils: t = t0 (+ ...), out += t", "bwd", "bwd_rows", O(add=1, load=2, store=1),
          source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("stencils: dx^T(tx + dx^T txx) (A at j and j - 1)", "bwd", "bwd_rows", O(add=6, load=5),
          mult=any_of(FX | FXX), source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("stencils: dy^T carry Bf - prevBf", "bwd", "bwd_rows", O(add=2, load=1, store=1),
          mult=any_of(ROWS), source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("stencils: dx^T(txy)", "bwd", "bwd_rows", O(add=1, load=2), mult=any_of(FXY),
          source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("stencils: + ty", "bwd", "bwd_rows", O(add=1, load=1), mult=any_of(FY),
          source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("stencils: dy^T(tyy) (+ tyy - prevTyy; the carry is a row swap)", "bwd", "bwd_rows", O(add=2, load=2),
          mult=any_of(FYY), source="cpu/backward_band.h:apply_stencils_pass"),
    Stage("halo rows of the bands", "bwd", "halo", O(add=1, load=2, store=1),
          source="cpu/drivers.h:backward_batch (halos, batches of 1-3 only)"),
    # ---- transpose of the pyramid (per level row: a scatter into a W row, 4 row updates)
    Stage("pyramid^T: clear the row buffer", "bwd", "transpose_hits_x_W", O(store=1),
          source="pyramid.h:level_row_transpose (std::fill tmp)"),
    # levels 1, 2 gather each entry's taps (level 1: two entries per output, two taps each);
    # the per-tap scatter of the deeper levels is counted the same (they are 1/16 of the work)
    Stage("pyramid^T: row taps (gathered)", "bwd", "transpose_hits", O(add=4, mul=4, load=4, store=2),
          source="pyramid.h:level_row_transpose (gather, tap passes)"),
    # each level row's 4 terms w_a tmp go into 4 gradient rows; a row takes its terms (all
    # levels) four to a pass: one row read and write per 4 terms (ceil(n / 4) in the code)
    Stage("pyramid^T: column taps into the gradient rows, 4 terms a pass", "bwd", "level_rows_x_W",
          O(add=4, mul=4, load=5, store=1), source="pyramid.h:add_levels_transpose (add_weighted_rows)"),
    # not for the samples whose scale-0 band zeroes them itself (Geometry.band_zeroes)
    Stage("zero the gradient at invalid pixels (mask)", "bwd", "invalid_pass", None, O(add=2, load=2, store=1),
          source="cpu/drivers.h:zero_invalid"),
)

# ---------------------------------------------------------------------------- pixel sets
# The work partition of csrc/loss_space/cpu/plan.h (bands of >= 64 rows, ceil(4 / B) per
# (sample, scale); row chunks of 32 rows), replicated so that halo and ring work is exact.
BAND_ROWS, BATCH_BANDS, HALO_TOP, HALO_BOTTOM, CHUNK_ROWS = 64, 4, 32, 34, 32


def level_size(H: int, W: int, k: int) -> tuple[int, int]:
    """(h, w) of scale k (pyramid.h level_axis; the 1x1 fallback of a too-small level)."""
    if k == 0:
        return H, W
    if (H >> k) == 0 or (W >> k) == 0:
        return 1, 1
    return H >> k, W >> k


def _tap_rows(n_in: int, k: int, i: int, fallback: bool) -> tuple[int, int]:
    """First and last full-resolution index (clamped) that output i of level k reads."""
    if fallback:  # the 1x1 resize: stride 0 (pyramid.h level_axis)
        first = math.floor(n_in / 2.0 - 0.5) - 1
    else:
        first = (1 << k) * i + (1 << (k - 1)) - 2
    clamp = lambda t: min(max(t, 0), n_in - 1)  # noqa: E731
    return clamp(first), clamp(first + 3)


@dataclass
class Geometry:
    """Shapes, the selected types per scale and the band partition of one call."""
    B: int
    H: int
    W: int
    types: tuple  # frozenset of type names per scale k
    masked: bool
    itemsize: int = 4
    # samples whose level k has a valid pixel (None: all B); the kernels skip the others'
    # levels k >= 1 (drivers.h mark_live_levels), so their work is not counted
    live: tuple | None = None
    # {"grad": rows per scale k, "normal": ...}: the rows of the live samples in which the group
    # has a footprint that can be valid (None: every row); the kernels skip it elsewhere
    # (row_window.h RowWindow::row_types)
    group_rows: dict | None = None
    # samples without a live selected level k >= 1 (None: no mask given, every level counts)
    no_live_levels: int | None = None
    bands: dict = field(default_factory=dict)  # k -> [(i0, i1)] of one sample

    def __post_init__(self):
        for k in range(NUM_SCALES):
            if not self.types[k]:
                continue
            h = self.size(k)[0]
            want = -(-BATCH_BANDS // self.B)
            rows = max(BAND_ROWS, -(-h // want))
            self.bands[k] = [(i0, min(h, i0 + rows)) for i0 in range(0, h, rows)]

    def size(self, k: int) -> tuple[int, int]:
        return level_size(self.H, self.W, k)

    def n(self, k: int | None) -> int:
        """Samples that run scale k (k None: full resolution)."""
        return self.B if k is None or k == 0 or self.live is None else self.live[k]

    def rows(self, group: str, k: int) -> int:
        """Rows of scale k in which the gradient ("grad") or normal group runs."""
        return self.n(k) * self.size(k)[0] if self.group_rows is None else self.group_rows[group][k]

    @property
    def whole_samples(self) -> bool:
        return all(len(b) == 1 for b in self.bands.values())

    @property
    def band_zeroes(self) -> int:
        """Samples whose scale-0 band sets the invalid pixels to 0 itself, so that drivers.h
        skips zero_invalid for them: whole samples, a box loss at scale 0, nothing added to
        the gradient after scale 0 (no live level k >= 1; the AMLR pair is not modelled)."""
        if not (self.masked and self.whole_samples and self.types[0] & BOX):
            return 0
        return self.no_live_levels or 0


def _rmax(types: frozenset) -> int:
    return max((BOX_RADIUS[t] for t in types & BOX), default=0)


def _radii(types: frozenset) -> list[int]:
    return sorted(BOX_RADIUS[t] for t in types & BOX)


def _quad_levels_T(w: int, r: int) -> tuple[int, int, list[int]]:
    """box_row_sum_transpose's stored levels S_4 .. S_M (2r = 4M): the first entry lo they
    start at, the end hi of S_4 and the ends of the later ones (none for 2r = 4 or w <= 2)."""
    M = 1
    while 4 * M < 2 * r:
        M *= 4
    if M == 1 or w <= 2:
        return 0, 0, []
    lo, hi, m = r, w - 1 + r, M
    while m >= 4:
        hi += 3 * m
        m //= 4
    ends, h, m = [], hi, 4
    while m < M:
        h -= 3 * m
        ends.append(h)
        m *= 4
    return lo, hi, ends


def _quad_elements_T(w: int, r: int) -> int:
    """Entries the quad passes of box_row_sum_transpose compute but the last (which makes
    S_2r): the first over the w + 3 entries of the zero-padded row that touch t, the later
    ones over [lo, end)."""
    lo, hi, ends = _quad_levels_T(w, r)
    if not hi:
        return 0
    return w + 3 + sum(e - lo for e in ends)


def _quad_pad_T(w: int, r: int) -> int:
    """Zero entries the first quad pass of box_row_sum_transpose fills: [lo, 2r - 3), [2r + w, hi)."""
    lo, hi, _ = _quad_levels_T(w, r)
    return 0 if not hi else (2 * r - 3 - lo) + (hi - 2 * r - w)


def _doubling_elements(n: int, two_r: int) -> int:
    """Elements the stored quad passes of a padded row of n entries process (box.h
    window_sums_doubling: m = 1, 4, .. while 4m < 2R, each over len -= 3m entries; the last,
    S_2R, goes straight into the window sums of the largest size)."""
    total, length, m = 0, n, 1
    while 4 * m < two_r:
        length -= 3 * m
        total += max(length, 0)
        m *= 4
    return total


def _filtered_rows(h: int, i0: int, i1: int, rmax: int) -> int:
    """Rows a band's BoxMeans filters horizontally: i0 - rmax .. i1 - 1 + rmax, clamped."""
    return min(h - 1, i1 - 1 + rmax) - max(0, i0 - rmax) + 1


def _emit_rows(i0: int, i1: int, r: int) -> tuple[int, int, int]:
    """Rows of box_emit with both ring rows (in and out), one of them, none (backward_band.h)."""
    n = i1 - i0
    both = max(0, n - (2 * r + 1))  # main loop: leave = i - 2r - 1 >= i0
    tail_out = sum(1 for q in range(i1 - r, i1 + r) if q - r - 1 >= i0)
    return both, (n - both) + tail_out, 2 * r - tail_out


def _halo_rows(bands: list, h: int) -> int:
    """Rows each band adds from its neighbours' halo buffers (drivers.h backward_batch)."""
    total = 0
    for t, (d0, d1) in enumerate(bands):
        for u, (e0, e1) in enumerate(bands):
            if u == t:
                continue
            lo, hi = (e1, e1 + HALO_BOTTOM) if u < t else (e0 - HALO_TOP, e0)
            total += max(0, min(hi, d1) - max(lo, d0))
    return total


def _transpose_hits(g: Geometry, k: int) -> int:
    """(level row, row task) pairs of add_levels_transpose: each level row once for whole
    samples, else once per 32-row chunk its taps reach (drivers.h backward_batch)."""
    h = g.size(k)[0]
    if g.whole_samples:
        return h
    chunks, fallback = 0, (g.H >> k) == 0 or (g.W >> k) == 0
    for i in range(h):
        lo, hi = _tap_rows(g.H, k, i, fallback)
        chunks += hi // CHUNK_ROWS - lo // CHUNK_ROWS + 1
    return chunks


def _bwd_rows(g: Geometry, k: int) -> int:
    """Entries of the rows a backward band runs: its own and the two below (dy^T)."""
    return _per_band(g, k, lambda h, w, i0, i1: (min(h, i1 + 2) - i0) * w)


def _per_band(g: Geometry, k: int, fn) -> int:
    h, w = g.size(k)
    return g.n(k) * sum(fn(h, w, i0, i1) for i0, i1 in g.bands[k])


# name -> (scope, elements(geometry, k, types)); scope "full": once per pass (k is None),
# "scale": each selected scale, "level": each selected scale k >= 1.
PIXEL_SETS: dict[str, tuple[str, Callable]] = {
    "full": ("full", lambda g, k, s: g.B * g.H * g.W),
    "invalid_pass": ("full", lambda g, k, s: (g.B - g.band_zeroes) * g.H * g.W),
    "scale": ("scale", lambda g, k, s: g.n(k) * g.size(k)[0] * g.size(k)[1]),
    "level": ("level", lambda g, k, s: g.n(k) * g.size(k)[0] * g.size(k)[1]),
    "level_rows_x_W": ("level", lambda g, k, s: g.n(k) * g.size(k)[0] * g.W),
    # the mask levels: every sample's, live or not (drivers.h mark_live_levels)
    "mask_level": ("level", lambda g, k, s: g.B * g.size(k)[0] * g.size(k)[1]),
    "mask_level_rows_x_W": ("level", lambda g, k, s: g.B * g.size(k)[0] * g.W),
    # RowWindow::seek: one row per band row, plus rows i+1, i+2 at a band's start (deep types)
    "window_rows": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: (i1 - i0 + (2 if s & DEEP else 0)) * w)),
    "bwd_rows": ("scale", lambda g, k, s: _bwd_rows(g, k)),
    # the rows in which a group runs (Geometry.rows), and the band rows whose fields are cleared:
    # all of them, but where the whole gradient group runs (it assigns the fields)
    "grad_rows": ("scale", lambda g, k, s: g.rows("grad", k) * g.size(k)[1]),
    "normal_rows": ("scale", lambda g, k, s: g.rows("normal", k) * g.size(k)[1]),
    "cleared_rows": ("scale", lambda g, k, s: _bwd_rows(g, k)
                     - (g.rows("grad", k) * g.size(k)[1] if frozenset(GRAD) <= s else 0)),
    # rows whose t0 is cleared: only the rows after a band's own when its loop assigns t0
    "bwd_rows_t0": ("scale", lambda g, k, s: _per_band(g, k, lambda h, w, i0, i1: (
        min(h, i1 + 2) - (i1 if not g.masked and T0_ONE_LOOP <= s else i0)) * w)),
    "box_rows": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: _filtered_rows(h, i0, i1, _rmax(s)) * w)),
    "box_pad": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: _filtered_rows(h, i0, i1, _rmax(s)) * 2 * _rmax(s))),
    "box_doubling": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: _filtered_rows(h, i0, i1, _rmax(s))
        * _doubling_elements(w + 2 * _rmax(s), 2 * _rmax(s)))),
    "box_rows_smaller": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: _filtered_rows(h, i0, i1, _rmax(s)) * w * max(len(_radii(s)) - 1, 0))),
    "box_vert_init": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: sum(2 * r + 1 for r in _radii(s)) * w)),
    "box_vert_slide": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: (i1 - i0) * w * len(_radii(s)))),  # the first row slides by zero rows
    "boxT_inner": ("scale", lambda g, k, s: _per_band(  # r >= 8: column 0 too (its border value is stored after)
        g, k, lambda h, w, i0, i1: (i1 - i0) * sum(max(w - 2, 0) + (r > 2 and w > 2) for r in _radii(s)))),
    "boxT_pad": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: (i1 - i0) * sum(_quad_pad_T(w, r) for r in _radii(s)))),
    "boxT_doubling": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: (i1 - i0) * sum(_quad_elements_T(w, r) for r in _radii(s)))),
    "boxT_fold": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: (i1 - i0) * sum(2 * (min(r, w - 1) + 1) for r in _radii(s)))),
    "emit_both": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: sum(_emit_rows(i0, i1, r)[0] for r in _radii(s)) * w)),
    "emit_one": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: sum(_emit_rows(i0, i1, r)[1] for r in _radii(s)) * w)),
    "emit_none": ("scale", lambda g, k, s: _per_band(
        g, k, lambda h, w, i0, i1: sum(_emit_rows(i0, i1, r)[2] for r in _radii(s)) * w)),
    "halo": ("scale", lambda g, k, s: g.n(k) * _halo_rows(g.bands[k], g.size(k)[0]) * g.size(k)[1]),
    "transpose_hits": ("level", lambda g, k, s: g.n(k) * _transpose_hits(g, k) * g.size(k)[1]),
    "transpose_hits_x_W": ("level", lambda g, k, s: g.n(k) * _transpose_hits(g, k) * g.W),
}

# ---------------------------------------------------------------------------- the model


def types_per_scale(indices: Iterable[int]) -> tuple:
    """The selected loss types of each scale (frozensets), from indices of ALL_NAMES < 78."""
    per = [set() for _ in range(NUM_SCALES)]
    for i in indices:
        if not 0 <= i < len(LOSS_NAMES):
            name = ALL_NAMES[i] if 0 <= i < len(ALL_NAMES) else f"index {i}"
            raise ValueError(f"the floor model covers the 78 losses of the space; {name!r} is not one of them "
                             "(the AMLR pair Si, Gr is not modelled)")
        per[i // NUM_TYPES].add(LOSS_TYPES[i % NUM_TYPES])
    return tuple(frozenset(s) for s in per)


@dataclass
class StageCount:
    stage: Stage
    elements: int = 0  # elements of its pixel set, times mult, summed over scales
    ops: Ops = field(default_factory=Ops)
    dram_bytes: float = 0.0
    by_scale: dict = field(default_factory=dict)  # k (None: full resolution) -> Ops


def count(g: Geometry, pass_: str) -> list[StageCount]:
    """The work of every stage of one pass ("fwd" or "bwd") that runs for g, in table order."""
    out = []
    for st in STAGES:
        if pass_ not in st.passes.split("+"):
            continue
        per = st.work(g.masked)
        if per is None:
            continue
        scope, fn = PIXEL_SETS[st.over]
        ks = [None] if scope == "full" else [k for k in range(1 if scope == "level" else 0, NUM_SCALES)
                                             if g.types[k]]
        sc = StageCount(st)
        for k in ks:
            types = frozenset().union(*g.types) if k is None else g.types[k]
            n = fn(g, k, types) * st.mult(types)
            if n:
                sc.elements += n
                sc.ops = sc.ops + per * n
                sc.by_scale[k] = sc.by_scale.get(k, Ops()) + per * n
        if sc.elements:
            out.append(sc)
    # Compulsory DRAM traffic: the inputs (pred, gt, mask) once, to the first stage reading them.
    n_full = g.B * g.H * g.W
    input_bytes = n_full * (2 * g.itemsize + (1 if g.masked else 0))
    for sc in out:
        if sc.stage.inputs and (sc.stage.over == "level_rows_x_W" or 0 in sc.by_scale):
            sc.dram_bytes += input_bytes
            break
    if pass_ == "bwd":  # the gradient: written once, read for ownership once; the kept levels read once
        levels = sum(2 * g.n(k) * g.size(k)[0] * g.size(k)[1] for k in range(1, NUM_SCALES) if g.types[k])
        out[0].dram_bytes += (2 * n_full + levels) * g.itemsize
    return out


RESOURCES = ("fp", "divider", "load", "store", "dram")


def stage_times_ns(ops: Ops, dram_bytes: float, peaks: dict, itemsize: int) -> dict:
    """ns each resource needs for this work at the machine's peaks (elements per ns)."""
    return {
        "fp": max(ops.add / peaks["add"], ops.mul / peaks["mul"], (ops.add + ops.mul) / peaks["add_mul"]),
        "divider": ops.sqrt / peaks["sqrt"] + ops.div / peaks["div"],
        "load": ops.load / peaks["load"],
        "store": ops.store / peaks["store"],
        "dram": dram_bytes / (peaks["dram"] * itemsize),
    }


def floor_model(g: Geometry, peaks: dict) -> dict:
    """{"fwd": pass, "bwd": pass}; a pass: floor_ms and its stages (floor_ms, bound, counts)."""
    out = {}
    for pass_ in ("fwd", "bwd"):
        stages = []
        by_scale: dict = {}
        for sc in count(g, pass_):
            t = stage_times_ns(sc.ops, sc.dram_bytes, peaks, g.itemsize)
            bound = max(RESOURCES, key=t.get)
            stages.append({"name": sc.stage.name, "source": sc.stage.source, "elements": sc.elements,
                           "ops": sc.ops.as_dict(), "dram_bytes": sc.dram_bytes,
                           "floor_ms": t[bound] * 1e-6, "bound": bound})
            for k, ops in sc.by_scale.items():  # per scale: the stage's bound on that scale's work
                key = "full" if k is None else str(k)
                tk = stage_times_ns(ops, 0.0, peaks, g.itemsize)
                by_scale[key] = by_scale.get(key, 0.0) + max(tk.values()) * 1e-6
        out[pass_] = {"floor_ms": sum(s["floor_ms"] for s in stages), "stages": stages, "by_scale_ms": by_scale}
    return out


def geometry(shape, indices, dtype: str = "float32", mask=None) -> Geometry:
    """mask: the case's (B, 1, H, W) bool mask, if the shape has one: its levels decide which
    samples' levels run (Geometry.live); without it every level counts."""
    B, _, H, W, density = shape
    live = rows = no_live = None
    types = types_per_scale(indices)
    if mask is not None:
        import torch

        from mlrb.reference import mask_level

        live, rows = [], {"grad": [], "normal": []}
        any_level = torch.zeros(B, dtype=torch.bool)  # a live selected level k >= 1, per sample
        for k in range(NUM_SCALES):
            m = mask_level(mask, k)[:, 0]  # (B, h, w); row i + 1 and column j + 1 clamped
            alive = m.flatten(1).any(1) if k else torch.ones(B, dtype=torch.bool)
            if k and types[k]:
                any_level |= alive
            below, right = torch.cat([m[:, 1:], m[:, -1:]], 1), torch.cat([m[:, :, 1:], m[:, :, -1:]], 2)
            live.append(int(alive.sum()))
            rows["grad"].append(int((m & (right | below)).any(2)[alive].sum()))
            rows["normal"].append(int((m & right & below).any(2)[alive].sum()))
        live, no_live = tuple(live), int((~any_level).sum())
    return Geometry(B, H, W, types, density is not None, 8 if dtype == "float64" else 4, live, rows, no_live)


# ---------------------------------------------------------------------------- measurement


def measure(shape, selections, repeat: int = 10, dtype: str = "float32", seed: int = 0, rounds: int = 1,
            between: Callable[[], None] | None = None) -> list[dict]:
    """Seconds of the fused forward alone and of the backward alone of each selection (a
    list of index lists) on one thread: thread CPU time, best of ``repeat`` calls in each of
    ``rounds`` rounds after a warm-up, calling mlrb._C directly. The calls of all selections
    and both passes are interleaved, call by call, so that a slow spell of a shared machine
    does not land on one of them only; ``between()`` runs before each round and after the
    last (the peaks of ``run``), so that the rounds, and the peaks, spread over the run.
    Each entry holds the best over all rounds and, under "rounds", each round's best."""
    import gc

    import numpy as np
    import torch

    from mlrb import _C

    B, _, H, W, _ = shape
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    pred, gt, mask = cases.make_case(shape, "cpu", tdtype, seed)
    p = np.ascontiguousarray(pred.reshape(B, H, W).numpy())
    g = np.ascontiguousarray(gt.reshape(B, H, W).numpy())
    m = None if mask is None else np.ascontiguousarray(mask.reshape(B, H, W).numpy())
    calls = []
    for sel in selections:
        idx = [int(i) for i in sel]
        grad_out = np.ones((B, len(idx)), dtype=np.float64)
        # as in training (autograd): the forward also returns the scale statistics, and the
        # backward that follows it reads them and the pyramid levels it kept (kept_levels.h)
        last = {}
        fwd = lambda idx=idx, last=last: last.update(st=_C.loss_space_forward(  # noqa: E731
            p, g, m, idx, 1.0, False, 1.0, 1, return_stats=True)[1])
        calls.append({"fwd": fwd,
                      "bwd": lambda idx=idx, go=grad_out, last=last: _C.loss_space_backward(
                          go, p, g, m, idx, 1.0, False, 1.0, 1, stats=last["st"])})
    per_round = [[] for _ in calls]
    enabled = gc.isenabled()
    gc.disable()
    try:
        for c in calls:  # warm-up: the kernels' per-thread scratch grows on the first call
            c["fwd"]()
            c["bwd"]()
        for _ in range(rounds):
            if between is not None:
                between()
            best = [{"fwd": math.inf, "bwd": math.inf} for _ in calls]
            for _ in range(repeat):
                for c, b in zip(calls, best):
                    for pass_ in ("fwd", "bwd"):
                        t0 = time.thread_time()
                        c[pass_]()
                        b[pass_] = min(b[pass_], time.thread_time() - t0)
            for r, b in zip(per_round, best):
                r.append(b)
        if between is not None:
            between()
    finally:
        if enabled:
            gc.enable()
    return [{"fwd": min(b["fwd"] for b in r), "bwd": min(b["bwd"] for b in r), "rounds": r} for r in per_round]


def cpu_info() -> dict:
    """CPU model and the flags that matter here, from /proc/cpuinfo where there is one."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "avx2": "avx2" in flags, "fma": "fma" in flags}


PEAK_CHUNK_MIN_S = 0.05  # mlrb._C.machine_peaks' shortest measurement


def machine_peaks(dtype: str = "float32", seconds: float = 0.6) -> dict:
    from mlrb import _C

    return dict(_C.machine_peaks(dtype, seconds))


def run(shape: str = "paper", select: str = "all", repeat: int = 10, dtype: str = "float32",
        peaks: dict | None = None, peak_seconds: float = 1.2, by_type: bool = False, rounds: int = 5) -> dict:
    """The floor model and the measured times of one case: a JSON-able dict. The kernels are
    timed in ``rounds`` rounds of ``repeat`` calls; the peaks (unless given) are measured
    before each round and after the last, peak_seconds in all. Both are the best over the
    run: a slow spell of a shared machine (seconds long, the kernels' cache traffic slowed
    more than the peak loops, which run in L1) then spoils some rounds, not the result."""
    from mlrb import _C

    if not (isinstance(rounds, int) and rounds >= 1 and isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"rounds and repeat must be integers >= 1, got rounds={rounds!r}, repeat={repeat!r}")
    sh = cases.parse_shape(shape)
    indices = resolve_select(select)
    mask = cases.make_case(sh)[2]  # measure()'s case (the same seed)
    g = geometry(sh, indices, dtype, mask)
    subs = {t: [i for i in indices if LOSS_TYPES[i % NUM_TYPES] == t] for t in LOSS_TYPES}
    subs = {t: sub for t, sub in subs.items() if sub}
    fixed_peaks = peaks is not None
    chunks: list[dict] = []
    chunk_s = max(PEAK_CHUNK_MIN_S, peak_seconds / (rounds + 1))
    between = None if fixed_peaks else (lambda: chunks.append(machine_peaks(dtype, chunk_s)))
    timed = measure(sh, [indices] + (list(subs.values()) if by_type else []), repeat, dtype, rounds=rounds,
                    between=between)
    measured, times = timed[0], timed[1:]
    if not fixed_peaks:
        peaks = {k: max(c[k] for c in chunks) for k in chunks[0]}
    model = floor_model(g, peaks)
    for p in ("fwd", "bwd"):
        model[p]["measured_ms"] = measured[p] * 1e3
        model[p]["fraction"] = model[p]["floor_ms"] / model[p]["measured_ms"]
        model[p]["rounds_ms"] = [b[p] * 1e3 for b in measured["rounds"]]
    result = {"cpu": cpu_info(), "isa": _C.isa(), "dtype": dtype, "threads": 1, "clock": "thread CPU time",
              "peaks": peaks, "shape": cases.shape_label(sh), "select": select, "n_losses": len(indices),
              "repeat": repeat, "rounds": rounds, "peak_chunks": chunks, "passes": model}
    if by_type:
        rows = []
        for (t, sub), meas in zip(subs.items(), times):
            m = floor_model(geometry(sh, sub, dtype, mask), peaks)
            rows.append({"type": t, "losses": list(names_of(sub)),
                         **{f"{p}_{key}": val for p in ("fwd", "bwd") for key, val in (
                             ("floor_ms", m[p]["floor_ms"]), ("measured_ms", meas[p] * 1e3),
                             ("fraction", m[p]["floor_ms"] / (meas[p] * 1e3)))}})
        result["by_type"] = rows
    return result


# ---------------------------------------------------------------------------- report

PASS_NAMES = {"fwd": "forward", "bwd": "backward"}


def format_report(r: dict, top: int = 12) -> str:
    cpu = r["cpu"]
    lines = [
        f"mlrb bench floor: {cpu['model']} (avx2 {'yes' if cpu['avx2'] else 'no'}, fma "
        f"{'yes' if cpu['fma'] else 'no'}), kernels isa={r['isa']}, {r['dtype']}, 1 thread, thread CPU time",
        "peaks (elements/ns, single thread): "
        + "  ".join(f"{k} {v:.3g}" for k, v in r["peaks"].items()),
        f"case: {r['shape']}, losses: {r['select']} ({r['n_losses']}), best of {r['rounds']} rounds x "
        f"{r['repeat']} calls (peaks: best of the measurements before each round and after the last)",
        "",
        f"  {'pass':<10}{'floor ms':>10}{'measured ms':>13}{'fraction':>10}   rounds' best, ms (fraction)",
    ]
    for p in ("fwd", "bwd"):
        m = r["passes"][p]
        spread = "-".join(f"{v:.3g}" for v in (min(m["rounds_ms"]), max(m["rounds_ms"])))
        worst = m["floor_ms"] / max(m["rounds_ms"])
        lines.append(f"  {PASS_NAMES[p]:<10}{m['floor_ms']:10.3f}{m['measured_ms']:13.3f}{m['fraction']:10.3f}"
                     f"   {spread} ({worst:.2f}-{m['fraction']:.2f})")
    for p in ("fwd", "bwd"):
        m = r["passes"][p]
        stages = sorted(m["stages"], key=lambda s: -s["floor_ms"])
        shown = stages if top <= 0 else stages[:top]
        lines += ["", f"{PASS_NAMES[p]} stages by floor (ms, binding resource, share of the pass floor):"]
        for s in shown:
            share = s["floor_ms"] / m["floor_ms"] if m["floor_ms"] else 0.0
            lines.append(f"  {s['name']:<46}{s['floor_ms']:8.3f}  {s['bound']:<8}{share:6.1%}  {s['source']}")
        rest = stages[len(shown):]
        if rest:
            lines.append(f"  {f'({len(rest)} more stages)':<46}{sum(s['floor_ms'] for s in rest):8.3f}")
        scales = m["by_scale_ms"]
        lines.append("  by scale (without the DRAM term): " + ", ".join(
            f"{'full res' if k == 'full' else 'k=' + k} {v:.3f}" for k, v in sorted(scales.items())))
    if r.get("by_type"):
        lines += ["", "each loss type alone (its selected scales; pyramid included), ms:",
                  f"  {'type':<6}{'fwd floor':>10}{'measured':>10}{'fraction':>10}"
                  f"{'bwd floor':>11}{'measured':>10}{'fraction':>10}"]
        for t in r["by_type"]:
            lines.append(f"  {t['type']:<6}{t['fwd_floor_ms']:10.3f}{t['fwd_measured_ms']:10.3f}"
                         f"{t['fwd_fraction']:10.3f}{t['bwd_floor_ms']:11.3f}{t['bwd_measured_ms']:10.3f}"
                         f"{t['bwd_fraction']:10.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlrb bench floor",
        description="Floor model of the fused CPU kernels: counted work per stage, this machine's "
                    "single-thread peaks, and the measured fraction of the floor (forward and backward "
                    "separately, one thread, thread CPU time).")
    p.add_argument("--shape", default="paper",
                   help=f"{', '.join(cases.SHAPES)} or BxCxHxW[@mask density] (default: paper)")
    p.add_argument("--select", default="all", help="losses of the space to model and time (default: all 78)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per pass and round (default 10)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of --repeat calls, spread between the peak measurements; the best call "
                        "of all rounds is taken (default 5)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--peak-seconds", type=float, default=1.2,
                   help="CPU seconds for measuring the machine's peaks, shared between the measurements "
                        "before each round and after the last (default 1.2)")
    p.add_argument("--by-type", action="store_true",
                   help="also model and time each loss type alone (its selected scales)")
    p.add_argument("--top", type=int, default=12, help="stages shown per pass (0: all; default 12)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the full result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mlrb bench floor``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cases.parse_shape(args.shape)
    except ValueError as exc:
        parser.error(f"--shape: {exc}")
    try:
        types_per_scale(resolve_select(args.select))
    except (ValueError, TypeError) as exc:
        parser.error(f"--select: {exc}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if not 1 <= args.rounds <= 100:
        parser.error(f"--rounds must be in [1, 100], got {args.rounds}")
    if not (math.isfinite(args.peak_seconds) and 0.1 <= args.peak_seconds <= 120):
        parser.error(f"--peak-seconds must be in [0.1, 120], got {args.peak_seconds}")
    if args.top < 0:
        parser.error(f"--top must be >= 0, got {args.top}")
    if args.json is not None:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(args.json):
            parser.error(f"--json {args.json}: folder {folder} does not exist or is not writable"
                         if not os.path.isdir(args.json) else f"--json {args.json}: is a folder")
    result = run(args.shape, args.select, args.repeat, args.dtype, peak_seconds=args.peak_seconds,
                 by_type=args.by_type, rounds=args.rounds)
    print(format_report(result, args.top))
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    from mlrb.cli import run_command

    raise SystemExit(run_command("mlrb bench floor", main, sys.argv[1:]))
