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
  const int n = w + 4 * r;  // tz[u] = t[u - 2r], 0 outside
  T* A = scratch;
  std::fill(A, A + 2 * r, T(0));
#pragma omp simd
  for (int c = 0; c < w; ++c) A[c + 2 * r] = t[c];
  std::fill(A + w + 2 * r, A + n, T(0));
  // After the pass with step s, A[u] = tz[u] + ... + tz[u + 2s - 1] (u < n - 2s + 1);
  // passes alternate between the two halves of scratch.
  T* B = scratch + n;
  int len = n;
  for (int s = 1; s < 2 * r; s *= 2) {
    len -= s;
    const T* __restrict src = A;
    const T* __restrict ahead = A + s;
    T* __restrict dst = B;
#pragma omp simd
    for (int u = 0; u < len; ++u) dst[u] = src[u] + ahead[u];
    std::swap(A, B);
  }
  // Z[q] = (tz[q + r] + ... + tz[q + 3r - 1]) + tz[q + 3r], kept at A[u], u = q + r.
  const int nq = w + 2 * r;
  for (int u = 0; u < w; ++u) A[u] += t[u];  // tz[u + 2r] = t[u], 0 for u >= w
  auto fold = [&](int from, int count) {
    T s = 0;
    for (int u = from; u < from + count; ++u) s += A[u];
    return s;
  };
  if (w == 1) {
    out[0] = fold(0, nq);
    return;
  }
  out[0] = fold(0, r + 1);  // q = -r .. 0
  const T* __restrict Ar = A + r;
#pragma omp simd
  for (int c = 1; c < w - 1; ++c) out[c] = Ar[c];
  out[w - 1] = fold(w - 1 + r, r + 1);  // q = w - 1 .. w - 1 + r
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
