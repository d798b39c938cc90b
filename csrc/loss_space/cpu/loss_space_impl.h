// Implementation of the fused CPU kernels; included once per instruction set by
// loss_space_kernel.cpp (baseline x86-64 / any CPU) and loss_space_kernel_avx2.cpp, each
// defining MLRB_CPU_ISA, so that one portable build runs AVX2 code where the CPU has it.
//
// Work is split into row bands of each (sample, scale) (see Plan: the partition depends on
// the shapes only, a batch of 1 gets several bands so that it uses every thread); partial
// results are combined in band order, so the results are bitwise identical for any number
// of threads. Per band the forward makes one pass over its rows (after a pre-pass for the
// global mean of M); the backward recomputes what it needs, writes the rows above and
// below its band into halo buffers added in band order, and pushes d(sum G L)/dD^k
// through the transpose of the pyramid. Per-row sums use the input precision and are
// accumulated in double.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "loss_space/box.h"
#include "loss_space/loss_math.h"
#include "loss_space/loss_space.h"
#include "loss_space/pyramid.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

constexpr uint32_t bit(int t) { return 1u << t; }
constexpr uint32_t kBoxBits = bit(kM5) | bit(kM17) | bit(kM65);
constexpr uint32_t kMeanBits = bit(kM) | kBoxBits;
// Which coefficient fields of the backward a type writes (see scale_backward).
constexpr uint32_t kFieldX = bit(kR) | bit(kN);
constexpr uint32_t kFieldY = bit(kC) | bit(kN);
constexpr uint32_t kFieldXX = bit(kRR) | bit(kNr);
constexpr uint32_t kFieldXY = bit(kRC) | bit(kNr) | bit(kNc);
constexpr uint32_t kFieldYY = bit(kCC) | bit(kNc);
constexpr uint32_t kRowWindowBits = ~(bit(kD) | kMeanBits);  // types reading rows i+1, i+2

struct Selection {
  uint32_t types[kNumScales] = {0, 0, 0, 0, 0, 0};
  bool amlr = false;
};

Selection selection_of(const LossSpaceArgs& a) {
  Selection s;
  for (int j = 0; j < a.n; ++j) {
    const int i = a.indices[j];
    if (i < kNumLosses)
      s.types[i / kNumTypes] |= bit(i % kNumTypes);
    else
      s.amlr = true;
  }
  return s;
}

// ------------------------------------------------------------------------ row window
// Rows i, i+1, i+2 (clamped) of p, g, e = p - g and the mask (0/1), each padded with two
// copies of its last entry so that d/dx at the last column reads x[w-1] - x[w-1] = 0.
// With a mask, invalid pixels read as 0: values there never reach a loss or a gradient.
template <typename T, bool HasMask>
struct RowWindow {
  const T* p;
  const T* g;
  const uint8_t* m;
  int h, w;
  std::vector<T> store;
  T* P[3];
  T* G[3];
  T* E[3];
  T* M[3];
  int loaded = -1;  // the row i currently in slot 0
  bool only_mask = false;  // load the mask rows only (the backward's counting pass)

  RowWindow(const T* p_, const T* g_, const uint8_t* m_, int h_, int w_, T* buffer)
      : p(p_), g(g_), m(m_), h(h_), w(w_) {
    const int s = w + 2;
    for (int r = 0; r < 3; ++r) {
      P[r] = buffer + (4 * r + 0) * s;
      G[r] = buffer + (4 * r + 1) * s;
      E[r] = buffer + (4 * r + 2) * s;
      M[r] = buffer + (4 * r + 3) * s;
    }
  }
  static int64_t buffer_size(int w) { return 12 * int64_t(w + 2); }

  void load(int slot, int row) {
    const T* pi = p + int64_t(row) * w;
    const T* gi = g + int64_t(row) * w;
    T *Ps = P[slot], *Gs = G[slot], *Es = E[slot], *Ms = M[slot];
    if (HasMask && only_mask) {
      const uint8_t* mi = m + int64_t(row) * w;
#pragma omp simd
      for (int j = 0; j < w; ++j) Ms[j] = mi[j] ? T(1) : T(0);
      Ms[w] = Ms[w + 1] = Ms[w - 1];
      return;
    }
    if constexpr (HasMask) {
      const uint8_t* mi = m + int64_t(row) * w;
#pragma omp simd
      for (int j = 0; j < w; ++j) {
        const bool v = mi[j] != 0;
        Ps[j] = v ? pi[j] : T(0);
        Gs[j] = v ? gi[j] : T(0);
        Es[j] = Ps[j] - Gs[j];
        Ms[j] = v ? T(1) : T(0);
      }
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
      std::rotate(E, E + 1, E + 3);
      std::rotate(M, M + 1, M + 3);
      load(2, std::min(i + 2, h - 1));
    } else {
      for (int r = 0; r < 3; ++r) load(r, std::min(i + r, h - 1));
    }
    loaded = i;
  }
};

// ------------------------------------------------------------------------ box means
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
          x[j] = mi[j] ? (pi[j] - gi[j]) - mu : T(0);
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

  // Size k without a mask: local[j] = sums(k)[j] * inv(k) (callers fuse it into their loop).
  const T* sums(int k) const { return V + int64_t(k) * S * w; }
  T inv(int k) const { return T(1.0 / double((2 * rad[k] + 1) * (2 * rad[k] + 1))); }

  // Size k: local[j] = mean of e - mu over the valid pixels of the window of (i, j);
  // count[j] = box(m) clamped to >= 1 (with a mask).
  void means(int k, T* local, T* count) const {
    const T* v = V + int64_t(k) * S * w;
    if constexpr (HasMask) {
      const T* c = v + w;
#pragma omp simd
      for (int j = 0; j < w; ++j) {
        const T cj = std::max(c[j], T(1));
        local[j] = v[j] / cj;
        count[j] = cj;
      }
    } else {
      const T iv = inv(k);
#pragma omp simd
      for (int j = 0; j < w; ++j) local[j] = v[j] * iv;
    }
  }
};

// ------------------------------------------------------------------------ per-scale sums
// Sum of e m and count of m over one scale (for the global mean of M and the box shift).
template <typename T, bool HasMask>
void mean_error(const T* p, const T* g, const uint8_t* m, int64_t n, double& sum, double& count) {
  sum = 0;
  count = 0;
  const int64_t block = 4096;  // fixed blocks: float partial sums stay short
  for (int64_t s = 0; s < n; s += block) {
    const int64_t e = std::min(n, s + block);
    T acc = 0;
    int64_t c = 0;
    if constexpr (HasMask) {
#pragma omp simd reduction(+ : acc, c)
      for (int64_t j = s; j < e; ++j) {
        acc += m[j] ? p[j] - g[j] : T(0);
        c += m[j] ? 1 : 0;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t j = s; j < e; ++j) acc += p[j] - g[j];
      c = e - s;
    }
    sum += acc;
    count += double(c);
  }
}

