// Machine peaks of the floor model (peaks.h): the baseline build of the peak loops and the
// timing driver, which runs the AVX2 build (peaks_avx2.cpp) exactly when the kernels do
// (mlrb::cpu::isa(): the CPU has AVX2 and MLRB_CPU_ISA is not "generic").
#include "bench/peaks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "bench/peak_loops.h"
#include "loss_space/loss_space.h"

namespace mlrb {
namespace bench {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MLRB_HAVE_AVX2_PEAKS 1
namespace avx2 {
template <typename T>
int64_t run_loop(int which, int64_t reps, void* buf, int64_t bytes);
}  // namespace avx2
#endif

namespace {

double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

template <typename T>
int64_t run(bool avx2, int which, int64_t reps, void* buf, int64_t bytes) {
#ifdef MLRB_HAVE_AVX2_PEAKS
  if (avx2) return avx2::run_loop<T>(which, reps, buf, bytes);
#else
  (void)avx2;
#endif
  return generic::run_loop<T>(which, reps, buf, bytes);
}

// One loop of the measurement: its repetitions, calibrated to about trial_s of thread CPU
// time, and its best rate so far (elements per ns).
struct Trial {
  int which;
  void* buf;
  int64_t bytes;
  int64_t reps = 1;
  double best = 0;
};

template <typename T>
void time_once(bool avx2, Trial& t) {
  const double t0 = thread_seconds();
  const int64_t n = run<T>(avx2, t.which, t.reps, t.buf, t.bytes);
  const double el = thread_seconds() - t0;
  if (el > 0) t.best = std::max(t.best, double(n) / (el * 1e9));
}

template <typename T>
void calibrate(bool avx2, Trial& t, double trial_s) {
  double el = 0;
  for (t.reps = 1;; t.reps *= el < trial_s / 64 ? 8 : 2) {
    const double t0 = thread_seconds();
    run<T>(avx2, t.which, t.reps, t.buf, t.bytes);
    el = thread_seconds() - t0;
    if (el >= trial_s / 8 || t.reps >= (int64_t(1) << 40)) break;
  }
  t.reps = std::max<int64_t>(1, int64_t(double(t.reps) * trial_s / std::max(el, 1e-9)));
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

template <typename T>
std::vector<std::pair<std::string, double>> peaks_of(double seconds) {
  const bool avx2 = std::strcmp(mlrb::cpu::isa(), "avx2") == 0;
  // Rounds over all loops, best rate per loop: a burst of other work on this core (or on
  // its sibling thread on the host) spoils single runs, not a whole peak.
  constexpr int kRounds = 6;
  const double trial_s = seconds / (generic::kNumLoops * (kRounds + 0.5));
  // L1-resident buffer: 16 KB (L1d is 32 KB or more on x86 cores since 2011).
  constexpr int64_t kL1Bytes = 16 << 10;
  alignas(64) static thread_local unsigned char l1[kL1Bytes];
  std::memset(l1, 1, sizeof l1);
  // DRAM stream: 128 MB, or 4x the L3 if that is larger (at most 1 GB; a multiple of 2 MB),
  // touched once.
  int64_t dram_bytes = int64_t(128) << 20;
#ifdef _SC_LEVEL3_CACHE_SIZE
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) dram_bytes = std::min<int64_t>(int64_t(1) << 30, std::max<int64_t>(dram_bytes, 4 * int64_t(l3)));
  dram_bytes &= ~((int64_t(2) << 20) - 1);
#endif
  // 2 MB aligned and, where the kernel allows, backed by huge pages: touching it then takes
  // 64 page faults instead of 32768 (seconds in a VM).
  constexpr size_t kHuge = size_t(2) << 20;
  std::unique_ptr<void, FreeDeleter> dram(std::aligned_alloc(kHuge, size_t(dram_bytes)));
  if (!dram) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(dram.get(), size_t(dram_bytes), MADV_HUGEPAGE);  // a hint: failure only costs time
#endif
  std::memset(dram.get(), 1, size_t(dram_bytes));

  static const char* const names[generic::kNumLoops] = {"add", "mul", "add_mul", "sqrt",
                                                         "div", "load", "store", "dram"};
  std::vector<Trial> trials;
  for (int w = 0; w < generic::kNumLoops; ++w) {
    const bool d = w == generic::kDram;
    trials.push_back({w, d ? dram.get() : static_cast<void*>(l1), d ? dram_bytes : kL1Bytes});
    calibrate<T>(avx2, trials.back(), trial_s);
  }
  for (int r = 0; r < kRounds; ++r)
    for (Trial& t : trials) time_once<T>(avx2, t);
  std::vector<std::pair<std::string, double>> out;
  for (const Trial& t : trials) out.emplace_back(names[t.which], t.best);
  return out;
}

}  // namespace

std::vector<std::pair<std::string, double>> machine_peaks(bool float64, double seconds) {
  return float64 ? peaks_of<double>(seconds) : peaks_of<float>(seconds);
}

}  // namespace bench
}  // namespace mlrb
