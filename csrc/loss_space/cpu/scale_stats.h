// The pre-pass of one scale: the global mean of e = p - g over its valid pixels (M and the
// box losses need it before their terms) and whether its normals need the scaled formula.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "loss_space/cpu/selection.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

template <typename T>
struct ScaleStats {
  T mu = 0;           // global mean of e over the valid pixels (0 when M and the box losses are off)
  bool far = false;   // the normal types take the scaled formula (loss_math.h)
};

// The far-depth value of a pixel: max(|p|, |g|), or kNormalPlainMax from that bound up and
// for NaN (compares false: counted as large).
template <typename T>
MLRB_FORCE_INLINE T depth_magnitude(T p, T g) {
  const T a = std::abs(p), b = std::abs(g);
  return (a < T(kNormalPlainMax) && b < T(kNormalPlainMax)) ? std::max(a, b) : T(kNormalPlainMax);
}

// One pass over the n entries of a scale for what `types` needs: the sum of e m and count of
// m in fixed blocks (float partial sums stay short), and the largest depth_magnitude of a
// valid pixel (invalid pixels read as 0, as in RowWindow).
template <typename T, bool HasMask, bool Mean, bool Far>
ScaleStats<T> scale_stats_pass(const T* p, const T* g, const uint8_t* m, int64_t n) {
  double sum = 0, count = 0;
  T mx = 0;
  const int64_t block = 4096;
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    T acc = 0, bmx = 0;
    int32_t c = 0;  // not int64_t: the loop runs 32 lanes (mask bytes), in 64-bit lanes they spill
    if constexpr (HasMask) {
#pragma omp simd reduction(+ : acc, c) reduction(max : bmx)
      for (int64_t j = s; j < e; ++j) {
        if constexpr (Mean) {
          acc += where_valid(m[j], p[j] - g[j]);
          c += m[j] != 0;
        }
        if constexpr (Far) bmx = std::max(bmx, where_valid(m[j], depth_magnitude(p[j], g[j])));
      }
    } else {
#pragma omp simd reduction(+ : acc) reduction(max : bmx)
      for (int64_t j = s; j < e; ++j) {
        if constexpr (Mean) acc += p[j] - g[j];
        if constexpr (Far) bmx = std::max(bmx, depth_magnitude(p[j], g[j]));
      }
      c = int32_t(e - s);
    }
    sum += acc;
    count += double(c);
    mx = std::max(mx, bmx);
  }
  ScaleStats<T> st;
  if (Mean) st.mu = static_cast<T>(count > 0 ? sum / count : 0.0);
  // Checked once per scale, so ordinary depths keep the plain formula's speed; both give
  // the same bits below the bound.
  if (Far) st.far = !(mx < T(kNormalPlainMax));
  return st;
}

template <typename T, bool HasMask>
ScaleStats<T> scale_stats(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types) {
  const int64_t n = int64_t(h) * w;
  const bool mean = types & kMeanBits, far = types & kNormalBits;
  if (mean && far) return scale_stats_pass<T, HasMask, true, true>(p, g, m, n);
  if (mean) return scale_stats_pass<T, HasMask, true, false>(p, g, m, n);
  if (far) return scale_stats_pass<T, HasMask, false, true>(p, g, m, n);
  return {};
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
