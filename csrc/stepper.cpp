// A shard of the distributed exact greedy (spice/stepper.hpp, docs/distributed.md): the lazy
// driver's steps with the pick decided outside, and the Stepper that owns such an engine.
#include "spice/stepper.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "engine.hpp"

namespace spice {
namespace detail {

void Engine::begin_steps() {
  t0_ = last_hook_ = std::chrono::steady_clock::now();
  init_norms();
  res_.stop = StopReason::Budget;
  if (res_.bad_row >= 0) return;
  inv_.open(static_cast<size_t>(std::max<int64_t>(0, opt_.k)), opt_.spill_dir);
  lazy_begin();
}

// The lazy step's best with what its pick records, as add_pick records it: with lambda = 0
// the conflict was not needed to rank, and the pick's cosine is computed here, from the same
// conflict sum add_pick would use.
Candidate Engine::step_best() {
  if (best_at_ == t_) return best_;
  best_ = candidate_of(lazy_best());
  best_at_ = t_;
  return best_;
}

Candidate Engine::candidate_of(const Best& b) {
  Candidate c;
  if (b.idx != std::numeric_limits<int64_t>::max() && b.score > kNegInf) {
    const int64_t j = b.idx;
    if (!lambda_on() && t_ > 0) {
      double a;
      const char* rj = row(j);
      const double* sv = conf_.sum();
      K_.dots(G_.dtype, &rj, 1, &sv, 1, d_, &a);
      conflict_of(j, a);
    }
    c.index = j;
    c.score = rs_[j].score;
    c.delta = rs_[j].delta;
    c.base = base_[j];
    c.align = rs_[j].align;
    c.conflict = conf(j);
    c.q = rs_[j].q;
  }
  return c;
}

// Rows that left the pool since the last draw (picked here, or found in span(S)) are among
// that draw's rows: only those are swept, as stochastic greedy does on one machine.
int64_t Engine::step_remaining() {
  if (sampled_ < 0) {
    remaining_.clear();
    for (int64_t i = 0; i < n_; ++i)
      if (rs_[i].state == kAlive) remaining_.push_back(i);
  } else {
    drop_gone(remaining_, sampled_);
  }
  sampled_ = 0;
  return static_cast<int64_t>(remaining_.size());
}

// Stochastic greedy's step (sample_best, greedy_stochastic.cpp) over a sample of this shard,
// drawn with its own seed.
Candidate Engine::step_sample(int64_t m, uint64_t seed) {
  const int64_t r = step_remaining();
  m = std::max<int64_t>(0, std::min(m, r));
  SplitMix64 rng(seed);
  const Best best = sample_best(remaining_, m, rng);
  sampled_ = m;
  best_at_ = -1;  // a sampled step's candidate is not the lazy step's
  return candidate_of(best);
}

// A pick applied without a step_best at this step (a replay) leaves the row's entry in the
// queue; lazy_best skips entries that are not alive.
void Engine::step_apply(const char* row_j, double q, int64_t local) {
  if (t_ >= opt_.k) throw std::logic_error("Stepper: more picks than k");
  if (local >= 0) {
    if (local >= n_ || rs_[local].state != kAlive)
      throw std::invalid_argument("Stepper: the local pick is not a row that can be picked");
    rs_[local].state = kPicked;
    // Not this step's best (a replay): its queue entry stays behind, lazy_best must skip it.
    if (best_at_ != t_ || best_.index != local) stale_entries_ = true;
  }
  take_pick(row_j, q);
  lazy_after_pick(local);
}

}  // namespace detail

struct Stepper::Impl {
  Impl(const MatrixView& G, const Options& o) : engine(G, o) {}
  detail::Engine engine;  // owns its copies of the view and options; no progress hook
};

Stepper::Stepper(const MatrixView& G, const Options& opt) {
  detail::validate(G, opt);
  if (opt.objective != Objective::LogDet)
    throw std::invalid_argument("a shard runs the log-det objective only");
  if (opt.cost || opt.group)
    throw std::invalid_argument("a shard runs without a cost budget or quotas");
  if (opt.unit_rows)
    throw std::invalid_argument("a shard runs on the rows as given (no unit rows)");
  Options o = opt;
  o.method = Method::Lazy;
  o.base_out = nullptr;
  p_ = std::make_unique<Impl>(G, o);
  p_->engine.begin_steps();
}

Stepper::~Stepper() = default;

int64_t Stepper::bad_row() const { return p_->engine.bad_row(); }
int64_t Stepper::picks() const { return p_->engine.picks(); }

Candidate Stepper::best() {
  if (bad_row() >= 0) throw std::logic_error("Stepper: a row was refused (bad_row)");
  return p_->engine.step_best();
}

void Stepper::apply_pick(const void* row, double q, int64_t local) {
  if (bad_row() >= 0) throw std::logic_error("Stepper: a row was refused (bad_row)");
  if (!(q >= 0.0) || !std::isfinite(q)) throw std::invalid_argument("Stepper: q must be >= 0");
  p_->engine.step_apply(static_cast<const char*>(row), q, local);
}

std::vector<double> Stepper::top_gains(int64_t m) const { return p_->engine.top_gains(m); }

double Stepper::base(int64_t local) const {
  if (local < 0 || local >= p_->engine.rows())
    throw std::out_of_range("Stepper::base: no such row");
  return p_->engine.base(local);
}

Candidate Stepper::best_of_sample(int64_t m, uint64_t seed) {
  if (bad_row() >= 0) throw std::logic_error("Stepper: a row was refused (bad_row)");
  return p_->engine.step_sample(m, seed);
}

int64_t Stepper::remaining() { return p_->engine.step_remaining(); }

int64_t Stepper::evaluations() const { return p_->engine.evaluations(); }
int64_t Stepper::dot_products() const { return p_->engine.dot_products(); }

}  // namespace spice
