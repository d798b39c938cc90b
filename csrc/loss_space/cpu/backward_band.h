// Backward of one scale: d(sum_t G[t] L_t) / dD^k, band by band.
//
// Every loss is a mean of per-pixel terms f(e) or f(p, g) of a stencil (loss_math.h); its
// gradient is collected in coefficient fields that the transposed stencils then distribute:
//   gp = t0 - m * sum_n B_n^T(tb_n) + dx^T(tx + dx^T txx) + dy^T(ty + dy^T tyy + dx^T txy)
// (rc = dx dy, and dx, dy commute). The fields of row i depend on rows i..i+2 only, so
// one pass over the rows suffices; the box transposes lag r rows behind (ring buffers).
// Per row, accumulate_fields fills the fields and the box rows tb_n, transpose_boxes
// applies B_n^T, apply_stencils applies dx^T, dy^T and adds the row to the output.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "loss_space/box.h"
#include "loss_space/cpu/box_means.h"
#include "loss_space/cpu/plan.h"
#include "loss_space/cpu/row_window.h"
#include "loss_space/cpu/scale_stats.h"
#include "loss_space/cpu/selection.h"
#include "loss_space/cpu/workspace.h"
#include "loss_space/loss_math.h"
#include "loss_space/loss_space.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Which coefficient fields a type writes (t0 takes D, M and the box losses).
constexpr uint32_t kFieldX = bit(kR) | bit(kN);
constexpr uint32_t kFieldY = bit(kC) | bit(kN);
constexpr uint32_t kFieldXX = bit(kRR) | bit(kNr);
constexpr uint32_t kFieldXY = bit(kRC) | bit(kNr) | bit(kNc);
constexpr uint32_t kFieldYY = bit(kCC) | bit(kNc);

// Counts of the valid sets of the types with a mask (valid_of, with D, M and the box
// losses reading the pixel itself): one pass over the mask rows as 0/1 bytes (rows i, i+1,
// i+2, padded like RowWindow's), every footprint in one loop. rows: 3 (w + 2) bytes.
inline void valid_counts(const uint8_t* m, int h, int w, double* cnt, uint8_t* rows) {
  uint8_t* R[3] = {rows, rows + (w + 2), rows + 2 * (w + 2)};
  auto load = [&](uint8_t* __restrict dst, int row) {
    const uint8_t* __restrict mi = m + int64_t(row) * w;
#pragma omp simd
    for (int j = 0; j < w; ++j) dst[j] = mi[j] != 0;
    dst[w] = dst[w + 1] = dst[w - 1];
  };
  for (int r = 0; r < 3; ++r) load(R[r], std::min(r, h - 1));
  int64_t c[9] = {};
  for (int i = 0; i < h; ++i) {
    if (i > 0) {
      std::rotate(R, R + 1, R + 3);
      load(R[2], std::min(i + 2, h - 1));
    }
    const uint8_t *M0 = R[0], *M1 = R[1], *M2 = R[2];
    // Byte counters over blocks of 255 columns (exact): the loop stays in byte lanes.
    for (int j0 = 0; j0 < w; j0 += 255) {
      const int j1 = std::min(w, j0 + 255);
      uint8_t cD = 0, cR = 0, cC = 0, cRR = 0, cRC = 0, cCC = 0, cN = 0, cNr = 0, cNc = 0;
#pragma omp simd reduction(+ : cD, cR, cC, cRR, cRC, cCC, cN, cNr, cNc)
      for (int j = j0; j < j1; ++j) {
        cD += valid_of<kD>(M0, M1, M2, j);
        cR += valid_of<kR>(M0, M1, M2, j);
        cC += valid_of<kC>(M0, M1, M2, j);
        cRR += valid_of<kRR>(M0, M1, M2, j);
        cRC += valid_of<kRC>(M0, M1, M2, j);
        cCC += valid_of<kCC>(M0, M1, M2, j);
        cN += valid_of<kN>(M0, M1, M2, j);
        cNr += valid_of<kNr>(M0, M1, M2, j);
        cNc += valid_of<kNc>(M0, M1, M2, j);
      }
      const uint8_t block[9] = {cD, cR, cC, cRR, cRC, cCC, cN, cNr, cNc};
      for (int k = 0; k < 9; ++k) c[k] += block[k];
    }
  }
  const int of[9] = {kD, kR, kC, kRR, kRC, kCC, kN, kNr, kNc};
  for (int k = 0; k < 9; ++k) cnt[of[k]] = double(c[k]);
  for (int t : {kM, kM5, kM17, kM65}) cnt[t] = cnt[kD];
}

