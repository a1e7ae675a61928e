// The greedy engine's shared state (private to the core). One Engine runs one selection: the
// candidates' records, the factor state, the conflict statistic and the refresh that brings
// candidates up to date; the drivers (greedy_naive.cpp, greedy_lazy.cpp, greedy_stochastic.cpp,
// compat.cpp) decide whom to refresh and whom to pick. docs/algorithm.md explains the algebra.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "spice/candidates.hpp"
#include "spice/conflict.hpp"
#include "spice/constraints.hpp"
#include "spice/core.hpp"
#include "spice/inverse.hpp"
#include "spice/kernels.hpp"
#include "spice/numerics.hpp"
#include "spice/rng.hpp"
#include "spice/tile_plan.hpp"
#include "spice/tuning.hpp"

namespace spice {
namespace detail {

int resolve_threads(int t);
int auto_threads();  // the thread count threads = 0 resolves to now
// The checks of select's input, but k <= n (engine.cpp).
void validate(const MatrixView& G, const Options& opt);

// Lazy greedy's state between steps (greedy_lazy.cpp): the queue of stale bounds, the hot list
// and the scratch of a step.
struct LazyState {
  explicit LazyState(std::vector<LazyQueue::Entry> v) : heap(std::move(v)) {}
  LazyQueue heap;
  HotList hot;  // candidates refreshed at the previous step, in queue order
  int64_t B = 0, chunk = 0, far_min = 0;
  std::vector<int64_t> batch, refreshed, stale;
  std::vector<LazyQueue::Entry> fresh;
  std::vector<double> qub;
  std::vector<double> popped_keys;  // keys of this step's popped candidates (batch sizing)
};

// What refresh may assume of its candidates, and what it must leave in their records.
enum class RefreshMode {
  // Candidates at any steps (lazy batches, stochastic samples, the certificate's last pass):
  // each one that reaches t_ gets its Delta, conflict and score.
  ScoreEach,
  // The naive step: every candidate at the same step, and only the best is wanted, so one that
  // cannot beat the best so far is left unscored (score -inf; see refresh.cpp).
  SameStepBestOnly,
};

class Engine {
 public:
  // The engine keeps its own copies of the view and options (a view is a pointer and a shape; the
  // caller keeps the rows and Options' arrays alive). hook: the caller's, read during run() only;
  // null or empty: none.
  Engine(const MatrixView& G, const Options& opt, const ProgressHook* hook = nullptr,
         double hook_dt = 0.0);
  Result run();

  // Stepping (spice/stepper.hpp): the lazy driver one pick at a time, each pick applied from
  // outside (by the shard that holds the row or by another one). stepper.cpp.
  void begin_steps();
  Candidate step_best();
  void step_apply(const char* row, double q, int64_t local);
  Candidate step_sample(int64_t m, uint64_t seed);
  int64_t step_remaining();
  // The m largest gain bounds gain_upper(x) over the rows not picked, descending (Minoux's
  // terms, each with its round-off margin).
  std::vector<double> top_gains(int64_t m) const;
  // log1p(alpha q_i) plus the most round-off can have taken from it (§7): an upper bound of
  // row i's exact gain at the step its q_i was last computed.
  double gain_upper(int64_t i) const;
  int64_t rows() const { return n_; }
  int64_t bad_row() const { return res_.bad_row; }
  int64_t picks() const { return t_; }
  double base(int64_t i) const { return base_[i]; }
  int64_t evaluations() const { return res_.evaluations; }
  int64_t dot_products() const { return dots_; }

 private:
  MatrixView G_;
  Options opt_;
  const kern::Table& K_;      // the process's kernel table (static)
  const ProgressHook* hook_;  // null: no hook
  double hook_dt_;
  int64_t n_, d_;
  int nt_;
  std::vector<RowState> rs_;
  std::vector<double> base_;    // log1p(alpha ||g_i||^2): every candidate's first gain
  std::vector<double> scale_;   // unit rows: 1 / ||g_i|| (0 for zero rows), else empty
  const double* sc_ = nullptr;  // scale_.data() when unit rows, else null (the plain path)
  InverseFactor inv_;
  ConflictStat conf_;
  Constraints cons_;    // budget and quotas; inactive (never consulted) in plain runs
  int64_t t_ = 0;       // picks made
  int64_t dots_ = 0;    // catch-up dot products (row . w_s) performed
  int64_t deaths_ = 0;  // candidates refresh found in span(S) (state kDead)
  // Far behind once M^{-1} is kept: more than far_steps_ steps behind, and no M^{-1} bound yet
  // at this step (a second one at the same step would be the same number).
  int64_t far_steps_ = 0;
  Result res_;
  std::unique_ptr<LazyState> lz_;   // lazy greedy's queue and scratch (run_lazy, stepping)
  int64_t best_at_ = -1;            // stepping: the step whose best candidate is in best_
  bool stale_entries_ = false;      // stepping: a picked row may still be in the lazy queue
  std::vector<int64_t> remaining_;  // stepping, sampled: rows not known picked or dead
  int64_t sampled_ = -1;            // its first sampled_ rows were the last draw (-1: none yet)
  Candidate best_;
  std::chrono::steady_clock::time_point t0_, last_hook_, last_tune_;
  // threads = 0: the thread count follows the load during the run too, looked at every
  // kTuneEvery seconds (spice/tuning.hpp) at a pick (the picks do not depend on it).
  void retune_threads();

