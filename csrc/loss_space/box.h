// Row pieces of the box means of the local-mean-removed losses M5, M17, M65 (spec, "Box
// mean"), and of the transpose of the box sum, for the backward pass.
//
// The n x n box sum with replicate padding is separable: a horizontal window sum of each
// row (here: one prefix sum in double of the row padded by the largest radius serves all
// sizes) followed by a vertical window sum (running sums over rows, kept by the caller),
// O(1) per pixel for every n. The prefix sum runs as 8 independent chains (fixed segments,
// then fixed offsets), so it is not bound by the latency of one long dependency chain.
#pragma once

#include <algorithm>
#include <cstdint>

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
inline namespace MLRB_CPU_ISA {

// In-place inclusive prefix sum of d[0..n), in a fixed order.
inline void prefix_sum(double* d, int n) {
  constexpr int K = 8;
  const int L = n / K;
  if (L < 8) {
    for (int j = 1; j < n; ++j) d[j] += d[j - 1];
    return;
  }
  double acc[K] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int q = 0; q < L; ++q)
    for (int s = 0; s < K; ++s) {
      acc[s] += d[s * L + q];
      d[s * L + q] = acc[s];
    }
  for (int j = K * L; j < n; ++j) {  // the remainder continues the last chain
    acc[K - 1] += d[j];
    d[j] = acc[K - 1];
  }
  double off = 0;
  for (int s = 1; s < K; ++s) {
    off += acc[s - 1];
    const int end = s == K - 1 ? n : (s + 1) * L;
#pragma omp simd
    for (int j = s * L; j < end; ++j) d[j] += off;
  }
}

// Sum of x[0..n) with 4 interleaved partial sums (fixed order).
inline double sum4(const double* x, int n) {
  double a[4] = {0, 0, 0, 0};
  int j = 0;
  for (; j + 4 <= n; j += 4)
    for (int s = 0; s < 4; ++s) a[s] += x[j + s];
  for (; j < n; ++j) a[0] += x[j];
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// Prefix sums of a row replicate-padded by R: P[q] = sum_{q' <= q} v[clamp(q' - R - 1)],
// q = 0 .. w + 2R (P has w + 2R + 1 entries). The window sum of any radius r <= R around
// column j is then P[j + R + r + 1] - P[j + R - r]: one prefix serves all box sizes.
template <typename T>
void padded_prefix(const T* v, int w, int R, double* P) {
  const int np = w + 2 * R + 1;
  const double v0 = double(v[0]), vl = double(v[w - 1]);
#pragma omp simd
  for (int q = 0; q < R + 1; ++q) P[q] = v0;
#pragma omp simd
  for (int c = 0; c < w; ++c) P[c + R + 1] = double(v[c]);
#pragma omp simd
  for (int q = w + R + 1; q < np; ++q) P[q] = vl;
  prefix_sum(P, np);
}

// out[j] = sum_{a=-r..r} v[clamp(j + a)] (the replicate-padded window sum) from padded_prefix(.., R).
template <typename Out>
void window_sums(const double* P, int w, int R, int r, Out* out) {
  const double* __restrict hi = P + R + r + 1;
  const double* __restrict lo = P + R - r;
#pragma omp simd
  for (int j = 0; j < w; ++j) out[j] = static_cast<Out>(hi[j] - lo[j]);
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