// Footprint validity of the 9 distinct valid sets at (i, j), from mask rows M0, M1, M2
// (rows i, i+1, i+2, padded). Index by loss type; D, M and the box losses use M0.
template <int t, typename T>
inline T valid_of(const T* M0, const T* M1, const T* M2, int j) {
  if constexpr (t == kR) return M0[j] * M0[j + 1];
  else if constexpr (t == kC) return M0[j] * M1[j];
  else if constexpr (t == kRR) return M0[j] * M0[j + 1] * M0[j + 2];
  else if constexpr (t == kRC) return M0[j] * M0[j + 1] * M1[j] * M1[j + 1];
  else if constexpr (t == kCC) return M0[j] * M1[j] * M2[j];
  else if constexpr (t == kN) return M0[j] * M0[j + 1] * M1[j];
  else if constexpr (t == kNr) return M0[j] * M0[j + 1] * M0[j + 2] * M1[j] * M1[j + 1];
  else if constexpr (t == kNc) return M0[j] * M0[j + 1] * M1[j] * M1[j + 1] * M2[j];
  else return M0[j];
}

// Calls f(std::integral_constant<int, t>) for each selected type t of Ts (compile-time t).
template <int... Ts, typename F>
inline void for_types(uint32_t types, F&& f) {
  ((types & bit(Ts) ? f(std::integral_constant<int, Ts>{}) : void()), ...);
}

// n entries of v starting at a 64-byte boundary. Vectorized reductions may split their
// loop by the alignment of the data; aligned buffers make that split, and so the bits,
// the same for every thread and call.
template <typename U>
U* aligned(std::vector<U>& v, int64_t n) {
  constexpr int64_t pad = 64 / sizeof(U);
  if (int64_t(v.size()) < n + pad) v.resize(n + pad);
  const uintptr_t p = reinterpret_cast<uintptr_t>(v.data());
  return reinterpret_cast<U*>((p + 63) & ~uintptr_t(63));
}

// Scratch of one thread: row buffers (t) and the horizontal box filter's (d).
template <typename T>
struct Workspace {
  std::vector<T> t;
  std::vector<double> d;
  T* tbuf(int64_t n) { return aligned(t, n); }
  double* dbuf(int64_t n) { return aligned(d, n); }
};

// Per-pixel value of the e-based difference types r, c, rr, rc, cc at (i, j).
template <int t, typename T>
inline T grad_term(const T* X0, const T* X1, const T* X2, int j) {
  if constexpr (t == kR) return diff1(X0[j], X0[j + 1]);
  else if constexpr (t == kC) return diff1(X0[j], X1[j]);
  else if constexpr (t == kRR) return diff2(X0[j], X0[j + 1], X0[j + 2]);
  else if constexpr (t == kRC) return diff_rc(X0[j], X0[j + 1], X1[j], X1[j + 1]);
  else return diff2(X0[j], X1[j], X2[j]);  // kCC
}

// The two first/second-order derivatives a normal type compares: (dx, dy), (rr, rc), (rc, cc).
template <int t, typename T>
inline void normal_args(const T* X0, const T* X1, const T* X2, int j, T& a1, T& a2) {
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

// Whether the normal types of this row need the scaled formula (loss_math.h): some depth of
// the rows they read reaches kNormalPlainMax (or is NaN / inf). Checked once per row, so
// ordinary depths keep the plain formula's speed; both give the same bits below the bound.
constexpr uint32_t kNormalBits = bit(kN) | bit(kNr) | bit(kNc);

template <typename T>
inline bool rows_need_scaling(int w, const T* P0, const T* P1, const T* P2, const T* G0, const T* G1,
                              const T* G2) {
  T mx = 0;
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < w; ++j) {
    const T a = std::max(std::max(std::abs(P0[j]), std::abs(P1[j])), std::abs(P2[j]));
    const T b = std::max(std::max(std::abs(G0[j]), std::abs(G1[j])), std::abs(G2[j]));
    // NaN compares false: count it as large.
    mx = std::max(mx, (a < T(kNormalPlainMax) && b < T(kNormalPlainMax)) ? std::max(a, b) : T(kNormalPlainMax));
  }
  return !(mx < T(kNormalPlainMax));
}

