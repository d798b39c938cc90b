// Box means of the local-mean-removed losses M5, M17, M65 (spec, "Box mean") on one row,
// and the transpose of the box sum, for the backward pass.
//
// The n x n box sum with replicate padding is separable: a vertical window sum of rows
// (kept as running column sums by the caller, O(1) per pixel) followed by the horizontal
// window sum of a row, done here as a prefix sum of differences in double, O(1) per pixel
// for every n. The prefix sum runs as 8 independent chains (fixed segments, then fixed
// offsets), so it is not bound by the latency of one long dependency chain.
#pragma once

#include <algorithm>
#include <cstdint>

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
inline namespace MLRB_CPU_ISA {

// Scratch entries (double) that box_row_sum / box_row_sum_transpose need for a row of w.
inline int64_t box_scratch_size(int w, int r) { return 2 * int64_t(w) + 8 * r + 4; }

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

// out[j] = sum_{a=-r..r} v[clamp(j + a, 0, w - 1)] (replicate padding), j = 0..w-1.
template <typename T, typename Out>
void box_row_sum(const T* v, int w, int r, Out* out, double* scratch) {
  // P = prefix sums of the padded row vp[q] = v[clamp(q - r - 1)], q = 0 .. w + 2r (vp[0] is
  // a dummy so that P[q] - P[q - n] is a window): out[j] = P[j + 2r + 1] - P[j].
  double* P = scratch;
  const int np = w + 2 * r + 1;
  const double v0 = double(v[0]), vl = double(v[w - 1]);
#pragma omp simd
  for (int q = 0; q < r + 1; ++q) P[q] = v0;
#pragma omp simd
  for (int c = 0; c < w; ++c) P[c + r + 1] = double(v[c]);
#pragma omp simd
  for (int q = w + r + 1; q < np; ++q) P[q] = vl;
  prefix_sum(P, np);
  const int n = 2 * r + 1;
#pragma omp simd
  for (int j = 0; j < w; ++j) out[j] = static_cast<Out>(P[j + n] - P[j]);
}

// Transpose of box_row_sum: out[c] = sum_j t[j] * #{a in [-r, r] : clamp(j + a) == c}.
// With Z[q] = sum_{|j - q| <= r} t[j] over the padded positions q in [-r, w - 1 + r],
// out[c] = Z[c] inside and the padded positions fold onto the two border entries.
template <typename T>
void box_row_sum_transpose(const T* t, int w, int r, T* out, double* scratch) {
  // P = prefix sums of tz[u] = t[u - 2r - 1] (0 outside), u = 0 .. w + 4r; then
  // Z[q] = P[q + 3r + 1] - P[q + r] for q = -r .. w - 1 + r.
  double* P = scratch;
  const int np = w + 4 * r + 1;
  const int n = 2 * r + 1;
  std::fill(P, P + 2 * r + 1, 0.0);
#pragma omp simd
  for (int c = 0; c < w; ++c) P[c + 2 * r + 1] = double(t[c]);
  std::fill(P + w + 2 * r + 1, P + np, 0.0);
  prefix_sum(P, np);
  const int nq = w + 2 * r;
  double* Z = P + np;  // Z[u] for u = q + r = 0 .. nq - 1
#pragma omp simd
  for (int u = 0; u < nq; ++u) Z[u] = P[u + n] - P[u];
  if (w == 1) {
    out[0] = static_cast<T>(sum4(Z, nq));
    return;
  }
  out[0] = static_cast<T>(sum4(Z, r + 1));                 // q = -r .. 0
#pragma omp simd
  for (int c = 1; c < w - 1; ++c) out[c] = static_cast<T>(Z[c + r]);
  out[w - 1] = static_cast<T>(sum4(Z + w - 1 + r, r + 1));  // q = w - 1 .. w - 1 + r
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
