// The OpenMP drivers of the fused CPU kernels; included once per instruction set by
// loss_space_kernel.cpp (baseline x86-64 / any CPU) and loss_space_kernel_avx2.cpp, each
// defining MLRB_CPU_ISA, so that one portable build runs AVX2 code where the CPU has it.
//
// Work is split into row bands of each (sample, scale) (plan.h: the partition depends on
// the shapes only, a batch of 1 gets several bands so that it uses every thread); partial
// results are combined in band order, so the results are bitwise identical for any number
// of threads. Per band the forward makes one pass over its rows (forward_band.h, after a
// pre-pass for the global mean of M); the backward (backward_band.h) recomputes what it
// needs (the pyramid levels only if the forward's are not kept: kept_levels.h), writes
// the rows above and below its band into halo buffers added in band order,
// and pushes d(sum G L)/dD^k through the transpose of the pyramid. Per-row sums use the
// input precision and are accumulated in double.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "loss_space/cpu/amlr.h"
#include "loss_space/cpu/backward_band.h"
#include "loss_space/cpu/forward_band.h"
#include "loss_space/cpu/kept_levels.h"
#include "loss_space/cpu/plan.h"
#include "loss_space/cpu/scale_stats.h"
#include "loss_space/cpu/selection.h"
#include "loss_space/cpu/workspace.h"
#include "loss_space/loss_space.h"
#include "loss_space/pyramid.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// The end of one sample's gradient, shared by both backward paths (whole samples: rows
// [0, H) at once; bands: by row chunks, with the AMLR step once per sample between the
// two row passes): the transposed pyramid of the level gradients added to rows [lo, hi)
// (coarsest first), then the AMLR pair, then invalid pixels zeroed.
// tmp: transpose_scratch_size(W) entries (add_levels_transpose).
template <typename T, typename LevelGrad>
inline void add_pyramid_transposes(const Plan& plan, const Selection& sel, const uint8_t* live, LevelGrad&& level_grad,
                                   T* gb, T* tmp, int lo, int hi) {
  LevelGradient<T> levels[kNumScales];
  int n = 0;
  for (int k = kNumScales - 1; k >= 1; --k)
    if (sel.types[k] && live[k]) levels[n++] = {level_grad(k), &plan.L[k].ay, &plan.L[k].ax};
  add_levels_transpose(levels, n, gb, plan.W, tmp, lo, hi);
}
// The backward's per-thread row scratch: build_level's two rows, then the pyramid transpose's.
inline size_t transpose_scratch_size(int W) {
  return size_t(std::max<int64_t>(2 * int64_t(W), levels_transpose_scratch_size(W, kNumScales - 1)));
}

// Live levels. A level k >= 1 whose mask has no valid pixel has no terms: its losses are 0
// and it adds nothing to the gradient (spec, "Masks"). With sparse ground truth (KITTI's
// LiDAR points: a 4x4 footprint is rarely all valid) that is every level k >= 1, so the
// mask levels are built first and a dead level's values, scale passes and transpose are
// skipped, with the same results. live[b * kNumScales + k]; 1 for k = 0 and without a mask.
// any[q]: whether level task q's rows of the mask have a valid pixel (build_level_mask).
inline void mark_live_levels(const Plan& plan, const std::vector<uint8_t>& any, uint8_t* live) {
  for (int b = 0; b < plan.B; ++b)
    for (int k = 1; k < kNumScales; ++k) live[b * kNumScales + k] = 0;
  for (size_t q = 0; q < plan.level_tasks.size(); ++q) {
    const auto [b, k, lo, hi] = plan.level_tasks[q];
    live[b * kNumScales + k] |= any[q];
  }
}

// The mask levels of every level task (into level_mask(b, k)), then mark_live_levels on one
// thread. Called by every thread of a parallel region (its worksharing binds to it).
template <typename LevelMask>
inline void build_mask_levels(const Plan& plan, const uint8_t* mask, LevelMask&& level_mask, uint8_t* tmpm,
                              std::vector<uint8_t>& any, uint8_t* live) {
  const int64_t N = int64_t(plan.H) * plan.W;
#pragma omp for schedule(dynamic, 1)
  for (size_t q = 0; q < plan.level_tasks.size(); ++q) {
    const auto [b, k, lo, hi] = plan.level_tasks[q];
    any[q] = build_level_mask(mask + b * N, plan.L[k].ay, plan.L[k].ax, level_mask(b, k), tmpm, lo, hi);
  }
#pragma omp single
  mark_live_levels(plan, any, live);
}

