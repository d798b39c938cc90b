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
  auto bad = [](T x) { return int(!(std::abs(x) <= kMax)); };
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  int64_t cp = 0, cg = 0;
#pragma omp parallel for num_threads(num_threads) reduction(+ : cp, cg) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t e0 = b * kBlock;
    const int len = int(e0 + kBlock < n ? kBlock : n - e0);
    const T* pb = p + e0;
    const T* gb = g + e0;
    int bp = 0, bg = 0;  // < 2^16 per block
#pragma omp simd reduction(+ : bp, bg)
    for (int e = 0; e < len; ++e) {
      bp += bad(pb[e]);
      bg += bad(gb[e]);
    }
    if (m && (bp | bg)) {  // NaN/Inf are rare: the mask is read only where a block has some
      const uint8_t* mb = m + e0;
      bp = bg = 0;
      for (int e = 0; e < len; ++e) {
        if (!mb[e]) continue;
        bp += bad(pb[e]);
        bg += bad(gb[e]);
      }
    }
    cp += bp;
    cg += bg;
  }
  counts[0] = cp;
  counts[1] = cg;
}

}  // namespace mlrb
