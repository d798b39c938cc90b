// Fused CPU kernels of the loss space: the baseline build of drivers.h and the
// entry points, which pick the AVX2 build (loss_space_kernel_avx2.cpp) at run time when
// the CPU supports it. Set MLRB_CPU_ISA=generic in the environment to force the baseline.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "loss_space/cpu/drivers.h"

namespace mlrb {
namespace cpu {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MLRB_HAVE_AVX2_BUILD 1
namespace avx2 {
template <typename T>
void forward_impl(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a, double* out);
template <typename T>
void backward_impl(const double* grad_out, const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a,
                   T* grad_pred);
}  // namespace avx2
#endif

namespace {
bool use_avx2() {
#ifdef MLRB_HAVE_AVX2_BUILD
  static const bool yes = [] {
    const char* env = std::getenv("MLRB_CPU_ISA");
    if (env && std::strcmp(env, "generic") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
#else
  return false;
#endif
}
}  // namespace

const char* isa() { return use_avx2() ? "avx2" : "generic"; }

uint64_t next_levels_token() {
  static std::atomic<uint64_t> last{0};
  return ++last;  // below 2^53: exact as the double of kStatLevels
}

template <typename T>
void loss_space_forward(const T* pred, const T* gt, const uint8_t* mask, const LossSpaceArgs& a, double* out) {
#ifdef MLRB_HAVE_AVX2_BUILD
  if (use_avx2()) return avx2::forward_impl<T>(pred, gt, mask, a, out);
#endif
  generic::forward_impl<T>(pred, gt, mask, a, out);
}

template <typename T>
void loss_space_backward(const double* grad_out, const T* pred, const T* gt, const uint8_t* mask,
                         const LossSpaceArgs& a, T* grad_pred) {
#ifdef MLRB_HAVE_AVX2_BUILD
  if (use_avx2()) return avx2::backward_impl<T>(grad_out, pred, gt, mask, a, grad_pred);
#endif
  generic::backward_impl<T>(grad_out, pred, gt, mask, a, grad_pred);
}

template void loss_space_forward<float>(const float*, const float*, const uint8_t*, const LossSpaceArgs&, double*);
template void loss_space_forward<double>(const double*, const double*, const uint8_t*, const LossSpaceArgs&,
                                         double*);
template void loss_space_backward<float>(const double*, const float*, const float*, const uint8_t*,
                                         const LossSpaceArgs&, float*);
template void loss_space_backward<double>(const double*, const double*, const double*, const uint8_t*,
                                          const LossSpaceArgs&, double*);

}  // namespace cpu
}  // namespace mlrb
