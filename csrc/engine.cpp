// The engine's shared steps: norms and first gains, taking a pick, progress, the certificate and
// the run itself; and the core's public entry points (see spice/core.hpp).
#include "engine.hpp"

#if defined(__linux__)  // the load is read from /proc (auto_threads)
#include <dirent.h>
#include <sched.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spice {
namespace detail {

#if defined(_OPENMP) && defined(__linux__)
namespace {

// Runnable tasks system-wide right now (the 4th field of /proc/loadavg, "running/total"); -1 if
// unknown.
long runnable_tasks() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1;
  double l1, l5, l15;
  long running = -1, total;
  if (std::fscanf(f, "%lf %lf %lf %ld/%ld", &l1, &l5, &l15, &running, &total) != 5) running = -1;
  std::fclose(f);
  return running;
}

// This process's own runnable threads (the caller, and OpenMP workers still spinning after the
// last parallel region): they are not load from others.
long own_runnable_threads() {
  long n = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return 1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
    std::FILE* f = std::fopen(path, "r");
    if (!f) continue;
    const size_t got = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[got] = 0;
    const char* close = std::strrchr(buf, ')');  // the name may hold spaces and parentheses
    if (close && close[1] == ' ' && close[2] == 'R') ++n;
  }
  closedir(d);
  return std::max<long>(n, 1);
}

// CPUs this process may use: its affinity mask, and a cgroup v2 quota if one is set.
int usable_cpus() {
  int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  if (std::FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char quota[32] = {0};
    long period = 0;
    if (std::fscanf(f, "%31s %ld", quota, &period) == 2 && std::strcmp(quota, "max") != 0 &&
        period > 0) {
      const long q = std::atol(quota);
      if (q > 0) cpus = std::min<int>(cpus, static_cast<int>((q + period - 1) / period));
    }
    std::fclose(f);
  }
  return std::max(cpus, 1);
}

}  // namespace
#endif

// threads = 0: OMP_NUM_THREADS when the user set it; else the usable CPUs less those that other
// processes' runnable tasks occupy now, at least 1. Every parallel region ends at a barrier, so
// a run on more threads than free cores waits, region after region, for a thread the scheduler
// has parked behind someone else's process: with busy processes on all cores two threads took
// many times longer than one (bench/RESULTS.md, "Selection under load"). Results do not depend
// on the thread count, only the time does.
int auto_threads() {
#if defined(_OPENMP) && !defined(__linux__)
  return omp_get_max_threads();  // no /proc to read the load from
#elif defined(_OPENMP)
  const int nmax = omp_get_max_threads();
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (nmax <= 1 || (env && *env)) return std::max(nmax, 1);
  const long running = runnable_tasks();
  if (running < 0) return nmax;
  const int usable = usable_cpus();
  const int host = std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
  // Others' runnable tasks, spread evenly over the host's CPUs; the share on ours is load.
  const double others =
      static_cast<double>(std::max<long>(0, running - own_runnable_threads())) * usable / host;
  const int free_cpus = static_cast<int>(std::floor(usable - others + 1e-9));
  return std::max(1, std::min(nmax, free_cpus));
#else
  return 1;
#endif
}

int resolve_threads(int t) {
#ifdef _OPENMP
  return t > 0 ? t : auto_threads();
#else
  (void)t;
  return 1;
#endif
}

Engine::Engine(const MatrixView& G, const Options& opt, const ProgressHook* hook, double hook_dt)
    : G_(G), opt_(opt), K_(kern::table()), hook_(hook && *hook ? hook : nullptr), hook_dt_(hook_dt),
      n_(G.n), d_(G.d), nt_(resolve_threads(opt.threads)), inv_(G, K_, nt_) {}

