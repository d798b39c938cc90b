// The peak loops (peak_loops.h) compiled for AVX2 (32-byte vectors, no FMA), like
// loss_space_kernel_avx2.cpp; peaks.cpp calls them only where mlrb::cpu::isa() is "avx2".
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// Standard and intrinsic headers first: their functions keep their own targets.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define MLRB_CPU_ISA avx2
#define MLRB_PEAKS_VEC_BYTES 32
#pragma GCC target("avx2")
#include "bench/peak_loops.h"

namespace mlrb {
namespace bench {
namespace avx2 {
template int64_t run_loop<float>(int, int64_t, void*, int64_t);
template int64_t run_loop<double>(int, int64_t, void*, int64_t);
}  // namespace avx2
}  // namespace bench
}  // namespace mlrb
#endif
