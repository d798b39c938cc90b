// Per-pixel formulas of the loss space (../shared/spec/loss-space.md) and their
// derivatives, side by side, shared by the forward and backward kernels of every backend:
// the CPU kernels (cpu/) include this header, and CUDA kernels can include it as is
// (MLRB_HOST_DEVICE marks the functions for both; nothing here allocates or loops over a
// row). The forward of a type t adds term * valid over its valid set and divides by the
// count of that set; the backward multiplies the derivative by G[t] / count * valid and
// pushes it through the transpose of the type's stencil (cpu/backward_band.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Forced inlining: the CPU kernels call these in vectorized loops of large functions,
// where GCC's size limits would otherwise leave some calls out of line (no vectorization).
#if defined(__GNUC__) || defined(__clang__)
#define MLRB_FORCE_INLINE inline __attribute__((always_inline))
// Lambdas called in vector loops: GCC may keep a lambda out of line (a call in the loop,
// which then stays scalar), so they are marked too: [&](int j) MLRB_INLINE_LAMBDA { ... }.
#define MLRB_INLINE_LAMBDA __attribute__((always_inline))
#else
#define MLRB_FORCE_INLINE inline
#define MLRB_INLINE_LAMBDA
#endif

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MLRB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MLRB_HOST_DEVICE MLRB_FORCE_INLINE
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

// x at a valid pixel (mask byte set), else 0. A function, so that x is evaluated (loaded)
// whatever the mask: a load under the condition keeps compilers from vectorizing the loop.
template <typename T>
MLRB_HOST_DEVICE T where_valid(uint8_t valid, T x) {
  return valid ? x : T(0);
}