template <typename T>
struct ScalePrep {
  T mu = 0;              // global mean of e
  T wt[kNumTypes] = {};  // G[t] / count of the valid set of t
  T m_shift = 0;         // M: mean of sign(e - mu) over the valid pixels
  bool far = false;      // the normals take the scaled formula (scale_stats)
};

// The statistics of one scale that its band pass needs first (kStatMu .. kScaleStatWidth,
// loss_space.h), from pre-passes over the scale: the global mean and far-depth check
// (scale_stats), the counts of the valid sets, the sum of sgn(e - mu) for M. The forward
// finds the same values bit for bit (drivers.h), which the backward then reads instead.
template <typename T, bool HasMask>
void scale_backward_stats(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types,
                          Workspace<T>& ws, double* st) {
  const int64_t n = int64_t(h) * w;
  double* cnt = st + kStatCount;  // without a mask every count is h w
  for (int t = 0; t < kNumTypes; ++t) cnt[t] = double(n);
  const ScaleStats<T> ss = scale_stats<T, HasMask>(p, g, m, h, w, types);
  st[kStatMu] = double(ss.mu);
  st[kStatFar] = ss.far ? 1.0 : 0.0;
  st[kStatSignSum] = 0;
  st[kStatTypes] = types;
  if constexpr (HasMask) {
    uint8_t* rows = reinterpret_cast<uint8_t*>(ws.dbuf((3 * (int64_t(w) + 2) + 7) / 8));
    valid_counts(m, h, w, cnt, rows);
  }
  if ((types & bit(kM)) && cnt[kM] > 0) {
    const T mu = ss.mu;
    double s = 0;  // integers: exact in any order
    for (int i = 0; i < h; ++i) {
      const T* pi = p + int64_t(i) * w;
      const T* gi = g + int64_t(i) * w;
      T acc = 0;
      if constexpr (HasMask) {
        const uint8_t* mi = m + int64_t(i) * w;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += where_valid(mi[j], sgn((pi[j] - gi[j]) - mu));
      } else {
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += sgn((pi[j] - gi[j]) - mu);
      }
      s += acc;
    }
    st[kStatSignSum] = s;
  }
}

// The band pass's constants of one scale from its statistics st (the forward's, or
// scale_backward_stats) and the incoming gradients G of its 13 losses.
template <typename T>
ScalePrep<T> scale_backward_prep(const double* st, uint32_t types, const double* G) {
  ScalePrep<T> prep;
  const double* cnt = st + kStatCount;
  for (int t = 0; t < kNumTypes; ++t)
    prep.wt[t] = static_cast<T>((types & bit(t)) && cnt[t] > 0 ? G[t] / cnt[t] : 0.0);
  // M: d mean|e - mu| / de_j = (s_j - m_j sum(s) / cnt) / cnt with s = sign(e - mu) m;
  // the shift sum(s) / cnt goes into dloss_M (loss_math.h).
  if ((types & bit(kM)) && cnt[kM] > 0) prep.m_shift = static_cast<T>(st[kStatSignSum] / cnt[kM]);
  prep.mu = static_cast<T>(st[kStatMu]);
  prep.far = st[kStatFar] != 0;
  return prep;
}

