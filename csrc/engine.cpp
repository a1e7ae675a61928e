// The engine's shared steps: norms and first gains, taking a pick, progress, the certificate and
// the run itself; and the core's public entry points (see spice/core.hpp).
#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spice {
namespace detail {

int resolve_threads(int t) {
#ifdef _OPENMP
  return t > 0 ? t : omp_get_max_threads();
#else
  (void)t;
  return 1;
#endif
}

Engine::Engine(const MatrixView& G, const Options& opt, const ProgressHook& hook, double hook_dt)
    : G_(G), opt_(opt), K_(kern::table()), hook_(hook), hook_dt_(hook_dt), n_(G.n), d_(G.d),
      nt_(resolve_threads(opt.threads)), inv_(G, K_, nt_) {}

void Engine::init_norms() {
  std::vector<double> norm2(n_, 0.0);
  row_norms2(G_, norm2.data(), nt_);
  base_.resize(n_);
  rs_.assign(n_, RowState{});
  for (int64_t i = 0; i < n_; ++i) {
    rs_[i].norm2 = rs_[i].q = norm2[i];
    rs_[i].state = kAlive;
    base_[i] = std::log1p(opt_.alpha * rs_[i].norm2);
    // Refused rows (see kMaxAlphaNorm2); the compatibility objectives need only finite gains.
    const bool too_big = opt_.objective == Objective::LogDet
                             ? !(opt_.alpha * rs_[i].norm2 <= kMaxAlphaNorm2)
                             : !std::isfinite(base_[i]);
    if (too_big && res_.bad_row < 0) res_.bad_row = i;
    if (!(rs_[i].norm2 > 0.0) || !(base_[i] > 0.0)) rs_[i].state = kDead;
    rs_[i].delta = base_[i];
  }
  if (opt_.base_out) std::copy(base_.begin(), base_.end(), opt_.base_out);
  conf_.reset(d_);
}

Best Engine::argmax(const int64_t* cand, int64_t m) const {
  Best best;
#pragma omp parallel num_threads(nt_) if (m > 16384)
  {
    Best local;
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < m; ++c) {
      const int64_t i = cand[c];
      if (rs_[i].state != kAlive) continue;
      Best b{rs_[i].score, i};
      if (b.better_than(local)) local = b;
    }
#pragma omp critical
    if (local.better_than(best)) best = local;
  }
  return best;
}

// True when the run must stop instead of taking b.
bool Engine::check_stop_before_pick(const Best& b) {
  if (b.idx == std::numeric_limits<int64_t>::max() || !(b.score > kNegInf)) {
    res_.stop = StopReason::Exhausted;
    return true;
  }
  if (opt_.omega > 0.0 && t_ >= 1 && rs_[b.idx].delta <= opt_.omega * res_.gains[0]) {
    res_.stop = StopReason::EarlyStop;
    return true;
  }
  return false;
}

// Record pick j (its delta/align/score are current) and extend M^{-1}. With lambda = 0
// the conflict was not needed to rank candidates; it is still reported for the pick.
void Engine::add_pick(int64_t j) {
  if (!lambda_on() && t_ > 0 && opt_.objective == Objective::LogDet) {
    double a;
    const char* rj = row(j);
    const double* sv = conf_.sum();
    K_.dots(G_.dtype, &rj, 1, &sv, 1, d_, &a);
    conflict_of(j, a);
  }
  res_.indices.push_back(j);
  res_.gains.push_back(rs_[j].delta);
  res_.base.push_back(base_[j]);
  res_.align.push_back(rs_[j].align);
  res_.conflict.push_back(conf(j));
  res_.scores.push_back(rs_[j].score);
  res_.objective_sum += rs_[j].delta;
  rs_[j].state = kPicked;

  std::vector<double> g(d_);
  kern::widen_row(G_.dtype, row(j), d_, g.data());
  if (opt_.objective == Objective::LogDet)
    inv_.append(row(j), g.data(), std::sqrt(opt_.alpha / (1.0 + opt_.alpha * rs_[j].q)));
  conf_.add(g.data());
  ++t_;
}

// Progress hook, rate limited; false = cancelled.
bool Engine::tick() {
  if (!hook_) return true;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_hook_).count() < hook_dt_ && t_ < opt_.k)
    return true;
  last_hook_ = now;
  Progress p;
  p.picks = t_;
  p.budget = opt_.k;
  p.evaluations = res_.evaluations;
  p.elapsed_s = std::chrono::duration<double>(now - t0_).count();
  if (!hook_(p)) {
    res_.stop = StopReason::Cancelled;
    return false;
  }
  return true;
}