// The band pass's constants of (sample b, scale k): from the forward's statistics of the
// same inputs (a.stats_in) or from the scale's own pre-passes.
template <typename T, bool HasMask>
ScalePrep<T> backward_prep(const LossSpaceArgs& a, int b, int k, const T* p, const T* g, const uint8_t* m,
                           const Level& L, uint32_t types, const double* G, Workspace<T>& ws) {
  double own[kScaleStatWidth];
  const double* st = a.stats_in ? a.stats_in + (int64_t(b) * kNumScales + k) * kScaleStatWidth : own;
  if (!a.stats_in) scale_backward_stats<T, HasMask>(p, g, m, L.h, L.w, types, ws, own);
  return scale_backward_prep<T>(st, types, G);
}

template <typename T, bool HasMask>
inline void add_amlr_grad(const T* pb, const T* gtb, const uint8_t* mb, const LossSpaceArgs& a, const Selection& sel,
                          const double* G80, T* gb, Workspace<T>& ws) {
  if (sel.amlr && (G80[kSi] != 0 || G80[kGr] != 0))
    amlr_backward<T, HasMask>(pb, gtb, mb, a.H, a.W, a, G80[kSi], G80[kGr], gb, ws.tbuf(7 * int64_t(a.W)));
}

// Invalid pixels never influence a loss: their gradient is exactly 0 (entries [e0, e1)).
template <typename T, bool HasMask>
inline void zero_invalid(T* gb, const uint8_t* mb, int64_t e0, int64_t e1) {
  if constexpr (HasMask) {
#pragma omp simd
    for (int64_t e = e0; e < e1; ++e) gb[e] = where_valid(mb[e], gb[e]);
  }
}