// ------------------------------------------------------------------------ forward, one scale
// Global mean of e over the valid pixels of a scale (M and the box shift need it first).
template <typename T, bool HasMask>
T scale_mean(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types) {
  if (!(types & kMeanBits)) return T(0);
  double s, c;
  mean_error<T, HasMask>(p, g, m, int64_t(h) * w, s, c);
  return static_cast<T>(c > 0 ? s / c : 0.0);
}

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
      for (int j = 0; j < w; ++j) acc += std::abs(E0[j]) * (HasMask ? M0[j] : T(1));
      sum[kD] += acc;
      cnt[kD] += c0;
    }
    if (types & bit(kM)) {
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < w; ++j) acc += std::abs(E0[j] - mu) * (HasMask ? M0[j] : T(1));
      sum[kM] += acc;
      cnt[kM] += c0;
    }
    if (box.nb && i > i0) box.advance(i);
    for (int k = 0; k < box.nb; ++k) {
      T acc = 0;
      if constexpr (HasMask) {
        box.means(k, local, count);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += std::abs((E0[j] - mu) - local[j]) * M0[j];
      } else {
        const T* v = box.sums(k);
        const T iv = box.inv(k);
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += std::abs((E0[j] - mu) - v[j] * iv);
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
          acc += std::abs(grad_term<t>(E0, E1, E2, j)) * v;
          c += v;
        }
      } else {
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += std::abs(grad_term<t>(E0, E1, E2, j));
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

// ------------------------------------------------------------------------ backward, one scale
// Transpose of d/dx (x[j] - x[j+1], 0 on the last column): out[j] = t'[j] - t'[j-1] with
// t' = t except t'[w-1] = 0.
template <typename T>
inline void dx_transpose(const T* t, int w, T* out) {
  if (w == 1) {
    out[0] = 0;
    return;
  }
  out[0] = t[0];
#pragma omp simd
  for (int j = 1; j < w - 1; ++j) out[j] = t[j] - t[j - 1];
  out[w - 1] = -t[w - 2];
}

// gp (h x w) += d(sum_t G[t] L_t) / dD^k for the types of this scale.
//
// Every loss is a mean of per-pixel terms f(e) or f(p, g) of a stencil; its gradient is
// collected in coefficient fields that the transposed stencils then distribute:
//   gp = t0 - m * sum_n B_n^T(tb_n) + dx^T(tx + dx^T txx) + dy^T(ty + dy^T tyy + dx^T txy)
// (rc = dx dy, and dx, dy commute). The fields of row i depend on rows i..i+2 only, so
// one pass over the rows suffices; the box transposes lag r rows behind (ring buffers).
template <typename T>
struct ScalePrep {
  T mu = 0;               // global mean of e
  T wt[kNumTypes] = {};   // G[t] / count of the valid set of t
  T m_shift = 0;          // M: mean of sign(e - mu) over the valid pixels
};

// Where a band's output rows go: its own rows [i0, i1) straight into the gradient map,
// the rows above (box transposes, up to kHaloTop) and below (box transposes and dy^T, up
// to kHaloBottom) into the band's halo buffers, added in band order afterwards.
constexpr int kBandRows = 64;  // smallest band (halos cost up to 64 rows of recomputation)
constexpr int kBatchBands = 4;  // bands per scale over the batch (halo work grows with the count)
constexpr int kHaloTop = 32;   // largest box radius
constexpr int kHaloBottom = 34;
template <typename T>
struct BandOut {
  T* gp;
  T* halo;  // rows i0 - kHaloTop .. i0 - 1 (if i0 > 0), then i1 .. i1 + kHaloBottom - 1 (if i1 < h)
  int i0, i1, w;
  int top;  // kHaloTop rows above the band, 0 for the first band
  T* row(int q) const {
    if (q < i0) return halo + int64_t(q - (i0 - kHaloTop)) * w;
    if (q >= i1) return halo + int64_t(top + q - i1) * w;
    return gp + int64_t(q) * w;
  }
};

// Pre-passes of one scale: the global mean, the counts of the valid sets, the M shift.
template <typename T, bool HasMask>
ScalePrep<T> scale_backward_prep(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types,
                                 const double* G, Workspace<T>& ws) {
  ScalePrep<T> prep;
  const int64_t n = int64_t(h) * w;
  // Counts of the valid sets and the global mean (pre-pass; without a mask they are h w).
  double cnt[kNumTypes];
  for (int t = 0; t < kNumTypes; ++t) cnt[t] = double(n);
  T mu = 0;
  if (types & kMeanBits) {
    double s, c;
    mean_error<T, HasMask>(p, g, m, n, s, c);
    mu = static_cast<T>(c > 0 ? s / c : 0.0);
  }
  const int64_t wsz = RowWindow<T, HasMask>::buffer_size(w);
  if constexpr (HasMask) {
    RowWindow<T, HasMask> win(p, g, m, h, w, ws.tbuf(wsz));
    win.only_mask = true;
    std::fill(cnt, cnt + kNumTypes, 0.0);
    for (int i = 0; i < h; ++i) {
      win.seek(i, true);
      for_types<kD, kM, kM5, kM17, kM65, kR, kC, kRR, kRC, kCC, kN, kNr, kNc>(types, [&](auto tc) {
        constexpr int t = decltype(tc)::value;
        T c = 0;
#pragma omp simd reduction(+ : c)
        for (int j = 0; j < w; ++j) c += valid_of<t>(win.M[0], win.M[1], win.M[2], j);
        cnt[t] += c;
      });
    }
  }
  T* wt = prep.wt;
  for (int t = 0; t < kNumTypes; ++t) wt[t] = static_cast<T>((types & bit(t)) && cnt[t] > 0 ? G[t] / cnt[t] : 0.0);
  // M: d mean|e - mu| / de_j = (s_j - m_j sum(s) / cnt) / cnt with s = sign(e - mu) m.
  if ((types & bit(kM)) && cnt[kM] > 0) {
    double s = 0;
    for (int i = 0; i < h; ++i) {
      const T* pi = p + int64_t(i) * w;
      const T* gi = g + int64_t(i) * w;
      T acc = 0;
      if constexpr (HasMask) {
        const uint8_t* mi = m + int64_t(i) * w;
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += mi[j] ? sgn((pi[j] - gi[j]) - mu) : T(0);
      } else {
#pragma omp simd reduction(+ : acc)
        for (int j = 0; j < w; ++j) acc += sgn((pi[j] - gi[j]) - mu);
      }
      s += acc;
    }
    prep.m_shift = static_cast<T>(s / cnt[kM]);
  }
  prep.mu = mu;
  return prep;
}

// Rows [i0, i1) of gp (h x w) += d(sum_t G[t] L_t) / dD^k, the part from the per-pixel
// terms of rows i0 .. i1 - 1, written through `out` (rows above and below the band land
// in its halo buffers).
template <typename T, bool HasMask>
void scale_backward_band(const T* p, const T* g, const uint8_t* m, int h, int w, uint32_t types,
                         const ScalePrep<T>& prep, const BandOut<T>& out_rows, Workspace<T>& ws) {
  const int i0 = out_rows.i0, i1 = out_rows.i1;
  const T mu = prep.mu, m_shift = prep.m_shift;
  const T* wt = prep.wt;
  const int64_t wsz = RowWindow<T, HasMask>::buffer_size(w);

  // Scratch: row window, box means, fields, rings of the box transposes.
  const int64_t bsz = BoxMeans<T, HasMask>::buffer_size(w, types);
  int64_t ring_rows = 0;
  for (int b = 0; b < 3; ++b)
    if (types & bit(kM5 + b)) ring_rows += 2 * kBoxRadius[b] + 2;
  const int nfields = 13;  // t0 tx ty txx txy tyy A Bf prevBf tyy' prevTyy' local count
  T* buf = ws.tbuf(wsz + bsz + nfields * int64_t(w) + 3 * 2 * int64_t(w) + ring_rows * w +
              box_transpose_scratch_size(w, kBoxRadius[2]));
  double* dbuf = ws.dbuf(BoxMeans<T, HasMask>::dbuffer_size(w));
  RowWindow<T, HasMask> win(p, g, m, h, w, buf);
  T* f = buf + wsz + bsz;
  T *t0 = f, *tx = f + w, *ty = f + 2 * w, *txx = f + 3 * w, *txy = f + 4 * w, *tyy = f + 5 * w;
  T *A = f + 6 * w, *Bf = f + 7 * w, *prevBf = f + 8 * w, *tyyz = f + 9 * w, *prevTyy = f + 10 * w;
  T *local = f + 11 * w, *count = f + 12 * w;
  T* zrun_base = f + nfields * w;  // per box: Z (running) and tb (row)
  T* ring_base = zrun_base + 3 * 2 * w;
  T* tscratch = ring_base + ring_rows * w;  // box_row_sum_transpose
  std::fill(prevBf, prevBf + w, T(0));
  std::fill(prevTyy, prevTyy + w, T(0));

  struct BoxT {
    int b, r, ring;
    T *Z, *tb, *U;
  };
  BoxMeans<T, HasMask> box(p, g, m, h, w, types, mu, buf + wsz, dbuf, i0);
  std::vector<BoxT> bt;
  {
    T* ring = ring_base;
    for (int b = 0; b < 3; ++b) {
      if (!(types & bit(kM5 + b))) continue;
      const int r = kBoxRadius[b];
      BoxT x{b, r, 2 * r + 2, zrun_base + b * 2 * w, zrun_base + b * 2 * w + w, ring};
      std::fill(x.Z, x.Z + w, T(0));
      bt.push_back(x);
      ring += int64_t(x.ring) * w;
    }
  }
  // Box transpose: U rows (horizontal transposes of tb) enter a running vertical window;
  // the window of padded row q (rows q-r..q+r) lands on row clamp(q), times the mask.
  // Z += U_in - U_out (either may be absent): the window of padded row q, then emit q.
  auto slide_emit = [&](const BoxT& x, int q, const T* U_in, const T* U_out) {
    const int row = std::clamp(q, 0, h - 1);
    T* __restrict out = out_rows.row(row);
    T* __restrict Z = x.Z;
    const uint8_t* mi = HasMask ? m + int64_t(row) * w : nullptr;
    auto put = [&](int j, T z) { out[j] -= HasMask ? (mi[j] ? z : T(0)) : z; };
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
  };
  auto ring_row = [&](const BoxT& x, int i) { return x.U + int64_t(i % x.ring) * w; };

  const bool deep = types & kRowWindowBits;
  const bool fx = types & kFieldX, fy = types & kFieldY, fxx = types & kFieldXX, fxy = types & kFieldXY,
             fyy = types & kFieldYY;
  const bool has_rows = fy || fyy || fxy;  // fields that need dy^T (row i-1)
  // Rows i1, i1 + 1 have no terms of this band, they only receive the dy^T of its last rows.
  const int iend = std::min(h, i1 + 2);
  for (int i = i0; i < iend; ++i) {
    const bool src = i < i1;
    if (src) win.seek(i, deep);
    const T *E0 = win.E[0], *E1 = win.E[1], *E2 = win.E[2];
    const T *M0 = win.M[0], *M1 = win.M[1], *M2 = win.M[2];
    const T *P0 = win.P[0], *P1 = win.P[1], *P2 = win.P[2];
    const T *G0 = win.G[0], *G1 = win.G[1], *G2 = win.G[2];
    std::fill(t0, t0 + w, T(0));
    if (fx) std::fill(tx, tx + w, T(0));
    if (fy) std::fill(ty, ty + w, T(0));
    if (fxx) std::fill(txx, txx + w, T(0));
    if (fxy) std::fill(txy, txy + w, T(0));
    if (fyy) std::fill(tyy, tyy + w, T(0));

    if (src) {
    if (types & bit(kD)) {
      const T wd = wt[kD];
#pragma omp simd
      for (int j = 0; j < w; ++j) t0[j] += wd * sgn(E0[j]) * (HasMask ? M0[j] : T(1));
    }
    if (types & bit(kM)) {
      const T wm = wt[kM];
#pragma omp simd
      for (int j = 0; j < w; ++j) t0[j] += wm * (sgn(E0[j] - mu) - m_shift) * (HasMask ? M0[j] : T(1));
    }
    if (box.nb && i > i0) box.advance(i);
    for (size_t k = 0; k < bt.size(); ++k) {
      BoxT& x = bt[k];
      const T wb = wt[kM5 + x.b];
      if constexpr (HasMask) {
        box.means(int(k), local, count);
#pragma omp simd
        for (int j = 0; j < w; ++j) {
          const T s = wb * sgn((E0[j] - mu) - local[j]) * M0[j];
          t0[j] += s;
          x.tb[j] = s / count[j];
        }
      } else {
        const T inv_n2 = T(1) / T((2 * x.r + 1) * (2 * x.r + 1));
        const T* v = box.sums(int(k));
        const T iv = box.inv(int(k));
#pragma omp simd
        for (int j = 0; j < w; ++j) {
          const T s = wb * sgn((E0[j] - mu) - v[j] * iv);
          t0[j] += s;
          x.tb[j] = s * inv_n2;
        }
      }
      box_row_sum_transpose(x.tb, w, x.r, ring_row(x, i), tscratch);
      // Padded row q = i - r has its whole window (rows up to i) now.
      const int leave = i - 2 * x.r - 1;
      slide_emit(x, i - x.r, ring_row(x, i), leave >= i0 ? ring_row(x, leave) : nullptr);
    }
    for_types<kR, kC, kRR, kRC, kCC>(types, [&](auto tc) {
      constexpr int t = decltype(tc)::value;
      T* __restrict field = t == kR ? tx : t == kC ? ty : t == kRR ? txx : t == kRC ? txy : tyy;
      const T wg = wt[t];
#pragma omp simd
      for (int j = 0; j < w; ++j)
        field[j] += wg * sgn(grad_term<t>(E0, E1, E2, j)) * (HasMask ? valid_of<t>(M0, M1, M2, j) : T(1));
    });
    const bool scaled = (types & kNormalBits) && rows_need_scaling(w, P0, P1, P2, G0, G1, G2);
    for_types<kN, kNr, kNc>(types, [&](auto tc) {
      constexpr int t = decltype(tc)::value;
      T* __restrict f1 = t == kN ? tx : t == kNr ? txx : txy;
      T* __restrict f2 = t == kN ? ty : t == kNr ? txy : tyy;
      const T wn = wt[t];
      auto sweep = [&](auto sc) {
        constexpr bool Scaled = decltype(sc)::value;
#pragma omp simd
        for (int j = 0; j < w; ++j) {
          T a1, a2, b1, b2, g1, g2;
          normal_args<t>(P0, P1, P2, j, a1, a2);
          normal_args<t>(G0, G1, G2, j, b1, b2);
          normal_loss_grad<Scaled>(a1, a2, b1, b2, wn * (HasMask ? valid_of<t>(M0, M1, M2, j) : T(1)), g1, g2);
          f1[j] += g1;
          f2[j] += g2;
        }
      };
      if (scaled) sweep(std::true_type{});
      else sweep(std::false_type{});
    });
    }  // src

    // Transposed stencils. The last row's dy terms are 0 (replicate padding): zero them.
    const bool last = i == h - 1;
    T* out = out_rows.row(i);
    if (fx || fxx) {
      if (fxx) {
        dx_transpose(txx, w, A);
        if (fx) {
#pragma omp simd
          for (int j = 0; j < w; ++j) A[j] += tx[j];
        }
      } else {
        std::copy(tx, tx + w, A);
      }
      dx_transpose(A, w, Bf);  // Bf as scratch: dx^T(A)
#pragma omp simd
      for (int j = 0; j < w; ++j) t0[j] += Bf[j];
    }
    if (has_rows) {
      // Bf = ty + dy^T(tyy) + dx^T(txy), then dy^T(Bf) = Bf' - Bf'(i-1).
      if (fxy)
        dx_transpose(txy, w, Bf);
      else
        std::fill(Bf, Bf + w, T(0));
      if (fy) {
#pragma omp simd
        for (int j = 0; j < w; ++j) Bf[j] += ty[j];
      }
      if (fyy) {
        if (last)
          std::fill(tyyz, tyyz + w, T(0));
        else
          std::copy(tyy, tyy + w, tyyz);
#pragma omp simd
        for (int j = 0; j < w; ++j) Bf[j] += tyyz[j] - prevTyy[j];
        std::swap(tyyz, prevTyy);
      }
      if (last) std::fill(Bf, Bf + w, T(0));
#pragma omp simd
      for (int j = 0; j < w; ++j) t0[j] += Bf[j] - prevBf[j];
      std::swap(Bf, prevBf);
    }
#pragma omp simd
    for (int j = 0; j < w; ++j) out[j] += t0[j];
  }
  // Box transposes: the padded rows q = h-r .. h-1+r, whose windows only lose rows.
  for (BoxT& x : bt) {
    for (int q = i1 - x.r; q <= i1 - 1 + x.r; ++q) {
      const int leave = q - x.r - 1;
      slide_emit(x, q, nullptr, leave >= i0 ? ring_row(x, leave) : nullptr);
    }
  }
}

// ------------------------------------------------------------------------ AMLR pair
// d = log(max(p, eps)) - log(g) on valid pixels (mask and g > 0), 0 elsewhere; v = validity.
template <typename T, bool HasMask>
inline void log_ratio_row(const T* p, const T* g, const uint8_t* m, int w, T* d, T* v) {
  for (int j = 0; j < w; ++j) {
    const bool ok = (!HasMask || m[j]) && g[j] > T(0);
    v[j] = ok ? T(1) : T(0);
    d[j] = ok ? std::log(std::max(p[j], T(kLogEps))) - std::log(g[j]) : T(0);
  }
}

// sd, n: sum and count of d; m2: sum of (d - mean d)^2, merged row by row (Chan et al.'s
// pairwise update) so that the variance does not come from mean(d^2) - mean(d)^2, which
// cancels when pred is off by a large factor (|mean d| >> std d).
struct AmlrSums {
  double sd = 0, m2 = 0, n = 0, sx = 0, nx = 0, sy = 0, ny = 0;
};

template <typename T, bool HasMask>
AmlrSums amlr_sums(const T* p, const T* g, const uint8_t* m, int H, int W, T* buf) {
  AmlrSums s;
  T *d = buf, *v = buf + W, *dp = buf + 2 * W, *vp = buf + 3 * W;
  for (int i = 0; i < H; ++i) {
    const int64_t o = int64_t(i) * W;
    log_ratio_row<T, HasMask>(p + o, g + o, HasMask ? m + o : nullptr, W, d, v);
    T a = 0, aa = 0, c = 0, ax = 0, cx = 0;
#pragma omp simd reduction(+ : a, c)
    for (int j = 0; j < W; ++j) {
      a += d[j];
      c += v[j];
    }
    const T mu = c > 0 ? a / c : T(0);  // the row's mean: its squared deviations are small
#pragma omp simd reduction(+ : aa)
    for (int j = 0; j < W; ++j) aa += (d[j] - mu) * (d[j] - mu) * v[j];
    for (int j = 0; j + 1 < W; ++j) {
      const T pv = v[j] * v[j + 1], df = d[j + 1] - d[j];
      ax += pv * df * df;
      cx += pv;
    }
    if (c > 0) {  // merge the row (c, a, aa) into (n, sd, m2)
      const double n1 = s.n + double(c), delta = double(a) / double(c) - (s.n > 0 ? s.sd / s.n : 0.0);
      s.m2 += double(aa) + delta * delta * s.n * double(c) / n1;
      s.sd += a;
      s.n = n1;
    }
    s.sx += ax;
    s.nx += cx;
    if (i > 0) {
      T ay = 0, cy = 0;
#pragma omp simd reduction(+ : ay, cy)
      for (int j = 0; j < W; ++j) {
        const T pv = v[j] * vp[j], df = d[j] - dp[j];
        ay += pv * df * df;
        cy += pv;
      }
      s.sy += ay;
      s.ny += cy;
    }
    std::swap(d, dp);
    std::swap(v, vp);
  }
  return s;
}

struct AmlrValues {
  double si_raw, si, gr, mean_d;
};

inline AmlrValues amlr_values(const AmlrSums& s, const LossSpaceArgs& a) {
  AmlrValues r;
  r.mean_d = s.n > 0 ? s.sd / s.n : 0.0;
  // Eq. 1, mean(d^2) - lambda mean(d)^2, as var(d) + (1 - lambda) mean(d)^2.
  r.si_raw = (s.n > 0 ? s.m2 / s.n : 0.0) + (1.0 - a.si_lambda) * r.mean_d * r.mean_d;
  double si = r.si_raw;
  if (a.si_sqrt) si = si > 0 ? std::sqrt(std::max(si, 1e-30)) : 0.0;
  r.si = a.si_scale * si;
  r.gr = ((s.nx > 0 ? s.sx / s.nx : 0.0) + (s.ny > 0 ? s.sy / s.ny : 0.0)) / 2;
  return r;
}

// grad (H x W) += d(G_si Si + G_gr Gr) / d pred.
template <typename T, bool HasMask>
void amlr_backward(const T* p, const T* g, const uint8_t* m, int H, int W, const LossSpaceArgs& a, double G_si,
                   double G_gr, T* grad, T* buf) {
  const AmlrSums s = amlr_sums<T, HasMask>(p, g, m, H, W, buf);
  const AmlrValues val = amlr_values(s, a);
  double dsq = 1.0;
  if (a.si_sqrt) dsq = val.si_raw > 0 ? 0.5 / std::sqrt(std::max(val.si_raw, 1e-30)) : 0.0;
  // dSi/dd_j = c_si (2 d_j - 2 lambda mean_d) / n on valid pixels.
  const T c_si = static_cast<T>(s.n > 0 ? G_si * a.si_scale * dsq * 2.0 / s.n : 0.0);
  const T lam_mean = static_cast<T>(a.si_lambda * val.mean_d);
  // dGr/dd: pairs (j, j+1) add 2 w (d_j - d_{j+1}) to d_j and the opposite to d_{j+1}.
  const T wx = static_cast<T>(s.nx > 0 ? G_gr * 0.5 * 2.0 / s.nx : 0.0);
  const T wy = static_cast<T>(s.ny > 0 ? G_gr * 0.5 * 2.0 / s.ny : 0.0);
  T* rows[3][2];  // (d, v) of rows i-1, i, i+1
  for (int r = 0; r < 3; ++r) {
    rows[r][0] = buf + (2 * r) * W;
    rows[r][1] = buf + (2 * r + 1) * W;
  }
  T* gd = buf + 6 * W;
  auto load = [&](int r, int i) {
    const int64_t o = int64_t(i) * W;
    log_ratio_row<T, HasMask>(p + o, g + o, HasMask ? m + o : nullptr, W, rows[r][0], rows[r][1]);
  };
  load(1, 0);
  if (H > 1) load(2, 1);
  for (int i = 0; i < H; ++i) {
    const T *d = rows[1][0], *v = rows[1][1];
    for (int j = 0; j < W; ++j) {
      T gj = c_si * (d[j] - lam_mean) * v[j];
      if (j > 0) gj += wx * v[j - 1] * v[j] * (d[j] - d[j - 1]);
      if (j + 1 < W) gj += wx * v[j] * v[j + 1] * (d[j] - d[j + 1]);
      if (i > 0) gj += wy * rows[0][1][j] * v[j] * (d[j] - rows[0][0][j]);
      if (i + 1 < H) gj += wy * v[j] * rows[2][1][j] * (d[j] - rows[2][0][j]);
      gd[j] = gj;
    }
    const int64_t o = int64_t(i) * W;
    for (int j = 0; j < W; ++j) {
      const T pj = p[o + j];
      grad[o + j] += (v[j] != T(0) && pj >= T(kLogEps)) ? gd[j] / pj : T(0);
    }
    std::swap(rows[0][0], rows[1][0]);
    std::swap(rows[0][1], rows[1][1]);
    std::swap(rows[1][0], rows[2][0]);
    std::swap(rows[1][1], rows[2][1]);
    if (i + 2 < H) load(2, i + 2);
  }
}

// ------------------------------------------------------------------------ per sample
struct Level {
  int h, w;
  Axis ay, ax;
};

inline Level level_of(int H, int W, int k) {
  Level L;
  if (k == 0) {
    L.h = H;
    L.w = W;
    return L;
  }
  const bool fb = level_fallback(H, W, k);
  L.ay = level_axis(H, k, fb);
  L.ax = level_axis(W, k, fb);
  L.h = L.ay.n_out;
  L.w = L.ax.n_out;
  return L;
}

// ------------------------------------------------------------------------ batch plan
// Every (sample, scale) is split into ceil(kBatchBands / B) bands of at least kBandRows
// rows (a batch of 4 or more: one band per sample, no halo work); the bands of the whole
// batch are the tasks (scale 0 first: the largest). The partition depends on the shapes
// only, never on the thread count, and every reduction adds band results in band order,
// so any thread count gives the same bits.
struct Band {
  int b, k, i0, i1;
  int64_t halo;  // offset of its halo rows (backward)
};

struct Plan {
  int B = 0, H = 0, W = 0;
  Level L[kNumScales];
  int64_t off[kNumScales] = {};  // offset of level k >= 1 in one sample's level maps
  int64_t per = 0;               // entries of one sample's level maps (all active k >= 1)
  std::vector<Band> bands;
  int first[kNumScales] = {};    // bands of scale k: first[k] + b * nb[k] + (0 .. nb[k])
  int nb[kNumScales] = {};
  bool whole_samples = true;  // one band per (sample, scale): tasks are whole samples
  int64_t halo_size = 0;
  // Row-chunk tasks of the pyramid (b, k, first, last level row) and of the full-resolution
  // maps (b, first, last row); each row's bits are independent of the split.
  std::vector<std::array<int, 4>> level_tasks;
  std::vector<std::array<int, 3>> row_tasks;
  static constexpr int kChunkRows = 32;

  Plan(const LossSpaceArgs& a, const Selection& sel) : B(a.B), H(a.H), W(a.W) {
    for (int k = 1; k < kNumScales; ++k) {
      if (!sel.types[k]) continue;
      const int h = level_of(H, W, k).h, rows = std::max(4, kChunkRows >> k);
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < h; i += rows) level_tasks.push_back({b, k, i, std::min(h, i + rows)});
    }
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < H; i += kChunkRows) row_tasks.push_back({b, i, std::min(H, i + kChunkRows)});
    for (int k = 0; k < kNumScales; ++k) {
      L[k] = level_of(H, W, k);
      if (k > 0 && sel.types[k]) {
        off[k] = per;
        per += int64_t(L[k].h) * L[k].w;
      }
    }
    for (int k = 0; k < kNumScales; ++k) {
      first[k] = int(bands.size());
      if (!sel.types[k]) continue;
      const int h = L[k].h;
      const int want = (kBatchBands + B - 1) / B;
      const int rows = std::max(kBandRows, (h + want - 1) / want);
      nb[k] = (h + rows - 1) / rows;
      whole_samples = whole_samples && nb[k] == 1;
      for (int b = 0; b < B; ++b)
        for (int i0 = 0; i0 < h; i0 += rows) {
          bands.push_back({b, k, i0, std::min(h, i0 + rows), halo_size});
          halo_size += int64_t((i0 > 0 ? kHaloTop : 0) + (i0 + rows < h ? kHaloBottom : 0)) * L[k].w;
        }
    }
  }
};

