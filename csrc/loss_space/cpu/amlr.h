// The AMLR pair Si, Gr (AMLR Eq. 1-2) on the full-resolution maps: sums, values, backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "loss_space/loss_math.h"
#include "loss_space/loss_space.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// One row of d = log_ratio (loss_math.h) and of its validity v (mask and g > 0).
template <typename T, bool HasMask>
inline void log_ratio_row(const T* p, const T* g, const uint8_t* m, int w, T* d, T* v) {
  for (int j = 0; j < w; ++j) {
    const bool ok = (!HasMask || m[j]) && g[j] > T(0);
    v[j] = ok ? T(1) : T(0);
    d[j] = log_ratio(p[j], g[j], ok);
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
      const T pv = v[j] * v[j + 1];
      ax += gr_pair(pv, d[j], d[j + 1]);
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
        const T pv = v[j] * vp[j];
        ay += gr_pair(pv, dp[j], d[j]);
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
      T gj = dsi_term(c_si, d[j], lam_mean, v[j]);
      if (j > 0) gj += dgr_pair(wx, v[j - 1], v[j], d[j], d[j - 1]);
      if (j + 1 < W) gj += dgr_pair(wx, v[j], v[j + 1], d[j], d[j + 1]);
      if (i > 0) gj += dgr_pair(wy, rows[0][1][j], v[j], d[j], rows[0][0][j]);
      if (i + 1 < H) gj += dgr_pair(wy, v[j], rows[2][1][j], d[j], rows[2][0][j]);
      gd[j] = gj;
    }
    const int64_t o = int64_t(i) * W;
    for (int j = 0; j < W; ++j) {
      const T pj = p[o + j];
      grad[o + j] += dlog_ratio_times(gd[j], pj, v[j] != T(0));
    }
    std::swap(rows[0][0], rows[1][0]);
    std::swap(rows[0][1], rows[1][1]);
    std::swap(rows[1][0], rows[2][0]);
    std::swap(rows[1][1], rows[2][1]);
    if (i + 2 < H) load(2, i + 2);
  }
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