void Engine::init_norms() {
  std::vector<double> norm2(n_, 0.0);
  row_norms2(G_, norm2.data(), nt_);
  if (opt_.norm2_out) std::copy(norm2.begin(), norm2.end(), opt_.norm2_out);
  base_.resize(n_);
  rs_.assign(n_, RowState{});
  if (opt_.unit_rows) {
    // Unit rows: ||g_i / ||g_i|| ||^2 is 1 exactly (not its round-off, which would decide the
    // first pick among equal gains). A row whose squared norm underflows float64 but has a
    // nonzero entry cannot be scaled exactly: refused, as an overflowing one is below.
    scale_.assign(n_, 0.0);
    sc_ = scale_.data();
    for (int64_t i = 0; i < n_; ++i) {
      if (!std::isfinite(norm2[i])) continue;  // refused below
      if (norm2[i] > 0.0) {
        scale_[i] = 1.0 / std::sqrt(norm2[i]);
        norm2[i] = 1.0;
      } else if (res_.bad_row < 0) {
        std::vector<double> g(d_);
        kern::widen_row(G_.dtype, row(i), d_, g.data());
        for (double x : g)
          if (x != 0.0) res_.bad_row = i;
      }
    }
  }
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
  cons_.reset(opt_);
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
    if (cons_.active()) {  // "filled" when no row left fits, whatever the gains (§11)
      bool any = false;
      for (int64_t i = 0; i < n_ && !any; ++i) any = rs_[i].state != kPicked && fits(i);
      if (!any) res_.stop = StopReason::Filled;
    }
    return true;
  }
  if (opt_.omega > 0.0 && t_ >= 1) {
    // With costs the rule compares gains per unit cost (the same rule at unit cost).
    const bool stop = cons_.has_cost()
                          ? rs_[b.idx].delta / cons_.cost(b.idx) <=
                                opt_.omega * (res_.gains[0] / cons_.cost(res_.indices[0]))
                          : rs_[b.idx].delta <= opt_.omega * res_.gains[0];
    if (stop) {
      res_.stop = StopReason::EarlyStop;
      return true;
    }
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
    if (sc_) a *= sc_[j];
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
  if (cons_.active()) {
    cons_.take(j);
    res_.spent = cons_.spent();
  }
  take_pick(row(j), rs_[j].q, sc_ ? sc_[j] : 1.0);
}

// The state every pick changes, from the picked row alone (G's dtype) and its residual q at
// this step: the new w row and the conflict sum. Stepping shards apply other shards' picks
// through here too (step_apply), so all of them compute the same numbers. sj: the row's unit
// scale 1 / ||g_j|| (1 on the plain path, where it multiplies nothing).
void Engine::take_pick(const char* row_j, double q, double sj) {
  retune_threads();
  std::vector<double> g(d_);
  kern::widen_row(G_.dtype, row_j, d_, g.data());
  if (sc_)
    for (double& x : g) x *= sj;
  if (opt_.objective == Objective::LogDet)
    inv_.append(row_j, g.data(), std::sqrt(opt_.alpha / (1.0 + opt_.alpha * q)), sj);
  conf_.add(g.data());
  ++t_;
}

// Load that arrives (or leaves) after the start moves the default thread count as well: a
// region's barrier waits for its slowest thread, so a run that keeps two threads while busy
// processes take the cores slows several-fold (bench/RESULTS.md, "Selection under load").
void Engine::retune_threads() {
  if (opt_.threads > 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - last_tune_).count() < kTuneEvery) return;
  last_tune_ = now;
  nt_ = auto_threads();
  inv_.set_threads(nt_);
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
  if (!(*hook_)(p)) {
    res_.stop = StopReason::Cancelled;
    return false;
  }
  return true;
}

// Round-off in a residual q = ||g||^2 - sum_s (g . w_s)^2 is at most about (d + t) eps ||g||^2
// (t subtracted squares of products of length d, and the w_s carry the same relative error);
// kRoundoffGrowth times that is the margin. A change dq of q moves log1p(alpha q) by at most
// alpha dq / (1 + alpha q). Adding it to every gain of the certificate (the picks' own, summed
// into F(S), and the candidates') makes the bound one on the exact optimum, not on the
// rounded one (§7).
constexpr double kRoundoffGrowth = 4.0;

double Engine::gain_upper(int64_t i) const {
  const double aq = opt_.alpha * rs_[i].q;
  const double dq = kRoundoffGrowth * static_cast<double>(d_ + t_ + 8) *
                    std::numeric_limits<double>::epsilon() * rs_[i].norm2;
  return std::log1p(aq) + opt_.alpha * dq / (1.0 + aq);
}

