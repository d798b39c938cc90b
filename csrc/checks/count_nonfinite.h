// NaN / Inf count of pred and gt at valid pixels: the input check of mlrb.fused_loss_space
// (check_finite=True) on CPU tensors, in one read of each map without temporaries (the
// torch formulation, isfinite + ~ + & + sum, allocates and reads several maps).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace mlrb {

// counts[0], counts[1]: entries of p, g with !(|x| <= max) (NaN compares false) where m is
// nonzero (everywhere without m). Integer counts: the same for any thread count.
template <typename T>
void count_nonfinite(const T* p, const T* g, const uint8_t* m, int64_t n, int num_threads, int64_t counts[2]) {
  constexpr T kMax = std::numeric_limits<T>::max();
  constexpr int64_t kBlock = int64_t(1) << 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t cp = 0, cg = 0;
#pragma omp parallel for num_threads(num_threads) reduction(+ : cp, cg) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t e0 = b * kBlock, e1 = e0 + kBlock < n ? e0 + kBlock : n;
    int bp = 0, bg = 0;  // < 2^16 per block
#pragma omp simd reduction(+ : bp, bg)
    for (int64_t e = e0; e < e1; ++e) {
      const int v = m ? int(m[e] != 0) : 1;
      bp += int(!(std::abs(p[e]) <= kMax)) & v;
      bg += int(!(std::abs(g[e]) <= kMax)) & v;
    }
    cp += bp;
    cg += bg;
  }
  counts[0] = cp;
  counts[1] = cg;
}

}  // namespace mlrb
