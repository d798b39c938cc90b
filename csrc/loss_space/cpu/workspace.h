// Per-thread scratch of the CPU kernels: 64-byte aligned buffers, kept between calls.
#pragma once

#include <cstdint>
#include <vector>

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// n entries of v starting at a 64-byte boundary. Vectorized reductions may split their
// loop by the alignment of the data; aligned buffers make that split, and so the bits,
// the same for every thread and call.
template <typename U>
U* aligned(std::vector<U>& v, int64_t n) {
  constexpr int64_t pad = 64 / sizeof(U);
  if (int64_t(v.size()) < n + pad) v.resize(n + pad);
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<U*>((p + 63) & ~uintptr_t(63));
}

// Scratch of one thread: row buffers (t) and the horizontal box filter's (d).
template <typename T>
struct Workspace {
  std::vector<T> t;
  std::vector<double> d;
  T* tbuf(int64_t n) { return aligned(t, n); }
  double* dbuf(int64_t n) { return aligned(d, n); }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
