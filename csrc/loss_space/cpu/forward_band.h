// Forward of one band of rows of one scale: the sums and counts of the per-pixel terms.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "loss_space/cpu/box_means.h"
#include "loss_space/cpu/row_window.h"
#include "loss_space/cpu/selection.h"
#include "loss_space/cpu/workspace.h"
#include "loss_space/loss_math.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Row i's sums and counts of the gradient types in Set (Eq. 6), in one loop: the types share
// the loads of e and their differences (the compiler keeps one copy of each).
template <uint32_t Set, typename T, bool HasMask>
MLRB_FORCE_INLINE void grad_sums(const RowWindow<T, HasMask>& win, int w, double* sum, double* cnt) {
  const T *E0 = win.E[0], *E1 = win.E[1], *E2 = win.E[2];
  const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
  T aR = 0, aC = 0, aRR = 0, aRC = 0, aCC = 0, cR = 0, cC = 0, cRR = 0, cRC = 0, cCC = 0;
#pragma omp simd reduction(+ : aR, aC, aRR, aRC, aCC, cR, cC, cRR, cRC, cCC)
  for (int j = 0; j < w; ++j) {
    if constexpr (in(Set, kR)) {
      const T v = HasMask ? valid_of<kR>(M0, M1, M2, j) : T(1);
      aR += loss_grad_type<kR>(E0, E1, E2, j) * v;
      cR += v;
    }
    if constexpr (in(Set, kC)) {
      const T v = HasMask ? valid_of<kC>(M0, M1, M2, j) : T(1);
      aC += loss_grad_type<kC>(E0, E1, E2, j) * v;
      cC += v;
    }
    if constexpr (in(Set, kRR)) {
      const T v = HasMask ? valid_of<kRR>(M0, M1, M2, j) : T(1);
      aRR += loss_grad_type<kRR>(E0, E1, E2, j) * v;
      cRR += v;
    }
    if constexpr (in(Set, kRC)) {
      const T v = HasMask ? valid_of<kRC>(M0, M1, M2, j) : T(1);
      aRC += loss_grad_type<kRC>(E0, E1, E2, j) * v;
      cRC += v;
    }
    if constexpr (in(Set, kCC)) {
      const T v = HasMask ? valid_of<kCC>(M0, M1, M2, j) : T(1);
      aCC += loss_grad_type<kCC>(E0, E1, E2, j) * v;
      cCC += v;
    }
  }
  const T a[5] = {aR, aC, aRR, aRC, aCC}, c[5] = {cR, cC, cRR, cRC, cCC};
  for (int u = 0; u < 5; ++u)
    if (in(Set, kR + u)) {
      sum[kR + u] += a[u];
      cnt[kR + u] += HasMask ? c[u] : T(w);
    }
}

// Row i's sums and counts of the normal types in Set (Eq. 7-8), in one loop (shared loads
// and differences, as above). Scaled: the overflow-safe formula (scale_stats).
template <uint32_t Set, bool Scaled, typename T, bool HasMask>
MLRB_FORCE_INLINE void normal_sums(const RowWindow<T, HasMask>& win, int w, double* sum, double* cnt) {
  const T *P0 = win.P[0], *P1 = win.P[1], *P2 = win.P[2];
  const T *G0 = win.G[0], *G1 = win.G[1], *G2 = win.G[2];
  const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
  T aN = 0, aNr = 0, aNc = 0, cN = 0, cNr = 0, cNc = 0;
#pragma omp simd reduction(+ : aN, aNr, aNc, cN, cNr, cNc)
  for (int j = 0; j < w; ++j) {
    T a1, a2, b1, b2;
    if constexpr (in(Set, kN)) {
      normal_args<kN>(P0, P1, P2, j, a1, a2);
      normal_args<kN>(G0, G1, G2, j, b1, b2);
      const T v = HasMask ? valid_of<kN>(M0, M1, M2, j) : T(1);
      aN += normal_loss<Scaled>(a1, a2, b1, b2) * v;
      cN += v;
    }
    if constexpr (in(Set, kNr)) {
      normal_args<kNr>(P0, P1, P2, j, a1, a2);
      normal_args<kNr>(G0, G1, G2, j, b1, b2);
      const T v = HasMask ? valid_of<kNr>(M0, M1, M2, j) : T(1);
      aNr += normal_loss<Scaled>(a1, a2, b1, b2) * v;
      cNr += v;
    }
    if constexpr (in(Set, kNc)) {
      normal_args<kNc>(P0, P1, P2, j, a1, a2);
      normal_args<kNc>(G0, G1, G2, j, b1, b2);
      const T v = HasMask ? valid_of<kNc>(M0, M1, M2, j) : T(1);
      aNc += normal_loss<Scaled>(a1, a2, b1, b2) * v;
      cNc += v;
    }
  }
  const T a[3] = {aN, aNr, aNc}, c[3] = {cN, cNr, cNc};
  for (int u = 0; u < 3; ++u)
    if (in(Set, kN + u)) {
      sum[kN + u] += a[u];
      cnt[kN + u] += HasMask ? c[u] : T(w);
    }
}

