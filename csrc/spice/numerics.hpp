// The numeric rules every log-det selection path shares: when a candidate counts as in span(S),
// which rows are refused, the cosine guard, and the one canonical catch-up of q_i. The Python
// side keeps the same numbers in python/spice/_numerics.py (GPU path, reference greedy).
// docs/algorithm.md §2 and §4 explain them.
#pragma once

#include <cstdint>
#include <limits>

namespace spice {

// A candidate is in span(S) (dead, gain 0) when both its residual and its gain are negligible:
// q_i <= kRelTiny ||g_i||^2 (q_i is then mostly the round-off of ||g||^2 - sum of squares) and
// alpha q_i <= kGainTiny (log1p(alpha q_i) below 1e-10). The residual test alone would kill a
// repeated row once alpha ||g||^2 >~ 1e10, where its gain is still about log 2.
constexpr double kRelTiny = 1e-10;
constexpr double kGainTiny = 1e-10;
inline bool in_span(double q, double norm2, double alpha) {
  return !(q > kRelTiny * norm2) && !(alpha * q > kGainTiny);  // second test: cold path only
}
// Largest alpha ||g||^2 the log-det greedy accepts. q_i = ||g||^2 - sum (g . w_s)^2 carries a
// round-off of a few eps ||g||^2, which moves a gain log1p(alpha q) by about alpha ||g||^2 eps:
// 1e-4 at this limit (a repeated row's gain, about log 2, is then good to 4 digits); beyond it
// the gains of rows near span(S) are noise, so such a row is refused, not mis-ranked.
constexpr double kMaxAlphaNorm2 = 1e12;
constexpr double kEta = 1e-8;  // cosine denominator guard (as in the paper)
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The canonical catch-up of q_i: minus the square of each product y[v] = <g_i, w_{s0 + v}>,
// v < n, in ascending s, skipping the steps before tq (products q_i already has), clamped at 0
// after each. Every refresh path goes through here, so their q_i are bit-identical.
inline double take_products(double q, const double* y, int64_t s0, int n, int64_t tq) {
  for (int v = 0; v < n; ++v) {
    if (s0 + v < tq) continue;
    q = q - y[v] * y[v];
    if (q < 0.0) q = 0.0;
  }
  return q;
}

}  // namespace spice
