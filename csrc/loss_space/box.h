// Row pieces of the box means of the local-mean-removed losses M5, M17, M65 (spec, "Box
// mean"), and of the transpose of the box sum, for the backward pass.
//
// The n x n box sum with replicate padding is separable: a horizontal window sum of each
// row (here: one chain of doubling passes over the row padded by the largest radius serves
// all sizes) followed by a vertical window sum (running sums over rows, kept by the
// caller), O(log n) vectorized work per pixel for the three sizes together.
#pragma once

#include <algorithm>
#include <cstdint>

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
inline namespace MLRB_CPU_ISA {

// Replicate-padded window sums of the radii rad[0] < .. < rad[nb-1] = R (2r a power of
// two) of the row v: out[k][j] = sum_{a=-r..r} v[clamp(j + a)]. Doubling passes over the
// padded row A (A[u] = v[clamp(u - R)]): after the pass with step s, S[u] = A[u] + .. +
// A[u + 2s - 1], and the window of radius r is S_{2r}[j + R - r] + A[j + R + r]. One chain
// of log2(2R) vectorized passes serves all sizes; the sums form a fixed tree without the
// cancellation of prefix sums, so they stay accurate in float.
// scratch: 3 (w + 2R) entries of T.
template <typename T>
void window_sums_doubling(const T* v, int w, int R, int nb, const int* rad, T* const* out, T* scratch) {
  const int n = w + 2 * R;
  T* A0 = scratch;
  std::fill(A0, A0 + R, v[0]);
  std::copy(v, v + w, A0 + R);
  std::fill(A0 + R + w, A0 + n, v[w - 1]);
  T* bufs[2] = {scratch + n, scratch + 2 * n};
  const T* src = A0;
  int len = n, k = 0;
  for (int s = 1, t = 0; s < 2 * R; s *= 2, t ^= 1) {
    len -= s;
    T* __restrict dst = bufs[t];
    const T* __restrict a = src;
    const T* __restrict b = src + s;
#pragma omp simd
    for (int u = 0; u < len; ++u) dst[u] = a[u] + b[u];
    src = dst;
    for (; k < nb && rad[k] == s; ++k) {  // blocks of 2s = 2r entries
      const int r = rad[k];
      const T* __restrict lo = src + R - r;
      const T* __restrict hi = A0 + R + r;
      T* __restrict o = out[k];
#pragma omp simd
      for (int j = 0; j < w; ++j) o[j] = lo[j] + hi[j];
    }
  }
}

// Transpose of the replicate-padded window sum: out[c] = sum_j t[j] * #{a in [-r, r] :
// clamp(j + a) == c}. With Z[q] = sum_{|j - q| <= r} t[j] over the padded positions
// q in [-r, w - 1 + r], out[c] = Z[c] inside and the padded positions fold onto the two
// border entries. 2r is a power of two (4, 16, 64): Z comes from log2(2r) vectorized
// doubling passes (sums of 2, 4, ... 2r neighbours), a fixed pairwise order in T.
// scratch: box_transpose_scratch_size(w, r) entries of T.
inline int64_t box_transpose_scratch_size(int w, int r) { return 2 * (int64_t(w) + 4 * r); }

template <typename T>
void box_row_sum_transpose(const T* t, int w, int r, T* out, T* scratch) {
  // tz[u] = t[u - 2r] on [2r, 2r + w), 0 elsewhere (n = w + 4r entries). The first pass
  // reads t itself and the last one writes `out`, so the padded copy of t, the `+ t` pass
  // and the copy into `out` cost no stores of their own; every entry is the same sum in
  // the same order as with the copies (0 + x is written out: it turns -0 into +0).
  const int n = w + 4 * r, o = 2 * r;
  // Pass s = 1: A[u] = tz[u] + tz[u + 1] (u < n - 1).
  T* A = scratch;
  T* B = scratch + n;
  int len = n - 1;
  {
    std::fill(A, A + o - 1, T(0));  // 0 + 0
    A[o - 1] = T(0) + t[0];
    const T* __restrict t1 = t + 1;
    T* __restrict ai = A + o;
#pragma omp simd
    for (int c = 0; c < w - 1; ++c) ai[c] = t[c] + t1[c];
    A[o + w - 1] = t[w - 1] + T(0);
    std::fill(A + o + w, A + len, T(0));
  }
  // After the pass with step s, A[u] = tz[u] + ... + tz[u + 2s - 1]; all but the last
  // pass (s = r) alternate between the two halves of scratch.
  for (int s = 2; s < r; s *= 2) {
    len -= s;
    const T* __restrict src = A;
    const T* __restrict ahead = A + s;
    T* __restrict dst = B;
#pragma omp simd
    for (int u = 0; u < len; ++u) dst[u] = src[u] + ahead[u];
    std::swap(A, B);
  }
  // The last pass and the window: Z[q] = (tz[q + r] + ... + tz[q + 3r - 1]) + tz[q + 3r],
  // at u = q + r, for the padded positions q in [-r, w - 1 + r]; inside
  // out[c] = Z[c], the padded positions fold onto the two border entries.
  const T* __restrict src = A;
  const T* __restrict ahead = A + r;
  auto fold = [&](int from, int count) {
    T acc = 0;
    for (int u = from; u < from + count; ++u) {
      const T v = src[u] + ahead[u];
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
  {
    const T* __restrict s0 = src + r;
    const T* __restrict s1 = ahead + r;
    const T* __restrict tr = t + r;
    T* __restrict oc = out;
#pragma omp simd
    for (int c = 1; c <= cmid; ++c) oc[c] = (s0[c] + s1[c]) + tr[c];
#pragma omp simd
    for (int c = std::max(cmid + 1, 1); c < w - 1; ++c) oc[c] = s0[c] + s1[c];
  }
  out[w - 1] = fold(w - 1 + r, r + 1);  // q = w - 1 .. w - 1 + r
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