// The picks' gains as summed into F(S), each plus its round-off margin: an upper bound of the
// exact log det of the picks.
double Engine::picks_upper() const {
  double f = 0.0;
  for (int64_t j : res_.indices) f += gain_upper(j) - std::log1p(opt_.alpha * rs_[j].q);
  return res_.objective_sum + f;
}

// Minoux: for any |S*| = |S|, F(S*) <= F(S) + sum of the |S| largest Delta_x(S), x not in S.
// q_x only decreases, so log1p(alpha * q_x) at any earlier step is a valid (looser) term.
void Engine::finish_bound() {
  const int64_t m = static_cast<int64_t>(res_.indices.size());
  double extra = 0.0;
  for (double v : top_gains(m)) extra += v;
  res_.opt_upper_bound = picks_upper() + extra;
}

std::vector<double> Engine::top_gains(int64_t m) const {
  std::vector<double> vals;
  vals.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state != kPicked) vals.push_back(gain_upper(i));
  const int64_t take = std::min<int64_t>(std::max<int64_t>(m, 0),
                                         static_cast<int64_t>(vals.size()));
  if (take == 0) return {};
  std::nth_element(vals.begin(), vals.begin() + (take - 1), vals.end(), std::greater<double>());
  std::vector<double> top(vals.begin(), vals.begin() + take);
  std::sort(top.begin(), top.end(), std::greater<double>());
  return top;
}

// Constrained runs (§11). For any feasible S*, F(S*) <= F(S) + sum over x in S* \ S of
// Delta_x(S) (submodularity and monotonicity), and S* \ S itself obeys every constraint, so the
// largest such sum over the sets that obey any one constraint bounds it: the k largest Deltas
// (the row cap), the fractional knapsack of (Delta, cost) under the budget, and the heaviest set
// with at most quota_g rows in group g and k in all (a partition matroid: greedy is exact). The
// smallest of these is reported. Stale q_x are upper bounds of the current ones, so candidates
// left behind (lazy, or dropped as unfit) still give valid, looser terms.
void Engine::finish_bound_constrained() {
  struct Term {
    double delta;
    int64_t i;
  };
  std::vector<Term> v;
  v.reserve(n_);
  for (int64_t i = 0; i < n_; ++i) {
    if (rs_[i].state == kPicked) continue;
    const double dl = gain_upper(i);
    if (dl > 0.0) v.push_back({dl, i});
  }
  std::sort(v.begin(), v.end(), [](const Term& a, const Term& b) {
    return a.delta > b.delta || (a.delta == b.delta && a.i < b.i);
  });
  const size_t cap = static_cast<size_t>(opt_.k);
  double best = 0.0;
  for (size_t x = 0; x < v.size() && x < cap; ++x) best += v[x].delta;
  if (opt_.group) {
    std::vector<int64_t> used(static_cast<size_t>(opt_.n_groups), 0);
    double sum = 0.0;
    size_t taken = 0;
    for (size_t x = 0; x < v.size() && taken < cap; ++x) {
      const int32_t g = opt_.group[v[x].i];
      if (used[g] < opt_.quota[g]) {
        ++used[g];
        ++taken;
        sum += v[x].delta;
      }
    }
    best = std::min(best, sum);
  }
  if (opt_.cost) {
    const double* c = opt_.cost;
    std::stable_sort(v.begin(), v.end(), [c](const Term& a, const Term& b) {
      return a.delta / c[a.i] > b.delta / c[b.i];
    });
    double room = opt_.budget, sum = 0.0;
    for (const Term& e : v) {
      if (c[e.i] <= room) {
        sum += e.delta;
        room -= c[e.i];
      } else {
        sum += e.delta * (room / c[e.i]);
        break;
      }
    }
    best = std::min(best, sum);
  }
  res_.opt_upper_bound = picks_upper() + best;
}

