// The global mean of e = p - g over the valid pixels of one scale (M and the box shift).
#pragma once

#include <algorithm>
#include <cstdint>

#include "loss_space/cpu/selection.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Sum of e m and count of m over one scale (for the global mean of M and the box shift).
template <typename T, bool HasMask>
void mean_error(const T* p, const T* g, const uint8_t* m, int64_t n, double& sum, double& count) {
  sum = 0;
  count = 0;
  const int64_t block = 4096;  // fixed blocks: float partial sums stay short
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    T acc = 0;
    int64_t c = 0;
    if constexpr (HasMask) {
#pragma omp simd reduction(+ : acc, c)
      for (int64_t j = s; j < e; ++j) {
        acc += where_valid(m[j], p[j] - g[j]);
        c += m[j] ? 1 : 0;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t j = s; j < e; ++j) acc += p[j] - g[j];
      c = e - s;
    }
    sum += acc;
    count += double(c);
  }
}

// Global mean of e over the valid pixels of a scale (M and the box shift need it first).
template <typename T, bool HasMask>
T scale_mean(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types) {
  if (!(types & kMeanBits)) return T(0);
  double s, c;
  mean_error<T, HasMask>(p, g, m, int64_t(h) * w, s, c);
  return static_cast<T>(c > 0 ? s / c : 0.0);
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
