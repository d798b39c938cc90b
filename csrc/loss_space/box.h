// Row pieces of the box means of the local-mean-removed losses M5, M17, M65 (spec, "Box
// mean"), and of the transpose of the box sum, for the backward pass.
//
// The n x n box sum with replicate padding is separable: a horizontal window sum of each
// row (here: one chain of pairwise passes over the row padded by the largest radius serves
// all sizes) followed by a vertical window sum (running sums over rows, kept by the
// caller), O(log n) vectorized work per pixel for the three sizes together.
#pragma once

#include <algorithm>
#include <cstdint>

#include "loss_space/loss_math.h"
#include "loss_space/row_stride.h"

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
inline namespace MLRB_CPU_ISA {

// Sums of 2r = 4, 16, 64 neighbours as a fixed pairwise tree: with S_m[u] = x[u] + .. +
// x[u + m - 1], S_2m[u] = S_m[u] + S_m[u + m], so S_4m[u] = (S_m[u] + S_m[u + m]) +
// (S_m[u + 2m] + S_m[u + 3m]). One pass makes two doubling steps: half the stores of a
// doubling chain, the same sums in the same order. The tree has no cancellation (unlike
// prefix sums), so the window sums stay accurate in float.
template <typename T>
MLRB_FORCE_INLINE T quad_sum(const T* S, int m, int u) {
  return (S[u] + S[u + m]) + (S[u + 2 * m] + S[u + 3 * m]);
}

// dst[u] = S_4m[u] for u < len, from src = S_m.
template <typename T>
MLRB_FORCE_INLINE void quad_pass(const T* src, int m, int len, T* __restrict dst) {
  const T* __restrict s = src;
#pragma omp simd
  for (int u = 0; u < len; ++u) dst[u] = quad_sum(s, m, u);
}

// Where the caller writes the row v of window_sums_doubling (w entries): inside its scratch,
// between the paddings, so that the row is not copied.
template <typename T>
T* window_sums_row(T* scratch, int R) {
  return scratch + R;
}

// Replicate-padded window sums of the radii rad[0] < .. < rad[nb-1] = R (2r a power of
// four: 4, 16, 64) of the row v (at window_sums_row): out[k][j] = sum_{a=-r..r} v[clamp(j + a)].
// With the padded row A (A[u] = v[clamp(u - R)]), the window of radius r is
// S_2r[j + R - r] + A[j + R + r]; one chain of quad passes serves all sizes, and the last
// one (S_2R) goes straight into its window sums. scratch: 3 row_stride(w + 2R) entries of T.
// O: the outputs' type (a window sum of 0/1 values, at most 2R + 1, fits a byte exactly).
template <typename T, typename O>
void window_sums_doubling(int w, int R, int nb, const int* rad, O* const* out, T* scratch) {
  const int n = w + 2 * R;
  T* A0 = scratch;
  const T first = A0[R], last = A0[R + w - 1];
  std::fill(A0, A0 + R, first);
  std::fill(A0 + R + w, A0 + n, last);
  T* bufs[2] = {scratch + row_stride<T>(n), scratch + 2 * row_stride<T>(n)};
  const T* src = A0;  // S_m
  int len = n, k = 0;
  for (int m = 1, t = 0; 4 * m <= 2 * R; m *= 4, t ^= 1) {
    const int r = 2 * m;  // the radius whose window needs S_4m
    if (4 * m == 2 * R) {  // the last: r = R, S_2R[j + R - r] = S_2R[j]
      const T* __restrict s = src;
      const T* __restrict hi = A0 + 2 * R;
      O* __restrict o = out[k];
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = O(quad_sum(s, m, j) + hi[j]);
      return;
    }
    len -= 3 * m;
    quad_pass(src, m, len, bufs[t]);
    src = bufs[t];
    if (k < nb && rad[k] == r) {
      const T* __restrict lo = src + R - r;
      const T* __restrict hi = A0 + R + r;
      O* __restrict o = out[k++];
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = O(lo[j] + hi[j]);
    }
  }
}

// Transpose of the replicate-padded window sum: out[c] = sum_j t[j] * #{a in [-r, r] :
// clamp(j + a) == c}. With Z[q] = sum_{|j - q| <= r} t[j] over the padded positions
// q in [-r, w - 1 + r], out[c] = Z[c] inside and the padded positions fold onto the two
// border entries. 2r is a power of four (4, 16, 64): Z comes from the quad passes above
// over t padded by zeros, a fixed pairwise order in T.
// scratch: box_transpose_scratch_size(w, r) entries of T.
template <typename T>
int64_t box_transpose_scratch_size(int w, int r) {
  return 2 * row_stride<T>(int64_t(w) + 4 * r);
}

template <typename T>
void box_row_sum_transpose(const T* t, int w, int r, T* out, T* scratch) {
  // The border entries: Z[-r] + .. + Z[0] = sum_{j <= r} (r + 1 - j) t[j] (the windows of
  // q = -r .. 0 that hold j), and the same from the right. A weighted sum rather than r + 1
  // window sums added one after another: no chain of dependent adds per row.
  auto border = [&](const T* x, int step) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int d = 0; d <= std::min(r, w - 1); ++d) acc += T(r + 1 - d) * x[step * d];
    return acc;
  };
  if (w == 1) {
    out[0] = T(2 * r + 1) * t[0];
    return;
  }
  const T out0 = border(t, 1);  // stored last: the vector loops below may start at column 0
  out[w - 1] = border(t + w - 1, -1);
  if (w == 2) {
    out[0] = out0;
    return;
  }
  // Inside, Z[c] = S_2r[u] + tz[u + 2r] at u = c + r, with tz[u] = t[u - 2r] on [2r, 2r + w)
  // and 0 elsewhere: S_2r = quad(S_M) (2r = 4M), and S_4 .. S_M are stored on the entries
  // u in [r, hi_m) that the columns 0 .. w - 2 read. The first pass reads t itself
  // (tz is never stored) and the last one writes `out`; every entry is the sum of the
  // zero-padded tree (0 + x is kept: it turns -0 into +0). The vector loops' stores start
  // at entries that are multiples of the vector width (r and column 0 for r >= 8, column
  // 32 / sizeof(T) for r = 2): a store split across two cache lines costs about two.
  const int o = 2 * r, lo = r;
  auto tz = [&](int u) { return u >= o && u < o + w ? t[u - o] : T(0); };
  auto quad_tz = [&](int u) { return (tz(u) + tz(u + 1)) + (tz(u + 2) + tz(u + 3)); };
  int M = 1;
  while (4 * M < 2 * r) M *= 4;
  const T* S = nullptr;  // S_M (none for r = 2: the last pass reads t)
  if (M > 1) {
    int hi = w - 1 + r;  // S_2r is read on [lo, w - 1 + r); S_m on [lo, hi + 3m)
    for (int m = M; m >= 4; m /= 4) hi += 3 * m;
    T* bufs[2] = {scratch, scratch + row_stride<T>(int64_t(w) + 4 * r)};
    // S_4 on [lo, hi): zeros, border entries, the inside straight from t, border, zeros
    T* A = bufs[0];
    const int z = std::min(o - 3, hi), mid = o + std::max(0, w - 3);
    std::fill(A + lo, A + z, T(0));  // (0 + 0) + (0 + 0)
    for (int u = std::max(lo, o - 3); u < o; ++u) A[u] = quad_tz(u);
    {
      const T* __restrict tt = t;
      T* __restrict a = A + o;
#pragma omp simd
      for (int c = 0; c < mid - o; ++c) a[c] = quad_sum(tt, 1, c);
    }
    for (int u = mid; u < o + w; ++u) A[u] = quad_tz(u);
    std::fill(A + o + w, A + hi, T(0));
    S = A;
    for (int m = 4, b = 1; m < M; m *= 4, b ^= 1) {
      hi -= 3 * m;
      quad_pass(S + lo, m, hi - lo, bufs[b] + lo);
      S = bufs[b];
    }
  }
  auto S2r = [&](int u) { return M == 1 ? quad_tz(u) : quad_sum(S, M, u); };
  const int cmid = std::min(w - 2, w - 1 - r);  // out[c] reads t[c + r] while c + r < w
  // Columns [c0, c1) go through the vector loops (for r = 2: those reading only t inside;
  // for r >= 8 column 0 too, whose border value is stored after them).
  int c0 = 0, c1 = w - 1;
  if (M == 1) c0 = std::min(int(32 / sizeof(T)), w - 1), c1 = std::max(c0, cmid + 1);
  auto column = [&](int c) { return c <= cmid ? S2r(c + r) + t[c + r] : S2r(c + r); };  // outside [c0, c1)
  for (int c = 1; c < c0; ++c) out[c] = column(c);
  {
    const T* __restrict tr = t + r;
    T* __restrict oc = out;
    if (M == 1) {
      const T* __restrict tt = t + (r - o);  // S_4[c + r] reads tz[c + r ..] = t[c - r ..]
#pragma omp simd
      for (int c = c0; c < c1; ++c) oc[c] = quad_sum(tt, 1, c) + tr[c];
    } else {
      const T* __restrict s = S + r;
#pragma omp simd
      for (int c = c0; c <= std::min(cmid, c1 - 1); ++c) oc[c] = quad_sum(s, M, c) + tr[c];
#pragma omp simd
      for (int c = std::max(cmid + 1, c0); c < c1; ++c) oc[c] = quad_sum(s, M, c);
    }
  }
  for (int c = c1; c < w - 1; ++c) out[c] = column(c);
  out[0] = out0;
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