// The modified cost-benefit greedy (§11): the best single row that fits alone replaces the
// greedy's set when its score (its gain, no penalty alone) beats the greedy's summed scores. The
// cost-benefit greedy alone has no constant-factor guarantee (a cheap row with a high ratio can
// block a costly one worth more); with this safeguard it is within (1 - 1/e) / 2 of the optimum.
void Engine::safeguard_single() {
  if (opt_.k < 1) return;
  Best one;
  for (int64_t i = 0; i < n_; ++i) {
    if (!(base_[i] > 0.0) || !cons_.fits_alone(i)) continue;
    const Best b{base_[i], i};
    if (b.better_than(one)) one = b;
  }
  if (one.idx == std::numeric_limits<int64_t>::max()) return;
  double greedy = 0.0;
  for (double s : res_.scores) greedy += s;
  if (!(one.score > greedy)) return;
  const int64_t j = one.idx;
  res_.indices.assign(1, j);
  res_.gains.assign(1, base_[j]);
  res_.base.assign(1, base_[j]);
  res_.align.assign(1, 0.0);
  res_.conflict.assign(1, 0.0);
  res_.scores.assign(1, base_[j]);
  res_.objective_sum = base_[j];
  res_.spent = cons_.cost(j);
  res_.safeguard = true;
}

Result Engine::run() {
  t0_ = last_hook_ = last_tune_ = std::chrono::steady_clock::now();
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
    if (cons_.active()) {
      finish_bound_constrained();
      if (cons_.has_cost() && res_.stop != StopReason::Cancelled) safeguard_single();
    } else {
      finish_bound();
    }
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
    if (!(*hook_)(p)) res_.stop = StopReason::Cancelled;
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

namespace detail {

// The checks of every run's input but k's upper end (a stepping shard's k counts the picks of
// the whole run, which may exceed its own rows).
void validate(const MatrixView& G, const Options& opt) {
  if (G.n < 0 || G.d <= 0 || (G.n > 0 && G.data == nullptr))
    throw std::invalid_argument("G must be a non-empty n x d matrix");
  if (G.row_stride < G.d) throw std::invalid_argument("row stride smaller than d");
  if (opt.k < 0) throw std::invalid_argument("k must be in [0, n]");
  if (!(opt.alpha > 0.0) || !std::isfinite(opt.alpha))
    throw std::invalid_argument("alpha must be a finite number > 0");
  if (!(opt.lambda >= 0.0) || !std::isfinite(opt.lambda))
    throw std::invalid_argument("conflict penalty must be a finite number >= 0");
  if (opt.omega != 0.0 && !(opt.omega > 0.0 && opt.omega < 1.0))
    throw std::invalid_argument("early_stop must be in (0, 1)");
  if (!(opt.stochastic_eps > 0.0 && opt.stochastic_eps < 1.0))
    throw std::invalid_argument("stochastic_eps must be in (0, 1)");
  if (opt.unit_rows && opt.objective != Objective::LogDet)
    throw std::invalid_argument("unit rows need the log-det objective");
  if ((opt.cost || opt.group) && opt.objective != Objective::LogDet)
    throw std::invalid_argument("budget and quotas need the log-det objective");
  if (opt.cost) {
    if (!(opt.budget > 0.0) || !std::isfinite(opt.budget))
      throw std::invalid_argument("budget must be a finite number > 0");
    for (int64_t i = 0; i < G.n; ++i)
      if (!(opt.cost[i] > 0.0) || !std::isfinite(opt.cost[i]))
        throw std::invalid_argument("costs must be finite numbers > 0");
  }
  if (opt.group) {
    if (opt.n_groups < 1 || !opt.quota) throw std::invalid_argument("groups need quotas");
    for (int64_t g = 0; g < opt.n_groups; ++g)
      if (opt.quota[g] < 0) throw std::invalid_argument("quotas must be >= 0");
    for (int64_t i = 0; i < G.n; ++i)
      if (opt.group[i] < 0 || opt.group[i] >= opt.n_groups)
        throw std::invalid_argument("group labels must be in [0, n_groups)");
  }
}

}  // namespace detail

Result select(const MatrixView& G, const Options& opt, const ProgressHook& hook,
              double hook_interval_s) {
  detail::validate(G, opt);
  if (opt.k > G.n) throw std::invalid_argument("k must be in [0, n]");
  detail::Engine e(G, opt, &hook, hook_interval_s);
  return e.run();
}

}  // namespace spice
