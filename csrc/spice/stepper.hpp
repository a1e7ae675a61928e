// One shard of a distributed exact greedy (docs/distributed.md): the lazy engine over a block
// of rows, run one pick at a time, with the picks decided outside. Every shard reports its best
// exact candidate; a coordinator takes the best over the shards (ties to the lowest global
// index) and every shard applies that pick, from the picked row itself, whichever shard holds
// it. All shards then hold the same w rows and conflict sum as one engine over all the rows,
// bit for bit, so the picks, gains and log det are those of spice::select with Method::Lazy.
// Pure C++17: no Python headers.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "spice/candidates.hpp"
#include "spice/core.hpp"

namespace spice {

class Stepper {
 public:
  // G: this shard's rows (the caller keeps them alive and unchanged). opt.k: the picks of the
  // whole run (room for that many w rows; it may exceed G.n). Only the plain log-det objective
  // (no cost budget or quotas); opt.method is ignored: the lazy driver runs. Throws
  // std::invalid_argument on bad options, as select does.
  Stepper(const MatrixView& G, const Options& opt);
  ~Stepper();
  Stepper(const Stepper&) = delete;
  Stepper& operator=(const Stepper&) = delete;

  // First row refused (see Result::bad_row), -1 if none; a shard with one must not step.
  int64_t bad_row() const;
  // Picks applied so far (the step t).
  int64_t picks() const;
  // The best candidate of this shard at this step: the lazy queue is refreshed until its top
  // exact score is known. Calling it again before apply_pick returns the same candidate.
  Candidate best();
  // Stochastic greedy's step on this shard: the best of m rows drawn uniformly (seeded) from
  // those not picked nor found in span(S) (all of them when m covers them). remaining() is how
  // many such rows there are before the draw, for the coordinator's split of the sample.
  Candidate best_of_sample(int64_t m, uint64_t seed);
  int64_t remaining();
  // Apply the step's pick: row holds its d elements (G's dtype), q is its residual at this
  // step (the Candidate's q), local its row here or -1 when another shard holds it. Every shard
  // computes the same w row from (row, q), as one engine would.
  void apply_pick(const void* row, double q, int64_t local);
  // The m largest log1p(alpha q_x) over the rows not picked, descending (fewer if the shard has
  // fewer): this shard's part of Minoux's certificate (stale q_x: valid upper bounds).
  std::vector<double> top_gains(int64_t m) const;
  // log1p(alpha ||g||^2) of a row of this shard.
  double base(int64_t local) const;
  int64_t evaluations() const;   // candidate refreshes so far
  int64_t dot_products() const;  // catch-up dot products so far

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

}  // namespace spice
