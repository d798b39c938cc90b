// The work partition of a batch: pyramid levels, row bands of each (sample, scale) and
// their halos, row chunks. It depends on the shapes only, never on the thread count.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "loss_space/cpu/selection.h"
#include "loss_space/pyramid.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Band sizes: every (sample, scale) is split into ceil(kBatchBands / B) bands of at least
// kBandRows rows (see Plan below).
constexpr int kBandRows = 64;  // smallest band (halos cost up to 64 rows of recomputation)
constexpr int kBatchBands = 4;  // bands per scale over the batch (halo work grows with the count)

// Where a band's output rows go: its own rows [i0, i1) straight into the gradient map,
// the rows above (box transposes, up to kHaloTop) and below (box transposes and dy^T, up
// to kHaloBottom) into the band's halo buffers, added in band order afterwards.
constexpr int kHaloTop = 32;  // largest box radius
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

// The size of scale k and, for k >= 1, the bicubic axes that build it (pyramid.h).
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
  std::vector<int> level_first;  // level_tasks of sample b: level_first[b] .. level_first[b + 1] - 1
  std::vector<std::array<int, 3>> row_tasks;
  static constexpr int kChunkRows = 32;

  Plan(const LossSpaceArgs& a, const Selection& sel) : B(a.B), H(a.H), W(a.W) {
    for (int k = 1; k < kNumScales; ++k) {
      if (!sel.types[k]) continue;
      const int h = level_of(H, W, k).h, rows = std::max(4, kChunkRows >> k);
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < h; i += rows) level_tasks.push_back({b, k, i, std::min(h, i + rows)});
    }
    // Sample by sample, every level's rows in the order of the full-resolution rows they read
    // (2^k i), so the rows a task reads are still in cache from the task before (a sample's
    // pred and gt do not fit in L2; built level by level they would be read once per level).
    std::stable_sort(level_tasks.begin(), level_tasks.end(), [](const auto& x, const auto& y) {
      return x[0] != y[0] ? x[0] < y[0] : (x[2] << x[1]) < (y[2] << y[1]);
    });
    level_first.assign(B + 1, 0);
    for (const auto& t : level_tasks) level_first[t[0] + 1]++;
    for (int b = 0; b < B; ++b) level_first[b + 1] += level_first[b];
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

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
