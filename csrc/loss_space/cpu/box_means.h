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
  int rmax = 0;         // largest radius
  int64_t sw;           // row stride of the rings, V and zero (row_stride)
  int computed = -1;    // rows 0..computed are filtered (the last R[k] of them in the rings)
  int R[3];             // ring rows of size k: ring_rows(rad[k], rmax)
  T* ring[3];           // per size: R[k] rows x S maps x sw
  T* V;                 // nb x S rows (stride sw) of running vertical sums
  T* hs;                // 3 padded rows: scratch of window_sums_doubling
  T* zero;              // w zeros: the slide of a band's first row
  const T* in[3][2];    // per size and map: the rows entering and leaving the window of
  const T* out[3][2];   // the current row (Slide)

  // Rows are filtered rmax ahead of the current row i and size k reads rows i - r - 1 ..
  // i + r (clamped; row 0 until i = r + 1): a row lives r + rmax + 2 rows, not 2 rmax + 2
  // (the small sizes' rings then take less of the cache).
  static int ring_rows(int r, int rmax) { return r + rmax + 2; }
  static int64_t buffer_size(int w, uint32_t types) {
    int nb = 0, rmax = 0, rows = 0;
    for (int b = 0; b < 3; ++b)
      if (types & (1u << (kM5 + b))) nb++, rmax = kBoxRadius[b];
    for (int b = 0; b < 3; ++b)
      if (types & (1u << (kM5 + b))) rows += ring_rows(kBoxRadius[b], rmax);
    return (int64_t(rows) * S + nb * S + 1) * row_stride<T>(w);
  }
  // In doubles (the scratch of window_sums_doubling, 3 padded rows of T).
  static int64_t dbuffer_size(int w) {
    return (3 * row_stride<T>(int64_t(w) + 2 * kBoxRadius[2]) * int64_t(sizeof(T)) + 7) / 8;
  }

  // Windows start at row i0 (the first row of a band); rows i0 - rmax .. are filtered.
  BoxMeans(const T* p_, const T* g_, const uint8_t* m_, int h_, int w_, uint32_t types, T mu_, T* buf, double* dbuf,
           int i0)
      : p(p_), g(g_), m(m_), h(h_), w(w_), mu(mu_), sw(row_stride<T>(w_)) {
    for (int b = 0; b < 3; ++b)
      if (types & (1u << (kM5 + b))) {
        type[nb] = kM5 + b;
        rad[nb] = kBoxRadius[b];
        rmax = kBoxRadius[b];
        nb++;
      }
    T* next = buf;
    for (int k = 0; k < nb; ++k) {
      R[k] = ring_rows(rad[k], rmax);
      ring[k] = next;
      next += int64_t(R[k]) * S * sw;
    }
    V = next;
    zero = V + int64_t(nb) * S * sw;
    hs = reinterpret_cast<T*>(dbuf);
    if (nb == 0) return;
    std::fill(V, V + int64_t(nb) * S * sw, T(0));
    std::fill(zero, zero + w, T(0));
    for (int k = 0; k < 3; ++k)
      for (int q = 0; q < 2; ++q) in[k][q] = out[k][q] = zero;
    computed = std::max(-1, i0 - rmax - 1);
    filter_upto(std::min(h - 1, i0 + rmax));
    for (int k = 0; k < nb; ++k)
      for (int a = -rad[k]; a <= rad[k]; ++a) add(k, std::clamp(i0 + a, 0, h - 1), T(1));
  }

  T* H(int r, int k, int s) { return ring[k] + (int64_t(r % R[k]) * S + s) * sw; }

  // Horizontal window sums of rows computed+1 .. last, for every size.
  void filter_upto(int last) {
    for (int s = computed + 1; s <= last; ++s) {
      const T* __restrict pi = p + int64_t(s) * w;
      const T* __restrict gi = g + int64_t(s) * w;
      const uint8_t* __restrict mi = HasMask ? m + int64_t(s) * w : nullptr;
      for (int q = 0; q < S; ++q) {  // x, then m: written straight into the filter's scratch
        T* __restrict a = window_sums_row(hs, rmax);
        if (q == 0) {
#pragma omp simd
          for (int j = 0; j < w; ++j) {
            const T x = (pi[j] - gi[j]) - mu;
            a[j] = HasMask ? where_valid(mi[j], x) : x;
          }
        } else {
#pragma omp simd
          for (int j = 0; j < w; ++j) a[j] = mi[j] ? T(1) : T(0);
        }
        T* outs[3] = {H(s, 0, q), nb > 1 ? H(s, 1, q) : nullptr, nb > 2 ? H(s, 2, q) : nullptr};
        window_sums_doubling(w, rmax, nb, rad, outs, hs);
      }
    }
    computed = std::max(computed, last);
  }

  void add(int k, int r, T sign) {
    for (int q = 0; q < S; ++q) {
      T* v = V + (int64_t(k) * S + q) * sw;
      const T* hr = H(r, k, q);
#pragma omp simd
      for (int j = 0; j < w; ++j) v[j] += sign * hr[j];
    }
  }

  // Row i's slide of every window from row i - 1 (i > i0; none on the band's first row):
  // the rows entering and leaving, which the callers add in the loops that use the sums
  // (Slide), so the running sums are read and written once per row.
  void advance(int i, int i0) {
    if (i == i0) return;
    filter_upto(std::min(h - 1, i + rmax));
    for (int k = 0; k < nb; ++k) {
      const int rin = std::min(i + rad[k], h - 1), rout = std::max(i - 1 - rad[k], 0);
      for (int q = 0; q < S; ++q) {
        in[k][q] = rin == rout ? zero : H(rin, k, q);
        out[k][q] = rin == rout ? zero : H(rout, k, q);
      }
    }
  }

  // The running box sum of size k, map q (x; m with a mask) at column j of the current row:
  // v += in - out, stored back. Each (row, size, map) is slid exactly once.
  struct Slide {
    T* __restrict v;
    const T* in;
    const T* out;
    MLRB_FORCE_INLINE T operator()(int j) const {
      const T s = v[j] + (in[j] - out[j]);
      v[j] = s;
      return s;
    }
  };
  Slide slide(int k, int q) const { return {V + (int64_t(k) * S + q) * sw, in[k][q], out[k][q]}; }
  // The local mean at column j: box(x) / count(box(m)) with a mask, box(x) * inv(k) without.
  T inv(int k) const { return T(1.0 / double((2 * rad[k] + 1) * (2 * rad[k] + 1))); }
  // box(m) clamped to >= 1: a window without valid pixels has local mean 0.
  static MLRB_FORCE_INLINE T count(T box_m) { return std::max(box_m, T(1)); }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