template <typename T, bool HasMask>
void forward_batch(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a, const Selection& sel,
                   double* out) {
  const Plan plan(a, sel);
  const int B = a.B, H = a.H, W = a.W;
  const int64_t N = int64_t(H) * W, per = plan.per;
  static thread_local std::vector<T> lv;  // kept between calls: no fresh pages per call
  static thread_local std::vector<uint8_t> lmv;
  T* lvd = aligned(lv, int64_t(B) * 2 * per);
  uint8_t* lmd = aligned(lmv, HasMask ? int64_t(B) * per : 0);
  auto lp = [&](int b, int k) -> const T* { return k == 0 ? pred + b * N : lvd + b * 2 * per + plan.off[k]; };
  auto lg = [&](int b, int k) -> const T* { return k == 0 ? gt + b * N : lvd + (b * 2 + 1) * per + plan.off[k]; };
  auto lm = [&](int b, int k) -> const uint8_t* {
    if (!HasMask) return nullptr;
    return k == 0 ? mask + b * N : lmd + b * per + plan.off[k];
  };
  const int nbands = int(plan.bands.size());
  std::vector<T> mus(size_t(B) * kNumScales);
  std::vector<double> part(size_t(nbands) * 2 * kNumTypes);
  std::vector<double> amlr(size_t(B) * 2);
#pragma omp parallel num_threads(std::max(1, a.num_threads))
  {
    static thread_local Workspace<T> ws;  // this thread's, kept between calls
    std::vector<T> tmp(2 * size_t(W));
    std::vector<uint8_t> tmpm(W);
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.level_tasks.size(); ++q) {  // pyramid levels
      const auto [b, k, lo, hi] = plan.level_tasks[q];
      const Level& L = plan.L[k];
      build_level<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, L.ay, L.ax,
                              const_cast<T*>(lp(b, k)), const_cast<T*>(lg(b, k)), const_cast<uint8_t*>(lm(b, k)),
                              tmp.data(), tmp.data() + W, tmpm.data(), lo, hi);
    }
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < B * kNumScales; ++q) {
      const int k = q / B, b = q % B;
      if (sel.types[k])
        mus[q] = scale_mean<T, HasMask>(lp(b, k), lg(b, k), lm(b, k), plan.L[k].h, plan.L[k].w, sel.types[k]);
    }
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      double* s = part.data() + size_t(t) * 2 * kNumTypes;
      scale_forward_band<T, HasMask>(lp(d.b, d.k), lg(d.b, d.k), lm(d.b, d.k), plan.L[d.k].h, plan.L[d.k].w,
                                     sel.types[d.k], mus[d.k * B + d.b], d.i0, d.i1, s, s + kNumTypes, ws);
    }
    if (sel.amlr) {
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < B; ++b) {
        const AmlrValues v =
            amlr_values(amlr_sums<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, H, W,
                                              ws.tbuf(4 * int64_t(W))),
                        a);
        amlr[2 * b] = v.si;
        amlr[2 * b + 1] = v.gr;
      }
    }
    // Scratch accounting (reported by mlrb._C.last_workspace_bytes; no effect on results).
    const int64_t bytes = int64_t(ws.t.capacity() * sizeof(T) + ws.d.capacity() * sizeof(double) +
                                  tmp.capacity() * sizeof(T) + tmpm.capacity());
