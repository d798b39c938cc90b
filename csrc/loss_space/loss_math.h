// Per-pixel formulas of the loss space (../shared/spec/loss-space.md), shared by the
// forward and backward kernels of every backend: the CPU kernels include this header, and
// CUDA kernels can include it as is (MLRB_HOST_DEVICE marks the functions for both).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MLRB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MLRB_HOST_DEVICE inline
#endif

#ifndef MLRB_CPU_ISA
#define MLRB_CPU_ISA generic
#endif

namespace mlrb {
// Host code is compiled once per instruction set (csrc/loss_space/cpu/*_avx2.cpp); the
// inline namespace keeps the copies apart at link time.
inline namespace MLRB_CPU_ISA {

constexpr int kNumScales = 6;
constexpr int kNumTypes = 13;
constexpr int kNumLosses = kNumScales * kNumTypes;  // 78 columns of the space
constexpr int kSi = kNumLosses;                     // AMLR scale-invariant loss
constexpr int kGr = kNumLosses + 1;                 // AMLR masked gradient loss
constexpr int kNumAll = kNumLosses + 2;

// Loss types in the paper's Table 1 order (column 13 k + t).
enum LossType { kD = 0, kM, kM5, kM17, kM65, kR, kC, kRR, kRC, kCC, kN, kNr, kNc };

// Half-widths r = (n - 1) / 2 of the box means M5, M17, M65.
constexpr int kBoxRadius[3] = {2, 8, 32};

constexpr double kNormalEps = 1e-8;  // denominator of the normal loss (Eq. 8)
constexpr double kLogEps = 1e-6;     // pred is clamped to >= kLogEps before the AMLR log

// Bicubic taps of a pyramid level k >= 1: the source position 2^k i + 2^(k-1) - 0.5 has
// fractional part 0.5, so cubic convolution (A = -0.75) gives these weights.
constexpr double kCubicHalf[4] = {-3.0 / 32.0, 19.0 / 32.0, 19.0 / 32.0, -3.0 / 32.0};

// Subgradient of |x| with sign(0) = 0 (PyTorch's convention), branch-free.
template <typename T>
MLRB_HOST_DEVICE T sgn(T x) {
  return static_cast<T>(x > T(0)) - static_cast<T>(x < T(0));
}

// Finite differences of the spec (replicate padding makes them 0 on the last column /
// row; callers get that by reading clamped neighbours). x0*, x1*, x2* are rows i, i+1,
// i+2 and the second index the column offset.
template <typename T>
MLRB_HOST_DEVICE T diff1(T x0, T x1) { return x0 - x1; }  // dx: (x00, x01); dy: (x00, x10)
template <typename T>
MLRB_HOST_DEVICE T diff2(T x0, T x1, T x2) { return (x0 - x1) - (x1 - x2); }  // rr, cc = d(d x)
template <typename T>
MLRB_HOST_DEVICE T diff_rc(T x00, T x01, T x10, T x11) { return (x00 - x10) - (x01 - x11); }  // dx(dy x)

// Normal loss of the normals (-a1, -a2, 1) and (-b1, -b2, 1) (spec, Eq. 8):
//   1 - (a1 b1 + a2 b2 + 1) / (|(a1, a2, 1)| |(b1, b2, 1)| + eps).
// |a| |b| is computed as sqrt(|a|^2 |b|^2): one square root instead of two.
template <typename T>
MLRB_HOST_DEVICE T normal_loss(T a1, T a2, T b1, T b2) {
  const T num = a1 * b1 + a2 * b2 + T(1);
  const T AB = std::sqrt((a1 * a1 + a2 * a2 + T(1)) * (b1 * b1 + b2 * b2 + T(1)));
  return T(1) - num / (AB + T(kNormalEps));
}

// w * d normal_loss / d(a1, a2). With A = |(a1, a2, 1)|, B = |(b1, b2, 1)|, den = A B + eps:
//   d/da1 = (c a1 - b1) / den,  c = num B / (A den) = num AB / (A^2 den),
// and the same with (a2, b2); one square root and one division.
template <typename T>
MLRB_HOST_DEVICE void normal_loss_grad(T a1, T a2, T b1, T b2, T w, T& g1, T& g2) {
  const T num = a1 * b1 + a2 * b2 + T(1);
  const T A2 = a1 * a1 + a2 * a2 + T(1);
  const T AB = std::sqrt(A2 * (b1 * b1 + b2 * b2 + T(1)));
  const T den = AB + T(kNormalEps);
  const T inv = T(1) / (A2 * den);  // 1 / (A^2 den)
  const T c = num * AB * inv;
  const T s = w * A2 * inv;  // w / den
  g1 = (c * a1 - b1) * s;
  g2 = (c * a2 - b2) * s;
}

MLRB_HOST_DEVICE double cubic_near(double x) { return ((-0.75 + 2) * x - (-0.75 + 3)) * x * x + 1; }
MLRB_HOST_DEVICE double cubic_far(double x) { return ((-0.75 * x + 5 * 0.75) * x - 8 * 0.75) * x + 4 * 0.75; }
MLRB_HOST_DEVICE void cubic_weights(double t, double w[4]) {
  w[0] = cubic_far(t + 1);
  w[1] = cubic_near(t);
  w[2] = cubic_near(1 - t);
  w[3] = cubic_far(2 - t);
}

}  // namespace MLRB_CPU_ISA
}  // namespace mlrb
