// Stochastic greedy: each step refreshes a seeded random sample of about (n / k) log(1 / eps)
// candidates and picks the best of it (docs/algorithm.md §8). Its step, sample_best, is also a
// distributed shard's sampled step (stepper.cpp).
#include <algorithm>
#include <cmath>
#include <utility>

#include "engine.hpp"

namespace spice {
namespace detail {

// One step of stochastic greedy: draws m of the pool's rows (partial Fisher-Yates: they move to
// the front of pool, in draw order) and returns the best of them. Far-behind candidates (k >> d)
// first get the cheap M^{-1} bound; only those that can still win are caught up exactly, so the
// pick is that of plain stochastic greedy. 0 <= m <= pool.size().
Best Engine::sample_best(std::vector<int64_t>& pool, int64_t m, SplitMix64& rng) {
  const int64_t r = static_cast<int64_t>(pool.size());
  for (int64_t a = 0; a < m; ++a) {
    const int64_t b = a + static_cast<int64_t>(rng.below(static_cast<uint64_t>(r - a)));
    std::swap(pool[a], pool[b]);
  }
  far_steps_ = kStaleSteps * d_;
  std::vector<int64_t>& cand = scand_;
  std::vector<int64_t>& stale = sstale_;
  cand.assign(pool.begin(), pool.begin() + m);
  stale.clear();
  if (inv_.has_inverse()) {
    size_t keep = 0;
    for (int64_t i : cand) {
      if (far_behind(i)) stale.push_back(i);
      else cand[keep++] = i;
    }
    cand.resize(keep);
  }
  sort_by_step(cand);
  Best best = refresh(cand.data(), static_cast<int64_t>(cand.size()), lambda_on());
  if (!stale.empty()) {
    bound_from_inverse(stale, squb_);
    cand.clear();
    for (size_t x = 0; x < stale.size(); ++x) {
      const double key = rank(std::log1p(opt_.alpha * squb_[x]), stale[x]);
      if (key > best.score || (key == best.score && stale[x] < best.idx)) cand.push_back(stale[x]);
    }
    sort_by_step(cand);
    const Best b2 = refresh(cand.data(), static_cast<int64_t>(cand.size()), lambda_on());
    if (b2.better_than(best)) best = b2;
  }
  return best;
}

// After a pick only the last draw, pool[0..m), can have changed state (picked, or found in
// span(S) by its refresh): O(m) removal of those rows, not O(n).
void Engine::drop_gone(std::vector<int64_t>& pool, int64_t m) const {
  for (int64_t x = std::min<int64_t>(m, static_cast<int64_t>(pool.size())) - 1; x >= 0; --x) {
    if (rs_[pool[x]].state != kAlive) {
      pool[x] = pool.back();
      pool.pop_back();
    }
  }
}

void Engine::run_stochastic() {
  std::vector<int64_t> remaining;
  remaining.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) remaining.push_back(i);
  const double eps = opt_.stochastic_eps;
  double kk = static_cast<double>(std::max<int64_t>(1, opt_.k));
  if (cons_.has_cost()) {  // about budget / (mean cost) picks fit: the sample is sized for those
    double total = 0.0;
    for (int64_t i = 0; i < n_; ++i) total += cons_.cost(i);
    if (total > 0.0) kk = std::max(1.0, std::min(kk, std::floor(opt_.budget / (total / n_))));
  }
  const int64_t sample = std::max<int64_t>(
      1, static_cast<int64_t>(std::ceil((n_ / kk) * std::log(1.0 / eps))));
  SplitMix64 rng(opt_.seed);
  std::vector<int64_t> cand;
  while (t_ < opt_.k) {
    if (cons_.active())  // rows that no longer fit: gone for good, and never sampled
      remaining.erase(
          std::remove_if(remaining.begin(), remaining.end(), [&](int64_t i) { return !fits(i); }),
          remaining.end());
    const int64_t r = static_cast<int64_t>(remaining.size());
    const int64_t m = std::min(sample, r);
    Best best = sample_best(remaining, m, rng);
    bool full_scan = false;
    if (!(best.score > kNegInf) && m < r) {  // sample all dead: look at everything left
      cand.assign(remaining.begin(), remaining.end());
      sort_by_step(cand);
      best = refresh(cand.data(), r, lambda_on());
      full_scan = true;
    }
    if (check_stop_before_pick(best)) break;
    add_pick(best.idx);
    if (full_scan) {
      remaining.erase(std::remove_if(remaining.begin(), remaining.end(),
                                     [&](int64_t i) { return rs_[i].state != kAlive; }),
                      remaining.end());
    } else {
      drop_gone(remaining, m);
    }
    if (!tick()) return;
  }
}

}  // namespace detail
}  // namespace spice