// The coefficient fields of one row (w entries each) and the dy^T carries: Bf (this row's
// ty + dy^T tyy + dx^T txy, the next row's prevBf) and prevTyy (the row before's tyy: the
// two rows swap after the stencils, no copy).
template <typename T>
struct Fields {
  T *t0, *tx, *ty, *txx, *txy, *tyy;
  T *Bf, *prevBf, *prevTyy;
  bool fx, fy, fxx, fxy, fyy;
  bool grad_first;  // all gradient types selected: grad_fields assigns the five fields

  static constexpr int kRows = 9;
  Fields(T* f, int w, int64_t s, uint32_t types)  // s: the row stride
      : t0(f), tx(f + s), ty(f + 2 * s), txx(f + 3 * s), txy(f + 4 * s), tyy(f + 5 * s), Bf(f + 6 * s),
        prevBf(f + 7 * s), prevTyy(f + 8 * s), fx(types & kFieldX), fy(types & kFieldY),
        fxx(types & kFieldXX), fxy(types & kFieldXY), fyy(types & kFieldYY),
        grad_first((types & kGradBits) == kGradBits) {
    std::fill(prevBf, prevBf + w, T(0));
    std::fill(prevTyy, prevTyy + w, T(0));
  }
  // With all gradient types selected, grad_fields writes the five fields first (assigning
  // 0 + term: the bits of adding to a cleared field), so rows where it runs (grads_run) skip
  // their clearing; t0 likewise where accumulate_fields assigns it (t0_in_one_loop).
  void clear(int w, bool grads_run, bool t0_assigned) {
    if (!t0_assigned) std::fill(t0, t0 + w, T(0));
    if (grads_run && grad_first) return;
    if (fx) std::fill(tx, tx + w, T(0));
    if (fy) std::fill(ty, ty + w, T(0));
    if (fxx) std::fill(txx, txx + w, T(0));
    if (fxy) std::fill(txy, txy + w, T(0));
    if (fyy) std::fill(tyy, tyy + w, T(0));
  }
};

// One box size of the backward: B^T as a running vertical window Z over the rows U of
// horizontal transposes (a ring of 2r + 2 rows at stride s) of the per-row coefficients tb.
template <typename T>
struct BoxTranspose {
  int b, r, ring;
  T *Z, *tb, *U;
  int64_t s;
  bool zeroes_invalid;  // its emits set the invalid pixels of their rows to 0 (scale_backward_band)
  T* ring_row(int i) const { return U + int64_t(i % ring) * s; }
};

// Row i's derivatives of the gradient types in Set times G[t] / count and the validity of
// the footprint, into the fields of their stencils, in one loop (shared loads and
// differences; each field entry gets the same sums, in the same order, as type by type).
template <uint32_t Set, typename T, bool HasMask>
MLRB_FORCE_INLINE void grad_fields(const RowWindow<T, HasMask>& win, const T* wt, Fields<T>& fl, int w) {
  const T *E0 = win.E[0], *E1 = win.E[1], *E2 = win.E[2];
  const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
  T *__restrict tx = fl.tx, *__restrict ty = fl.ty, *__restrict txx = fl.txx, *__restrict txy = fl.txy,
    *__restrict tyy = fl.tyy;
  const T wR = wt[kR], wC = wt[kC], wRR = wt[kRR], wRC = wt[kRC], wCC = wt[kCC];
  // The whole group writes its fields first (Fields::grad_first): field = 0 + term.
  auto put = [](T& field, T term) MLRB_INLINE_LAMBDA {
    if constexpr (Set == kGradBits) field = T(0) + term;
    else field += term;
  };
#pragma omp simd
  for (int j = 0; j < w; ++j) {
    if constexpr (in(Set, kR))
      put(tx[j], wR * dloss_grad_type<kR>(E0, E1, E2, j) * (HasMask ? valid_of<kR>(M0, M1, M2, j) : T(1)));
    if constexpr (in(Set, kC))
      put(ty[j], wC * dloss_grad_type<kC>(E0, E1, E2, j) * (HasMask ? valid_of<kC>(M0, M1, M2, j) : T(1)));
    if constexpr (in(Set, kRR))
      put(txx[j], wRR * dloss_grad_type<kRR>(E0, E1, E2, j) * (HasMask ? valid_of<kRR>(M0, M1, M2, j) : T(1)));
    if constexpr (in(Set, kRC))
      put(txy[j], wRC * dloss_grad_type<kRC>(E0, E1, E2, j) * (HasMask ? valid_of<kRC>(M0, M1, M2, j) : T(1)));
    if constexpr (in(Set, kCC))
      put(tyy[j], wCC * dloss_grad_type<kCC>(E0, E1, E2, j) * (HasMask ? valid_of<kCC>(M0, M1, M2, j) : T(1)));
  }
}