// Minoux: for any |S*| = |S|, F(S*) <= F(S) + sum of the |S| largest Delta_x(S), x not in S.
// q_x only decreases, so log1p(alpha * q_x) at any earlier step is a valid (looser) term.
void Engine::finish_bound() {
  const int64_t m = static_cast<int64_t>(res_.indices.size());
  std::vector<double> vals;
  vals.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state != kPicked) vals.push_back(std::log1p(opt_.alpha * rs_[i].q));
  const int64_t take = std::min<int64_t>(m, static_cast<int64_t>(vals.size()));
  if (take > 0) {
    std::nth_element(vals.begin(), vals.begin() + (take - 1), vals.end(), std::greater<double>());
    double extra = 0.0;
    std::vector<double> top(vals.begin(), vals.begin() + take);
    std::sort(top.begin(), top.end(), std::greater<double>());
    for (double v : top) extra += v;
    res_.opt_upper_bound = res_.objective_sum + extra;
  } else {
    res_.opt_upper_bound = res_.objective_sum;
  }
}

Result Engine::run() {
  t0_ = last_hook_ = std::chrono::steady_clock::now();
  init_norms();
  res_.stop = StopReason::Budget;
  if (res_.bad_row >= 0) return std::move(res_);
  const size_t cap = static_cast<size_t>(std::max<int64_t>(0, opt_.k));
  res_.indices.reserve(cap);
  if (opt_.objective == Objective::LogDet) {
    inv_.open(std::min<size_t>(cap, static_cast<size_t>(n_)), opt_.spill_dir);
    switch (opt_.method) {
      case Method::Naive: run_naive(); break;
      case Method::Lazy: run_lazy(); break;
      case Method::Stochastic: run_stochastic(); break;
    }
    finish_bound();
  } else if (opt_.objective == Objective::DiagCompat) {
    run_diag_compat();
    res_.opt_upper_bound = std::numeric_limits<double>::quiet_NaN();
  } else {
    run_topk_compat();
    res_.opt_upper_bound = std::numeric_limits<double>::quiet_NaN();
  }
  if (hook_ && res_.stop != StopReason::Cancelled) {
    last_hook_ = std::chrono::steady_clock::time_point{};
    Progress p;
    p.picks = t_;
    p.budget = opt_.k;
    p.evaluations = res_.evaluations;
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    if (!hook_(p)) res_.stop = StopReason::Cancelled;
  }
  res_.dot_products = dots_;
  return std::move(res_);
}

}  // namespace detail

void row_norms2(const MatrixView& G, double* out, int threads) {
  const kern::Table& K = kern::table();
  const int nt = detail::resolve_threads(threads);
  const int64_t n = G.n;
  constexpr int64_t CH = 256;
  const int64_t nch = (n + CH - 1) / CH;
#pragma omp parallel for num_threads(nt) schedule(static) if (n * G.d > (1 << 16))
  for (int64_t c = 0; c < nch; ++c) {
    const int64_t i1 = std::min(n, (c + 1) * CH);
    for (int64_t i = c * CH; i < i1; ++i) {
      const char* r = G.row(i);
      K.sqdots(G.dtype, &r, 1, nullptr, G.d, out + i);
    }
  }
}

Result select(const MatrixView& G, const Options& opt, const ProgressHook& hook,
              double hook_interval_s) {
  if (G.n < 0 || G.d <= 0 || (G.n > 0 && G.data == nullptr))
    throw std::invalid_argument("G must be a non-empty n x d matrix");
  if (G.row_stride < G.d) throw std::invalid_argument("row stride smaller than d");
  if (opt.k < 0 || opt.k > G.n) throw std::invalid_argument("k must be in [0, n]");
  if (!(opt.alpha > 0.0) || !std::isfinite(opt.alpha))
    throw std::invalid_argument("alpha must be a finite number > 0");
  if (!(opt.lambda >= 0.0) || !std::isfinite(opt.lambda))
    throw std::invalid_argument("conflict penalty must be a finite number >= 0");
  if (opt.omega != 0.0 && !(opt.omega > 0.0 && opt.omega < 1.0))
    throw std::invalid_argument("early_stop must be in (0, 1)");
  if (!(opt.stochastic_eps > 0.0 && opt.stochastic_eps < 1.0))
    throw std::invalid_argument("stochastic_eps must be in (0, 1)");
  detail::Engine e(G, opt, hook, hook_interval_s);
  return e.run();
}

}  // namespace spice
