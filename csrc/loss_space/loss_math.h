// Per-pixel formulas of the loss space (../shared/spec/loss-space.md), shared by the
// forward and backward kernels of every backend: the CPU kernels include this header, and
// CUDA kernels can include it as is (MLRB_HOST_DEVICE marks the functions for both).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

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

// 1 / 2^e for the power of two 2^e <= max(|x|, |y|, 1), e clamped so that 1 / 2^e stays a
// normal number. Multiplying by a power of two is exact, so the normal loss below scales
// its vectors before squaring (depths up to the float range neither overflow nor lose
// the "+1") and still gives bit for bit the unscaled result wherever that one does not
// overflow. Bit operations on the exponent field: no division, vectorisable.
template <typename T>
struct Pow2Bits;
template <>
struct Pow2Bits<float> {
  using U = uint32_t;
  static constexpr U kExp = 0x7F800000u, kMax = U(253) << 23, kTwoE = U(254) << 23;
};
template <>
struct Pow2Bits<double> {
  using U = uint64_t;
  static constexpr U kExp = 0x7FF0000000000000ull, kMax = U(2045) << 52, kTwoE = U(2046) << 52;
};

template <typename T>
MLRB_HOST_DEVICE T inv_pow2_scale(T x, T y) {
  using P = Pow2Bits<T>;
  const T ax = std::abs(x), ay = std::abs(y);
  const T s = ax > ay ? (ax > T(1) ? ax : T(1)) : (ay > T(1) ? ay : T(1));
  typename P::U b;
  std::memcpy(&b, &s, sizeof b);
  b &= P::kExp;
  b = b < P::kMax ? b : P::kMax;  // NaN / inf land here and stay NaN / inf after scaling
  b = P::kTwoE - b;
  T r;
  std::memcpy(&r, &b, sizeof r);
  return r;
}

// Largest |depth| for which the plain normal formula cannot overflow in float32: its
// arguments (sums of up to four depths with signs) stay below 2^30, their squares and the
// products of the formula below 2^124.
constexpr double kNormalPlainMax = double(1 << 28);

// Normal loss of the normals (-a1, -a2, 1) and (-b1, -b2, 1) (spec, Eq. 8):
//   1 - (a1 b1 + a2 b2 + 1) / (|(a1, a2, 1)| |(b1, b2, 1)| + eps).
// Computed on (a1, a2, 1) / sa and (b1, b2, 1) / sb with the powers of two sa, sb of
// inv_pow2_scale (numerator and denominator both scale by 1 / (sa sb), eps too), so no
// square overflows for any finite float input. |a| |b| is computed as sqrt(|a|^2 |b|^2):
// one square root instead of two (the scaled squares are in [1, 9)).
//
// Scaled = false skips the scaling (ia = ib = 1: the plain formula, same bits), for callers
// that know the arguments are below kNormalPlainMax (the CPU kernels check once per row).
template <bool Scaled = true, typename T>
MLRB_HOST_DEVICE T normal_loss(T a1, T a2, T b1, T b2) {
  const T ia = Scaled ? inv_pow2_scale(a1, a2) : T(1), ib = Scaled ? inv_pow2_scale(b1, b2) : T(1), iab = ia * ib;
  a1 *= ia, a2 *= ia, b1 *= ib, b2 *= ib;
  const T num = a1 * b1 + a2 * b2 + iab;
  const T AB = std::sqrt((a1 * a1 + a2 * a2 + ia * ia) * (b1 * b1 + b2 * b2 + ib * ib));
  return T(1) - num / (AB + T(kNormalEps) * iab);
}

// w * d normal_loss / d(a1, a2). With A = |(a1, a2, 1)|, B = |(b1, b2, 1)|, den = A B + eps:
//   d/da1 = (c a1 - b1) / den,  c = num B / (A den) = num AB / (A^2 den),
// and the same with (a2, b2); one square root and one division. On the scaled vectors
// (see normal_loss) c a1 - b1 scales by 1 / sb and 1 / den by 1 / (sa sb): the result is
// the scaled formula's times 1 / sa.
template <bool Scaled = true, typename T>
MLRB_HOST_DEVICE void normal_loss_grad(T a1, T a2, T b1, T b2, T w, T& g1, T& g2) {
  const T ia = Scaled ? inv_pow2_scale(a1, a2) : T(1), ib = Scaled ? inv_pow2_scale(b1, b2) : T(1), iab = ia * ib;
  a1 *= ia, a2 *= ia, b1 *= ib, b2 *= ib;
  const T num = a1 * b1 + a2 * b2 + iab;
  const T A2 = a1 * a1 + a2 * a2 + ia * ia;
  const T AB = std::sqrt(A2 * (b1 * b1 + b2 * b2 + ib * ib));
  const T den = AB + T(kNormalEps) * iab;
  const T inv = T(1) / (A2 * den);  // 1 / (A^2 den)
  const T c = num * AB * inv;
  const T s = w * A2 * inv;  // w / den
  g1 = (c * a1 - b1) * s * ia;
  g2 = (c * a2 - b2) * s * ia;
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