// Subgradient of |x| with sign(0) = 0 (PyTorch's convention), branch-free: +-1 with the
// sign bit of x where x < 0 or x > 0, else +0 (also for NaN), the same values as
// (x > 0) - (x < 0); vectorized it is one compare and bit logic (no blends, no subtract).
template <typename T>
MLRB_HOST_DEVICE T sgn(T x) {
  return (x < T(0) || x > T(0)) ? std::copysign(T(1), x) : T(0);
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

// ---------------------------------------------------------------- footprint validity
// A term at (i, j) is valid iff every pixel of its stencil is (spec, "Masks"). M0, M1, M2
// are the 0/1 mask rows i, i+1, i+2, each padded by two copies of its last entry (like the
// value rows below); D, M and the box losses read (i, j) only. The rows hold floats (the
// product of the entries) or bytes (their bitwise and: the backward's counts).
template <typename T>
MLRB_HOST_DEVICE T valid_both(T a, T b) {
  if constexpr (std::is_integral_v<T>) return T(a & b);
  else return a * b;
}
template <int t, typename T>
MLRB_HOST_DEVICE T valid_of(const T* M0, const T* M1, const T* M2, int j) {
  auto all = [](T a, auto... b) MLRB_INLINE_LAMBDA { ((a = valid_both(a, T(b))), ...); return a; };
  if constexpr (t == kR) return all(M0[j], M0[j + 1]);
  else if constexpr (t == kC) return all(M0[j], M1[j]);
  else if constexpr (t == kRR) return all(M0[j], M0[j + 1], M0[j + 2]);
  else if constexpr (t == kRC) return all(M0[j], M0[j + 1], M1[j], M1[j + 1]);
  else if constexpr (t == kCC) return all(M0[j], M1[j], M2[j]);
  else if constexpr (t == kN) return all(M0[j], M0[j + 1], M1[j]);
  else if constexpr (t == kNr) return all(M0[j], M0[j + 1], M0[j + 2], M1[j], M1[j + 1]);
  else if constexpr (t == kNc) return all(M0[j], M0[j + 1], M1[j], M1[j + 1], M2[j]);
  else return M0[j];
}

// ---------------------------------------------------------------- D, M, M_n (Eq. 3-5)
// e = D^k(pred) - D^k(gt), mu the mean of e over the valid pixels of the scale,
// local the box mean of e - mu over the n x n window (cpu/box_means.h).
// The derivatives are d term / d e at the pixel itself; M's also moves mu, which adds
// -shift (shift = mean of sgn(e - mu) over the valid pixels) at every valid pixel, and
// M_n's moves the box means of the pixels around, which the caller applies as the
// transposed box sum of term' / count (cpu/backward_band.h).
template <typename T>
MLRB_HOST_DEVICE T loss_D(T e) { return std::abs(e); }
template <typename T>
MLRB_HOST_DEVICE T dloss_D(T e) { return sgn(e); }

template <typename T>
MLRB_HOST_DEVICE T loss_M(T e, T mu) { return std::abs(e - mu); }
template <typename T>
MLRB_HOST_DEVICE T dloss_M(T e, T mu, T shift) { return sgn(e - mu) - shift; }

template <typename T>
MLRB_HOST_DEVICE T loss_Mn(T e, T mu, T local) { return std::abs((e - mu) - local); }
template <typename T>
MLRB_HOST_DEVICE T dloss_Mn(T e, T mu, T local) { return sgn((e - mu) - local); }

// ---------------------------------------------------------------- gradient types (Eq. 6)
// |s(e)| for the stencils s of r, c, rr, rc, cc on the rows X0, X1, X2 (i, i+1, i+2) of e;
// d|s(e)| / d s = sgn(s(e)), distributed to the pixels of the stencil by s^T (the caller's
// dx^T, dy^T: cpu/backward_band.h).
template <int t, typename T>
MLRB_HOST_DEVICE T grad_term(const T* X0, const T* X1, const T* X2, int j) {
  if constexpr (t == kR) return diff1(X0[j], X0[j + 1]);
  else if constexpr (t == kC) return diff1(X0[j], X1[j]);
  else if constexpr (t == kRR) return diff2(X0[j], X0[j + 1], X0[j + 2]);
  else if constexpr (t == kRC) return diff_rc(X0[j], X0[j + 1], X1[j], X1[j + 1]);
  else return diff2(X0[j], X1[j], X2[j]);  // kCC
}
template <int t, typename T>
MLRB_HOST_DEVICE T loss_grad_type(const T* E0, const T* E1, const T* E2, int j) {
  return std::abs(grad_term<t>(E0, E1, E2, j));
}
template <int t, typename T>
MLRB_HOST_DEVICE T dloss_grad_type(const T* E0, const T* E1, const T* E2, int j) {
  return sgn(grad_term<t>(E0, E1, E2, j));
}

// ---------------------------------------------------------------- normal types (Eq. 7-8)
// The two derivatives a normal type compares, of pred (X = P) or gt (X = G):
// (dx, dy) for N, (rr, rc) for Nr, (rc, cc) for Nc. Their loss is normal_loss(a, b) and
// its derivative normal_loss_grad (above), w.r.t. a; the caller applies the transposed
// stencils of the two arguments.
template <int t, typename T>
MLRB_HOST_DEVICE void normal_args(const T* X0, const T* X1, const T* X2, int j, T& a1, T& a2) {
  if constexpr (t == kN) {
    a1 = diff1(X0[j], X0[j + 1]);
    a2 = diff1(X0[j], X1[j]);
  } else if constexpr (t == kNr) {
    a1 = diff2(X0[j], X0[j + 1], X0[j + 2]);
    a2 = diff_rc(X0[j], X0[j + 1], X1[j], X1[j + 1]);
  } else {
    a1 = diff_rc(X0[j], X0[j + 1], X1[j], X1[j + 1]);
    a2 = diff2(X0[j], X1[j], X2[j]);
  }
}

// ---------------------------------------------------------------- AMLR pair (AMLR Eq. 1-2)
// d = log(max(p, kLogEps)) - log(g) where the pixel is valid for AMLR (mask and g > 0),
// 0 elsewhere; d d / d p = 1 / p where p >= kLogEps (0 where the clamp holds p).
template <typename T>
MLRB_HOST_DEVICE T log_ratio(T p, T g, bool valid) {
  const T pc = p < T(kLogEps) ? T(kLogEps) : p;  // std::max(p, kLogEps), NaN stays NaN
  return valid ? std::log(pc) - std::log(g) : T(0);
}
template <typename T>
MLRB_HOST_DEVICE T dlog_ratio_times(T upstream, T p, bool valid) {
  return (valid && p >= T(kLogEps)) ? upstream / p : T(0);
}
// Si = mean(d^2) - lambda mean(d)^2; d Si / d d_j = c (d_j - lambda mean(d)) with
// c = 2 / n (times the upstream and sqrt factors, folded into c by the caller).
template <typename T>
MLRB_HOST_DEVICE T dsi_term(T c, T d, T lambda_mean, T valid) { return c * (d - lambda_mean) * valid; }
// Gr: the mean over valid neighbour pairs of (d_k - d_j)^2 (pv = both valid), and its
// derivative w.r.t. d_j: 2 w (d_j - d_k) (w = upstream / 2 / pair count, 2 folded in;
// va, vb: the validity of the two pixels).
template <typename T>
MLRB_HOST_DEVICE T gr_pair(T pv, T dj, T dk) {
  const T df = dk - dj;
  return pv * df * df;
}
template <typename T>
MLRB_HOST_DEVICE T dgr_pair(T w, T va, T vb, T dj, T dk) { return w * va * vb * (dj - dk); }

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
