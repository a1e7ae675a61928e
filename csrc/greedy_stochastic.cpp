// Stochastic greedy: each step refreshes a seeded random sample of about (n / k) log(1 / eps)
// candidates and picks the best of it (docs/algorithm.md §8).
#include <algorithm>
#include <cmath>
#include <utility>

#include "engine.hpp"
#include "spice/rng.hpp"

namespace spice {
namespace detail {

void Engine::run_stochastic() {
  far_steps_ = kStaleSteps * d_;
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
  std::vector<int64_t> cand, stale;
  std::vector<double> qub;
  while (t_ < opt_.k) {
    if (cons_.active())  // rows that no longer fit: gone for good, and never sampled
      remaining.erase(
          std::remove_if(remaining.begin(), remaining.end(), [&](int64_t i) { return !fits(i); }),
          remaining.end());
    const int64_t r = static_cast<int64_t>(remaining.size());
    const int64_t m = std::min(sample, r);
    for (int64_t a = 0; a < m; ++a) {  // partial Fisher-Yates
      const int64_t b = a + static_cast<int64_t>(rng.below(static_cast<uint64_t>(r - a)));
      std::swap(remaining[a], remaining[b]);
    }
    cand.assign(remaining.begin(), remaining.begin() + m);
    // Far-behind candidates (k >> d) first get the cheap M^{-1} bound; only those that can still
    // win are caught up exactly, so the pick is that of plain stochastic greedy.
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
      bound_from_inverse(stale, qub);
      cand.clear();
      for (size_t x = 0; x < stale.size(); ++x) {
        const double key = rank(std::log1p(opt_.alpha * qub[x]), stale[x]);
        if (key > best.score || (key == best.score && stale[x] < best.idx))
          cand.push_back(stale[x]);
      }
      sort_by_step(cand);
      const Best b2 = refresh(cand.data(), static_cast<int64_t>(cand.size()), lambda_on());
      if (b2.better_than(best)) best = b2;
    }
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
    } else {  // only the sample can have changed state: O(m) removal, not O(n)
      for (int64_t x = m - 1; x >= 0; --x) {
        if (rs_[remaining[x]].state != kAlive) {
          remaining[x] = remaining.back();
          remaining.pop_back();
        }
      }
    }
    if (!tick()) return;
  }
}

}  // namespace detail
}  // namespace spice
