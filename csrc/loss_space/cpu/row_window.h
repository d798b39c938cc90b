// The rows i, i+1, i+2 of a scale that the per-pixel terms of row i read.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "loss_space/cpu/selection.h"
#include "loss_space/row_stride.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Rows i, i+1, i+2 (clamped) of p, g, e = p - g and the mask (0/1), each padded with two
// copies of its last entry so that d/dx at the last column reads x[w-1] - x[w-1] = 0.
// With a mask, invalid pixels read as 0: values there never reach a loss or a gradient.
//
// direct (without a mask): p and g are not copied. PD, GD are the input rows, and P, G hold
// only columns tail_from() .. w - 1 and the padding: loops that read p and g at j + 1, j + 2
// take columns [0, tail_from()) from PD, GD and the rest from P, G (normal_fields). Copying
// p and g was two of the three stores per pixel of the window. Otherwise PD = P, GD = G.
template <typename T, bool HasMask>
struct RowWindow {
  const T* p;
  const T* g;
  const uint8_t* m;
  int h, w;
  bool direct;
  T* P[3];
  T* G[3];
  T* E[3];
  T* M[3];
  const T* PD[3];
  const T* GD[3];
  int loaded = -1;  // the row i currently in slot 0

  RowWindow(const T* p_, const T* g_, const uint8_t* m_, int h_, int w_, T* buffer, bool direct_ = false)
      : p(p_), g(g_), m(m_), h(h_), w(w_), direct(!HasMask && direct_) {
    const int64_t s = stride(w);
    for (int r = 0; r < 3; ++r) {
      P[r] = buffer + (4 * r + 0) * s;
      G[r] = buffer + (4 * r + 1) * s;
      E[r] = buffer + (4 * r + 2) * s;
      M[r] = buffer + (4 * r + 3) * s;
      PD[r] = P[r];
      GD[r] = G[r];
    }
  }
  // The first column that P, G hold: all of them, or (direct) the last 2 to 9 columns, so
  // that the columns before it fill whole vectors of 8 floats or 4 doubles (no scalar
  // remainder of the normals' loop in each part).
  int tail_from() const { return direct ? std::max(0, w - 2) / 8 * 8 : 0; }
  // Rows of w + 2 entries, each starting on a cache line (row_stride): the vector loops'
  // loads at j do not split cache lines, nor do the buffers after these.
  static int64_t stride(int w) { return row_stride<T>(int64_t(w) + 2); }
  static int64_t buffer_size(int w) { return 12 * stride(w); }

  void load(int slot, int row) {
    const T* pi = p + int64_t(row) * w;
    const T* gi = g + int64_t(row) * w;
    T *Ps = P[slot], *Gs = G[slot], *Es = E[slot], *Ms = M[slot];
    if constexpr (HasMask) {
      const uint8_t* mi = m + int64_t(row) * w;
#pragma omp simd
      for (int j = 0; j < w; ++j) {
        const bool v = mi[j] != 0;
        Ps[j] = where_valid(v, pi[j]);
        Gs[j] = where_valid(v, gi[j]);
        Es[j] = Ps[j] - Gs[j];
        Ms[j] = v ? T(1) : T(0);
      }
    } else if (direct) {
      PD[slot] = pi;
      GD[slot] = gi;
      for (int j = tail_from(); j < w; ++j) {
        Ps[j] = pi[j];
        Gs[j] = gi[j];
      }
#pragma omp simd
      for (int j = 0; j < w; ++j) Es[j] = pi[j] - gi[j];
    } else {
#pragma omp simd
      for (int j = 0; j < w; ++j) {
        Ps[j] = pi[j];
        Gs[j] = gi[j];
        Es[j] = pi[j] - gi[j];
      }
    }
    for (int j = w; j < w + 2; ++j) {
      Ps[j] = Ps[w - 1];
      Gs[j] = Gs[w - 1];
      Es[j] = Es[w - 1];
      if constexpr (HasMask) Ms[j] = Ms[w - 1];
    }
  }

  // With a mask: `types` without the gradient (normal) group when no term of that group in
  // row i can be valid. Every footprint of r, c, rr, rc, cc holds (i, j) and (i, j+1) or
  // (i+1, j); every one of N, Nr, Nc holds (i, j), (i, j+1) and (i+1, j). With sparse ground
  // truth most rows have none, and a skipped group's terms would all have been zeros.
  uint32_t row_types(uint32_t types) const {
    if constexpr (HasMask) {
      if (!(types & (kGradBits | kNormalBits))) return types;
      const T *__restrict M0 = M[0], *__restrict M1 = M[1];
      T grad = 0, normal = 0;
#pragma omp simd reduction(+ : grad, normal)
      for (int j = 0; j < w; ++j) {
        grad += M0[j] * (M0[j + 1] + M1[j]);
        normal += M0[j] * M0[j + 1] * M1[j];
      }
      if (!(grad > 0)) types &= ~kGradBits;
      if (!(normal > 0)) types &= ~kNormalBits;
    }
    return types;
  }

  // Make slots 0, 1, 2 hold rows i, min(i+1, h-1), min(i+2, h-1); `deep`: rows i+1, i+2 needed.
  void seek(int i, bool deep) {
    if (!deep) {
      load(0, i);
      loaded = -1;
      return;
    }
    if (loaded >= 0 && i == loaded + 1) {
      std::rotate(P, P + 1, P + 3);
      std::rotate(G, G + 1, G + 3);
      std::rotate(PD, PD + 1, PD + 3);
      std::rotate(GD, GD + 1, GD + 3);
      std::rotate(E, E + 1, E + 3);
      std::rotate(M, M + 1, M + 3);
      load(2, std::min(i + 2, h - 1));
    } else {
      for (int r = 0; r < 3; ++r) load(r, std::min(i + r, h - 1));
    }
    loaded = i;
  }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
