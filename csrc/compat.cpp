// The two compatibility objectives of the authors' released code: their diagonal-Fisher greedy
// and their top-k by base gain (docs/algorithm.md §8). Not the log-det objective.
#include <algorithm>
#include <cmath>

#include "engine.hpp"

namespace spice {
namespace detail {

// The authors' released "diag Fisher" greedy (docs/algorithm.md §8): not the log-det objective.
// Their loop takes min(k, n) rows whatever the scores, so a zero row (gain log 1 = 0, cosine 0,
// so score 0) is a candidate like any other: it is picked when every other row scores below 0
// (a penalty above its gain) or none is left. init_norms marked zero rows dead for log-det;
// here every row is revived.
void Engine::run_diag_compat() {
  std::vector<double> den(d_, 1.0), inv(d_, 1.0), g(d_);
  std::vector<int64_t> alive;
  for (int64_t i = 0; i < n_; ++i) {
    rs_[i].state = kAlive;
    alive.push_back(i);
  }
  const double alpha = opt_.alpha, lambda = opt_.lambda;
  while (t_ < opt_.k) {
    const int64_t m = static_cast<int64_t>(alive.size());
    const bool conflict = t_ > 0;
#pragma omp parallel for num_threads(nt_) schedule(static) if (m * d_ > kParallelWork)
    for (int64_t c = 0; c < m; ++c) {
      const int64_t i = alive[c];
      const char* ri = row(i);
      double s;
      K_.sqdots(G_.dtype, &ri, 1, inv.data(), d_, &s);
      const double dl = std::log1p(alpha * s);
      rs_[i].delta = dl;
      double a = 0.0;
      if (conflict) {
        const double* sv = conf_.sum();
        K_.dots(G_.dtype, &ri, 1, &sv, 1, d_, &a);
      }
      conflict_of(i, a);
      rs_[i].score = dl - lambda * conf(i);
    }
    res_.evaluations += m;
    const Best b = argmax(alive.data(), m);
    if (check_stop_before_pick(b)) break;
    const int64_t j = b.idx;
    add_pick(j);
    kern::widen_row(G_.dtype, row(j), d_, g.data());
    for (int64_t x = 0; x < d_; ++x) {
      const double v = std::fabs(g[x]) * g[x];
      den[x] += alpha * v * v;
      inv[x] = 1.0 / den[x];
    }
    alive.erase(std::remove(alive.begin(), alive.end(), j), alive.end());
    if (!tick()) return;
  }
}

// The authors' default: rank by base = log(1 + alpha ||g||^2), optionally cut at omega * max.
void Engine::run_topk_compat() {
  std::vector<int64_t> order;
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return base_[a] > base_[b]; });
  res_.evaluations = static_cast<int64_t>(order.size());
  size_t pos = 0;
  while (t_ < opt_.k) {
    if (pos >= order.size()) {
      res_.stop = StopReason::Exhausted;
      break;
    }
    const int64_t j = order[pos++];
    if (opt_.omega > 0.0 && t_ >= 1 && base_[j] <= opt_.omega * res_.gains[0]) {
      res_.stop = StopReason::EarlyStop;
      break;
    }
    double a = 0.0;
    if (t_ > 0) {
      const char* rj = row(j);
      const double* sv = conf_.sum();
      K_.dots(G_.dtype, &rj, 1, &sv, 1, d_, &a);
    }
    conflict_of(j, a);
    rs_[j].delta = base_[j];
    rs_[j].score = base_[j];
    add_pick(j);
    if (!tick()) return;
  }
}

}  // namespace detail
}  // namespace spice
