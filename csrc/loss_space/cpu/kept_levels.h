// The pyramid levels D^k, k >= 1, of pred and gt that a forward builds, kept in its
// thread's scratch for the backward of the same inputs (kStatLevels, loss_space.h).
//
// Autograd runs a CPU op's backward on the thread that ran its forward, usually with no
// forward of the same dtype in between, so the levels are still there: the backward then
// reads them instead of rebuilding them from pred and gt, which re-reads both maps from
// memory (about a tenth of a backward). Nothing more is saved for backward: this is the
// forward's own scratch, kept between calls anyway. The forward's statistics carry the
// token of the forward call; a backward whose token, shapes or selection do not match the
// thread's kept levels (another forward of the dtype came in between, another thread, no
// statistics) rebuilds them. Either way the gradient has the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "loss_space/cpu/selection.h"
#include "loss_space/cpu/workspace.h"
#include "loss_space/loss_space.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

// Where sample b's levels of pred (side 0) or of gt (side 1) start in a buffer of the
// kept layout (each side Plan::per long, level k at Plan::off[k]).
template <typename P>
inline P* sample_levels(P* levels, int b, int side, int64_t per) {
  return levels + (int64_t(b) * 2 + side) * per;
}

template <typename T>
struct KeptLevels {
  std::vector<T> lv;   // storage of `levels`
  T* levels = nullptr;  // 64-byte aligned in lv; per sample b: pred's levels, then gt's (Plan::off, 2 Plan::per)
  uint64_t token = 0;  // the forward that built them (0: none, or being rebuilt)
  int B = 0, H = 0, W = 0;
  bool masked = false;
  uint32_t types[kNumScales] = {};

  // The calling thread's levels (per dtype and instruction set).
  static KeptLevels& of_this_thread() {
    static thread_local KeptLevels kept;
    return kept;
  }

  // The forward's buffer for B x 2 x per entries; the old levels are gone from here on.
  T* begin_forward(int64_t n) {
    token = 0;
    return levels = aligned(lv, n);
  }

  // The levels of the forward with args a are complete: its token, for its statistics.
  uint64_t end_forward(const LossSpaceArgs& a, const Selection& sel, bool has_mask) {
    token = next_levels_token();
    B = a.B, H = a.H, W = a.W, masked = has_mask;
    for (int k = 0; k < kNumScales; ++k) types[k] = sel.types[k];
    return token;
  }

  // The kept levels if they are those of the forward whose statistics are st (with the same
  // shapes, mask presence and selection as this backward), else nullptr.
  const T* for_backward(const double* st, const LossSpaceArgs& a, const Selection& sel, bool has_mask) const {
    if (!st || token == 0 || st[kStatLevels] != double(token)) return nullptr;
    if (B != a.B || H != a.H || W != a.W || masked != has_mask) return nullptr;
    for (int k = 0; k < kNumScales; ++k)
      if (types[k] != sel.types[k]) return nullptr;
    return levels;
  }
};

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
