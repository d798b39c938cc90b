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

// Replicate-padded window sums of the radii rad[0] < .. < rad[nb-1] = R (2r a power of
// four: 4, 16, 64) of the row v: out[k][j] = sum_{a=-r..r} v[clamp(j + a)]. With the padded
// row A (A[u] = v[clamp(u - R)]), the window of radius r is S_2r[j + R - r] + A[j + R + r];
// one chain of quad passes serves all sizes, and the last one (S_2R) goes straight into
// its window sums. scratch: 3 (w + 2R) entries of T.
template <typename T>
void window_sums_doubling(const T* v, int w, int R, int nb, const int* rad, T* const* out, T* scratch) {
  const int n = w + 2 * R;
  T* A0 = scratch;
  std::fill(A0, A0 + R, v[0]);
  std::copy(v, v + w, A0 + R);
  std::fill(A0 + R + w, A0 + n, v[w - 1]);
  T* bufs[2] = {scratch + n, scratch + 2 * n};
  const T* src = A0;  // S_m
  int len = n, k = 0;
  for (int m = 1, t = 0; 4 * m <= 2 * R; m *= 4, t ^= 1) {
    const int r = 2 * m;  // the radius whose window needs S_4m
    if (4 * m == 2 * R) {  // the last: r = R, S_2R[j + R - r] = S_2R[j]
      const T* __restrict s = src;
      const T* __restrict hi = A0 + 2 * R;
      T* __restrict o = out[k];
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = quad_sum(s, m, j) + hi[j];
      return;
    }
    len -= 3 * m;
    quad_pass(src, m, len, bufs[t]);
    src = bufs[t];
    if (k < nb && rad[k] == r) {
      const T* __restrict lo = src + R - r;
      const T* __restrict hi = A0 + R + r;
      T* __restrict o = out[k++];
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = lo[j] + hi[j];
    }
  }
}

// Transpose of the replicate-padded window sum: out[c] = sum_j t[j] * #{a in [-r, r] :
// clamp(j + a) == c}. With Z[q] = sum_{|j - q| <= r} t[j] over the padded positions
// q in [-r, w - 1 + r], out[c] = Z[c] inside and the padded positions fold onto the two
// border entries. 2r is a power of four (4, 16, 64): Z comes from the quad passes above
// over t padded by zeros, a fixed pairwise order in T.
// scratch: box_transpose_scratch_size(w, r) entries of T.
inline int64_t box_transpose_scratch_size(int w, int r) { return 2 * (int64_t(w) + 4 * r); }

template <typename T>
void box_row_sum_transpose(const T* t, int w, int r, T* out, T* scratch) {
  // tz[u] = t[u - 2r] on [2r, 2r + w), 0 elsewhere (n = w + 4r entries). Z[q] = S_2r[u] +
  // tz[u + 2r] at u = q + r. The first pass reads t itself (tz is never stored) and the last
  // one writes `out`; every entry is the sum of the zero-padded tree (0 + x is kept: it
  // turns -0 into +0).
  const int n = w + 4 * r, o = 2 * r;
  auto tz = [&](int u) { return u >= o && u < o + w ? t[u - o] : T(0); };
  T* bufs[2] = {scratch, scratch + n};
  const T* S = nullptr;  // S_m, stored for m = 4 .. r / 2
  int m = 1, len = n;
  if (2 * r > 4) {  // S_4 from t: zeros, border entries, then the inside read straight from t
    len -= 3;
    T* A = bufs[0];
    const int mid = o + std::max(0, w - 3);
    std::fill(A, A + o - 3, T(0));  // (0 + 0) + (0 + 0)
    for (int u = o - 3; u < o; ++u) A[u] = (tz(u) + tz(u + 1)) + (tz(u + 2) + tz(u + 3));
    {
      const T* __restrict tt = t;
      T* __restrict a = A + o;
#pragma omp simd
      for (int c = 0; c < mid - o; ++c) a[c] = quad_sum(tt, 1, c);
    }
    for (int u = mid; u < o + w; ++u) A[u] = (tz(u) + tz(u + 1)) + (tz(u + 2) + tz(u + 3));
    std::fill(A + o + w, A + len, T(0));
    S = A;
    m = 4;
    for (int b = 1; 16 * m <= 2 * r; m *= 4, b ^= 1) {
      len -= 3 * m;
      quad_pass(S, m, len, bufs[b]);
      S = bufs[b];
    }
  }
  // The last pass: S_2r from S_m (2r = 4m; S_1 = tz for r = 2).
  auto S2r = [&](int u) {
    return m == 1 ? (tz(u) + tz(u + 1)) + (tz(u + 2) + tz(u + 3)) : quad_sum(S, m, u);
  };
  auto fold = [&](int from, int count) {
    T acc = 0;
    for (int u = from; u < from + count; ++u) {
      const T v = S2r(u);
      acc += u < w ? v + t[u] : v;  // tz[u + 2r] = t[u], 0 for u >= w
    }
    return acc;
  };
  if (w == 1) {
    out[0] = fold(0, w + 2 * r);
    return;
  }
  out[0] = fold(0, r + 1);  // q = -r .. 0
  const int cmid = std::min(w - 2, w - 1 - r);  // out[c] reads t[c + r] while c + r < w
  // Columns [c0, c1) read only stored entries of S_m (for r = 2: only t inside).
  int c0 = 1, c1 = w - 1;
  if (m == 1) c0 = std::min(2, w - 1), c1 = std::max(c0, cmid + 1);
  for (int c = 1; c < c0; ++c) out[c] = c <= cmid ? S2r(c + r) + t[c + r] : S2r(c + r);
  {
    const T* __restrict tr = t + r;
    T* __restrict oc = out;
    if (m == 1) {
      const T* __restrict tt = t + (r - o);  // tz[u] = t[u - 2r]: S_4[c + r] reads t[c - r ..]
#pragma omp simd
      for (int c = c0; c < c1; ++c) oc[c] = quad_sum(tt, 1, c) + tr[c];
    } else {
      const T* __restrict s = S + r;
#pragma omp simd
      for (int c = c0; c <= std::min(cmid, c1 - 1); ++c) oc[c] = quad_sum(s, m, c) + tr[c];
#pragma omp simd
      for (int c = std::max(cmid + 1, c0); c < c1; ++c) oc[c] = quad_sum(s, m, c);
    }
  }
  for (int c = c1; c < w - 1; ++c) out[c] = c <= cmid ? S2r(c + r) + t[c + r] : S2r(c + r);
  out[w - 1] = fold(w - 1 + r, r + 1);  // q = w - 1 .. w - 1 + r
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
