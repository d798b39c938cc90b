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
// local(i) = box(x) / box(m) (box(m) = n^2 without a mask). The rings of the horizontal
// counts of m hold bytes (at most 2 rmax + 1 = 65, exact): a quarter of their floats, which
// keeps the rings of the three sizes (a row lives up to 66 rows) inside the L2 cache at
// KITTI widths; the counts convert back to T exactly where the window slides.
template <typename T, bool HasMask>
struct BoxMeans {
  static_assert(2 * kBoxRadius[2] + 1 <= 255, "a horizontal count of m must fit a byte");
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
  int64_t sc;           // row stride of the count rings, in bytes (row_stride<uint8_t>)
  int computed = -1;    // rows 0..computed are filtered (the last R[k] of them in the rings)
  int R[3];             // ring rows of size k: ring_rows(rad[k], rmax)
  T* ring[3];           // per size: R[k] rows x sw of x
  uint8_t* cring[3];    // with a mask, per size: R[k] rows x sc of the counts of m
  T* V;                 // nb x S rows (stride sw) of running vertical sums
  T* hs;                // 3 padded rows: scratch of window_sums_doubling
  T* zero;              // w zeros: the slide of a band's first row
  uint8_t* czero;       // the same for the counts (with a mask)
  const T* in[3];       // per size: the rows of x entering and leaving the window of
  const T* out[3];      // the current row (Slide), and those of the counts
  const uint8_t* cin[3];
  const uint8_t* cout[3];

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
    const int64_t bytes = HasMask ? (rows + 1) * row_stride<uint8_t>(w) : 0;  // count rings, czero
    return (int64_t(rows) + nb * S + 1) * row_stride<T>(w) + (bytes + int64_t(sizeof(T)) - 1) / int64_t(sizeof(T));
  }
  // In doubles (the scratch of window_sums_doubling, 3 padded rows of T).
  static int64_t dbuffer_size(int w) {
    return (3 * row_stride<T>(int64_t(w) + 2 * kBoxRadius[2]) * int64_t(sizeof(T)) + 7) / 8;
  }

  // Windows start at row i0 (the first row of a band); rows i0 - rmax .. are filtered.
  BoxMeans(const T* p_, const T* g_, const uint8_t* m_, int h_, int w_, uint32_t types, T mu_, T* buf, double* dbuf,
           int i0)
      : p(p_), g(g_), m(m_), h(h_), w(w_), mu(mu_), sw(row_stride<T>(w_)), sc(row_stride<uint8_t>(w_)) {
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
      next += int64_t(R[k]) * sw;
    }
    V = next;
    zero = V + int64_t(nb) * S * sw;
    // The count rings after zero (sw is a whole number of cache lines, so are they).
    uint8_t* cnext = reinterpret_cast<uint8_t*>(zero + sw);
    for (int k = 0; k < nb; ++k) {
      cring[k] = cnext;
      cnext += int64_t(R[k]) * sc;
    }
    czero = cnext;
    hs = reinterpret_cast<T*>(dbuf);
    if (nb == 0) return;
    std::fill(V, V + int64_t(nb) * S * sw, T(0));
    std::fill(zero, zero + w, T(0));
    if (HasMask) std::fill(czero, czero + w, uint8_t(0));
    for (int k = 0; k < 3; ++k) {
      in[k] = out[k] = zero;
      cin[k] = cout[k] = czero;
    }
    computed = std::max(-1, i0 - rmax - 1);
    filter_upto(std::min(h - 1, i0 + rmax));
    for (int k = 0; k < nb; ++k)
      for (int a = -rad[k]; a <= rad[k]; ++a) add(k, std::clamp(i0 + a, 0, h - 1), T(1));
  }

  T* H(int r, int k) { return ring[k] + int64_t(r % R[k]) * sw; }
  uint8_t* C(int r, int k) { return cring[k] + int64_t(r % R[k]) * sc; }

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
        if (q == 0) {
          T* outs[3] = {H(s, 0), nb > 1 ? H(s, 1) : nullptr, nb > 2 ? H(s, 2) : nullptr};
          window_sums_doubling(w, rmax, nb, rad, outs, hs);
        } else {
          uint8_t* outs[3] = {C(s, 0), nb > 1 ? C(s, 1) : nullptr, nb > 2 ? C(s, 2) : nullptr};
          window_sums_doubling(w, rmax, nb, rad, outs, hs);
        }
      }
    }
    computed = std::max(computed, last);
  }

  void add(int k, int r, T sign) {
    T* v = V + int64_t(k) * S * sw;
    const T* hr = H(r, k);
#pragma omp simd
    for (int j = 0; j < w; ++j) v[j] += sign * hr[j];
    if constexpr (HasMask) {
      T* vc = v + sw;
      const uint8_t* cr = C(r, k);
#pragma omp simd
      for (int j = 0; j < w; ++j) vc[j] += sign * T(cr[j]);
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
      in[k] = rin == rout ? zero : H(rin, k);
      out[k] = rin == rout ? zero : H(rout, k);
      if constexpr (HasMask) {
        cin[k] = rin == rout ? czero : C(rin, k);
        cout[k] = rin == rout ? czero : C(rout, k);
      }
    }
  }

  // The running box sum of size k (of x, or of m from the byte counts) at column j of the
  // current row: v += in - out, stored back. Each (row, size, map) is slid exactly once.
  template <typename R>
  struct SlideOf {
    T* __restrict v;
    const R* in;
    const R* out;
    MLRB_FORCE_INLINE T operator()(int j) const {
      const T s = v[j] + (T(in[j]) - T(out[j]));
      v[j] = s;
      return s;
    }
  };
  using Slide = SlideOf<T>;
  using CountSlide = SlideOf<uint8_t>;
  Slide slide(int k) const { return {V + int64_t(k) * S * sw, in[k], out[k]}; }
  // Of m (with a mask; without one it is not used: empty).
  CountSlide count_slide(int k) const {
    if constexpr (HasMask) return {V + (int64_t(k) * S + 1) * sw, cin[k], cout[k]};
    return {nullptr, nullptr, nullptr};
  }
  // The local mean at column j: box(x) / count(box(m)) with a mask, box(x) * inv(k) without.
  T inv(int k) const { return T(1.0 / double((2 * rad[k] + 1) * (2 * rad[k] + 1))); }
  // box(m) clamped to >= 1: a window without valid pixels has local mean 0.
  static MLRB_FORCE_INLINE T count(T box_m) { return std::max(box_m, T(1)); }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
