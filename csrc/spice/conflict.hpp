// The conflict statistic of the penalty: the running sum of the picked rows and its norm, from
// which a candidate's cosine to the mean of the picks follows with one dot product
// <g_i, sum> (docs/algorithm.md §1, §3).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "spice/numerics.hpp"

namespace spice {

class ConflictStat {
 public:
  void reset(int64_t d) {
    sum_.assign(d, 0.0);
    norm_ = 0.0;
    picks_ = 0;
  }
  // Sum of the picked rows (float64, length d).
  const double* sum() const { return sum_.data(); }
  // cos(g_i, mean of picks) from a = <g_i, sum> and norm2 = ||g_i||^2; 0 before any pick. The
  // means, not the sums, go into the guard kEta, as the method defines it.
  double align(double a, double norm2) const {
    if (picks_ == 0) return 0.0;
    const double t = static_cast<double>(picks_);
    return (a / t) / (std::sqrt(norm2) * (norm_ / t) + kEta);
  }
  // The penalty's factor max(0, -cos).
  static double conflict(double align) { return align < 0.0 ? -align : 0.0; }
  // Add a pick's row g (float64, length d).
  void add(const double* g) {
    const int64_t d = static_cast<int64_t>(sum_.size());
    double sn = 0.0;
    for (int64_t x = 0; x < d; ++x) {
      sum_[x] += g[x];
      sn += sum_[x] * sum_[x];
    }
    norm_ = std::sqrt(sn);
    ++picks_;
  }

 private:
  std::vector<double> sum_;
  double norm_ = 0.0;
  int64_t picks_ = 0;
};

}  // namespace spice