  // refresh's scratch: the tile plan, the candidates' steps in their order, and
  // refresh_shared's buffer offsets, work items, (chunk, tile) pairs and products
  TilePlan plan_;
  std::vector<int64_t> ctq_;
  std::vector<int64_t> yoff_, ibeg_;
  std::vector<std::pair<int64_t, int64_t>> pairs_;
  std::vector<double> ybuf_;
  std::vector<std::pair<int64_t, int64_t>> sort_tmp_;  // sort_by_step's scratch

  const char* row(int64_t i) const { return G_.row(i); }
  // Unit rows: the products y[r * nv + v] = <g_i, v-th vector> of a tile's rows cand[0..rc)
  // become products of g_i / ||g_i||. Called only when sc_ is set.
  void scale_products(double* y, const int64_t* cand, int rc, int nv) const {
    for (int r = 0; r < rc; ++r)
      for (int v = 0; v < nv; ++v) y[r * nv + v] *= sc_[cand[r]];
  }
  // The key a candidate is ranked by: its score, or with costs its cost-benefit key (§11).
  double rank(double score, int64_t i) const {
    return cons_.has_cost() ? cons_.key(score, i) : score;
  }
  // Constrained runs: may i be picked now (never again once false, see Constraints).
  bool fits(int64_t i) const { return cons_.fits(i); }
  bool lambda_on() const { return opt_.lambda > 0.0; }
  double conf(int64_t i) const { return ConflictStat::conflict(rs_[i].align); }
  void conflict_of(int64_t i, double a) { rs_[i].align = conf_.align(a, rs_[i].norm2); }
  bool far_behind(int64_t i) const {
    const int64_t behind = t_ - rs_[i].tq;
    return behind > far_steps_ && rs_[i].qb_at != static_cast<uint32_t>(t_ + 1);
  }
  void sort_by_step(std::vector<int64_t>& cand) {
    spice::sort_by_step(cand, rs_.data(), t_, sort_tmp_);
  }
  void bound_from_inverse(const std::vector<int64_t>& cand, std::vector<double>& qub) {
    dots_ += inv_.bound(cand, rs_.data(), qub, sc_);
    res_.evaluations += static_cast<int64_t>(cand.size());
  }

  // engine.cpp
  void init_norms();
  Best argmax(const int64_t* cand, int64_t m) const;
  Candidate candidate_of(const Best& b);
  bool check_stop_before_pick(const Best& b);
  void add_pick(int64_t j);
  void take_pick(const char* row_j, double q, double sj = 1.0);
  bool tick();
  void finish_bound();
  double picks_upper() const;
  void finish_bound_constrained();
  void safeguard_single();
  // refresh.cpp
  Best refresh(const int64_t* cand, int64_t m, bool need_conflict,
               int64_t max_rows = std::numeric_limits<int64_t>::max(),
               RefreshMode mode = RefreshMode::ScoreEach);
  bool refresh_shared(const int64_t* cand, bool conflict, int VB, Best& best);
  void finish_row(int64_t i, int64_t hi, bool conflict, double a, Best& local, int64_t& dead);
  // greedy_lazy.cpp: lazy greedy's steps (run_lazy and the stepping API share them)
  void lazy_begin();
  Best lazy_best();
  void lazy_requeue();
  void lazy_after_pick(int64_t j);
  // greedy_stochastic.cpp: stochastic greedy's step (run_stochastic and a shard's sampled step
  // share it) and the sweep of its pool after a pick
  Best sample_best(std::vector<int64_t>& pool, int64_t m, SplitMix64& rng);
  void drop_gone(std::vector<int64_t>& pool, int64_t m) const;
  std::vector<int64_t> scand_, sstale_;  // sample_best's scratch: the sample, its far-behind rows
  std::vector<double> squb_;             // and their M^{-1} bounds
  // the drivers
  void run_naive();
  void run_lazy();
  void run_stochastic();
  void run_diag_compat();
  void run_topk_compat();
};

}  // namespace detail
}  // namespace spice