// The same for the normal types in Set (normal_loss_grad w.r.t. the pred derivatives):
// N into (tx, ty), Nr into (txx, txy), Nc into (txy, tyy), columns [j0, j1) with the rows
// P*, G* of pred and gt. Scaled: see scale_stats.
template <uint32_t Set, bool Scaled, typename T, bool HasMask>
MLRB_FORCE_INLINE void normal_fields_cols(const RowWindow<T, HasMask>& win, const T* P0, const T* P1, const T* P2,
                                          const T* G0, const T* G1, const T* G2, const T* wt, Fields<T>& fl, int j0,
                                          int j1) {
  const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
  T *__restrict tx = fl.tx, *__restrict ty = fl.ty, *__restrict txx = fl.txx, *__restrict txy = fl.txy,
    *__restrict tyy = fl.tyy;
  const T wN = wt[kN], wNr = wt[kNr], wNc = wt[kNc];
#pragma omp simd
  for (int j = j0; j < j1; ++j) {
    T a1, a2, b1, b2, g1, g2;
    if constexpr (in(Set, kN)) {
      normal_args<kN>(P0, P1, P2, j, a1, a2);
      normal_args<kN>(G0, G1, G2, j, b1, b2);
      normal_loss_grad<Scaled>(a1, a2, b1, b2, wN * (HasMask ? valid_of<kN>(M0, M1, M2, j) : T(1)), g1, g2);
      tx[j] += g1;
      ty[j] += g2;
    }
    if constexpr (in(Set, kNr)) {
      normal_args<kNr>(P0, P1, P2, j, a1, a2);
      normal_args<kNr>(G0, G1, G2, j, b1, b2);
      normal_loss_grad<Scaled>(a1, a2, b1, b2, wNr * (HasMask ? valid_of<kNr>(M0, M1, M2, j) : T(1)), g1, g2);
      txx[j] += g1;
      txy[j] += g2;
    }
    if constexpr (in(Set, kNc)) {
      normal_args<kNc>(P0, P1, P2, j, a1, a2);
      normal_args<kNc>(G0, G1, G2, j, b1, b2);
      normal_loss_grad<Scaled>(a1, a2, b1, b2, wNc * (HasMask ? valid_of<kNc>(M0, M1, M2, j) : T(1)), g1, g2);
      txy[j] += g1;
      tyy[j] += g2;
    }
  }
}

// Every column of the row: the input rows up to the window's tail (RowWindow::direct), then
// its padded copies (each column's terms are computed alone: the same bits either way).
template <uint32_t Set, bool Scaled, typename T, bool HasMask>
MLRB_FORCE_INLINE void normal_fields(const RowWindow<T, HasMask>& win, const T* wt, Fields<T>& fl, int w) {
  const int t = win.tail_from();
  if (t > 0)
    normal_fields_cols<Set, Scaled>(win, win.PD[0], win.PD[1], win.PD[2], win.GD[0], win.GD[1], win.GD[2], wt, fl,
                                    0, t);
  normal_fields_cols<Set, Scaled>(win, win.P[0], win.P[1], win.P[2], win.G[0], win.G[1], win.G[2], wt, fl, t, w);
}

// Without a mask and with D, M and the three box sizes selected (the whole space), their
// terms go into t0 in one loop that assigns it (no clearing, one write per pixel).
template <bool HasMask>
constexpr bool t0_in_one_loop(uint32_t types) {
  constexpr uint32_t all = bit(kD) | kMeanBits;
  return !HasMask && (types & all) == all;
}