template <typename T, bool HasMask>
void forward_batch(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a, const Selection& sel,
                   double* out) {
  const Plan plan(a, sel);
  const int B = a.B, H = a.H, W = a.W;
  const int64_t N = int64_t(H) * W, per = plan.per;
  if (a.stats_out) std::fill(a.stats_out, a.stats_out + int64_t(B) * kNumScales * kScaleStatWidth, 0.0);
  KeptLevels<T>& kept = KeptLevels<T>::of_this_thread();  // kept for the backward (kStatLevels)
  static thread_local std::vector<uint8_t> lmv;
  T* lvd = kept.begin_forward(int64_t(B) * 2 * per);
  uint8_t* lmd = aligned(lmv, HasMask ? int64_t(B) * per : 0);
  auto lp = [&](int b, int k) -> const T* { return k == 0 ? pred + b * N : sample_levels(lvd, b, 0, per) + plan.off[k]; };
  auto lg = [&](int b, int k) -> const T* { return k == 0 ? gt + b * N : sample_levels(lvd, b, 1, per) + plan.off[k]; };
  auto lm = [&](int b, int k) -> const uint8_t* {
    if (!HasMask) return nullptr;
    return k == 0 ? mask + b * N : lmd + b * per + plan.off[k];
  };
  const int nbands = int(plan.bands.size());
  std::vector<ScaleStats<T>> stats(size_t(B) * kNumScales);
  // Per band: sums, counts, the sum of sgn(e - mu) (kStatSignSum). A dead level's bands stay 0: losses 0.
  constexpr int kPart = 2 * kNumTypes + 1;
  std::vector<double> part(size_t(nbands) * kPart);
  std::vector<double> amlr(size_t(B) * 2);
  std::vector<uint8_t> live(size_t(B) * kNumScales, 1), any(HasMask ? plan.level_tasks.size() : 0);
#pragma omp parallel num_threads(std::max(1, a.num_threads))
  {
    static thread_local Workspace<T> ws;  // this thread's, kept between calls
    std::vector<T> tmp(2 * size_t(W));
    std::vector<uint8_t> tmpm(W);
    if constexpr (HasMask)
      build_mask_levels(plan, mask, [&](int b, int k) { return const_cast<uint8_t*>(lm(b, k)); }, tmpm.data(), any,
                        live.data());
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.level_tasks.size(); ++q) {  // pyramid levels
      const auto [b, k, lo, hi] = plan.level_tasks[q];
      if (!live[b * kNumScales + k]) continue;
      const Level& L = plan.L[k];
      build_level<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, L.ay, L.ax,
                              const_cast<T*>(lp(b, k)), const_cast<T*>(lg(b, k)), tmp.data(), tmp.data() + W, lo,
                              hi);
    }
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < B * kNumScales; ++q) {
      const int k = q / B, b = q % B;
      if (!sel.types[k] || !live[b * kNumScales + k]) continue;
      stats[q] = scale_stats<T, HasMask>(lp(b, k), lg(b, k), lm(b, k), plan.L[k].h, plan.L[k].w, sel.types[k]);
    }
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      if (!live[d.b * kNumScales + d.k]) continue;
      double* s = part.data() + size_t(t) * kPart;
      const ScaleStats<T>& st = stats[d.k * B + d.b];
      scale_forward_band<T, HasMask>(lp(d.b, d.k), lg(d.b, d.k), lm(d.b, d.k), plan.L[d.k].h, plan.L[d.k].w,
                                     sel.types[d.k], st.mu, st.far, d.i0, d.i1, s, s + kNumTypes,
                                     a.stats_out ? s + 2 * kNumTypes : nullptr, ws);
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
    *a.workspace_bytes += int64_t(kept.lv.capacity() * sizeof(T) + lmv.capacity() + part.capacity() * sizeof(double));
  // Only a forward whose statistics carry its token lets a backward find its levels.
  const double token = a.stats_out ? double(kept.end_forward(a, sel, HasMask)) : 0.0;
  for (int b = 0; b < B; ++b) {
    double vals[kNumAll] = {0};
    for (int k = 0; k < kNumScales; ++k) {
      if (a.stats_out) {
        double* st = a.stats_out + (int64_t(b) * kNumScales + k) * kScaleStatWidth;
        st[kStatTypes] = sel.types[k];
        st[kStatLevels] = token;
      }
      if (!sel.types[k]) continue;
      double sum[kNumTypes] = {0}, cnt[kNumTypes] = {0}, sign_sum = 0;
      for (int t = plan.first[k] + b * plan.nb[k], e = t + plan.nb[k]; t < e; ++t) {  // band order
        const double* s = part.data() + size_t(t) * kPart;
        for (int u = 0; u < kNumTypes; ++u) {
          sum[u] += s[u];
          cnt[u] += s[kNumTypes + u];
        }
        sign_sum += s[2 * kNumTypes];
      }
      for (int u = 0; u < kNumTypes; ++u)
        if (sel.types[k] & bit(u)) vals[kNumTypes * k + u] = cnt[u] > 0 ? sum[u] / cnt[u] : 0.0;
      if (a.stats_out) {  // what the backward's scale_backward_stats would find, bit for bit
        double* st = a.stats_out + (int64_t(b) * kNumScales + k) * kScaleStatWidth;
        const ScaleStats<T>& ss = stats[k * B + b];
        st[kStatMu] = double(ss.mu);
        st[kStatFar] = ss.far ? 1.0 : 0.0;
        st[kStatSignSum] = sign_sum;
        std::copy(cnt, cnt + kNumTypes, st + kStatCount);
      }
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
  // The levels of pred and gt that this thread's forward of the same inputs built, if they
  // are still kept (kept_levels.h; the same values as rebuilding them), else nullptr.
  const T* const kept = KeptLevels<T>::of_this_thread().for_backward(a.stats_in, a, sel, HasMask);
  if (a.levels_reused) *a.levels_reused = kept != nullptr;
  if (plan.whole_samples) {
    // One task per sample: its levels and their gradients are built and used while they
    // are in cache (the banded path below builds the levels of the whole batch first).
#pragma omp parallel num_threads(std::max(1, a.num_threads))
    {
      static thread_local Workspace<T> ws;  // this thread's, kept between calls
      std::vector<T> tmp(transpose_scratch_size(W)), lvl;
      std::vector<uint8_t> tmpm(W), lmk;
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < B; ++b) {
        T* gb = grad + b * N;
        const double* G80 = G.data() + size_t(b) * kNumAll;
        const T* pb = pred + b * N;
        const T* gtb = gt + b * N;
        const uint8_t* mb = HasMask ? mask + b * N : nullptr;
        if (!sel.types[0]) std::fill(gb, gb + N, T(0));  // else scale 0's band pass writes every row first
        // [pred's levels | gt's levels | level gradients]; only the gradients if kept.
        T* lvp = aligned(lvl, (kept ? 1 : 3) * per);
        const T* lpg = kept ? sample_levels(kept, b, 0, per) : lvp;  // pred's levels, then gt's
        T* lgr = kept ? lvp : lvp + 2 * per;             // the level gradients
        uint8_t* lmp = aligned(lmk, HasMask ? per : 0);
        uint8_t live[kNumScales];  // mark_live_levels, for this sample
        std::fill(live, live + kNumScales, uint8_t(1));
        if constexpr (HasMask) {
          std::fill(live + 1, live + kNumScales, uint8_t(0));
          for (int q = plan.level_first[b]; q < plan.level_first[b + 1]; ++q) {
            const auto [tb, k, lo, hi] = plan.level_tasks[q];
            live[k] |= build_level_mask(mb, plan.L[k].ay, plan.L[k].ax, lmp + plan.off[k], tmpm.data(), lo, hi);
          }
        }
        // With a mask, scale 0's band zeroes the invalid pixels itself (its widest box's emits,
        // backward_band.h) when nothing is added to the gradient after it: no live level k >= 1,
        // no AMLR pair (KITTI's sparse masks: every level is dead). One pass less over gb.
        bool band_zeroes = HasMask && (sel.types[0] & kBoxBits) && !sel.amlr;
        for (int k = 1; k < kNumScales; ++k) band_zeroes = band_zeroes && !(sel.types[k] && live[k]);
        for (int q = plan.level_first[b]; q < plan.level_first[b + 1] && !kept; ++q) {  // levels, cache order
          const auto [tb, k, lo, hi] = plan.level_tasks[q];
          if (!live[k]) continue;
          const Level& L = plan.L[k];
          build_level<T, HasMask>(pb, gtb, mb, L.ay, L.ax, lvp + plan.off[k], lvp + plan.off[k] + per, tmp.data(),
                                  tmp.data() + W, lo, hi);
        }
        for (int k = kNumScales - 1; k >= 0; --k) {
          if (!sel.types[k] || !live[k]) continue;
          const Level& L = plan.L[k];
          const T* pp = pb;
          const T* gg = gtb;
          const uint8_t* mm = mb;
          T* gk = gb;
          if (k > 0) {
            gk = lgr + plan.off[k];  // written by the band pass, no clearing (backward_band.h)
            pp = lpg + plan.off[k];
            gg = sample_levels(lpg, 0, 1, per) + plan.off[k];
            mm = HasMask ? lmp + plan.off[k] : nullptr;
          }
          const ScalePrep<T> prep =
              backward_prep<T, HasMask>(a, b, k, pp, gg, mm, L, sel.types[k], G80 + kNumTypes * k, ws);
          scale_backward_band<T, HasMask>(pp, gg, mm, L.h, L.w, sel.types[k], prep,
                                          BandOut<T>{gk, nullptr, 0, L.h, L.w, 0}, ws, k == 0 && band_zeroes);
        }
        add_pyramid_transposes(plan, sel, live, [&](int k) { return lgr + plan.off[k]; }, gb, tmp.data(), 0,
                               H);
        add_amlr_grad<T, HasMask>(pb, gtb, mb, a, sel, G80, gb, ws);
        if (!band_zeroes) zero_invalid<T, HasMask>(gb, mb, 0, N);
      }
      const int64_t bytes = int64_t(ws.t.capacity() * sizeof(T) + ws.d.capacity() * sizeof(double) +
                                    (tmp.capacity() + lvl.capacity()) * sizeof(T) + tmpm.capacity() + lmk.capacity());
#pragma omp critical(mlrb_workspace)
      if (a.workspace_bytes) *a.workspace_bytes += bytes;
    }
    return;
  }
  static thread_local std::vector<T> lv;  // per sample: level pred, gt (unless kept), gradient
  static thread_local std::vector<uint8_t> lmv;
  const int64_t slots = kept ? 1 : 3;
  T* lvd = aligned(lv, int64_t(B) * slots * per);
  uint8_t* lmd = aligned(lmv, HasMask ? int64_t(B) * per : 0);
  auto lp = [&](int b, int k) -> T* { return lvd + b * slots * per + plan.off[k]; };
  auto lg = [&](int b, int k) -> T* { return lvd + (b * slots + 1) * per + plan.off[k]; };
  auto lgrad = [&](int b, int k) -> T* {
    return k == 0 ? grad + b * N : lvd + (b * slots + slots - 1) * per + plan.off[k];
  };
  auto lm = [&](int b, int k) -> const uint8_t* {
    if (!HasMask) return nullptr;
    return k == 0 ? mask + b * N : lmd + b * per + plan.off[k];
  };
  auto cp = [&](int b, int k) -> const T* {
    return k == 0 ? pred + b * N : kept ? sample_levels(kept, b, 0, per) + plan.off[k] : lp(b, k);
  };
  auto cg = [&](int b, int k) -> const T* {
    return k == 0 ? gt + b * N : kept ? sample_levels(kept, b, 1, per) + plan.off[k] : lg(b, k);
  };
  const int nbands = int(plan.bands.size());
  static thread_local std::vector<T> halo;
  halo.assign(plan.halo_size, T(0));
  T* const hd = halo.data();  // inside the parallel region `halo` would name each thread's own
  std::vector<ScalePrep<T>> preps(size_t(B) * kNumScales);
  std::vector<uint8_t> live(size_t(B) * kNumScales, 1), any(HasMask ? plan.level_tasks.size() : 0);
  auto dead = [&](int b, int k) { return !live[b * kNumScales + k]; };
#pragma omp parallel num_threads(std::max(1, a.num_threads))
  {
    static thread_local Workspace<T> ws;  // this thread's, kept between calls
    std::vector<T> tmp(transpose_scratch_size(W));
    std::vector<uint8_t> tmpm(W);
    if (!sel.types[0]) {  // else the band passes of scale 0 write every row first (backward_band.h)
#pragma omp for schedule(dynamic, 1)
      for (size_t q = 0; q < plan.row_tasks.size(); ++q) {  // zeroed gradients
        const auto [b, lo, hi] = plan.row_tasks[q];
        std::fill(grad + b * N + int64_t(lo) * W, grad + b * N + int64_t(hi) * W, T(0));
      }
    }
    if constexpr (HasMask)
      build_mask_levels(plan, mask, [&](int b, int k) { return const_cast<uint8_t*>(lm(b, k)); }, tmpm.data(), any,
                        live.data());
#pragma omp for schedule(dynamic, 1)
    for (size_t q = 0; q < plan.level_tasks.size(); ++q) {  // pyramid levels
      const auto [b, k, lo, hi] = plan.level_tasks[q];
      if (dead(b, k)) continue;
      const Level& L = plan.L[k];
      if (!kept)  // (the level gradients are written by the band passes, no clearing)
        build_level<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, L.ay, L.ax, lp(b, k),
                                lg(b, k), tmp.data(), tmp.data() + W, lo, hi);
    }
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < B * kNumScales; ++q) {
      const int k = q / B, b = q % B;
      if (sel.types[k] && !dead(b, k))
        preps[q] = backward_prep<T, HasMask>(a, b, k, cp(b, k), cg(b, k), lm(b, k), plan.L[k], sel.types[k],
                                             G.data() + size_t(b) * kNumAll + kNumTypes * k, ws);
    }
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      if (dead(d.b, d.k)) continue;
      const int w = plan.L[d.k].w;
      const BandOut<T> o{lgrad(d.b, d.k), hd + d.halo, d.i0, d.i1, w, d.i0 > 0 ? kHaloTop : 0};
      scale_backward_band<T, HasMask>(cp(d.b, d.k), cg(d.b, d.k), lm(d.b, d.k), plan.L[d.k].h, w, sel.types[d.k],
                                      preps[d.k * B + d.b], o, ws);
    }
    // Halos: each band adds the rows of its neighbours' halos that fall in its own rows, in band order.
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < nbands; ++t) {
      const Band& d = plan.bands[t];
      if (dead(d.b, d.k)) continue;
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
    for (size_t q = 0; q < plan.row_tasks.size(); ++q) {  // the sample tail, by row chunks
      const auto [b, lo, hi] = plan.row_tasks[q];
      add_pyramid_transposes(plan, sel, live.data() + b * kNumScales, [&](int k) { return lgrad(b, k); },
                             grad + b * N, tmp.data(), lo, hi);
    }
    if (sel.amlr) {
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < B; ++b)
        add_amlr_grad<T, HasMask>(pred + b * N, gt + b * N, HasMask ? mask + b * N : nullptr, a, sel,
                                  G.data() + size_t(b) * kNumAll, grad + b * N, ws);
    }
    if constexpr (HasMask) {
#pragma omp for schedule(dynamic, 1)
      for (size_t q = 0; q < plan.row_tasks.size(); ++q) {
        const auto [b, lo, hi] = plan.row_tasks[q];
        zero_invalid<T, HasMask>(grad + b * N, mask + b * N, int64_t(lo) * W, int64_t(hi) * W);
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