#pragma omp critical(mlrb_workspace)
    if (a.workspace_bytes) *a.workspace_bytes += bytes;
  }
  if (a.workspace_bytes)
    *a.workspace_bytes += int64_t(lv.capacity() * sizeof(T) + lmv.capacity() + part.capacity() * sizeof(double));
  for (int b = 0; b < B; ++b) {
    double vals[kNumAll] = {0};
    for (int k = 0; k < kNumScales; ++k) {
      if (!sel.types[k]) continue;
      double sum[kNumTypes] = {0}, cnt[kNumTypes] = {0};
      for (int t = plan.first[k] + b * plan.nb[k], e = t + plan.nb[k]; t < e; ++t) {  // band order
        const double* s = part.data() + size_t(t) * 2 * kNumTypes;
        for (int u = 0; u < kNumTypes; ++u) {
          sum[u] += s[u];
          cnt[u] += s[kNumTypes + u];
        }
      }
      for (int u = 0; u < kNumTypes; ++u)
        if (sel.types[k] & bit(u)) vals[kNumTypes * k + u] = cnt[u] > 0 ? sum[u] / cnt[u] : 0.0;
    }
    if (sel.amlr) {
      vals[kSi] = amlr[2 * b];
      vals[kGr] = amlr[2 * b + 1];
    }
    for (int j = 0; j < a.n; ++j) out[int64_t(b) * a.n + j] = vals[a.indices[j]];
  }
}