// Row i's per-pixel derivatives (loss_math.h) times G[t] / count and the validity of the
// footprint: D, M and the box losses into t0, the box losses also into tb_n (for B_n^T),
// the gradient and normal types into the fields of their stencils.
template <typename T, bool HasMask>
MLRB_FORCE_INLINE void accumulate_fields(const RowWindow<T, HasMask>& win, BoxMeans<T, HasMask>& box,
                                         std::vector<BoxTranspose<T>>& bt, const ScalePrep<T>& prep, uint32_t types,
                                         int w, int i, int i0, Fields<T>& fl) {
  const T* E0 = win.E[0];
  const T* M0 = win.M[0];
  const T mu = prep.mu, m_shift = prep.m_shift;
  const T* wt = prep.wt;
  T* t0 = fl.t0;
  const bool one_loop = t0_in_one_loop<HasMask>(types);
  if ((types & bit(kD)) && !one_loop) {
    const T wd = wt[kD];
#pragma omp simd
    for (int j = 0; j < w; ++j) t0[j] += wd * dloss_D(E0[j]) * (HasMask ? M0[j] : T(1));
  }
  if ((types & bit(kM)) && !one_loop) {
    const T wm = wt[kM];
#pragma omp simd
    for (int j = 0; j < w; ++j) t0[j] += wm * dloss_M(E0[j], mu, m_shift) * (HasMask ? M0[j] : T(1));
  }
  if (box.nb) box.advance(i, i0);
  // Box losses: wb sgn(e - mu - local_n) into t0, and its share per window into tb_n (B_n^T).
  using BM = BoxMeans<T, HasMask>;
  struct Size {
    typename BM::Slide x;        // box sums of x
    typename BM::CountSlide m;   // and, with a mask, of m (without one m is not used)
    T wb, iv, inv_n2;
    T* tb;
  };
  Size sz[3];
  for (size_t k = 0; k < bt.size(); ++k)
    sz[k] = {box.slide(int(k)), box.count_slide(int(k)), wt[kM5 + bt[k].b], box.inv(int(k)),
             T(1) / T((2 * bt[k].r + 1) * (2 * bt[k].r + 1)), bt[k].tb};
  auto term = [&](const Size& z, int j) MLRB_INLINE_LAMBDA {
    if constexpr (HasMask) {
      const T cj = box.count(z.m(j));
      const T d = dloss_Mn(E0[j], mu, z.x(j) / cj);
      // (d M0) (wb / cj) is s / cj bit for bit (d M0 is +-1 or a zero, and the rounding is
      // symmetric), but its division does not wait for the first one and the sign.
      z.tb[j] = (d * M0[j]) * (z.wb / cj);
      return z.wb * d * M0[j];
    } else {
      const T s = z.wb * dloss_Mn(E0[j], mu, z.x(j) * z.iv);
      z.tb[j] = s * z.inv_n2;
      return s;
    }
  };
  // All sizes in one loop (e and t0 read once, the same sums in the same order); with a mask
  // the six running sums in one loop would leave too few registers: a loop per size.
  if (one_loop) {  // D and M too: t0 assigned, the sums of the loops one after the other
    const T wd = wt[kD], wm = wt[kM];
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const T d = wd * dloss_D(E0[j]), mm = wm * dloss_M(E0[j], mu, m_shift);
      const T s0 = term(sz[0], j), s1 = term(sz[1], j), s2 = term(sz[2], j);
      t0[j] = ((((T(0) + d) + mm) + s0) + s1) + s2;
    }
  } else if (!HasMask && bt.size() == 3) {
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      const T s0 = term(sz[0], j), s1 = term(sz[1], j), s2 = term(sz[2], j);
      t0[j] = ((t0[j] + s0) + s1) + s2;
    }
  } else {
    for (size_t k = 0; k < bt.size(); ++k) {
#pragma omp simd
      for (int j = 0; j < w; ++j) t0[j] += term(sz[k], j);
    }
  }
  for_group<kR, kC, kRR, kRC, kCC>(types, [&](auto set) { grad_fields<decltype(set)::value>(win, wt, fl, w); });
  for_group<kN, kNr, kNc>(types, [&](auto set) {
    if (prep.far)
      normal_fields<decltype(set)::value, true>(win, wt, fl, w);
    else
      normal_fields<decltype(set)::value, false>(win, wt, fl, w);
  });
}