// Rows [i0, i1) of one scale: sum[t], cnt[t] (t = 0..12) of the per-pixel terms of the
// types in `types`; far: the scale's normals take the scaled formula (scale_stats);
// sign_sum (if set, with M selected): the sum of sgn(e - mu) over the valid pixels, for the
// backward (kStatSignSum). A band only reads its rows and their halos (box windows, i+1,
// i+2), so bands run in any order; the caller adds them up in band order.
template <typename T, bool HasMask>
void scale_forward_band(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types, T mu, bool far,
                        int i0, int i1, double* sum, double* cnt, double* sign_sum, Workspace<T>& ws) {
  std::fill(sum, sum + kNumTypes, 0.0);
  std::fill(cnt, cnt + kNumTypes, 0.0);
  if (sign_sum) *sign_sum = 0;
  const int64_t wsz = RowWindow<T, HasMask>::buffer_size(w);
  const int64_t bsz = BoxMeans<T, HasMask>::buffer_size(w, types);
  T* buf = ws.tbuf(wsz + bsz);
  double* dbuf = ws.dbuf(BoxMeans<T, HasMask>::dbuffer_size(w));
  RowWindow<T, HasMask> win(p, g, m, h, w, buf);
  BoxMeans<T, HasMask> box(p, g, m, h, w, types, mu, buf + wsz, dbuf, i0);
  const bool deep = types & kRowWindowBits;

  for (int i = i0; i < i1; ++i) {
    win.seek(i, deep);
    const T* E0 = win.E[0];
    const T* M0 = win.M[0];
    T c0 = 0;
    if constexpr (HasMask) {
#pragma omp simd reduction(+ : c0)
      for (int j = 0; j < w; ++j) c0 += M0[j];
    } else {
      c0 = T(w);
    }
    if (types & bit(kD)) {
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < w; ++j) acc += loss_D(E0[j]) * (HasMask ? M0[j] : T(1));
      sum[kD] += acc;
      cnt[kD] += c0;
    }
    if (types & bit(kM)) {
      T acc = 0;
      if (sign_sum) {  // and the backward's M shift: sgn(e - mu) of the same e (an integer sum, exact)
        T sg = 0;
#pragma omp simd reduction(+ : acc, sg)
        for (int j = 0; j < w; ++j) {
          const T v = HasMask ? M0[j] : T(1);
          acc += loss_M(E0[j], mu) * v;
          sg += sgn(E0[j] - mu) * v;
        }
        *sign_sum += sg;
      } else {
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_M(E0[j], mu) * (HasMask ? M0[j] : T(1));
      }
      sum[kM] += acc;
      cnt[kM] += c0;
    }
    if (box.nb) box.advance(i, i0);
    for (int k = 0; k < box.nb; ++k) {
      T acc = 0;
      const auto x = box.slide(k);
      if constexpr (HasMask) {
        const auto c = box.count_slide(k);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_Mn(E0[j], mu, x(j) / box.count(c(j))) * M0[j];
      } else {
        const T iv = box.inv(k);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_Mn(E0[j], mu, x(j) * iv);
      }
      sum[box.type[k]] += acc;
      cnt[box.type[k]] += c0;
    }
    const uint32_t row_types = win.row_types(types);  // without groups that have no terms in the row
    for_group<kR, kC, kRR, kRC, kCC>(row_types,
                                    [&](auto set) { grad_sums<decltype(set)::value>(win, w, sum, cnt); });
    for_group<kN, kNr, kNc>(row_types, [&](auto set) {
      if (far)
        normal_sums<decltype(set)::value, true>(win, w, sum, cnt);
      else
        normal_sums<decltype(set)::value, false>(win, w, sum, cnt);
    });
  }
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
