// Which loss types each scale computes: one bit per type (Table 1 order), from the
// selected columns of mlrb.names.ALL_NAMES, and the groups of types that share work.
#pragma once

#include <cstdint>
#include <type_traits>

#include "loss_space/loss_math.h"
#include "loss_space/loss_space.h"

namespace mlrb {
namespace cpu {
namespace MLRB_CPU_ISA {
namespace {

constexpr uint32_t bit(int t) { return 1u << t; }
constexpr uint32_t kBoxBits = bit(kM5) | bit(kM17) | bit(kM65);
constexpr uint32_t kMeanBits = bit(kM) | kBoxBits;
constexpr uint32_t kRowWindowBits = ~(bit(kD) | kMeanBits);  // types reading rows i+1, i+2
constexpr uint32_t kNormalBits = bit(kN) | bit(kNr) | bit(kNc);
constexpr uint32_t kGradBits = bit(kR) | bit(kC) | bit(kRR) | bit(kRC) | bit(kCC);
constexpr bool in(uint32_t set, int t) { return (set & bit(t)) != 0; }

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

// Calls f(std::integral_constant<int, t>) for each selected type t of Ts (compile-time t).
template <int... Ts, typename F>
inline void for_types(uint32_t types, F&& f) {
  ((types & bit(Ts) ? f(std::integral_constant<int, Ts>{}) : void()), ...);
}

// Calls f(std::integral_constant<uint32_t, S>) with compile-time sets S of the selected types
// of a group (the types Ts): the whole group at once when all of it is selected (one loop:
// its types read the same rows and share their differences), else one type at a time.
template <int... Ts, typename F>
inline void for_group(uint32_t types, F&& f) {
  constexpr uint32_t group = (bit(Ts) | ...);
  if ((types & group) == group)
    f(std::integral_constant<uint32_t, group>{});
  else
    ((types & bit(Ts) ? f(std::integral_constant<uint32_t, bit(Ts)>{}) : void()), ...);
}

}  // namespace
}  // namespace MLRB_CPU_ISA
}  // namespace cpu
}  // namespace mlrb
