// Single-thread peaks of this machine for the floor model of the CPU kernels
// (mlrb/bench/floor.py): throughput of the FP pipes, the divider, the L1 load and store
// ports and a DRAM stream, in elements of float32 or float64 per nanosecond, with the
// instruction set the kernels run with here (mlrb::cpu::isa(): AVX2 or the x86-64 baseline).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mlrb {
namespace bench {

// (name, elements per ns): add, mul, add_mul (adds + muls, in equal numbers, per ns), sqrt,
// div, load (L1), store (L1), dram (streaming read of a buffer far beyond L3). Measured on
// the calling thread's CPU time in about `seconds` in all (best of six runs per peak, the
// runs of all peaks interleaved).
std::vector<std::pair<std::string, double>> machine_peaks(bool float64, double seconds);

}  // namespace bench
}  // namespace mlrb
