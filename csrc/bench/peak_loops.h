// Throughput loops of the machine-peak measurement (peaks.cpp), compiled once per
// instruction set like the kernels' drivers.h: peaks.cpp (baseline x86-64, 16-byte SSE2
// vectors) and peaks_avx2.cpp (`#pragma GCC target("avx2")`, 32-byte vectors, no FMA), so
// that each peak is what the kernels' own instruction set can reach on this CPU.
//
// Every loop is throughput bound: many independent accumulators or independent operations
// per iteration (more than latency x pipes of any current x86 core), their inputs made
// opaque to the compiler with empty `asm volatile` statements so that nothing is hoisted
// or folded, and their results consumed the same way. GCC vector extensions give exactly
// one vector instruction per operation (vaddps ymm, vmulps ymm, ... under AVX2; addps xmm
// ... in the baseline build); sqrt comes from the intrinsics the kernels' vectorized
// std::sqrt compiles to (vsqrtps / sqrtps).
#pragma once

#include <cstdint>
#include <cstring>

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif
#ifndef MLRB_PEAKS_VEC_BYTES
#define MLRB_PEAKS_VEC_BYTES 16
#endif

namespace mlrb {
namespace bench {
namespace MLRB_CPU_ISA {

constexpr int kVecBytes = MLRB_PEAKS_VEC_BYTES;

template <typename T>
struct Vec {
  typedef T V __attribute__((vector_size(kVecBytes)));
  static constexpr int kLanes = kVecBytes / int(sizeof(T));
};
typedef uint64_t VU __attribute__((vector_size(kVecBytes)));  // raw bytes for the memory loops

#if defined(__x86_64__) || defined(__i386__)
#if MLRB_PEAKS_VEC_BYTES == 32
inline Vec<float>::V vsqrt(Vec<float>::V x) { return (Vec<float>::V)_mm256_sqrt_ps((__m256)x); }
inline Vec<double>::V vsqrt(Vec<double>::V x) { return (Vec<double>::V)_mm256_sqrt_pd((__m256d)x); }
#else
inline Vec<float>::V vsqrt(Vec<float>::V x) { return (Vec<float>::V)_mm_sqrt_ps((__m128)x); }
inline Vec<double>::V vsqrt(Vec<double>::V x) { return (Vec<double>::V)_mm_sqrt_pd((__m128d)x); }
#endif
#define MLRB_PEAKS_VREG "x"  // asm operand in a vector register
#else
template <typename V>
inline V vsqrt(V x) {  // lane by lane: the compiler's vector square root where it has one
  for (unsigned l = 0; l < sizeof(V) / sizeof(x[0]); ++l) x[l] = __builtin_sqrt(x[l]);
  return x;
}
#if defined(__aarch64__)
#define MLRB_PEAKS_VREG "w"
#endif
#endif

// The compiler must assume x changed (opaque) / was used (sink); no instruction is emitted
// (elsewhere than x86-64 and aarch64 the value goes through memory).
template <typename V>
inline void opaque(V& x) {
#ifdef MLRB_PEAKS_VREG
  asm volatile("" : "+" MLRB_PEAKS_VREG(x));
#else
  asm volatile("" : "+m"(x));
#endif
}
template <typename V>
inline void sink(const V& x) {
#ifdef MLRB_PEAKS_VREG
  asm volatile("" : : MLRB_PEAKS_VREG(x));
#else
  asm volatile("" : : "m"(x));
#endif
}

template <typename V>
inline V splat(double v) {
  return V{} + static_cast<decltype(V{}[0] + 0)>(v);
}

// The loops: `reps` iterations; each returns the number of elements (of T) it processed.
// kAcc independent chains: 12 > latency 3-4 x 2-3 pipes of the FP adders / multipliers.
constexpr int kAcc = 12;

template <typename T>
int64_t loop_add(int64_t reps) {
  using V = typename Vec<T>::V;
  V acc[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) acc[k] = splat<V>(1.0 + k);
  V c = splat<V>(0.0);
  opaque(c);
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < kAcc; ++k) acc[k] += c;
  }
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) sink(acc[k]);
  return reps * kAcc * Vec<T>::kLanes;
}

template <typename T>
int64_t loop_mul(int64_t reps) {
  using V = typename Vec<T>::V;
  V acc[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) acc[k] = splat<V>(1.0 + k);
  V c = splat<V>(1.0);  // x * 1: the values never change (no overflow, no denormals)
  opaque(c);
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < kAcc; ++k) acc[k] *= c;
  }
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) sink(acc[k]);
  return reps * kAcc * Vec<T>::kLanes;
}

