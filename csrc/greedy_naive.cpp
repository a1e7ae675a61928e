// Naive greedy: every alive candidate refreshed at every step. The baseline the lazy driver
// must match pick for pick, and the exact certificate (docs/algorithm.md §4, §7).
#include <algorithm>
#include <limits>

#include "engine.hpp"

namespace spice {
namespace detail {

void Engine::run_naive() {
  std::vector<int64_t> alive;
  alive.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) alive.push_back(i);
  while (t_ < opt_.k) {
    if (cons_.active())  // rows that no longer fit the budget or their quota: gone for good
      alive.erase(std::remove_if(alive.begin(), alive.end(), [&](int64_t i) { return !fits(i); }),
                  alive.end());
    const int64_t deaths = deaths_;
    const Best b = refresh(alive.data(), static_cast<int64_t>(alive.size()), lambda_on(),
                           std::numeric_limits<int64_t>::max(), RefreshMode::SameStepBestOnly);
    if (check_stop_before_pick(b)) break;
    add_pick(b.idx);
    if (deaths_ != deaths) {  // rows fell into span(S): sweep (a pass over every record)
      alive.erase(std::remove_if(alive.begin(), alive.end(),
                                 [&](int64_t i) { return rs_[i].state != kAlive; }),
                  alive.end());
    } else {  // only the pick left (alive is sorted)
      alive.erase(std::lower_bound(alive.begin(), alive.end(), b.idx));
    }
    if (!tick()) return;
  }
  // Tighten the certificate: exact Delta_x(S) for every remaining candidate.
  if (!alive.empty() && res_.stop != StopReason::Cancelled) {
    refresh(alive.data(), static_cast<int64_t>(alive.size()), false);
    res_.evaluations -= static_cast<int64_t>(alive.size());  // not a selection step
  }
}

}  // namespace detail
}  // namespace spice
