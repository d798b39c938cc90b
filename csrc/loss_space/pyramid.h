// The pyramid D^k of the loss space and its transpose (spec, "Pyramid").
//
// D^k is F.interpolate(D^0, scale_factor=1/2^k, mode="bicubic", align_corners=False),
// i.e. a separable 4-tap filter: output index i of an axis reads input indices
// first(i) .. first(i) + 3 (clamped to the border) with weights w[0..3]. Both axes of a
// level are described by an Axis; the map is filtered along columns first, then rows.
// The backward pass needs the transpose of that linear map (a clamped scatter).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "loss_space/loss_math.h"

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
inline namespace MLRB_CPU_ISA {

struct Axis {
  int n_in = 0;    // full-resolution size
  int n_out = 0;   // size at this level
  int stride = 0;  // first(i) = stride * i + first0
  int first0 = 0;
  double w[4] = {0, 0, 0, 0};

  MLRB_HOST_DEVICE int tap(int i, int a) const {
    const int t = stride * i + first0 + a;
    return t < 0 ? 0 : (t >= n_in ? n_in - 1 : t);
  }
  // Outputs [lo, hi) read taps first(i) .. first(i) + 3 without clamping.
  void interior(int& lo, int& hi) const {
    lo = 0;
    while (lo < n_out && stride * lo + first0 < 0) ++lo;
    hi = n_out;
    while (hi > lo && stride * (hi - 1) + first0 + 3 > n_in - 1) --hi;
  }
};

// A level falls back to the 1x1 resize when floor(H / 2^k) or floor(W / 2^k) is 0.
inline bool level_fallback(int H, int W, int k) { return k > 0 && ((H >> k) == 0 || (W >> k) == 0); }

// Axis of level k >= 1 for an input size n_in (fallback: the 1x1 resize of that axis).
inline Axis level_axis(int n_in, int k, bool fallback) {
  Axis a;
  a.n_in = n_in;
  if (fallback) {
    // Source position of the single output: n_in / 2 - 0.5 (scale n_in, align_corners=False).
    const double src = n_in / 2.0 - 0.5;
    const double fl = std::floor(src);
    a.n_out = 1;
    a.stride = 0;
    a.first0 = static_cast<int>(fl) - 1;
    cubic_weights(src - fl, a.w);
  } else {
    a.n_out = n_in >> k;
    a.stride = 1 << k;
    a.first0 = (1 << (k - 1)) - 2;
    for (int t = 0; t < 4; ++t) a.w[t] = kCubicHalf[t];
  }
  return a;
}

// Rows [i_lo, i_hi) of one level of the mask: valid iff the whole 4x4 footprint is valid
// (spec, "Masks"); returns whether any of them is. The mask levels are built before the
// values: a level without a valid pixel has no terms, so its values are never needed.
// tmp_m: W bytes.
inline bool build_level_mask(const uint8_t* m, const Axis& ay, const Axis& ax, uint8_t* out_m, uint8_t* tmp_m,
                             int i_lo, int i_hi) {
  const int W = ax.n_in;
  uint8_t any = 0;
  for (int i = i_lo; i < i_hi; ++i) {
    const uint8_t *__restrict m0 = m + (int64_t)ay.tap(i, 0) * W, *__restrict m1 = m + (int64_t)ay.tap(i, 1) * W,
                  *__restrict m2 = m + (int64_t)ay.tap(i, 2) * W, *__restrict m3 = m + (int64_t)ay.tap(i, 3) * W;
    uint8_t col_any = 0;
#pragma omp simd reduction(| : col_any)
    for (int c = 0; c < W; ++c) {
      tmp_m[c] = m0[c] & m1[c] & m2[c] & m3[c];
      col_any |= tmp_m[c];
    }
    uint8_t* om = out_m + (int64_t)i * ax.n_out;
    if (!col_any) {  // sparse masks: the row is invalid before its (strided, scalar) row taps
      std::fill(om, om + ax.n_out, uint8_t(0));
      continue;
    }
    int lo, hi;
    ax.interior(lo, hi);
    auto clamped = [&](int j) {
      om[j] = tmp_m[ax.tap(j, 0)] & tmp_m[ax.tap(j, 1)] & tmp_m[ax.tap(j, 2)] & tmp_m[ax.tap(j, 3)];
    };
    for (int j = 0; j < lo; ++j) clamped(j);
    for (int j = lo; j < hi; ++j) {
      const uint8_t* c = tmp_m + (ax.stride * j + ax.first0);
      om[j] = c[0] & c[1] & c[2] & c[3];
    }
    for (int j = std::max(hi, lo); j < ax.n_out; ++j) clamped(j);
    for (int j = 0; j < ax.n_out; ++j) any |= om[j];
  }
  return any != 0;
}

// Rows [i_lo, i_hi) of one level of pred and gt; rows are independent, so tasks may split
// them. With a mask, invalid full-resolution pixels read as 0 so that NaN/Inf there never
// reach a value. tmp_p, tmp_g: W scratch entries each.
template <typename T, bool HasMask>
void build_level(const T* p, const T* g, const uint8_t* m, const Axis& ay, const Axis& ax, T* out_p, T* out_g,
                 T* tmp_p, T* tmp_g, int i_lo, int i_hi) {
  const int W = ax.n_in;
  const T wy[4] = {T(ay.w[0]), T(ay.w[1]), T(ay.w[2]), T(ay.w[3])};
  const T wx[4] = {T(ax.w[0]), T(ax.w[1]), T(ax.w[2]), T(ax.w[3])};
  for (int i = i_lo; i < i_hi; ++i) {
    const int r[4] = {ay.tap(i, 0), ay.tap(i, 1), ay.tap(i, 2), ay.tap(i, 3)};
    const T *p0 = p + (int64_t)r[0] * W, *p1 = p + (int64_t)r[1] * W, *p2 = p + (int64_t)r[2] * W,
            *p3 = p + (int64_t)r[3] * W;
    const T *g0 = g + (int64_t)r[0] * W, *g1 = g + (int64_t)r[1] * W, *g2 = g + (int64_t)r[2] * W,
            *g3 = g + (int64_t)r[3] * W;
    if constexpr (HasMask) {
      const uint8_t *m0 = m + (int64_t)r[0] * W, *m1 = m + (int64_t)r[1] * W, *m2 = m + (int64_t)r[2] * W,
                    *m3 = m + (int64_t)r[3] * W;
#pragma omp simd
      for (int c = 0; c < W; ++c) {
        tmp_p[c] = wy[0] * where_valid(m0[c], p0[c]) + wy[1] * where_valid(m1[c], p1[c]) +
                   wy[2] * where_valid(m2[c], p2[c]) + wy[3] * where_valid(m3[c], p3[c]);
        tmp_g[c] = wy[0] * where_valid(m0[c], g0[c]) + wy[1] * where_valid(m1[c], g1[c]) +
                   wy[2] * where_valid(m2[c], g2[c]) + wy[3] * where_valid(m3[c], g3[c]);
      }
    } else {
#pragma omp simd
      for (int c = 0; c < W; ++c) {
        tmp_p[c] = wy[0] * p0[c] + wy[1] * p1[c] + wy[2] * p2[c] + wy[3] * p3[c];
        tmp_g[c] = wy[0] * g0[c] + wy[1] * g1[c] + wy[2] * g2[c] + wy[3] * g3[c];
      }
    }
    T* op = out_p + (int64_t)i * ax.n_out;
    T* og = out_g + (int64_t)i * ax.n_out;
    auto clamped = [&](int j) {
      const int c0 = ax.tap(j, 0), c1 = ax.tap(j, 1), c2 = ax.tap(j, 2), c3 = ax.tap(j, 3);
      op[j] = wx[0] * tmp_p[c0] + wx[1] * tmp_p[c1] + wx[2] * tmp_p[c2] + wx[3] * tmp_p[c3];
      og[j] = wx[0] * tmp_g[c0] + wx[1] * tmp_g[c1] + wx[2] * tmp_g[c2] + wx[3] * tmp_g[c3];
    };
    int lo, hi;
    ax.interior(lo, hi);
    for (int j = 0; j < lo; ++j) clamped(j);
    // Same sums as clamped(j), no index clamping. A compile-time stride (levels 1 and 2)
    // lets the compiler load the taps as whole vectors and shuffle them.
    auto inner = [&](auto stride) {
      const int st = decltype(stride)::value ? decltype(stride)::value : ax.stride;
      const T* __restrict a = tmp_p + ax.first0;
      const T* __restrict b = tmp_g + ax.first0;
#pragma omp simd
      for (int j = lo; j < hi; ++j) {
        const int c = st * j;
        op[j] = wx[0] * a[c] + wx[1] * a[c + 1] + wx[2] * a[c + 2] + wx[3] * a[c + 3];
        og[j] = wx[0] * b[c] + wx[1] * b[c + 1] + wx[2] * b[c + 2] + wx[3] * b[c + 3];
      }
    };
    if (ax.stride == 2)
      inner(std::integral_constant<int, 2>{});
    else if (ax.stride == 4)
      inner(std::integral_constant<int, 4>{});
    else
      inner(std::integral_constant<int, 0>{});
    for (int j = std::max(hi, lo); j < ax.n_out; ++j) clamped(j);
  }
}

// The horizontal part of the transpose of build_level for one level row gi (ax.n_out
// entries): tmp (ax.n_in entries) = the row scattered back through the 4 horizontal taps.
template <typename T>
void level_row_transpose(const T* gi, const Axis& ax, T* tmp) {
  const int W = ax.n_in;
  const T wx[4] = {T(ax.w[0]), T(ax.w[1]), T(ax.w[2]), T(ax.w[3])};
  std::fill(tmp, tmp + W, T(0));
  int lo, hi;
  ax.interior(lo, hi);
  auto clamped = [&](int j) {
    const T v = gi[j];
    for (int b = 0; b < 4; ++b) tmp[ax.tap(j, b)] += wx[b] * v;
  };
  for (int j = 0; j < lo; ++j) clamped(j);
  // Outputs j in [lo, hi) in one pass per tap, in tap order: within a pass no two outputs
  // hit the same entry, so the updates do not wait on each other. Entries [c0, c1) are
  // instead gathered in one vectorized pass (levels 1 and 2: strides 2 and 4), with the
  // same sums in the same order; the tap passes then skip them.
  int c0 = 0, c1 = 0;
  if (ax.stride == 2 && ax.first0 == -1 && hi - lo >= 3) {
    // entry 2m: taps 1 (output m), 3 (m - 1); entry 2m + 1: taps 0 (m + 1), 2 (m)
    const T* __restrict gg = gi;
    T* __restrict tt = tmp;
#pragma omp simd
    for (int m = lo + 1; m < hi - 1; ++m) {
      tt[2 * m] = (T(0) + wx[1] * gg[m]) + wx[3] * gg[m - 1];
      tt[2 * m + 1] = (T(0) + wx[0] * gg[m + 1]) + wx[2] * gg[m];
    }
    c0 = 2 * lo + 2, c1 = 2 * hi - 2;
  } else if (ax.stride == 4 && ax.first0 == 0 && hi > lo && hi == ax.n_out) {
    const T* __restrict gg = gi;
    T* __restrict tt = tmp;
#pragma omp simd
    for (int m = lo; m < hi; ++m)
      for (int b = 0; b < 4; ++b) tt[4 * m + b] = T(0) + wx[b] * gg[m];
    c0 = 4 * lo, c1 = 4 * hi;
  }
  for (int b = 0; b < 4; ++b) {
    const T wb = wx[b];
    const int st = ax.stride, f0 = ax.first0 + b;
    for (int j = lo; j < hi; ++j) {
      const int c = st * j + f0;
      if (c < c0 || c >= c1) tmp[c] += wb * gi[j];
      else j = std::max(j, (c1 - f0 + st - 1) / st - 1);  // skip to the first output past c1
    }
  }
  for (int j = std::max(hi, lo); j < ax.n_out; ++j) clamped(j);
}

// row += w[0] s[0] + .. + w[N-1] s[N-1], added one after another (the bits of N passes of
// row += w s), in one pass over the row.
template <int N, typename T>
MLRB_FORCE_INLINE void add_weighted_rows(T* __restrict row, const T* const* s, const T* w, int W) {
  const T *__restrict s0 = s[0], *__restrict s1 = s[N > 1 ? 1 : 0], *__restrict s2 = s[N > 2 ? 2 : 0],
          *__restrict s3 = s[N > 3 ? 3 : 0];
  const T w0 = w[0], w1 = w[N > 1 ? 1 : 0], w2 = w[N > 2 ? 2 : 0], w3 = w[N > 3 ? 3 : 0];
#pragma omp simd
  for (int c = 0; c < W; ++c) {
    T acc = row[c] + w0 * s0[c];
    if constexpr (N > 1) acc += w1 * s1[c];
    if constexpr (N > 2) acc += w2 * s2[c];
    if constexpr (N > 3) acc += w3 * s3[c];
    row[c] = acc;
  }
}

// One level of the pyramid's transpose: its gradient map gk (ay.n_out x ax.n_out) and axes.
template <typename T>
struct LevelGradient {
  const T* gk;
  const Axis* ay;
  const Axis* ax;
};

// Level rows add_levels_transpose keeps per level (slot i mod 4), and its scratch in
// entries of T for nlev levels of full-resolution width W.
constexpr int kLevelRowSlots = 4;
inline int64_t levels_transpose_scratch_size(int W, int nlev) { return int64_t(kLevelRowSlots) * nlev * W; }

// Rows [r0, r1) of grad (H x W) += P_k^T gk for the levels in the given order: the
// transpose of build_level. Every full-resolution row c takes the terms w_a tmp_i of the
// level rows i whose vertical tap a is c, level after level, then by increasing i and a:
// the order of applying the levels one after another, row by row. They are added four to
// a pass (add_weighted_rows), so the row is read and written once per four terms. The
// horizontal transpose tmp_i of a level row is made once, when a row first needs it, and
// kept in tmp_rows (levels_transpose_scratch_size: slot i mod 4 of its level, as the rows
// of i and i + 4 never overlap). A row's bits do not depend on how the rows are split into
// tasks.
template <typename T>
void add_levels_transpose(const LevelGradient<T>* levels, int nlev, T* grad, int W, T* tmp_rows, int r0, int r1) {
  const int nrows = r1 - r0;
  if (nrows <= 0 || nlev <= 0) return;
  struct Term {
    int level, i, a;
  };
  // The terms of each row in order (counted, then filled: one list per row, level-major).
  std::vector<int> first(size_t(nrows) + 1, 0);
  auto each_term = [&](auto&& f) {
    for (int L = 0; L < nlev; ++L) {
      const Axis& ay = *levels[L].ay;
      for (int i = 0; i < ay.n_out; ++i)
        for (int a = 0; a < 4; ++a) {
          const int c = ay.tap(i, a);
          if (c >= r0 && c < r1) f(c - r0, Term{L, i, a});
        }
    }
  };
  each_term([&](int row, const Term&) { first[row + 1]++; });
  for (int r = 0; r < nrows; ++r) first[r + 1] += first[r];
  std::vector<Term> terms(size_t(first[nrows]));
  std::vector<int> next(first.begin(), first.end() - 1);
  each_term([&](int row, const Term& t) { terms[next[row]++] = t; });

  std::vector<int> tag(size_t(nlev) * kLevelRowSlots, -1);  // the level row held by each slot
  auto row_of = [&](int L, int i) -> const T* {
    const int slot = L * kLevelRowSlots + i % kLevelRowSlots;
    T* t = tmp_rows + int64_t(slot) * W;
    if (tag[slot] != i) {
      level_row_transpose(levels[L].gk + int64_t(i) * levels[L].ax->n_out, *levels[L].ax, t);
      tag[slot] = i;
    }
    return t;
  };
  for (int r = 0; r < nrows; ++r) {
    T* row = grad + int64_t(r0 + r) * W;
    for (int t = first[r]; t < first[r + 1]; t += 4) {
      const int n = std::min(4, first[r + 1] - t);
      const T* src[4];
      T w[4];
      for (int q = 0; q < n; ++q) {
        const Term& u = terms[t + q];
        src[q] = row_of(u.level, u.i);
        w[q] = T(levels[u.level].ay->w[u.a]);
      }
      if (n == 1) add_weighted_rows<1>(row, src, w, W);
      else if (n == 2) add_weighted_rows<2>(row, src, w, W);
      else if (n == 3) add_weighted_rows<3>(row, src, w, W);
      else add_weighted_rows<4>(row, src, w, W);
    }
  }
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
