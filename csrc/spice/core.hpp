// spice core: exact penalised log-det greedy selection over gradient features.
// Pure C++17: no Python headers. docs/algorithm.md explains the algebra and maps the units.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace spice {

// Element type of the feature matrix G. Rows are read and widened to double in registers.
enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };

// A read-only view of an n x d row-major matrix; rows may be strided (row_stride in elements),
// elements inside a row are contiguous.
struct MatrixView {
  const void* data = nullptr;
  int64_t n = 0;
  int64_t d = 0;
  int64_t row_stride = 0;  // elements between consecutive rows
  DType dtype = DType::F32;

  size_t elem_size() const { return (dtype == DType::F64) ? 8 : (dtype == DType::F32 ? 4 : 2); }
  const char* row(int64_t i) const {
    return static_cast<const char*>(data) + static_cast<size_t>(i) * row_stride * elem_size();
  }
};

enum class Method : int { Naive = 0, Lazy = 1, Stochastic = 2 };
enum class Objective : int { LogDet = 0, DiagCompat = 1, TopKCompat = 2 };
// Filled: no row left fits the cost budget and the group quotas (constrained runs only).
enum class StopReason : int { Budget = 0, EarlyStop = 1, Exhausted = 2, Cancelled = 3, Filled = 4 };

struct Options {
  int64_t k = 0;        // budget (number of picks), 0 <= k <= n
  double alpha = 1.0;   // Fisher scale, > 0
  double lambda = 0.0;  // conflict penalty weight, >= 0
  double omega = 0.0;   // SPICE+ early stop ratio in (0,1); <= 0 disables
  Method method = Method::Lazy;
  Objective objective = Objective::LogDet;
  uint64_t seed = 0;             // stochastic greedy sampling
  double stochastic_eps = 0.01;  // stochastic greedy sample size parameter
  int threads = 0;               // 0 = OpenMP default
  int64_t batch = 0;             // lazy refresh batch size; 0 = adaptive
  int64_t chunk = 0;             // lazy catch-up rows per refresh; 0 = default (256,
                                 // kDefaultChunk in spice/tuning.hpp)
  double* base_out = nullptr;    // optional, n entries: log(1 + alpha ||g_i||^2) of every row,
                                 // filled from the norms the run computes anyway
  double* norm2_out = nullptr;   // optional, n entries: ||g_i||^2 of every row as given (before
                                 // unit_rows scaling), from the same norms pass
  std::string spill_dir;         // non-empty: keep the w rows (k x d float64) in a temporary
                                 // file there (mapped; the OS may page it out), not in RAM
  bool unit_rows = false;        // select on g_i / ||g_i|| (zero rows stay zero): G is read as
                                 // is, each dot product scaled in float64 (docs/algorithm.md §13);
                                 // log-det objective only
  // Side constraints (log-det objective only; docs/algorithm.md §11). The arrays are the
  // caller's and must outlive the run; null = no such constraint. k stays a cap on the rows.
  const double* cost = nullptr;    // n positive finite per-row costs (e.g. tokens): cost-benefit
                                   // greedy under sum of costs <= budget
  double budget = 0.0;             // finite > 0 when cost is set
  const int32_t* group = nullptr;  // n group indices in [0, n_groups)
  const int64_t* quota = nullptr;  // n_groups caps >= 0: most picks per group
  int64_t n_groups = 0;
};

// What a progress hook sees; returning false from the hook cancels the run.
struct Progress {
  int64_t picks = 0;
  int64_t budget = 0;
  int64_t evaluations = 0;
  double elapsed_s = 0.0;
};
using ProgressHook = std::function<bool(const Progress&)>;

struct Result {
  std::vector<int64_t> indices;  // pick order
  std::vector<double> gains;     // Delta_t at pick time (information gain)
  std::vector<double> base;      // log(1 + alpha ||g||^2) of each pick
  std::vector<double> align;     // cosine to the mean of earlier picks (0 for the first)
  std::vector<double> conflict;  // max(0, -align)
  std::vector<double> scores;    // gains - lambda * conflict (objective's own gain for compat)
  double objective_sum = 0.0;    // sum of gains (= log det for the exact objective)
  double opt_upper_bound = 0.0;  // Minoux bound on max log det over sets of |indices| rows;
                                 // constrained: over the feasible sets (docs/algorithm.md §11)
  StopReason stop = StopReason::Budget;
  int64_t evaluations = 0;       // candidate score refreshes performed
  int64_t dot_products = 0;      // catch-up dot products g_i . w_s performed
  double spent = 0.0;            // sum of the picks' costs (constrained runs; in pick order)
  bool safeguard = false;        // the best single row replaced the cost-benefit greedy's set
  int64_t bad_row = -1;          // first row refused: a non-finite squared norm, or (log-det
                                 // objective) alpha ||g||^2 > 1e12, or (compatibility objectives)
                                 // a non-finite base gain; the run does nothing else when >= 0
};

// Runs the greedy selection. Throws std::invalid_argument on bad options.
Result select(const MatrixView& G, const Options& opt, const ProgressHook& hook = nullptr,
              double hook_interval_s = 0.25);

// Squared row norms in float64 (canonical accumulation order), parallel.
void row_norms2(const MatrixView& G, double* out, int threads = 0);

// Which kernel family runs on this CPU ("avx512", "avx2-fma" or "generic").
std::string kernel_isa();

}  // namespace spice