// Adds and multiplies in equal numbers, independent: what the FP pipes do together.
template <typename T>
int64_t loop_add_mul(int64_t reps) {
  using V = typename Vec<T>::V;
  constexpr int kHalf = 7;  // 14 chains + 2 constants: the 16 vector registers
  V a[kHalf], m[kHalf];
#pragma GCC unroll 16
  for (int k = 0; k < kHalf; ++k) a[k] = splat<V>(1.0 + k), m[k] = splat<V>(2.0 + k);
  V c = splat<V>(0.0), d = splat<V>(1.0);
  opaque(c);
  opaque(d);
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < kHalf; ++k) {
      a[k] += c;
      m[k] *= d;
    }
  }
#pragma GCC unroll 16
  for (int k = 0; k < kHalf; ++k) sink(a[k]), sink(m[k]);
  return reps * 2 * kHalf * Vec<T>::kLanes;
}

// Independent square roots / divisions: operands made opaque each iteration, results sunk.
constexpr int kDivOps = 8;

template <typename T>
int64_t loop_sqrt(int64_t reps) {
  using V = typename Vec<T>::V;
  V x[kDivOps];
#pragma GCC unroll 16
  for (int k = 0; k < kDivOps; ++k) x[k] = splat<V>(2.0 + k);
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < kDivOps; ++k) {
      opaque(x[k]);
      sink(vsqrt(x[k]));
    }
  }
  return reps * kDivOps * Vec<T>::kLanes;
}

template <typename T>
int64_t loop_div(int64_t reps) {
  using V = typename Vec<T>::V;
  V x[kDivOps];
#pragma GCC unroll 16
  for (int k = 0; k < kDivOps; ++k) x[k] = splat<V>(2.0 + k);
  V num = splat<V>(1.0);
  opaque(num);
  for (int64_t r = 0; r < reps; ++r) {
#pragma GCC unroll 16
    for (int k = 0; k < kDivOps; ++k) {
      opaque(x[k]);
      sink(num / x[k]);
    }
  }
  return reps * kDivOps * Vec<T>::kLanes;
}

// Loads: an OR reduction of `bytes` of buf (a multiple of kAcc vectors) into kAcc
// accumulators, `reps` times: one vector load per vector, and the OR runs on more pipes
// than the loads, so the load ports bind (an FP sum would bind on the adders instead).
// With a 16 KB buffer the data stay in L1; with a buffer far beyond L3 this is a DRAM stream.
template <typename T>
int64_t loop_load(const VU* buf, int64_t bytes, int64_t reps) {
  const int64_t n = bytes / kVecBytes;
  VU acc[kAcc];
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) acc[k] = VU{} + uint64_t(k);
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i + kAcc <= n; i += kAcc) {
#pragma GCC unroll 16
      for (int k = 0; k < kAcc; ++k) acc[k] |= buf[i + k];
    }
    asm volatile("" : : : "memory");  // every pass reads the buffer again
  }
#pragma GCC unroll 16
  for (int k = 0; k < kAcc; ++k) sink(acc[k]);
  return reps * (n / kAcc) * kAcc * (kVecBytes / int64_t(sizeof(T)));
}

// Stores: `reps` passes writing an opaque vector over `bytes` of buf (L1-resident).
template <typename T>
int64_t loop_store(VU* buf, int64_t bytes, int64_t reps) {
  const int64_t n = bytes / kVecBytes;
  VU v = VU{} + uint64_t(1);
  for (int64_t r = 0; r < reps; ++r) {
    opaque(v);  // a new value each pass: no pass is redundant
#pragma GCC unroll 8
    for (int64_t i = 0; i < n; ++i) buf[i] = v;
    asm volatile("" : : "r"(buf) : "memory");  // the stores are observed
  }
  return reps * n * (kVecBytes / int64_t(sizeof(T)));
}

// One entry per peak: run(which, reps, buf, bytes) -> elements of T processed.
enum PeakLoop { kAdd = 0, kMul, kAddMul, kSqrt, kDiv, kLoad, kStore, kDram, kNumLoops };

template <typename T>
int64_t run_loop(int which, int64_t reps, void* buf, int64_t bytes) {
  switch (which) {
    case kAdd: return loop_add<T>(reps);
    case kMul: return loop_mul<T>(reps);
    case kAddMul: return loop_add_mul<T>(reps);
    case kSqrt: return loop_sqrt<T>(reps);
    case kDiv: return loop_div<T>(reps);
    case kLoad:
    case kDram: return loop_load<T>(static_cast<const VU*>(buf), bytes, reps);
    case kStore: return loop_store<T>(static_cast<VU*>(buf), bytes, reps);
    default: return 0;
  }
}

}  // namespace MLRB_CPU_ISA
}  // namespace bench
}  // namespace mlrb