// Z += U_in - U_out (either may be absent): the window of padded row q (rows q-r..q+r),
// then out[clamp(q)] -= Z, times the mask; ZeroInvalid: out[clamp(q)] = 0 at invalid pixels
// (the same values at valid ones).
template <typename T, bool HasMask, bool ZeroInvalid = false>
MLRB_FORCE_INLINE void box_emit(BoxTranspose<T>& x, int q, const T* U_in, const T* U_out,
                                const BandOut<T>& out_rows, const uint8_t* m, int h, int w) {
  if constexpr (HasMask && !ZeroInvalid) {
    if (x.zeroes_invalid) return box_emit<T, HasMask, true>(x, q, U_in, U_out, out_rows, m, h, w);
  }
  const int row = std::clamp(q, 0, h - 1);
  T* __restrict out = out_rows.row(row);
  T* __restrict Z = x.Z;
  const uint8_t* mi = HasMask ? m + int64_t(row) * w : nullptr;
  auto put = [&](int j, T z) MLRB_INLINE_LAMBDA {
    if constexpr (ZeroInvalid) out[j] = mi[j] ? out[j] - z : T(0);
    else out[j] -= HasMask ? (mi[j] ? z : T(0)) : z;
  };
  if (U_in && U_out) {
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      Z[j] += U_in[j] - U_out[j];
      put(j, Z[j]);
    }
  } else if (U_in) {
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      Z[j] += U_in[j];
      put(j, Z[j]);
    }
  } else if (U_out) {
#pragma omp simd
    for (int j = 0; j < w; ++j) {
      Z[j] -= U_out[j];
      put(j, Z[j]);
    }
  } else {
#pragma omp simd
    for (int j = 0; j < w; ++j) put(j, Z[j]);
  }
}

// B_n^T of row i: its horizontal transpose enters the ring, and padded row q = i - r,
// whose window (rows up to i) is now complete, is emitted.
template <typename T, bool HasMask>
MLRB_FORCE_INLINE void transpose_boxes(std::vector<BoxTranspose<T>>& bt, int i, int i0,
                                       const BandOut<T>& out_rows, const uint8_t* m, int h, int w, T* tscratch) {
  for (BoxTranspose<T>& x : bt) {
    box_row_sum_transpose(x.tb, w, x.r, x.ring_row(i), tscratch);
    const int leave = i - 2 * x.r - 1;
    box_emit<T, HasMask>(x, i - x.r, x.ring_row(i), leave >= i0 ? x.ring_row(leave) : nullptr, out_rows, m, h, w);
  }
}

