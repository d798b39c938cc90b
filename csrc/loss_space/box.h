// Box means of the local-mean-removed losses M5, M17, M65 (spec, "Box mean") on one row,
// and the transpose of the box sum, for the backward pass.
//
// The n x n box sum with replicate padding is separable: a vertical window sum of rows
// (kept as running column sums by the caller, O(1) per pixel) followed by the horizontal
// window sum of that row, done here with a running sum in double so that the result does
// not depend on the row length. Both sums are O(1) per pixel for every n.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mlrb {

// out[j] = sum_{a=-r..r} v[clamp(j + a, 0, w - 1)] (replicate padding), j = 0..w-1.
template <typename T, typename Out>
void box_row_sum(const T* v, int w, int r, Out* out) {
  auto at = [&](int j) { return static_cast<double>(v[j < 0 ? 0 : (j >= w ? w - 1 : j)]); };
  double s = 0;
  for (int a = -r; a <= r; ++a) s += at(a);
  out[0] = static_cast<Out>(s);
  for (int j = 1; j < w; ++j) {
    s += at(j + r) - at(j - 1 - r);
    out[j] = static_cast<Out>(s);
  }
}

// Transpose of box_row_sum: out[c] = sum_j t[j] * #{a in [-r, r] : clamp(j + a) == c}.
// With Z[q] = sum_{|j - q| <= r} t[j] over the padded positions q in [-r, w - 1 + r],
// out[c] = Z[c] inside and the padded positions fold onto the two border entries.
template <typename T>
void box_row_sum_transpose(const T* t, int w, int r, T* out) {
  auto at = [&](int j) { return (j < 0 || j >= w) ? 0.0 : static_cast<double>(t[j]); };
  double z = 0;  // Z[q], running over q = -r .. w - 1 + r
  for (int j = -2 * r; j <= 0; ++j) z += at(j);
  double first = 0, last = 0;
  for (int q = -r; q <= w - 1 + r; ++q) {
    if (q > -r) z += at(q + r) - at(q - r - 1);
    if (q <= 0) first += z;
    if (q >= w - 1) last += z;
    if (q > 0 && q < w - 1) out[q] = static_cast<T>(z);
  }
  if (w == 1) {
    out[0] = static_cast<T>(first + last - [&] {  // q = 0 = w - 1 was counted twice
      double z0 = 0;
      for (int j = -r; j <= r; ++j) z0 += at(j);
      return z0;
    }());
  } else {
    out[0] = static_cast<T>(first);
    out[w - 1] = static_cast<T>(last);
  }
}

}  // namespace mlrb
