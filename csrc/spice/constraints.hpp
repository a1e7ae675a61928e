// Side constraints of a selection: a budget on the summed per-row cost (e.g. tokens) and caps on
// the picks per group (source quotas, a partition matroid). Every driver asks the same question,
// "may row i be picked now?", here, and ranks candidates by the same key (docs/algorithm.md §11).
// Both constraints only tighten as picks are added (the budget left shrinks, a group's room
// shrinks), so a row that does not fit now never fits again: drivers may drop it for good, and
// lazy greedy stays exact.
#pragma once

#include <cstdint>
#include <vector>

#include "spice/core.hpp"

namespace spice {

class Constraints {
 public:
  void reset(const Options& opt) {
    cost_ = opt.cost;
    budget_ = opt.budget;
    group_ = opt.group;
    quota_ = opt.quota;
    spent_ = 0.0;
    used_.assign(group_ ? static_cast<size_t>(opt.n_groups) : 0, 0);
  }
  // Any constraint at all (else no driver looks at this class on its hot path).
  bool active() const { return cost_ != nullptr || group_ != nullptr; }
  // Candidates are ranked by score per unit cost (else by score).
  bool has_cost() const { return cost_ != nullptr; }
  double cost(int64_t i) const { return cost_ ? cost_[i] : 1.0; }
  double spent() const { return spent_; }
  // May row i be picked now: its cost, added to what is spent (in float64, in pick order), stays
  // within the budget, and its group has room.
  bool fits(int64_t i) const {
    if (cost_ && !(spent_ + cost_[i] <= budget_)) return false;
    if (group_ && !(used_[group_[i]] < quota_[group_[i]])) return false;
    return true;
  }
  // Row i alone fits an empty selection.
  bool fits_alone(int64_t i) const {
    return (!cost_ || cost_[i] <= budget_) && (!group_ || quota_[group_[i]] >= 1);
  }
  void take(int64_t i) {
    if (cost_) spent_ += cost_[i];
    if (group_) ++used_[group_[i]];
  }
  // The cost-benefit key of a score s of row i: s / cost for s > 0, s * cost otherwise. It is
  // increasing in s for a fixed row, so an upper bound on the score gives an upper bound on the
  // key (lazy greedy stays exact), and among rows with a negative score (a penalty larger than
  // the gain) the cheaper one ranks higher, as it does among positive ones.
  double key(double s, int64_t i) const { return ratio(s, cost_[i]); }
  static double ratio(double s, double c) { return s > 0.0 ? s / c : s * c; }

 private:
  const double* cost_ = nullptr;
  double budget_ = 0.0;
  const int32_t* group_ = nullptr;
  const int64_t* quota_ = nullptr;
  double spent_ = 0.0;
  std::vector<int64_t> used_;
};

}  // namespace spice
