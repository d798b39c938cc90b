// Python bindings of the fused CPU kernels (extension mlrb._C).
//
// No libtorch: mlrb/ops/cpu.py hands over numpy views of contiguous CPU tensors, and the
// kernels run with the GIL released on the number of threads given by the caller
// (torch.get_num_threads()).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/peaks.h"
#include "checks/count_nonfinite.h"
#include "loss_space/cpu/selection.h"
#include "loss_space/loss_math.h"
#include "loss_space/loss_space.h"

namespace py = pybind11;

namespace {

int64_t g_last_workspace_bytes = 0;  // scratch of the last kernel call (written with the GIL held)
bool g_last_levels_reused = false;   // whether the last backward read its forward's kept levels

using Mask = std::optional<py::array_t<bool, py::array::c_style>>;

template <typename T>
using Arr = py::array_t<T, py::array::c_style>;

// Every input that reaches the kernels is checked here (the Python ops check too, but
// mlrb._C is importable on its own): a bad shape, size, index or thread count raises
// ValueError instead of crashing the process. dtypes and C-contiguity of pred/gt are
// enforced by the signatures (noconvert: anything else is a TypeError).
constexpr int64_t kMaxDim = int64_t(1) << 28;  // B, H, W: the kernels index rows, bands and tasks with int
constexpr int kMaxThreads = 1024;

std::string shape_str(const std::vector<py::ssize_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

mlrb::LossSpaceArgs make_args(const py::buffer_info& p, const py::buffer_info& g, const Mask& mask,
                              const std::vector<int>& indices, double si_lambda, bool si_sqrt, double si_scale,
                              int num_threads) {
  if (p.ndim != 3) throw std::invalid_argument("pred must be a (B, H, W) array; got shape " + shape_str(p.shape));
  if (g.shape != p.shape)
    throw std::invalid_argument("pred and gt shapes differ: " + shape_str(p.shape) + " vs " + shape_str(g.shape));
  if (mask) {
    const py::buffer_info mi = mask->request();
    if (mi.shape != p.shape)
      throw std::invalid_argument("mask shape differs from pred: " + shape_str(mi.shape) + " vs " +
                                  shape_str(p.shape));
  }
  for (py::ssize_t d : p.shape) {
    if (d == 0)
      throw std::invalid_argument("pred/gt are empty: shape " + shape_str(p.shape) +
                                  " (an empty batch or map has no losses)");
    if (d > kMaxDim)
      throw std::invalid_argument("pred is too large: shape " + shape_str(p.shape) + ", each of B, H, W must be <= " +
                                  std::to_string(kMaxDim));
  }
  if (indices.empty()) throw std::invalid_argument("indices is empty");
  bool seen[mlrb::kNumAll] = {};
  for (int i : indices) {
    if (i < 0 || i >= mlrb::kNumAll)
      throw std::invalid_argument("loss index out of range: " + std::to_string(i) + " (valid: 0.." +
                                  std::to_string(mlrb::kNumAll - 1) + ")");
    if (seen[i]) throw std::invalid_argument("loss index " + std::to_string(i) + " is given twice");
    seen[i] = true;
  }
  if (!std::isfinite(si_lambda) || !std::isfinite(si_scale))
    throw std::invalid_argument("si_lambda and si_scale must be finite, got " + std::to_string(si_lambda) + ", " +
                                std::to_string(si_scale));
  if (num_threads < 1 || num_threads > kMaxThreads)
    throw std::invalid_argument("num_threads must be in 1.." + std::to_string(kMaxThreads) + ", got " +
                                std::to_string(num_threads));
  mlrb::LossSpaceArgs a;
  a.B = static_cast<int>(p.shape[0]);
  a.H = static_cast<int>(p.shape[1]);
  a.W = static_cast<int>(p.shape[2]);
  a.n = static_cast<int>(indices.size());
  a.si_lambda = si_lambda;
  a.si_sqrt = si_sqrt;
  a.si_scale = si_scale;
  a.num_threads = num_threads;
  return a;
}

// The forward's scale statistics handed back to the backward (loss_space.h: kStatMu ..):
// (B, kNumScales, kScaleStatWidth) float64. They are only ever values in the arithmetic,
// but a wrong array is refused here with the entry that is wrong.
void check_stats(const Arr<double>& stats, const mlrb::LossSpaceArgs& a) {
  const py::buffer_info si = stats.request();
  const std::vector<py::ssize_t> want = {a.B, mlrb::kNumScales, mlrb::kScaleStatWidth};
  if (si.shape != want)
    throw std::invalid_argument("stats must be the forward's (B, " + std::to_string(mlrb::kNumScales) + ", " +
                                std::to_string(mlrb::kScaleStatWidth) + ") = " + shape_str(want) +
                                " array; got shape " + shape_str(si.shape));
  const double* st = stats.data();
  const double n = double(a.H) * double(a.W);  // a level has at most H W pixels
  const auto sel = mlrb::cpu::MLRB_CPU_ISA::selection_of(a);  // the types the kernels run (a.indices)
  for (int b = 0; b < a.B; ++b)
    for (int k = 0; k < mlrb::kNumScales; ++k) {
      const double* s = st + (int64_t(b) * mlrb::kNumScales + k) * mlrb::kScaleStatWidth;
      auto bad = [&](const std::string& what) {
        throw std::invalid_argument("stats[" + std::to_string(b) + ", " + std::to_string(k) + "]: " + what +
                                    " (pass the stats of a forward of the same inputs)");
      };
      if (s[mlrb::kStatTypes] != double(sel.types[k]))
        bad("made for other losses than these indices");
      if (s[mlrb::kStatFar] != 0 && s[mlrb::kStatFar] != 1) bad("far flag is not 0 or 1");
      for (int t = 0; t < mlrb::kNumTypes; ++t) {
        const double c = s[mlrb::kStatCount + t];
        if (!(c >= 0 && c <= n && c == std::floor(c)))
          bad("count " + std::to_string(t) + " is not an integer in [0, H W]");
      }
      const double sg = s[mlrb::kStatSignSum];
      if (!(std::abs(sg) <= s[mlrb::kStatCount + mlrb::kM] && sg == std::floor(sg)))
        bad("sign sum is not an integer within the M count");
      const double tok = s[mlrb::kStatLevels];
      if (!(tok >= 0 && tok <= 9007199254740992.0 && tok == std::floor(tok) && tok == st[mlrb::kStatLevels]))
        bad("levels token is not the same integer >= 0 in every entry");
    }
}

template <typename T>
py::object forward(const Arr<T>& pred, const Arr<T>& gt, const Mask& mask, const std::vector<int>& indices,
                   double si_lambda, bool si_sqrt, double si_scale, int num_threads, bool return_stats) {
  mlrb::LossSpaceArgs a = make_args(pred.request(), gt.request(), mask, indices, si_lambda, si_sqrt, si_scale,
                                    num_threads);
  a.indices = indices.data();
  py::array_t<double> out({a.B, a.n});
  py::array_t<double> stats(return_stats ? std::vector<py::ssize_t>{a.B, mlrb::kNumScales, mlrb::kScaleStatWidth}
                                         : std::vector<py::ssize_t>{0});
  if (return_stats) a.stats_out = stats.mutable_data();
  const T* p = pred.data();
  const T* g = gt.data();
  const uint8_t* m = mask ? reinterpret_cast<const uint8_t*>(mask->data()) : nullptr;
  double* o = out.mutable_data();
  int64_t scratch = 0;
  a.workspace_bytes = &scratch;
  {
    py::gil_scoped_release release;
    mlrb::cpu::loss_space_forward<T>(p, g, m, a, o);
  }
  g_last_workspace_bytes = scratch;
  if (return_stats) return py::make_tuple(out, stats);
  return std::move(out);
}

template <typename T>
Arr<T> backward(const Arr<double>& grad_out, const Arr<T>& pred, const Arr<T>& gt, const Mask& mask,
                const std::vector<int>& indices, double si_lambda, bool si_sqrt, double si_scale, int num_threads,
                const std::optional<Arr<double>>& stats) {
  mlrb::LossSpaceArgs a = make_args(pred.request(), gt.request(), mask, indices, si_lambda, si_sqrt, si_scale,
                                    num_threads);
  a.indices = indices.data();
  if (stats) {
    check_stats(*stats, a);
    a.stats_in = stats->data();
  }
  const py::buffer_info gi = grad_out.request();
  if (gi.ndim != 2 || gi.shape[0] != a.B || gi.shape[1] != a.n)
    throw std::invalid_argument("grad_out must be (B, len(indices)) = (" + std::to_string(a.B) + ", " +
                                std::to_string(a.n) + "); got shape " + shape_str(gi.shape));
  Arr<T> grad({a.B, a.H, a.W});
  const double* G = grad_out.data();
  const T* p = pred.data();
  const T* g = gt.data();
  const uint8_t* m = mask ? reinterpret_cast<const uint8_t*>(mask->data()) : nullptr;
  T* o = grad.mutable_data();
  int64_t scratch = 0;
  bool reused = false;
  a.workspace_bytes = &scratch;
  a.levels_reused = &reused;
  {
    py::gil_scoped_release release;
    mlrb::cpu::loss_space_backward<T>(G, p, g, m, a, o);
  }
  g_last_workspace_bytes = scratch;
  g_last_levels_reused = reused;
  return grad;
}

// (NaN/Inf in pred, NaN/Inf in gt) at the valid pixels: the input check of the Python API.
template <typename T>
py::tuple count_nonfinite(const Arr<T>& pred, const Arr<T>& gt, const Mask& mask, int num_threads) {
  const py::buffer_info p = pred.request(), g = gt.request();
  if (g.shape != p.shape)
    throw std::invalid_argument("pred and gt shapes differ: " + shape_str(p.shape) + " vs " + shape_str(g.shape));
  if (mask && mask->request().shape != p.shape)
    throw std::invalid_argument("mask shape differs from pred: " + shape_str(mask->request().shape) + " vs " +
                                shape_str(p.shape));
  if (num_threads < 1 || num_threads > kMaxThreads)
    throw std::invalid_argument("num_threads must be in 1.." + std::to_string(kMaxThreads) + ", got " +
                                std::to_string(num_threads));
  const T* pp = pred.data();
  const T* gp = gt.data();
  const uint8_t* m = mask ? reinterpret_cast<const uint8_t*>(mask->data()) : nullptr;
  int64_t counts[2] = {0, 0};
  {
    py::gil_scoped_release release;
    mlrb::count_nonfinite<T>(pp, gp, m, int64_t(p.size), num_threads, counts);
  }
  return py::make_tuple(counts[0], counts[1]);
}

// Peaks of this machine for the floor model (csrc/bench/peaks.h), measured on the calling
// thread with the GIL released.
constexpr double kPeakSecondsDefault = 0.6, kPeakSecondsMin = 0.05, kPeakSecondsMax = 60.0;

py::dict machine_peaks(const std::string& dtype, double seconds) {
  if (dtype != "float32" && dtype != "float64")
    throw std::invalid_argument("machine_peaks: dtype must be 'float32' or 'float64', got '" + dtype + "'");
  if (!std::isfinite(seconds) || seconds < kPeakSecondsMin || seconds > kPeakSecondsMax)
    throw std::invalid_argument("machine_peaks: seconds must be in [" +
                                std::string(py::str(py::float_(kPeakSecondsMin))) + ", " +
                                std::string(py::str(py::float_(kPeakSecondsMax))) + "], got " +
                                std::string(py::str(py::float_(seconds))));
  std::vector<std::pair<std::string, double>> peaks;
  {
    py::gil_scoped_release release;
    peaks = mlrb::bench::machine_peaks(dtype == "float64", seconds);
  }
  py::dict out;
  for (const auto& [name, value] : peaks) out[py::str(name)] = value;
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "mlrb fused CPU kernels of the multi-scale loss space (C++/OpenMP)";
  const char* fdoc =
      "loss_space_forward(pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, num_threads, return_stats=False)\n"
      "-> (B, n) float64, or with return_stats the tuple (losses, stats): stats (B, 6, STAT_WIDTH) float64, the\n"
      "scale statistics that loss_space_backward(..., stats=stats) reads instead of recomputing them; they also\n"
      "let the backward read the pyramid levels this forward keeps in the thread's scratch until the thread's\n"
      "next forward of the dtype.\n"
      "pred, gt: C-contiguous (B, H, W) float32/float64 arrays of the same dtype, B, H, W >= 1; mask: bool array\n"
      "or None; indices: loss columns 0..79; num_threads: 1..MAX_THREADS. Bad input raises ValueError/TypeError.";
  const char* bdoc =
      "loss_space_backward(grad_out, pred, gt, mask, indices, si_lambda, si_sqrt, si_scale, num_threads,\n"
      "stats=None) -> grad_pred (B, H, W) of pred's dtype; grad_out: (B, n) float64; stats: the forward's\n"
      "(return_stats) for the same inputs and indices (the same bits as without, less work), or None.";
  // float64 first: pybind11 tries overloads in order and must not convert float64 to float32.
  mod.def("last_workspace_bytes", [] { return g_last_workspace_bytes; },
          "bytes of scratch (all threads) that the last forward/backward call used, besides its output");
  mod.def("last_backward_reused_levels", [] { return g_last_levels_reused; },
          "whether the last backward read the pyramid levels its forward kept in the calling thread's scratch\n"
          "(stats of that forward, no forward of the dtype on the thread since) instead of rebuilding them");
  mod.attr("MAX_THREADS") = kMaxThreads;
  mod.attr("STAT_WIDTH") = mlrb::kScaleStatWidth;
  mod.def("isa", &mlrb::cpu::isa, "instruction set of the CPU kernels on this machine: 'avx2' or 'generic'");
  mod.def("machine_peaks", &machine_peaks,
          "machine_peaks(dtype='float32', seconds=0.6) -> dict name -> elements per ns\n"
          "Single-thread peaks of this machine with the kernels' instruction set (isa()), for the floor\n"
          "model (mlrb.bench.floor): add, mul, add_mul (the FP pipes; add_mul counts adds + muls), sqrt,\n"
          "div (the divider), load, store (L1-resident), dram (streaming read far beyond L3). Best of\n"
          "six interleaved runs per peak on the thread's CPU time, about `seconds` in all (0.05..60).",
          py::arg("dtype") = "float32", py::arg("seconds") = kPeakSecondsDefault);
  const char* cdoc =
      "count_nonfinite(pred, gt, mask, num_threads) -> (NaN/Inf entries of pred, of gt) where mask is True\n"
      "(everywhere if None); pred, gt: C-contiguous arrays of one shape and dtype (float32/float64).";
  mod.def("count_nonfinite", &count_nonfinite<double>, cdoc, py::arg("pred").noconvert(), py::arg("gt").noconvert(),
          py::arg("mask").none(true), py::arg("num_threads"));
  mod.def("count_nonfinite", &count_nonfinite<float>, cdoc, py::arg("pred").noconvert(), py::arg("gt").noconvert(),
          py::arg("mask").none(true), py::arg("num_threads"));
  mod.def("loss_space_forward", &forward<double>, fdoc, py::arg("pred").noconvert(), py::arg("gt").noconvert(),
          py::arg("mask").none(true), py::arg("indices"), py::arg("si_lambda"), py::arg("si_sqrt"),
          py::arg("si_scale"), py::arg("num_threads"), py::arg("return_stats") = false);
  mod.def("loss_space_forward", &forward<float>, fdoc, py::arg("pred").noconvert(), py::arg("gt").noconvert(),
          py::arg("mask").none(true), py::arg("indices"), py::arg("si_lambda"), py::arg("si_sqrt"),
          py::arg("si_scale"), py::arg("num_threads"), py::arg("return_stats") = false);
  mod.def("loss_space_backward", &backward<double>, bdoc, py::arg("grad_out"), py::arg("pred").noconvert(),
          py::arg("gt").noconvert(), py::arg("mask").none(true), py::arg("indices"), py::arg("si_lambda"),
          py::arg("si_sqrt"), py::arg("si_scale"), py::arg("num_threads"),
          py::arg("stats").noconvert().none(true) = py::none());
  mod.def("loss_space_backward", &backward<float>, bdoc, py::arg("grad_out"), py::arg("pred").noconvert(),
          py::arg("gt").noconvert(), py::arg("mask").none(true), py::arg("indices"), py::arg("si_lambda"),
          py::arg("si_sqrt"), py::arg("si_scale"), py::arg("num_threads"),
          py::arg("stats").noconvert().none(true) = py::none());
}