// out += t0 + dx^T(tx + dx^T txx) + dy^T(ty + dy^T tyy + dx^T txy) for row i (dy^T reads
// the carries of row i - 1). The last row's dy terms are 0 (replicate padding): zeroed.
// One pass over the row for the active fields (compile-time flags): the sums of each entry
// are those of applying the stencils one after the other, in the same order.
template <bool FX, bool FXX, bool FY, bool FXY, bool FYY, typename T>
MLRB_FORCE_INLINE void apply_stencils_pass(Fields<T>& fl, T* out_row, bool last, int w) {
  constexpr bool kX = FX || FXX, kRows = FY || FXY || FYY;
  const T *__restrict t0 = fl.t0, *__restrict tx = fl.tx, *__restrict txx = fl.txx, *__restrict ty = fl.ty,
          *__restrict txy = fl.txy, *__restrict tyy = fl.tyy, *__restrict prevBf = fl.prevBf,
          *__restrict prevTyy = fl.prevTyy;
  T *__restrict Bf = fl.Bf, *__restrict out = out_row;
  // Transpose of d/dx (x[j] - x[j+1], 0 on the last column) at column j: x'[j] - x'[j-1]
  // with x' = x except x'[w-1] = 0. inner: 1 <= j <= w - 2.
  auto dxT = [&](auto inner, const T* x, int j) MLRB_INLINE_LAMBDA -> T {
    if constexpr (decltype(inner)::value) return x[j] - x[j - 1];
    else return w == 1 ? T(0) : j == 0 ? x[0] : j == w - 1 ? -x[w - 2] : x[j] - x[j - 1];
  };
  auto A = [&](auto inner, int j) MLRB_INLINE_LAMBDA -> T {  // tx + dx^T txx
    if constexpr (FXX && FX) return dxT(inner, txx, j) + tx[j];
    else if constexpr (FXX) return dxT(inner, txx, j);
    else return tx[j];
  };
  auto column = [&](auto inner, auto inner_prev, int j) MLRB_INLINE_LAMBDA {
    T t = t0[j];
    if constexpr (kX) {  // dx^T(A), from A at j and j - 1
      using I = decltype(inner);
      if constexpr (I::value) t += A(inner, j) - A(inner_prev, j - 1);
      else t += w == 1 ? T(0) : j == 0 ? A(inner, 0) : j == w - 1 ? -A(inner_prev, w - 2) : A(inner, j) - A(inner_prev, j - 1);
    }
    if constexpr (kRows) {
      T b = FXY ? dxT(inner, txy, j) : T(0);
      if constexpr (FY) b += ty[j];
      if constexpr (FYY) b += tyy[j] - prevTyy[j];
      if (last) b = T(0);
      t += b - prevBf[j];
      Bf[j] = b;
    }
    out[j] += t;
  };
  using In = std::true_type;
  using Edge = std::false_type;
  // Columns 0, 1 and w - 1 read the borders of dx^T (A at 0 is a border value too).
  const int lo = std::min(w, 2), hi = std::max(lo, w - 1);
  for (int j = 0; j < lo; ++j) column(Edge{}, Edge{}, j);
#pragma omp simd
  for (int j = lo; j < hi; ++j) column(In{}, In{}, j);
  for (int j = hi; j < w; ++j) column(Edge{}, Edge{}, j);
  if constexpr (FYY) std::swap(fl.tyy, fl.prevTyy);  // the fields of the next row are rewritten
  if constexpr (kRows) std::swap(fl.Bf, fl.prevBf);
}

template <typename T, unsigned... F>
MLRB_FORCE_INLINE void apply_stencils_of(unsigned flags, Fields<T>& fl, T* out, bool last, int w,
                                         std::integer_sequence<unsigned, F...>) {
  ((flags == F ? apply_stencils_pass<bool(F & 1), bool(F & 2), bool(F & 4), bool(F & 8), bool(F & 16)>(fl, out,
                                                                                                       last, w)
               : void()),
   ...);
}

template <typename T>
MLRB_FORCE_INLINE void apply_stencils(Fields<T>& fl, T* out, bool last, int w) {
  const unsigned flags = unsigned(fl.fx) | unsigned(fl.fxx) << 1 | unsigned(fl.fy) << 2 | unsigned(fl.fxy) << 3 |
                         unsigned(fl.fyy) << 4;
  apply_stencils_of(flags, fl, out, last, w, std::make_integer_sequence<unsigned, 32>{});
}