template <typename T, bool HasMask>
void backward_batch(const double* grad_out, const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a,
                    const Selection& sel, T* grad) {
  const Plan plan(a, sel);
  const int B = a.B, H = a.H, W = a.W;
  const int64_t N = int64_t(H) * W, per = plan.per;
  std::vector<double> G(size_t(B) * kNumAll, 0.0);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < a.n; ++j) G[size_t(b) * kNumAll + a.indices[j]] += grad_out[int64_t(b) * a.n + j];
  if (plan.whole_samples) {
    // One task per sample: its levels and their gradients are built and used while they
    // are in cache (the banded path below builds the levels of the whole batch first).
#pragma omp parallel num_threads(std::max(1, a.num_threads))
    {
      static thread_local Workspace<T> ws;  // this thread's, kept between calls
      std::vector<T> tmp(2 * size_t(W)), lvl;
      std::vector<uint8_t> tmpm(W), lmk;
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < B; ++b) {
        T* gb = grad + b * N;
        const double* G80 = G.data() + size_t(b) * kNumAll;
        const T* pb = pred + b * N;
        const T* gtb = gt + b * N;
        const uint8_t* mb = HasMask ? mask + b * N : nullptr;
        std::fill(gb, gb + N, T(0));
        T* lvp = aligned(lvl, 3 * per);
        uint8_t* lmp = aligned(lmk, HasMask ? per : 0);
        for (int k = kNumScales - 1; k >= 0; --k) {
          if (!sel.types[k]) continue;
          const Level& L = plan.L[k];
          const T* pp = pb;
          const T* gg = gtb;
          const uint8_t* mm = mb;
          T* gk = gb;
          if (k > 0) {
            T* lpk = lvp + plan.off[k];
            uint8_t* lmk_k = HasMask ? lmp + plan.off[k] : nullptr;
            build_level<T, HasMask>(pb, gtb, mb, L.ay, L.ax, lpk, lpk + per, lmk_k, tmp.data(), tmp.data() + W,
                                    tmpm.data(), 0, L.h);
            gk = lpk + 2 * per;
            std::fill(gk, gk + int64_t(L.h) * L.w, T(0));
            pp = lpk;
            gg = lpk + per;
            mm = lmk_k;
          }
          const ScalePrep<T> prep = scale_backward_prep<T, HasMask>(pp, gg, mm, L.h, L.w, sel.types[k],
                                                                    G80 + kNumTypes * k, ws);
          scale_backward_band<T, HasMask>(pp, gg, mm, L.h, L.w, sel.types[k], prep,
                                          BandOut<T>{gk, nullptr, 0, L.h, L.w, 0}, ws);
        }
        for (int k = kNumScales - 1; k >= 1; --k)
          if (sel.types[k])
            add_level_transpose(lvp + plan.off[k] + 2 * per, plan.L[k].ay, plan.L[k].ax, gb, tmp.data(), 0,
                                H);
        if (sel.amlr && (G80[kSi] != 0 || G80[kGr] != 0)) {
          amlr_backward<T, HasMask>(pb, gtb, mb, H, W, a, G80[kSi], G80[kGr], gb, ws.tbuf(7 * int64_t(W)));
        }
        if constexpr (HasMask) {
#pragma omp simd
          for (int64_t e = 0; e < N; ++e) gb[e] = mb[e] ? gb[e] : T(0);
        }
      }
      const int64_t bytes = int64_t(ws.t.capacity() * sizeof(T) + ws.d.capacity() * sizeof(double) +
                                    (tmp.capacity() + lvl.capacity()) * sizeof(T) + tmpm.capacity() + lmk.capacity());
#pragma omp critical(mlrb_workspace)
      if (a.workspace_bytes) *a.workspace_bytes += bytes;
    }
    return;
  }
  static thread_local std::vector<T> lv;  // level pred, gt, gradient
  static thread_local std::vector<uint8_t> lmv;
  T* lvd = aligned(lv, int64_t(B) * 3 * per);
  uint8_t* lmd = aligned(lmv, HasMask ? int64_t(B) * per : 0);
  auto lp = [&](int b, int k) -> T* { return lvd + b * 3 * per + plan.off[k]; };
  auto lg = [&](int b, int k) -> T* { return lvd + (b * 3 + 1) * per + plan.off[k]; };
  auto lgrad = [&](int b, int k) -> T* { return k == 0 ? grad + b * N : lvd + (b * 3 + 2) * per + plan.off[k]; };
  auto lm = [&](int b, int k) -> const uint8_t* {
    if (!HasMask) return nullptr;
    return k == 0 ? mask + b * N : lmd + b * per + plan.off[k];
  };
  auto cp = [&](int b, int k) -> const T* { return k == 0 ? pred + b * N : lp(b, k); };
  auto cg = [&](int b, int k) -> const T* { return k == 0 ? gt + b * N : lg(b, k); };
  const int nbands = int(plan.bands.size());
  static thread_local std::vector<T> halo;
  halo.assign(plan.halo_size, T(0));
  T* const hd = halo.data();  // inside the parallel region `halo` would name each thread's own
  std::vector<ScalePrep<T>> preps(size_t(B) * kNumScales);
