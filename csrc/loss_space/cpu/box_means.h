// Running box means of M5, M17, M65 over the rows of a band (spec, "Box mean").
#pragma once

#include <algorithm>
#include <cstdint>

#include "loss_space/box.h"
#include "loss_space/loss_math.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Local means of e - mu over the n x n windows (n = 2r + 1) of the selected sizes, row by
// row. Each source row is filtered horizontally once for all sizes (one doubling chain over the
// row padded by the largest radius; rows kept in a ring), then running vertical sums over
// rows i-r..i+r (clamped) give the box sums of row i. x = (e - mu) m: subtracting the
// global mean mu keeps float32 sums small and does not change e - box(e).
// local(i) = box(x) / box(m) (box(m) = n^2 without a mask).
template <typename T, bool HasMask>
struct BoxMeans {
  static constexpr int S = HasMask ? 2 : 1;  // filtered maps: x (and m)
  const T* p;
  const T* g;
  const uint8_t* m;
  int h, w;
  T mu;
  int nb = 0;           // number of selected sizes
  int type[3], rad[3];  // their loss types and radii
  int rmax = 0, R = 1;  // largest radius, ring rows
  int computed = -1;    // rows 0..computed are filtered (the last R of them in the ring)
  T* ring;              // R rows x nb sizes x S maps x w
  T* V;                 // nb x S x w running vertical sums
  T* row;               // 2 x w scratch (x and m of one row)
  T* hs;                // 3 padded rows: scratch of window_sums_doubling

  static int64_t buffer_size(int w, uint32_t types) {
    int nb = 0, rmax = 0;
    for (int b = 0; b < 3; ++b)
      if (types & (1u << (kM5 + b))) nb++, rmax = kBoxRadius[b];
    return (int64_t(2 * rmax + 2) * nb * S + nb * S + 2) * w;
  }
  // In doubles (the scratch of window_sums_doubling, 3 padded rows of T).
  static int64_t dbuffer_size(int w) {
    return (3 * (int64_t(w) + 2 * kBoxRadius[2]) * int64_t(sizeof(T)) + 7) / 8;
  }

  // Windows start at row i0 (the first row of a band); rows i0 - rmax .. are filtered.
  BoxMeans(const T* p_, const T* g_, const uint8_t* m_, int h_, int w_, uint32_t types, T mu_, T* buf, double* dbuf,
           int i0)
      : p(p_), g(g_), m(m_), h(h_), w(w_), mu(mu_) {
    for (int b = 0; b < 3; ++b)
      if (types & (1u << (kM5 + b))) {
        type[nb] = kM5 + b;
        rad[nb] = kBoxRadius[b];
        rmax = kBoxRadius[b];
        nb++;
      }
    R = 2 * rmax + 2;
    ring = buf;
    V = ring + int64_t(R) * nb * S * w;
    row = V + int64_t(nb) * S * w;
    hs = reinterpret_cast<T*>(dbuf);
    if (nb == 0) return;
    std::fill(V, V + int64_t(nb) * S * w, T(0));
    computed = std::max(-1, i0 - rmax - 1);
    filter_upto(std::min(h - 1, i0 + rmax));
    for (int k = 0; k < nb; ++k)
      for (int a = -rad[k]; a <= rad[k]; ++a) add(k, std::clamp(i0 + a, 0, h - 1), T(1));
  }

  T* H(int r, int k, int s) { return ring + ((int64_t(r % R) * nb + k) * S + s) * w; }

  // Horizontal window sums of rows computed+1 .. last, for every size.
  void filter_upto(int last) {
    for (int s = computed + 1; s <= last; ++s) {
      const T* pi = p + int64_t(s) * w;
      const T* gi = g + int64_t(s) * w;
      T* x = row;
      T* mr = row + w;
      if constexpr (HasMask) {
        const uint8_t* mi = m + int64_t(s) * w;
#pragma omp simd
        for (int j = 0; j < w; ++j) {
          x[j] = where_valid(mi[j], (pi[j] - gi[j]) - mu);
          mr[j] = mi[j] ? T(1) : T(0);
        }
      } else {
#pragma omp simd
        for (int j = 0; j < w; ++j) x[j] = (pi[j] - gi[j]) - mu;
      }
      for (int q = 0; q < S; ++q) {
        T* outs[3] = {H(s, 0, q), nb > 1 ? H(s, 1, q) : nullptr, nb > 2 ? H(s, 2, q) : nullptr};
        window_sums_doubling(q == 0 ? x : mr, w, rmax, nb, rad, outs, hs);
      }
    }
    computed = std::max(computed, last);
  }

  void add(int k, int r, T sign) {
    for (int q = 0; q < S; ++q) {
      T* v = V + (int64_t(k) * S + q) * w;
      const T* hr = H(r, k, q);
#pragma omp simd
      for (int j = 0; j < w; ++j) v[j] += sign * hr[j];
    }
  }

  // Slide every window from row i - 1 to row i (i > i0).
  void advance(int i) {
    filter_upto(std::min(h - 1, i + rmax));
    for (int k = 0; k < nb; ++k) {
      const int in = std::min(i + rad[k], h - 1), out = std::max(i - 1 - rad[k], 0);
      if (in == out) continue;
      for (int q = 0; q < S; ++q) {
        T* v = V + (int64_t(k) * S + q) * w;
        const T* hi = H(in, k, q);
        const T* ho = H(out, k, q);
#pragma omp simd
        for (int j = 0; j < w; ++j) v[j] += hi[j] - ho[j];
      }
    }
  }

  // The box sums of size k: box(x) (and box(m), w entries on, with a mask). The local mean
  // at column j is box(x) / count(v, j) with a mask, box(x) * inv(k) without (callers fuse
  // it into their loops).
  const T* sums(int k) const { return V + int64_t(k) * S * w; }
  T inv(int k) const { return T(1.0 / double((2 * rad[k] + 1) * (2 * rad[k] + 1))); }
  // box(m) clamped to >= 1: a window without valid pixels has local mean 0.
  MLRB_FORCE_INLINE T count(const T* v, int j) const { return std::max(v[w + j], T(1)); }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