// Rows [i0, i1) of gp (h x w) = d(sum_t G[t] L_t) / dD^k, the part from the per-pixel
// terms of rows i0 .. i1 - 1, written through `out_rows` (rows above and below the band
// land in its halo buffers, which are added to). The band clears its rows itself, each
// one just before the stencils of its step write it (the box emits reach only rows
// behind the step), so a row is brought into cache once; row 0, which the emits of the
// padded rows above it reach first, is cleared at the start.
// zero_invalid (with a mask and a box loss selected): the emits of the widest selected box,
// which write each row of the band last (its lag r is the largest, and it comes last in
// the tail), also set the row's invalid pixels to 0, as drivers.h zero_invalid would; for
// a driver that adds nothing to these rows afterwards, in place of that pass.
template <typename T, bool HasMask>
void scale_backward_band(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types,
                         const ScalePrep<T>& prep, const BandOut<T>& out_rows, Workspace<T>& ws,
                         bool zero_invalid = false) {
  const int i0 = out_rows.i0, i1 = out_rows.i1;
  // Scratch: row window, box means, fields, per box Z and tb, the rings
  // of the box transposes, the scratch of box_row_sum_transpose.
  const int64_t wsz = RowWindow<T, HasMask>::buffer_size(w);
  const int64_t bsz = BoxMeans<T, HasMask>::buffer_size(w, types);
  int64_t ring_rows = 0;
  for (int b = 0; b < 3; ++b)
    if (types & bit(kM5 + b)) ring_rows += 2 * kBoxRadius[b] + 2;
  const int nfields = Fields<T>::kRows;
  const int64_t s = row_stride<T>(w);
  T* buf = ws.tbuf(wsz + bsz + (nfields + 3 * 2 + ring_rows) * s + box_transpose_scratch_size<T>(w, kBoxRadius[2]));
  double* dbuf = ws.dbuf(BoxMeans<T, HasMask>::dbuffer_size(w));
  RowWindow<T, HasMask> win(p, g, m, h, w, buf, /*direct=*/true);
  T* f = buf + wsz + bsz;
  Fields<T> fl(f, w, s, types);
  T* zrun_base = f + nfields * s;  // per box: Z (running) and tb (row)
  T* ring_base = zrun_base + 3 * 2 * s;
  T* tscratch = ring_base + ring_rows * s;

  BoxMeans<T, HasMask> box(p, g, m, h, w, types, prep.mu, buf + wsz, dbuf, i0);
  std::vector<BoxTranspose<T>> bt;
  {
    T* ring = ring_base;
    for (int b = 0; b < 3; ++b) {
      if (!(types & bit(kM5 + b))) continue;
      const int r = kBoxRadius[b];
      BoxTranspose<T> x{b, r, 2 * r + 2, zrun_base + b * 2 * s, zrun_base + b * 2 * s + s, ring, s, false};
      std::fill(x.Z, x.Z + w, T(0));
      bt.push_back(x);
      ring += int64_t(x.ring) * s;
    }
    if (HasMask && zero_invalid && !bt.empty()) bt.back().zeroes_invalid = true;
  }

  if (i0 == 0) std::fill(out_rows.row(0), out_rows.row(0) + w, T(0));
  const bool deep = types & kRowWindowBits;
  // Rows i1, i1 + 1 have no terms of this band, they only receive the dy^T of its last rows.
  const int iend = std::min(h, i1 + 2);
  for (int i = i0; i < iend; ++i) {
    const bool terms = i < i1;
    if (terms) win.seek(i, deep);
    const uint32_t row_types = terms ? win.row_types(types) : 0;  // without groups that have no terms
    fl.clear(w, row_types & kGradBits, terms && t0_in_one_loop<HasMask>(types));
    if (terms) {
      accumulate_fields<T, HasMask>(win, box, bt, prep, row_types, w, i, i0, fl);
      transpose_boxes<T, HasMask>(bt, i, i0, out_rows, m, h, w, tscratch);
    }
    if (i > 0 && i < i1) std::fill(out_rows.row(i), out_rows.row(i) + w, T(0));
    apply_stencils(fl, out_rows.row(i), i == h - 1, w);
  }
  // Box transposes: the padded rows q = i1-r .. i1-1+r, whose windows only lose rows.
  for (BoxTranspose<T>& x : bt) {
    for (int q = i1 - x.r; q <= i1 - 1 + x.r; ++q) {
      const int leave = q - x.r - 1;
      box_emit<T, HasMask>(x, q, nullptr, leave >= i0 ? x.ring_row(leave) : nullptr, out_rows, m, h, w);
    }
  }
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