#pragma omp parallel num_threads(std::max(1, a.num_threads))
  {
    static thread_local Workspace<T> ws;  // this thread's, kept between calls
    std::vector<T> tmp(2 * size_t(W));
    std::vector<uint8_t> tmpm(W);
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.row_tasks.size(); ++q) {  // zeroed gradients
      const auto [b, lo, hi] = plan.row_tasks[q];
      std::fill(grad + b * N + int64_t(lo) * W, grad + b * N + int64_t(hi) * W, T(0));
    }
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.level_tasks.size(); ++q) {  // pyramid levels
      const auto [b, k, lo, hi] = plan.level_tasks[q];
      const Level& L = plan.L[k];
      build_level<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, L.ay, L.ax, lp(b, k),
                              lg(b, k), const_cast<uint8_t*>(lm(b, k)), tmp.data(), tmp.data() + W, tmpm.data(), lo,
                              hi);
      std::fill(lgrad(b, k) + int64_t(lo) * L.w, lgrad(b, k) + int64_t(hi) * L.w, T(0));
    }
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < B * kNumScales; ++q) {
      const int k = q / B, b = q % B;
      if (sel.types[k])
        preps[q] = scale_backward_prep<T, HasMask>(cp(b, k), cg(b, k), lm(b, k), plan.L[k].h, plan.L[k].w,
                                                   sel.types[k], G.data() + size_t(b) * kNumAll + kNumTypes * k, ws);
    }
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      const int w = plan.L[d.k].w;
      const BandOut<T> o{lgrad(d.b, d.k), hd + d.halo, d.i0, d.i1, w, d.i0 > 0 ? kHaloTop : 0};
      scale_backward_band<T, HasMask>(cp(d.b, d.k), cg(d.b, d.k), lm(d.b, d.k), plan.L[d.k].h, w, sel.types[d.k],
                                      preps[d.k * B + d.b], o, ws);
    }
    // Halos: each band adds the rows of its neighbours' halos that fall in its own rows, in band order.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      const int w = plan.L[d.k].w;
      const int f = plan.first[d.k] + d.b * plan.nb[d.k];
      T* gk = lgrad(d.b, d.k);
      for (int u = f; u < f + plan.nb[d.k]; ++u) {
        if (u == t) continue;
        const Band& e = plan.bands[u];
        const BandOut<T> o{gk, hd + e.halo, e.i0, e.i1, w, e.i0 > 0 ? kHaloTop : 0};
        const int lo = u < t ? e.i1 : e.i0 - kHaloTop, hi = u < t ? e.i1 + kHaloBottom : e.i0;
        for (int q = std::max(lo, d.i0); q < std::min(hi, d.i1); ++q) {
          const T* src = o.row(q);
          T* dst = gk + int64_t(q) * w;
#pragma omp simd
          for (int j = 0; j < w; ++j) dst[j] += src[j];
        }
      }
    }
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.row_tasks.size(); ++q) {  // transposed pyramid, coarsest first
      const auto [b, lo, hi] = plan.row_tasks[q];
      for (int k = kNumScales - 1; k >= 1; --k)
        if (sel.types[k]) add_level_transpose(lgrad(b, k), plan.L[k].ay, plan.L[k].ax, grad + b * N, tmp.data(), lo, hi);
    }
    if (sel.amlr) {
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < B; ++b) {
        const double* G80 = G.data() + size_t(b) * kNumAll;
        if (G80[kSi] != 0 || G80[kGr] != 0) {
          amlr_backward<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, H, W, a, G80[kSi],
                                    G80[kGr], grad + b * N, ws.tbuf(7 * int64_t(W)));
        }
      }
    }
    if constexpr (HasMask) {
      // Invalid pixels never influence a loss: their gradient is exactly 0.
#pragma omp for schedule(dynamic, 1)
      for (size_t q = 0; q < plan.row_tasks.size(); ++q) {
        const auto [b, lo, hi] = plan.row_tasks[q];
        T* gb = grad + b * N;
        const uint8_t* mb = mask + b * N;
#pragma omp simd
        for (int64_t e = int64_t(lo) * W; e < int64_t(hi) * W; ++e) gb[e] = mb[e] ? gb[e] : T(0);
      }
    }
    // Scratch accounting (reported by mlrb._C.last_workspace_bytes; no effect on results).
    const int64_t bytes = int64_t(ws.t.capacity() * sizeof(T) + ws.d.capacity() * sizeof(double) +
                                  tmp.capacity() * sizeof(T) + tmpm.capacity());
#pragma omp critical(mlrb_workspace)
    if (a.workspace_bytes) *a.workspace_bytes += bytes;
  }
  if (a.workspace_bytes)
    *a.workspace_bytes += int64_t(lv.capacity() * sizeof(T) + lmv.capacity() + halo.capacity() * sizeof(T));
}

}  // namespace

template <typename T>
void forward_impl(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a, double* out) {
  const Selection sel = selection_of(a);
  if (mask)
    forward_batch<T, true>(pred, gt, mask, a, sel, out);
  else
    forward_batch<T, false>(pred, gt, nullptr, a, sel, out);
}

template <typename T>
void backward_impl(const double* grad_out, const T* pred, const T* gt, const uint8_t* mask,
                         const LossSpaceArgs& a, T* grad_pred) {
  const Selection sel = selection_of(a);
  if (mask)
    backward_batch<T, true>(grad_out, pred, gt, mask, a, sel, grad_pred);
  else
    backward_batch<T, false>(grad_out, pred, gt, nullptr, a, sel, grad_pred);
}

}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
