// The fused CPU kernels compiled for AVX2 (8 floats per vector instead of 4). The build
// stays portable (no -march): only this file's code uses AVX2, and loss_space_kernel.cpp
// calls it only when the running CPU has AVX2. No FMA: results keep the same rounding
// rules (-ffp-contract=off), so they are bitwise reproducible on a given machine.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Standard headers first: their functions keep the baseline instruction set.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#define MLRB_CPU_ISA avx2
#pragma GCC target("avx2")
// Unrolled, the row loops' many load and store streams (fields, rings, window rows) overlap
// better: about -3% of the forward and backward at the paper and NYU shapes (issue 17),
// outputs bitwise identical. Only this build: it doubles the file's compile time.
#pragma GCC optimize("unroll-loops")
#include "loss_space/cpu/drivers.h"

namespace mlrb {
namespace cpu {
namespace avx2 {
template void forward_impl<float>(const float*, const float*, const uint8_t*, const LossSpaceArgs&, double*);
template void forward_impl<double>(const double*, const double*, const uint8_t*, const LossSpaceArgs&, double*);
template void backward_impl<float>(const double*, const float*, const float*, const uint8_t*,
                                   const LossSpaceArgs&, float*);
template void backward_impl<double>(const double*, const double*, const double*, const uint8_t*,
                                    const LossSpaceArgs&, double*);
}  // namespace avx2
}  // namespace cpu
}  // namespace mlrb
#endif
