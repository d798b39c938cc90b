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

// Rows [i0, i1) of one scale: sum[t], cnt[t] (t = 0..12) of the per-pixel terms of the
// types in `types`. A band only reads its rows and their halos (box windows, i+1, i+2),
// so bands run in any order; the caller adds them up in band order.
template <typename T, bool HasMask>
void scale_forward_band(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types, T mu, int i0,
                        int i1, double* sum, double* cnt, Workspace<T>& ws) {
  std::fill(sum, sum + kNumTypes, 0.0);
  std::fill(cnt, cnt + kNumTypes, 0.0);
  const int64_t wsz = RowWindow<T, HasMask>::buffer_size(w);
  const int64_t bsz = BoxMeans<T, HasMask>::buffer_size(w, types);
  T* buf = ws.tbuf(wsz + bsz + 2 * int64_t(w));
  double* dbuf = ws.dbuf(BoxMeans<T, HasMask>::dbuffer_size(w));
  RowWindow<T, HasMask> win(p, g, m, h, w, buf);
  T* local = buf + wsz + bsz;
  T* count = local + w;
  BoxMeans<T, HasMask> box(p, g, m, h, w, types, mu, buf + wsz, dbuf, i0);
  const bool deep = types & kRowWindowBits;

  for (int i = i0; i < i1; ++i) {
    win.seek(i, deep);
    const T *E0 = win.E[0], *E1 = win.E[1], *E2 = win.E[2];
    const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
    const T *P0 = win.P[0], *P1 = win.P[1], *P2 = win.P[2];
    const T *G0 = win.G[0], *G1 = win.G[1], *G2 = win.G[2];
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
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < w; ++j) acc += loss_M(E0[j], mu) * (HasMask ? M0[j] : T(1));
      sum[kM] += acc;
      cnt[kM] += c0;
    }
    if (box.nb && i > i0) box.advance(i);
    for (int k = 0; k < box.nb; ++k) {
      T acc = 0;
      if constexpr (HasMask) {
        box.means(k, local, count);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_Mn(E0[j], mu, local[j]) * M0[j];
      } else {
        const T* v = box.sums(k);
        const T iv = box.inv(k);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_Mn(E0[j], mu, v[j] * iv);
      }
      sum[box.type[k]] += acc;
      cnt[box.type[k]] += c0;
    }
    for_types<kR, kC, kRR, kRC, kCC>(types, [&](auto tc) {
      constexpr int t = decltype(tc)::value;
      T acc = 0, c = 0;
      if constexpr (HasMask) {
#pragma omp simd reduction(+ : acc, c)
        for (int j = 0; j < w; ++j) {
          const T v = valid_of<t>(M0, M1, M2, j);
          acc += loss_grad_type<t>(E0, E1, E2, j) * v;
          c += v;
        }
      } else {
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += loss_grad_type<t>(E0, E1, E2, j);
        c = T(w);
      }
      sum[t] += acc;
      cnt[t] += c;
    });
    const bool scaled = (types & kNormalBits) && rows_need_scaling(w, P0, P1, P2, G0, G1, G2);
    for_types<kN, kNr, kNc>(types, [&](auto tc) {
      constexpr int t = decltype(tc)::value;
      T acc = 0, c = 0;
      auto sweep = [&](auto sc) {
        constexpr bool Scaled = decltype(sc)::value;
#pragma omp simd reduction(+ : acc, c)
        for (int j = 0; j < w; ++j) {
          T a1, a2, b1, b2;
          normal_args<t>(P0, P1, P2, j, a1, a2);
          normal_args<t>(G0, G1, G2, j, b1, b2);
          const T v = HasMask ? valid_of<t>(M0, M1, M2, j) : T(1);
          acc += normal_loss<Scaled>(a1, a2, b1, b2) * v;
          c += v;
        }
      };
      if (scaled) sweep(std::true_type{});
      else sweep(std::false_type{});
      sum[t] += acc;
      cnt[t] += c;
    });
  }
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
