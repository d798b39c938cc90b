// Entry points of the fused loss-space kernels (spec: ../shared/spec/loss-space.md).
//
// Inputs are raw, C-contiguous (B, H, W) buffers; the mask is optional (nullptr: every
// pixel valid) and holds one byte per pixel (0 = invalid). `indices` select columns of
// mlrb.names.ALL_NAMES (0..77 the space, 78 "Si", 79 "Gr").
#pragma once

#include <cstdint>

#include "loss_space/loss_math.h"

namespace mlrb {

// What the backward of one (sample, scale) needs before its band pass, as the forward
// finds it: a (B, kNumScales, kScaleStatWidth) float64 array. Given it, the backward skips
// its own pre-passes over the scale (the global mean with the far-depth check, the counts
// of the valid sets, the M shift), which re-read pred and gt from memory. Entries of
// unselected scales and of levels without a valid pixel are 0, but for kStatTypes.
constexpr int kStatMu = 0;                  // mean of e over the valid pixels (a value of the input dtype)
constexpr int kStatFar = 1;                 // 1: the normal types take the scaled formula
constexpr int kStatSignSum = 2;             // sum of sgn(e - mu) over the valid pixels (an integer)
constexpr int kStatTypes = 3;               // the scale's selected types (bit t: type t), checked by the backward
constexpr int kStatCount = 4;               // kNumTypes counts of the valid sets (integers)
// The forward call that made these statistics (an integer >= 1, every entry the same): the
// pyramid levels it built stay in its thread's scratch until that thread's next forward of
// the dtype, and a backward on that thread whose statistics carry the same token reads them
// there instead of rebuilding them (cpu/kept_levels.h).
constexpr int kStatLevels = kStatCount + kNumTypes;
constexpr int kScaleStatWidth = kStatLevels + 1;

struct LossSpaceArgs {
  int B = 0, H = 0, W = 0;
  const int* indices = nullptr;  // n selected columns
  int n = 0;
  double si_lambda = 1.0;  // AMLR scale-invariant loss: si_scale * [sqrt](E d^2 - lambda (E d)^2)
  bool si_sqrt = false;
  double si_scale = 1.0;
  int num_threads = 1;
  int64_t* workspace_bytes = nullptr;  // if set: += bytes of scratch the threads used
  double* stats_out = nullptr;         // forward, if set: the scale statistics (kScaleStatWidth above)
  const double* stats_in = nullptr;    // backward, if set: the forward's statistics of the same inputs
  bool* levels_reused = nullptr;       // backward, if set: whether it read its forward's levels (kStatLevels)
};

namespace cpu {

// out (B, n), float64: the selected losses per sample.
template <typename T>
void loss_space_forward(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& args, double* out);

// grad_pred (B, H, W) = d(sum_{b,i} grad_out[b, i] L[b, i]) / d pred; grad_out is (B, n) float64.
template <typename T>
void loss_space_backward(const double* grad_out, const T* pred, const T* gt, const uint8_t* mask,
                         const LossSpaceArgs& args, T* grad_pred);

// The instruction set the kernels run with on this CPU: "avx2" or "generic".
const char* isa();

// A token for kStatLevels, unique in the process (all instruction sets, all threads).
uint64_t next_levels_token();

}  // namespace cpu
}  // namespace mlrb
