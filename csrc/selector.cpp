// Greedy maximisation of log det(I + alpha * sum_{s in S} g_s g_s^T) - lambda * Conflict,
// in the feature-space (Sherman-Morrison) form: no n x n kernel, one scalar q_i per candidate.
//
// Naive, lazy and stochastic greedy share one refresh routine (catch q_i up to the current step
// with the missing w_s rows, recompute the conflict dot), so their arithmetic is bit-identical
// and naive == lazy pick for pick, ties to the lowest index.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <utility>

#include "spice/core.hpp"
#include "spice/kernels.hpp"
#include "spice/rng.hpp"
#include "spice/row_store.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spice {
namespace {

// Stochastic greedy with M^{-1} kept: candidates more than kStaleSteps * d steps behind get the
// M^{-1} bound before any catch-up (lazy greedy sets its own threshold, see run_lazy).
constexpr int64_t kStaleSteps = 4;
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
constexpr double kEta = 1e-8;       // cosine denominator guard (as in the paper)
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
// Below this many row elements a parallel region costs more than it saves (and on a busy machine
// a descheduled thread stalls the whole region).
constexpr int64_t kParallelWork = int64_t(1) << 18;
// From this d lazy and stochastic refreshes share each W chunk between all tiles (see
// refresh_shared). Measured: run 5 (d = 8192) +3-5% picks a minute; at d = 1024 (run 2) 5%
// slower, at d = 512 (run 3) 1-4% slower: there W stays mostly in L3.
constexpr int64_t kSharedMinD = 4096;

enum : uint8_t { kAlive = 0, kPicked = 1, kDead = 2 };

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

int resolve_threads(int t) {
#ifdef _OPENMP
  return t > 0 ? t : omp_get_max_threads();
#else
  (void)t;
  return 1;
#endif
}

struct Best {
  double score = kNegInf;
  int64_t idx = std::numeric_limits<int64_t>::max();
  bool better_than(const Best& o) const {
    return score > o.score || (score == o.score && idx < o.idx);
  }
};

// Max-queue of (key, index): largest key first, the lowest index among equal keys (a strict
// order, so the pop sequence does not depend on the layout). Four children per node: a level
// of a pop reads one cache line, and the tree is half as deep as a binary heap's, which matters
// with 10^6 candidates.
class LazyQueue {
 public:
  struct Entry {
    double key;
    int64_t idx;
  };
  explicit LazyQueue(std::vector<Entry> v) : h_(std::move(v)) {
    const size_t n = h_.size();
    if (n > 1)
      for (size_t i = (n - 2) / 4 + 1; i-- > 0;) down(i);
  }
  bool empty() const { return h_.empty(); }
  const Entry& top() const { return h_.front(); }
  void push(Entry e) {
    h_.push_back(e);
    up(h_.size() - 1);
  }
  void pop() {
    h_.front() = h_.back();
    h_.pop_back();
    if (!h_.empty()) down(0);
  }
  // The queue's strict order: a comes out before b.
  static bool above(const Entry& a, const Entry& b) {
    return a.key > b.key || (a.key == b.key && a.idx < b.idx);
  }
  // The same order as a function object, for std::sort / std::merge (a function pointer there
  // is called, not inlined: sorting the refreshed candidates was 4% of run 3's samples).
  struct Above {
    bool operator()(const Entry& a, const Entry& b) const { return above(a, b); }
  };

 private:
  std::vector<Entry> h_;
  void up(size_t i) {
    const Entry e = h_[i];
    while (i > 0) {
      const size_t p = (i - 1) / 4;
      if (!above(e, h_[p])) break;
      h_[i] = h_[p];
      i = p;
    }
    h_[i] = e;
  }
  void down(size_t i) {
    const Entry e = h_[i];
    const size_t n = h_.size();
    for (;;) {
      const size_t c = 4 * i + 1;
      if (c >= n) break;
      size_t b = c;
      const size_t end = std::min(c + 4, n);
      for (size_t k = c + 1; k < end; ++k)
        if (above(h_[k], h_[b])) b = k;
      if (!above(h_[b], e)) break;
      h_[i] = h_[b];
      i = b;
    }
    h_[i] = e;
  }
};

class Engine {
 public:
  Engine(const MatrixView& G, const Options& opt, const ProgressHook& hook, double hook_dt)
      : G_(G), opt_(opt), K_(kern::table()), hook_(hook), hook_dt_(hook_dt),
        n_(G.n), d_(G.d), nt_(resolve_threads(opt.threads)) {}

  Result run();

 private:
  // --- shared state ---
  const MatrixView& G_;
  const Options& opt_;
  const kern::Table& K_;
  const ProgressHook& hook_;
  double hook_dt_;
  int64_t n_, d_;
  int nt_;
  // Per-candidate state that every evaluation reads and writes, one cache line per candidate
  // (with 10^6 candidates, separate arrays cost one cache miss per field).
  struct alignas(64) RowState {
    double q = 0.0;      // q_i = g_i^T M^{-1} g_i at step tq
    double delta = 0.0;  // log1p(alpha q_i): the exact gain at tq, an upper bound later
    double score = kNegInf;
    double align = 0.0;  // cos(g_i, sum of picks) at the last full refresh
    double norm2 = 0.0;  // ||g_i||^2
    double qb = std::numeric_limits<double>::infinity();  // lazy, k > d: M^{-1} bound on q_i
    int64_t tq = 0;      // step at which q is current
    uint8_t state = 0;
    uint32_t qb_at = 0;  // 1 + the step of its last M^{-1} bound (low 32 bits)
  };
  static_assert(sizeof(RowState) == 64, "one cache line per candidate");
  std::vector<RowState> rs_;
  std::vector<double> base_;
  // conflict factor max(0, -cos(g_i, sum of picks))
  double conf(int64_t i) const { return rs_[i].align < 0.0 ? -rs_[i].align : 0.0; }
  RowStore W_;                  // t rows of length d: M_t^{-1} = I - sum_s w_s w_s^T
  std::vector<double> ssum_;    // sum of picked rows
  std::vector<double> minv_;    // d x d: M_t^{-1}, kept once t >= d (the k > d path)
  std::vector<double> ubuf_;    // scratch of bound_from_inverse (per-block shares)
  std::vector<double> zbuf_;    // scratch of add_pick's M^{-1} g
  std::vector<int64_t> tstart_, tile_work_, gstart_;  // refresh's tiles, their costs, groups
  std::vector<int64_t> ctq_;      // refresh: the candidates' steps tq_i, in their order
  std::vector<int64_t> dp_cost_;  // refresh's tile cut: least cost of the first e candidates
  std::vector<int> dp_rows_;      // ... and the rows of its last tile
  std::vector<std::pair<int64_t, int64_t>> sort_tmp_;  // sort_by_step's (tq, index) pairs
  void sort_by_step(std::vector<int64_t>& cand);
  // Far behind once M^{-1} is kept: more than far_steps_ steps behind, and no M^{-1} bound yet
  // at this step (a second one at the same step would be the same number).
  bool far_behind(int64_t i) const {
    const int64_t behind = t_ - rs_[i].tq;
    return behind > far_steps_ && rs_[i].qb_at != static_cast<uint32_t>(t_ + 1);
  }
  int64_t far_steps_ = 0;       // set by the run: see far_behind
  int64_t minv_t_ = 0;          // minv_ = I - sum_{s < minv_t_} w_s w_s^T
  static constexpr int64_t kMinvLag = 32;
  // Who reads which part of minv_: u = M^{-1} g (add_pick) reads row a from the start of its
  // block of kUBlock rows; the M^{-1} bound reads whole rows below d = kTriMinD and, from it,
  // row a from the start of its block of kBoundBlock rows. The folds write what is read: from
  // d = kTriMinD, row a from the start of its block of kFoldAlign rows (a multiple of both).
  static constexpr int64_t kUBlock = 48, kBoundBlock = 32, kTriMinD = 512, kFoldAlign = 96;
  static_assert(kFoldAlign % kUBlock == 0 && kFoldAlign % kBoundBlock == 0, "fold alignment");
  bool upper_only() const { return d_ >= kTriMinD; }  // M^{-1} read (and folded) as a triangle
  void flush_minv();
  double snorm_ = 0.0;
  int64_t t_ = 0;
  int64_t dots_ = 0;  // catch-up dot products (row . w_s) performed
  int64_t deaths_ = 0;  // candidates refresh found in span(S) (state kDead)
  Result res_;
  std::chrono::steady_clock::time_point t0_, last_hook_;

  const char* row(int64_t i) const { return G_.row(i); }
  bool lambda_on() const { return opt_.lambda > 0.0; }

  // Where a refresh takes a candidate at step tq: the current step, or (more than max_rows
  // behind) the last multiple of max_rows up to tq + max_rows, so that candidates left behind
  // share their step and fill whole tiles the next time.
  int64_t catchup_end(int64_t tq, int64_t max_rows) const {
    return t_ - tq > max_rows ? (tq + max_rows) / max_rows * max_rows : t_;
  }
  void init_norms();
  Best refresh(const int64_t* cand, int64_t m, bool need_conflict,
               int64_t max_rows = std::numeric_limits<int64_t>::max(), bool all_delta = true);
  bool refresh_shared(const int64_t* cand, int64_t ntiles, bool conflict, int VB, Best& best);
  void finish_row(int64_t i, int64_t hi, bool conflict, double a, Best& local, int64_t& dead);
  std::vector<int64_t> tlo_, thi_;  // refresh: each tile's span of steps (see there)
  std::vector<int64_t> yoff_, ibeg_;  // refresh_shared's buffer offsets and work items
  std::vector<std::pair<int64_t, int64_t>> pairs_;          // (chunk, tile) of refresh_shared
  std::vector<double> ybuf_;                                // its products, tile by tile
  void conflict_of(int64_t i, double a);
  Best argmax(const int64_t* cand, int64_t m) const;
  void bound_from_inverse(const std::vector<int64_t>& cand, std::vector<double>& qub);
  bool check_stop_before_pick(const Best& b);
  void add_pick(int64_t j);
  bool tick();
  void finish_bound();

  void run_naive();
  void run_lazy();
  void run_stochastic();
  void run_diag_compat();
  void run_topk_compat();
};

// Order candidates by step tq (refresh tiles group equal steps): (tq, index) ascending, without
// chasing tq through memory in every comparison. Candidates refreshed at the previous pick
// (tq = t - 1: most of a lazy batch) go to the end unsorted; only the rest is sorted.
void Engine::sort_by_step(std::vector<int64_t>& cand) {
  sort_tmp_.clear();
  size_t keep = 0;
  for (size_t k = 0; k < cand.size(); ++k) {
    const int64_t tq = rs_[cand[k]].tq;
    if (tq == t_ - 1) cand[keep++] = cand[k];
    else sort_tmp_.push_back({tq, cand[k]});
  }
  std::sort(sort_tmp_.begin(), sort_tmp_.end());
  std::move_backward(cand.begin(), cand.begin() + keep, cand.end());
  for (size_t k = 0; k < sort_tmp_.size(); ++k) cand[k] = sort_tmp_[k].second;
}

void Engine::init_norms() {
  std::vector<double> norm2(n_, 0.0);
  row_norms2(G_, norm2.data(), nt_);
  base_.resize(n_);
  rs_.assign(n_, RowState{});
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
  ssum_.assign(d_, 0.0);
}

void Engine::conflict_of(int64_t i, double a) {
  if (t_ == 0) {
    rs_[i].align = 0.0;
    return;
  }
  const double t = static_cast<double>(t_);
  const double al = (a / t) / (std::sqrt(rs_[i].norm2) * (snorm_ / t) + kEta);
  rs_[i].align = al;
}

// Bring q_i from step tq_i towards t_ (at most max_rows w rows per candidate) for each candidate.
// Candidates that reach t_ get Delta_i, conflict and score; the others get Delta_i from their
// partly updated q_i, which is still an upper bound on every later Delta_i (q only decreases).
// Returns the best (score desc, index asc) among candidates that reached t_.
//
// With all_delta = false (naive greedy) a candidate whose bound log1p(alpha q_i) is clearly below
// the best score seen so far is not scored at all: its Delta is not needed to pick. The margin
// keeps this exact (such a candidate cannot win or tie), so the picks stay those of lazy greedy.
// The naive step also passes every alive candidate, all at one step, which spares serial passes
// over their records (only load balance would suffer otherwise: tiles read each row's own step).
Best Engine::refresh(const int64_t* cand, int64_t m, bool need_conflict, int64_t max_rows,
                     bool all_delta) {
  constexpr int RM = kern::kMaxTileRows;
  const int R = K_.tile_rows;  // rows per tile (the kernels' register tile)
  constexpr int VBMAX = 32;    // w rows per kernel call, at most
  constexpr int GTMAX = 16;  // tiles per group: a chunk of W stays in L2 across a group
  const int64_t d = d_;
  const int VB = static_cast<int>(std::max<int64_t>(4, std::min<int64_t>(VBMAX, 262144 / (8 * d))));
  // Tiles of up to R consecutive candidates. The kernel computes a tile's whole span (its
  // lowest tq_i to its highest end) for every row in it, so rows that start later waste work on
  // w rows they already have, while thin tiles waste the kernel: per product, 1-3 rows cost
  // 2-3x what 4-6 rows do (each w element loaded serves fewer rows). The cut minimises
  // sum over tiles of kRowCost[rows] * rows * span by dynamic programming (O(R m)).
  // The naive step (all_delta = false) refreshes every alive candidate at every step, so they
  // all share one step tq0, and the serial passes over the candidates' records below are
  // skipped (at n = 1e5 each reads 6.4 MB on one core while the other waits). Otherwise their
  // steps are read once, into ctq_.
  const int64_t tq0 = m > 0 ? rs_[cand[0]].tq : 0;
  bool same = true;
  if (all_delta) {
    ctq_.resize(m);
    for (int64_t c = 0; c < m; ++c) {
      ctq_[c] = rs_[cand[c]].tq;
      same = same && ctq_[c] == tq0;
    }
  }
  tstart_.clear();
  if (same) {  // every R rows
    for (int64_t c = 0; c < m; c += R) tstart_.push_back(c);
  } else {
    // kRowCost[r]: time per row product of an r-row tile, relative (catch-up micro-benchmark,
    // AVX-512 6 x 4 tiles, d = 512, 141 w rows: 1.9, 2.5, 2.8, 5.3, 5.9, 5.5 FMA vectors a ns;
    // the AVX2 and portable tables, with 4-row tiles, use the same shape).
    static constexpr int64_t kRowCost[kern::kMaxTileRows + 1] = {0, 30, 22, 20, 11, 10, 10, 10, 10};
    dp_cost_.assign(m + 1, 0);
    dp_rows_.assign(m + 1, 0);
    for (int64_t e = 1; e <= m; ++e) {
      int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0, bestc = -1;
      int bestr = 1;
      for (int r = 1; r <= R && r <= e; ++r) {
        const int64_t tq = ctq_[e - r];
        lo = std::min(lo, tq);
        hi = std::max(hi, catchup_end(tq, max_rows));
        const int64_t c = dp_cost_[e - r] + kRowCost[r] * r * std::max<int64_t>(1, hi - lo);
        if (bestc < 0 || c <= bestc) {
          bestc = c;
          bestr = r;
        }
      }
      dp_cost_[e] = bestc;
      dp_rows_[e] = bestr;
    }
    for (int64_t e = m; e > 0; e -= dp_rows_[e]) tstart_.push_back(e - dp_rows_[e]);
    std::reverse(tstart_.begin(), tstart_.end());
  }
  tstart_.push_back(m);
  const int64_t ntiles = static_cast<int64_t>(tstart_.size()) - 1;
  // Groups of up to GTMAX consecutive tiles with about equal work (catch-up rows of the tile's
  // widest row, times its rows), about four per thread, so that the dynamic schedule balances
  // even when the first (stalest) tiles cost far more than the rest.
  // Each tile's span [tlo_, thi_): its rows are caught up from their own tq_i to thi_. Partial
  // catch-ups end on multiples of max_rows, so that candidates left behind share their step
  // tq_i and fill whole tiles the next time; the kernel computes the tile's whole span for every
  // row, so every row goes on to the tile's end.
  int64_t work = 0;  // row elements touched: (catch-up rows + 1) * d per tile row
  tile_work_.resize(ntiles);
  tlo_.resize(ntiles);
  thi_.resize(ntiles);
  for (int64_t x = 0; x < ntiles; ++x) {
    const int64_t b = tstart_[x], e = tstart_[x + 1];
    int64_t w = 0;  // the tile's widest catch-up, plus one
    if (same) {
      w = std::min<int64_t>(t_ - tq0, max_rows) + 1;
      tlo_[x] = tq0;
      thi_[x] = catchup_end(tq0, max_rows);
    } else {
      int64_t lo = t_, hi = 0;
      for (int64_t c = b; c < e; ++c) {
        w = std::max(w, std::min<int64_t>(t_ - ctq_[c], max_rows) + 1);
        lo = std::min(lo, ctq_[c]);
        hi = std::max(hi, catchup_end(ctq_[c], max_rows));
      }
      tlo_[x] = lo;
      thi_[x] = hi;
    }
    tile_work_[x] = w * (e - b);
    work += tile_work_[x];
  }
  const bool conflict = need_conflict && t_ > 0;
  Best best;
  if (all_delta && d >= kSharedMinD && work * d > kParallelWork &&
      refresh_shared(cand, ntiles, conflict, VB, best)) {
    res_.evaluations += m;
    return best;
  }
  const int64_t target = std::max<int64_t>(1, work / (4 * nt_));
  gstart_.clear();
  for (int64_t x = 0; x < ntiles;) {
    gstart_.push_back(x);
    int64_t w = 0;
    const int64_t x0 = x;
    while (x < ntiles && x - x0 < GTMAX && (x == x0 || w + tile_work_[x] <= target)) w += tile_work_[x++];
  }
  const int64_t ngroups = static_cast<int64_t>(gstart_.size());
  gstart_.push_back(ntiles);
  work *= d;
  const double alpha = opt_.alpha;
  const double* sv = ssum_.data();
  int64_t dots_total = 0;
  // Naive greedy (all_delta = false): every tile costs the same, so each thread takes one
  // contiguous run of groups, i.e. one memory stream per core as a GEMV has (measured 5-8% a
  // step at n = 1e5, d = 1024, 2 threads); lazy tiles differ in cost: dynamic schedule.
  const bool contiguous = !all_delta;
#pragma omp parallel num_threads(nt_) if (ngroups > 1 && work > kParallelWork)
  {
    Best local;
    double thr = kNegInf;  // alpha * q below this cannot beat `local`
    int64_t my_dots = 0, my_dead = 0;
    const char* rows[GTMAX][RM];
    int64_t lo[GTMAX], hi[GTMAX];  // a tile's rows are caught up from their own tq_i to hi
    int rcount[GTMAX];
    double buf[RM * VBMAX];
    const double* vecs[VBMAX];
    auto do_group = [&](int64_t grp) {
      const int64_t t0 = gstart_[grp];
      const int nt = static_cast<int>(gstart_[grp + 1] - t0);
      int64_t glo = t_, ghi = 0;
      for (int x = 0; x < nt; ++x) {
        const int64_t b = tstart_[t0 + x];
        rcount[x] = static_cast<int>(tstart_[t0 + x + 1] - b);
        lo[x] = tlo_[t0 + x];
        hi[x] = thi_[t0 + x];
        for (int r = 0; r < rcount[x]; ++r) {
          rows[x][r] = row(cand[b + r]);
          my_dots += hi[x] - rs_[cand[b + r]].tq;
        }
        glo = std::min(glo, lo[x]);
        ghi = std::max(ghi, hi[x]);
      }
      // Catch-up: W rows in ascending order, each chunk applied to every tile of the group.
      bool fused_group = conflict;
      for (int x = 0; x < nt && fused_group; ++x)
        fused_group = lo[x] == t_ - 1 && hi[x] == t_;
      double a[GTMAX][RM] = {};
      if (fused_group) {  // the naive step: <g, w_{t-1}> and <g, s> in one pass over the rows
        vecs[0] = W_.data() + (t_ - 1) * d;
        vecs[1] = sv;
        for (int x = 0; x < nt; ++x) {
          K_.dots_pf(G_.dtype, rows[x], rcount[x], vecs, 2, d, buf, x + 1 < nt ? rows[x + 1] : nullptr,
                     x + 1 < nt ? rcount[x + 1] : 0, false);
          for (int r = 0; r < rcount[x]; ++r) {
            const int64_t i = cand[tstart_[t0 + x] + r];
            const double v = buf[r * 2];
            const double q = rs_[i].q - v * v;
            rs_[i].q = q < 0.0 ? 0.0 : q;
            a[x][r] = buf[r * 2 + 1];
          }
        }
      } else {
        for (int64_t s0 = glo; s0 < ghi; s0 += VB) {
          const int V = static_cast<int>(std::min<int64_t>(VB, ghi - s0));
          for (int v = 0; v < V; ++v) vecs[v] = W_.data() + (s0 + v) * d;
          bool cold = true;  // the first tile to use this chunk reads it from L3
          for (int x = 0; x < nt; ++x) {
            if (hi[x] <= s0 || lo[x] >= s0 + V) continue;
            int xn = x + 1;  // the next tile this chunk touches: its rows are prefetched
            while (xn < nt && (hi[xn] <= s0 || lo[xn] >= s0 + V)) ++xn;
            // Only the part of the chunk this tile needs.
            const int v0 = static_cast<int>(std::max<int64_t>(lo[x], s0) - s0);
            const int v1 = static_cast<int>(std::min<int64_t>(hi[x], s0 + V) - s0);
            const int nv = v1 - v0;
            // Prefetch the next tile's rows only before their first use: rows already used
            // in an earlier chunk are in L2, and pulling them into L1 early evicts this tile's
            // (measured: 4.1 vs 5.0 FMA vectors a ns for L2-resident 6 x 32 tiles).
            const bool pf = xn < nt && lo[xn] >= s0;
            K_.dots_pf(G_.dtype, rows[x], rcount[x], vecs + v0, nv, d, buf,
                       pf ? rows[xn] : nullptr, pf ? rcount[xn] : 0, cold);
            cold = false;
            for (int r = 0; r < rcount[x]; ++r) {
              const int64_t i = cand[tstart_[t0 + x] + r];
              rs_[i].q = take_products(rs_[i].q, buf + r * nv, s0 + v0, nv, rs_[i].tq);
            }
          }
        }
        if (conflict) {
          for (int x = 0; x < nt; ++x)
            if (hi[x] == t_) K_.dots(G_.dtype, rows[x], rcount[x], &sv, 1, d, a[x]);
        }
      }
      for (int x = 0; x < nt; ++x) {
        for (int r = 0; r < rcount[x]; ++r) {
          const int64_t i = cand[tstart_[t0 + x] + r];
          const double q = rs_[i].q;
          if (!all_delta && hi[x] == t_ && alpha * q < thr && !in_span(q, rs_[i].norm2, alpha)) {
            rs_[i].tq = hi[x];
            rs_[i].score = kNegInf;  // cannot win; Delta not needed
            continue;
          }
          const int64_t before = local.idx;
          finish_row(i, hi[x], conflict, a[x][r], local, my_dead);
          // log1p(alpha q) < best needs alpha q < expm1(best); keep a relative margin for the
          // rounding of expm1 and log1p.
          if (!all_delta && local.idx != before && local.score > 0.0)
            thr = std::expm1(local.score) * (1.0 - 1e-9) - 1e-300;
        }
      }
    };
    if (contiguous) {
#ifdef _OPENMP
      const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
      const int64_t tid = 0, nth = 1;
#endif
      for (int64_t grp = ngroups * tid / nth; grp < ngroups * (tid + 1) / nth; ++grp) do_group(grp);
    } else {
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t grp = 0; grp < ngroups; ++grp) do_group(grp);
    }
#pragma omp critical
    {
      if (local.better_than(best)) best = local;
      dots_total += my_dots;
      deaths_ += my_dead;
    }
  }
  dots_ += dots_total;
  res_.evaluations += m;
  return best;
}

// A candidate caught up to hi: its q is final for this refresh. Marks it dead (q in span(S)),
// or sets Delta (an upper bound when hi < t_) and, at t_, its conflict and score.
void Engine::finish_row(int64_t i, int64_t hi, bool conflict, double a, Best& local,
                        int64_t& dead) {
  RowState& st = rs_[i];
  st.tq = hi;
  const double q = st.q;
  if (in_span(q, st.norm2, opt_.alpha)) {
    ++dead;
    st.state = kDead;
    st.delta = 0.0;
    st.score = kNegInf;
    return;
  }
  const double dl = std::log1p(opt_.alpha * q);
  st.delta = dl;
  if (!(dl > 0.0)) {
    ++dead;
    st.state = kDead;
    st.score = kNegInf;
    return;
  }
  if (hi < t_) {  // partial: Delta is an upper bound, no score yet
    st.score = kNegInf;
    return;
  }
  if (conflict) conflict_of(i, a);
  else st.align = 0.0;
  st.score = dl - opt_.lambda * conf(i);
  const Best c{st.score, i};
  if (c.better_than(local)) local = c;
}

// refresh's catch-up with the tiles' W chunks shared: each chunk of VB w rows is read once per
// refresh (by one thread) and applied to every tile that needs it, instead of once per group of
// tiles; the products go to a buffer, then each candidate's q takes them in ascending s, exactly
// as the group loop does (same dot products, same order: bit-identical results). Measured at
// d = 8192 (run 5): the first tile to read a chunk from memory is bound by W's bandwidth, and
// groups let each chunk read feed about 2 tiles. Returns false (nothing done) when the buffer
// would be too large or every tile needs only the last w row (the group loop fuses that with
// the conflict dot).
bool Engine::refresh_shared(const int64_t* cand, int64_t ntiles, bool conflict, int VB,
                            Best& best) {
  const int64_t d = d_;
  yoff_.resize(ntiles + 1);
  bool all_last = true;
  int64_t y = 0, npairs = 0;
  for (int64_t x = 0; x < ntiles; ++x) {
    const int64_t lo = tlo_[x], hi = thi_[x];
    yoff_[x] = y;
    y += (tstart_[x + 1] - tstart_[x]) * std::max<int64_t>(0, hi - lo);
    if (hi > lo) npairs += (hi - 1) / VB - lo / VB + 1;
    all_last = all_last && lo == t_ - 1 && hi == t_;
  }
  yoff_[ntiles] = y;
  constexpr int64_t kMaxBuf = int64_t(1) << 23;  // doubles (64 MB)
  if ((all_last && conflict) || y > kMaxBuf) return false;
  if (ybuf_.size() < static_cast<size_t>(y)) ybuf_.resize(y);
  // (chunk, tile) pairs in chunk order, tiles ascending within a chunk.
  pairs_.clear();
  pairs_.reserve(npairs);
  for (int64_t x = 0; x < ntiles; ++x)
    if (thi_[x] > tlo_[x])
      for (int64_t c = tlo_[x] / VB; c <= (thi_[x] - 1) / VB; ++c) pairs_.push_back({c, x});
  std::sort(pairs_.begin(), pairs_.end());
  // Work items: a chunk's pairs, split when there are too few chunks to share between threads.
  int64_t nchunks = 0;
  for (size_t k = 0; k < pairs_.size(); ++k) nchunks += k == 0 || pairs_[k].first != pairs_[k - 1].first;
  const int64_t want = 8 * static_cast<int64_t>(nt_);
  const int64_t per = nchunks >= want ? std::numeric_limits<int64_t>::max()
                                      : std::max<int64_t>(1, static_cast<int64_t>(pairs_.size()) / want);
  ibeg_.clear();
  for (size_t k = 0; k < pairs_.size(); ++k)
    if (k == 0 || pairs_[k].first != pairs_[k - 1].first ||
        static_cast<int64_t>(k) - ibeg_.back() >= per)
      ibeg_.push_back(static_cast<int64_t>(k));
  const int64_t nitems = static_cast<int64_t>(ibeg_.size());
  ibeg_.push_back(static_cast<int64_t>(pairs_.size()));
  const double* sv = ssum_.data();
  double* yb = ybuf_.data();
  int64_t dots_total = 0;
#pragma omp parallel num_threads(nt_)
  {
    constexpr int RM = kern::kMaxTileRows;
    const char* rows[RM];
    const char* nrows[RM];
    const double* vecs[32];
    Best local;
    int64_t my_dots = 0, my_dead = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < nitems; ++it) {
      const int64_t c = pairs_[ibeg_[it]].first, s0 = c * VB;
      for (int v = 0; v < VB && s0 + v < t_; ++v) vecs[v] = W_.data() + (s0 + v) * d;
      for (int64_t k = ibeg_[it]; k < ibeg_[it + 1]; ++k) {
        const int64_t x = pairs_[k].second, b = tstart_[x];
        const int rc = static_cast<int>(tstart_[x + 1] - b);
        for (int r = 0; r < rc; ++r) rows[r] = row(cand[b + r]);
        const int v0 = static_cast<int>(std::max(tlo_[x], s0) - s0);
        const int v1 = static_cast<int>(std::min<int64_t>(thi_[x], s0 + VB) - s0);
        // The next tile's rows are prefetched before their first use only (see refresh).
        int nrc = 0;
        if (k + 1 < ibeg_[it + 1] && tlo_[pairs_[k + 1].second] >= s0) {
          const int64_t xn = pairs_[k + 1].second, bn = tstart_[xn];
          nrc = static_cast<int>(tstart_[xn + 1] - bn);
          for (int r = 0; r < nrc; ++r) nrows[r] = row(cand[bn + r]);
        }
        K_.dots_pf(G_.dtype, rows, rc, vecs + v0, v1 - v0, d,
                   yb + yoff_[x] + rc * (s0 + v0 - tlo_[x]), nrc ? nrows : nullptr, nrc,
                   k == ibeg_[it]);
      }
    }
    // Each candidate's q takes its products in ascending s (blocks of the buffer, chunk by
    // chunk), then its Delta, conflict and score.
#pragma omp for schedule(dynamic, 4)
    for (int64_t x = 0; x < ntiles; ++x) {
      const int64_t b = tstart_[x], lo = tlo_[x], hi = thi_[x];
      const int rc = static_cast<int>(tstart_[x + 1] - b);
      double a[RM] = {};
      if (conflict && hi == t_) {
        for (int r = 0; r < rc; ++r) rows[r] = row(cand[b + r]);
        K_.dots(G_.dtype, rows, rc, &sv, 1, d, a);
      }
      for (int r = 0; r < rc; ++r) {
        const int64_t i = cand[b + r], tq = ctq_[b + r];
        double q = rs_[i].q;
        for (int64_t sb = lo; sb < hi;) {  // the tile's blocks, one per chunk
          const int64_t se = std::min(hi, (sb / VB + 1) * VB);
          const int nv = static_cast<int>(se - sb);
          q = take_products(q, yb + yoff_[x] + rc * (sb - lo) + r * nv, sb, nv, tq);
          sb = se;
        }
        rs_[i].q = q;
        my_dots += hi - tq;
        finish_row(i, hi, conflict, a[r], local, my_dead);
      }
    }
#pragma omp critical
    {
      if (local.better_than(best)) best = local;
      dots_total += my_dots;
      deaths_ += my_dead;
    }
  }
  dots_ += dots_total;
  return true;
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
    return true;
  }
  if (opt_.omega > 0.0 && t_ >= 1 && rs_[b.idx].delta <= opt_.omega * res_.gains[0]) {
    res_.stop = StopReason::EarlyStop;
    return true;
  }
  return false;
}

// Record pick j (its delta/align/score are current) and extend M^{-1}. With lambda = 0
// the conflict was not needed to rank candidates; it is still reported for the pick.
void Engine::add_pick(int64_t j) {
  if (!lambda_on() && t_ > 0 && opt_.objective == Objective::LogDet) {
    double a;
    const char* rj = row(j);
    const double* sv = ssum_.data();
    K_.dots(G_.dtype, &rj, 1, &sv, 1, d_, &a);
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

  const int64_t d = d_, t = t_;
  std::vector<double> g(d);
  kern::widen_row(G_.dtype, row(j), d, g.data());
  if (opt_.objective == Objective::LogDet) {
    const double scale = std::sqrt(opt_.alpha / (1.0 + opt_.alpha * rs_[j].q));
    W_.grow(static_cast<size_t>(t + 1) * d);
    double* w = W_.data() + t * d;
    if (t >= d) {
      // t >= d: u = M^{-1} g from an explicit d x d inverse, O(d^2) a step instead of O(t d).
      // minv_ holds I - sum_{s < minv_t_} w_s w_s^T; the newer w rows (fewer than kMinvLag) are
      // applied on the fly and folded in together, so minv_ is rewritten once per kMinvLag picks.
      if (minv_.empty()) {
        minv_.reserve(static_cast<size_t>(d) * d);
        advise_huge(minv_.data(), minv_.capacity() * sizeof(double));
        minv_.assign(static_cast<size_t>(d) * d, 0.0);
        for (int64_t a2 = 0; a2 < d; ++a2) minv_[a2 * d + a2] = 1.0;
        minv_t_ = 0;
      }
      if (t - minv_t_ >= kMinvLag) flush_minv();
      const int64_t np = t - minv_t_;  // pending rows
      double c[kMinvLag];
      {
        const char* rj = row(j);
        const double* vecs[kMinvLag];
        for (int64_t v = 0; v < np; ++v) vecs[v] = W_.data() + (minv_t_ + v) * d;
        if (np > 0) K_.dots(G_.dtype, &rj, 1, vecs, static_cast<int>(np), d, c);
      }
      const kern::Table& K = K_;
      const double* gv = g.data();
      // u = M^{-1} g reads only the upper triangle of M^{-1} (symmetric), which streams from
      // memory every step (8 MB at d = 1024, 512 MB at d = 8192). Rows in blocks of RBK: a block
      // [a0, a1) gives y_a = sum_{b >= a0} M_ab g_b for its rows and, from the same rows while
      // they are in cache, z_blk[b] = sum_{a in blk} g_a M_ab for b >= a1: the products that
      // rows b below the block need (M_ba = M_ab). u_a = y_a + the z of the blocks above a's,
      // added in block order, so u does not depend on the thread count.
      constexpr int64_t RBK = kUBlock, RT = 6;
      const int64_t nblk = (d + RBK - 1) / RBK;
      if (zbuf_.size() < static_cast<size_t>(nblk * d)) zbuf_.resize(nblk * d);
      double* zb = zbuf_.data();
      const double* M = minv_.data();
#pragma omp parallel num_threads(nt_)
      {  // one team for both passes (a barrier between them, not a second fork and join)
#pragma omp for schedule(dynamic, 1)
        for (int64_t bk = 0; bk < nblk; ++bk) {
          const int64_t a0 = bk * RBK, a1 = std::min(d, a0 + RBK);
          double* z = zb + bk * d;
          for (int64_t b = a1; b < d; ++b) z[b] = 0.0;
          const double* gp = gv + a0;
          for (int64_t r0 = a0; r0 < a1; r0 += RT) {
            const int R = static_cast<int>(std::min(a1, r0 + RT) - r0);
            const char* ra[RT];
            const double* rz[RT];
            for (int r = 0; r < R; ++r) {
              ra[r] = reinterpret_cast<const char*>(M + (r0 + r) * d + a0);
              rz[r] = M + (r0 + r) * d + a1;
            }
            K.dots(DType::F64, ra, R, &gp, 1, d - a0, w + r0);  // y, kept in w for now
            if (a1 < d) K.axpy_rows(rz, gv + r0, R, d - a1, z + a1);
          }
        }
        // u_a = y_a + z of the blocks above a's (block order), then minus c_v w_v[a] for the
        // pending rows (ascending v, one FMA each), times the scale: by column blocks, so that
        // the z and w rows are read as contiguous pieces, not with a stride of d.
        constexpr int64_t CBU = RBK;  // columns per work item: one z block boundary per item
#pragma omp for schedule(static)
        for (int64_t j0 = 0; j0 < d; j0 += CBU) {
          const int64_t j1 = std::min(d, j0 + CBU);
          for (int64_t bk = 0; bk < j0 / RBK; ++bk) {
            const double* zr = zb + bk * d;
            for (int64_t a2 = j0; a2 < j1; ++a2) w[a2] += zr[a2];
          }
          if (np > 0) {
            const double* ws[kMinvLag];
            double nc[kMinvLag];
            for (int64_t v = 0; v < np; ++v) {
              ws[v] = W_.data() + (minv_t_ + v) * d + j0;
              nc[v] = -c[v];
            }
            K.axpy_rows(ws, nc, static_cast<int>(np), j1 - j0, w + j0);
          }
          for (int64_t a2 = j0; a2 < j1; ++a2) w[a2] *= scale;
        }
      }
    } else {
      // c_s = <g_j, w_s>, u = g_j - sum_s c_s w_s, w_t = u * sqrt(alpha / (1 + alpha q_j)), in
      // one sweep over W: a chunk of rows gets its dots, then its updates of u while it is still
      // in cache (about 512 KB), instead of two passes over all t x d of W. Every u[x] subtracts
      // c_s w_s[x] in ascending s, whatever the thread count.
      std::vector<double> c(t);
      const char* rj = row(j);
      constexpr int64_t kMaxChunk = 64;
      const int64_t CH = std::max<int64_t>(4, std::min<int64_t>(kMaxChunk, 65536 / d)) & ~int64_t(3);
      const kern::Table& K = K_;
      constexpr int64_t CB = 256;
      const int64_t ncb = (d + CB - 1) / CB;
      for (int64_t x = 0; x < d; ++x) w[x] = g[x];
#pragma omp parallel num_threads(nt_) if (t * d > (1 << 18))
      for (int64_t s0 = 0; s0 < t; s0 += CH) {
        const int64_t V = std::min<int64_t>(CH, t - s0);
#pragma omp for schedule(static)
        for (int64_t v0 = 0; v0 < V; v0 += 4) {
          const int nv = static_cast<int>(std::min<int64_t>(4, V - v0));
          const double* vecs[4];
          for (int v = 0; v < nv; ++v) vecs[v] = W_.data() + (s0 + v0 + v) * d;
          K_.dots(G_.dtype, &rj, 1, vecs, nv, d, c.data() + s0 + v0);
        }
#pragma omp for schedule(static)
        for (int64_t cb = 0; cb < ncb; ++cb) {
          const int64_t j0 = cb * CB, j1 = std::min(d, j0 + CB);
          const double* ws[kMaxChunk];
          double nc[kMaxChunk];
          for (int64_t s = s0; s < s0 + V; ++s) {
            ws[s - s0] = W_.data() + s * d + j0;
            nc[s - s0] = -c[s];
          }
          K.axpy_rows(ws, nc, static_cast<int>(V), j1 - j0, w + j0);  // one FMA per s
        }
      }
      for (int64_t x = 0; x < d; ++x) w[x] *= scale;
    }
  }
  double sn = 0.0;
  for (int64_t x = 0; x < d; ++x) {
    ssum_[x] += g[x];
    sn += ssum_[x] * ssum_[x];
  }
  snorm_ = std::sqrt(sn);
  ++t_;
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
  if (!hook_(p)) {
    res_.stop = StopReason::Cancelled;
    return false;
  }
  return true;
}

// Minoux: for any |S*| = |S|, F(S*) <= F(S) + sum of the |S| largest Delta_x(S), x not in S.
// q_x only decreases, so log1p(alpha * q_x) at any earlier step is a valid (looser) term.
void Engine::finish_bound() {
  const int64_t m = static_cast<int64_t>(res_.indices.size());
  std::vector<double> vals;
  vals.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state != kPicked) vals.push_back(std::log1p(opt_.alpha * rs_[i].q));
  const int64_t take = std::min<int64_t>(m, static_cast<int64_t>(vals.size()));
  if (take > 0) {
    std::nth_element(vals.begin(), vals.begin() + (take - 1), vals.end(), std::greater<double>());
    double extra = 0.0;
    std::vector<double> top(vals.begin(), vals.begin() + take);
    std::sort(top.begin(), top.end(), std::greater<double>());
    for (double v : top) extra += v;
    res_.opt_upper_bound = res_.objective_sum + extra;
  } else {
    res_.opt_upper_bound = res_.objective_sum;
  }
}

// Fold the pending w rows (minv_t_ .. t_-1) into minv_: one pass over the d x d matrix per
// batch of rows (rank-kMinvLag update), row by row in parallel. From d = kTriMinD only the
// upper triangle (plus the diagonal blocks) is ever read, so only that is written: about half
// the arithmetic and memory traffic of a fold.
void Engine::flush_minv() {
  const int64_t d = d_;
  constexpr int64_t AB = 24;  // rows of minv_ per work item (the kernel takes rows in sixes)
  static_assert(kFoldAlign % AB == 0, "a work item's rows share their first column");
  const int64_t nab = (d + AB - 1) / AB;
  const bool upper = upper_only();
  while (minv_t_ < t_) {
    const int64_t s0 = minv_t_, s1 = std::min<int64_t>(t_, s0 + kMinvLag);
    const double* ws[kMinvLag];
    for (int64_t s = s0; s < s1; ++s) ws[s - s0] = W_.data() + s * d;
    const int S = static_cast<int>(s1 - s0);
    const kern::Table& K = K_;
    double* M = minv_.data();
    // Interleaved work items: with the triangle, items further down hold less of it.
#pragma omp parallel for num_threads(nt_) schedule(static, 1)
    for (int64_t ab = 0; ab < nab; ++ab) {
      const int64_t a0 = ab * AB, b0 = upper ? a0 / kFoldAlign * kFoldAlign : 0;
      K.rank_sub(ws, S, a0, std::min(d, a0 + AB), b0, d, M);
    }
    minv_t_ = s1;
  }
}

// For candidates far behind once M^{-1} is kept: q~_i = g_i^T M_t^{-1} g_i in about d^2 / 2
// instead of (t - tq_i) d. q~ differs from the canonical q_i(t) only by round-off, so
// q~ + 1e-9 ||g||^2 (and the stale q_i) bound q_i(t) from above: a candidate whose bound loses is
// left in the queue with that tighter key and no exact catch-up.
//
// M^{-1} is symmetric, so (from d = 512) only its upper triangle is read: for a block A of rows [a0, a1),
// g^T M^{-1} g gains sum_{a in A} g_a (sum_{b in A} M_ab g_b + 2 sum_{b >= a1} M_ab g_b). Each
// block's share is kept per candidate and the shares are added in block order, so the result does
// not depend on how threads split the blocks.
void Engine::bound_from_inverse(const std::vector<int64_t>& cand, std::vector<double>& qub) {
  const int64_t m = static_cast<int64_t>(cand.size()), d = d_;
  qub.assign(m, 0.0);
  constexpr int RM = kern::kMaxTileRows, VB = static_cast<int>(kBoundBlock), GT = 16;
  const int R = K_.tile_rows;
  const int64_t block = static_cast<int64_t>(GT) * R;  // candidates per pass over M^{-1}
  const int64_t nach = (d + VB - 1) / VB;
  if (ubuf_.size() < static_cast<size_t>(block * nach)) ubuf_.resize(block * nach);
  double* part = ubuf_.data();  // part[c * nach + ac]: block ac's share of candidate c
  const int64_t np = t_ - minv_t_;  // w rows not folded into minv_ yet
  const int64_t es = static_cast<int64_t>(G_.elem_size());
  // Below d = 512 the halved rows are too short for the kernels (a 6 x 4 tile's 24 reductions
  // outweigh its FMAs): whole rows of M^{-1}, as M^{-1} g (measured: a 3e5 x 256 proxy 7% slower
  // with the triangle, run 2 at d = 1024 8% faster).
  const bool tri = upper_only();
  for (int64_t b0 = 0; b0 < m; b0 += block) {
    const int64_t nb = std::min(block, m - b0);
    const int ntl = static_cast<int>((nb + R - 1) / R);
    const char* rows[GT][RM];
    int rc[GT];
    for (int x = 0; x < ntl; ++x) {
      rc[x] = static_cast<int>(std::min<int64_t>(R, nb - x * R));
      for (int r = 0; r < rc[x]; ++r) rows[x][r] = row(cand[b0 + x * R + r]);
    }
    // Blocks of VB rows of M^{-1} per work item (so a few candidates still keep every thread
    // busy); each block of M^{-1} is read once per block of candidates. Blocks further down
    // are shorter: the work items go largest first.
#pragma omp parallel for num_threads(nt_) schedule(dynamic, 1) if (nb * d * d > 2 * kParallelWork)
    for (int64_t ac = 0; ac < nach; ++ac) {
      const int64_t a0 = ac * VB;
      const int V = static_cast<int>(std::min<int64_t>(VB, d - a0));
      const int64_t a1 = a0 + V, rest = tri ? d - a1 : 0;
      const int64_t c0 = tri ? a0 : 0, c1 = tri ? a1 : d;  // columns of the "in" part
      const double* vin[VB];
      const double* vout[VB];
      double bin[RM * VB], bout[RM * VB], mix[VB];
      for (int v = 0; v < V; ++v) {
        vin[v] = minv_.data() + (a0 + v) * d + c0;
        vout[v] = minv_.data() + (a0 + v) * d + a1;
      }
      for (int x = 0; x < ntl; ++x) {
        const char* rin[RM];
        const char* rout[RM];
        for (int r = 0; r < rc[x]; ++r) {
          rin[r] = rows[x][r] + c0 * es;
          rout[r] = rows[x][r] + a1 * es;
        }
        K_.dots(G_.dtype, rin, rc[x], vin, V, c1 - c0, bin);
        if (rest > 0) K_.dots(G_.dtype, rout, rc[x], vout, V, rest, bout);
        // The share: g_i[a0, a1) . (in + 2 out), one dot over the row's own elements.
        for (int r = 0; r < rc[x]; ++r) {
          for (int v = 0; v < V; ++v)
            mix[v] = bin[r * V + v] + (rest > 0 ? 2.0 * bout[r * V + v] : 0.0);
          const char* ga = rows[x][r] + a0 * es;
          const double* mv = mix;
          K_.dots(G_.dtype, &ga, 1, &mv, 1, V, &part[(x * R + r) * nach + ac]);
        }
      }
    }
#pragma omp parallel for num_threads(nt_) schedule(static) if (nb * d * (np + 1) > kParallelWork)
    for (int64_t c = 0; c < nb; ++c) {
      double qt = 0.0;
      for (int64_t ac = 0; ac < nach; ++ac) qt += part[c * nach + ac];
      if (np > 0) {
        const char* rw = rows[c / R][c % R];
        double cp[kMinvLag];
        const double* pv[kMinvLag];
        for (int64_t v = 0; v < np; ++v) pv[v] = W_.data() + (minv_t_ + v) * d;
        K_.dots(G_.dtype, &rw, 1, pv, static_cast<int>(np), d, cp);
        for (int64_t v = 0; v < np; ++v) qt -= cp[v] * cp[v];
      }
      const int64_t i = cand[b0 + c];
      qub[b0 + c] = std::min(rs_[i].q, std::max(0.0, qt) + 1e-9 * rs_[i].norm2);
    }
  }
  res_.evaluations += m;
  dots_ += tri ? m * (d + 1) / 2 : m * d;
}

void Engine::run_naive() {
  std::vector<int64_t> alive;
  alive.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) alive.push_back(i);
  while (t_ < opt_.k) {
    const int64_t deaths = deaths_;
    const Best b = refresh(alive.data(), static_cast<int64_t>(alive.size()), lambda_on(),
                           std::numeric_limits<int64_t>::max(), false);
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

void Engine::run_lazy() {
  std::vector<LazyQueue::Entry> store;
  store.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) store.push_back({base_[i], i});
  LazyQueue heap(std::move(store));

  constexpr int64_t kMinBatch = 64;
  int64_t B = opt_.batch > 0 ? opt_.batch : kMinBatch;
  // Catch-up rows per refresh: a stale candidate whose bound falls below the best score after
  // part of its catch-up is left there, so late steps do not pay for full catch-ups of losers.
  const int64_t chunk = opt_.chunk > 0 ? opt_.chunk : 256;
  // A popped candidate far enough behind gets the M^{-1} bound (d^2 / 2) instead of another
  // chunk: a chunk leaves it still far behind under a key from an old step, so it is popped again
  // and again, a chunk each time, while the bound is its current value (to round-off). But a
  // bound does not move the candidate's step: one that keeps contending is bounded again at
  // later steps, and late in a long run (k >> d) bounds come by the thousand and are mostly
  // wasted. "Far enough" is max(d, 4 chunks, min(4 d, t / 5)) steps: d early, the former 4 d
  // from t = 20 d on. Measured (same picks throughout): run 2 (k = 10 d) 11.5 s with
  // 4 d, 9.4 s with d, 10.2 s with the ramp; the first 4e5 rows of run 4 (k = 4e4 = 39 d) 82 s,
  // 112 s, 71 s; a 3e5 x 256 proxy (d = chunk) 20.1 s at 4 d, 24.2 s at d, 17-18 s (= 4 d).
  const int64_t far_min = std::max<int64_t>(d_, 4 * std::min<int64_t>(chunk, int64_t(1) << 40));
  std::vector<int64_t> batch, refreshed, stale;
  // Candidates refreshed at the previous step are mostly popped again at the next: they wait in
  // `hot`, sorted in the queue's order, instead of going through the heap (with 10^6 candidates
  // a push and a pop cost about twenty cache misses; sorting a few thousand entries is cheap).
  // Popping the larger of the heap's top and hot[hc] keeps the queue's exact pop sequence.
  std::vector<LazyQueue::Entry> hot, fresh, merged;
  size_t hc = 0;
  std::vector<double> qub;
  std::vector<double> popped_keys;  // keys of this step's popped candidates (batch sizing)
  while (t_ < opt_.k) {
    far_steps_ = std::max(far_min, std::min(4 * d_, t_ / 5));
    Best best;
    refreshed.clear();
    popped_keys.clear();
    for (;;) {
      batch.clear();
      while (static_cast<int64_t>(batch.size()) < B) {
        const bool from_hot = hc < hot.size() &&
                              (heap.empty() || LazyQueue::above(hot[hc], heap.top()));
        if (!from_hot && heap.empty()) break;
        const LazyQueue::Entry top = from_hot ? hot[hc] : heap.top();
        if (!(top.key > best.score || (top.key == best.score && top.idx < best.idx))) break;
        batch.push_back(top.idx);
        popped_keys.push_back(top.key);
        if (from_hot) ++hc;
        else heap.pop();
      }
      if (batch.empty()) break;
      if (!minv_.empty()) {  // very stale candidates: a cheap bound first
        // Far behind (see far_steps_ above): bound through M^{-1} (about d^2 / 2) instead of
        // catching up (t - tq_i) d, at most once per candidate and step; a fresh bound also
        // rejects a candidate whose value fell since its last one. The bound is remembered (q
        // only decreases), so a contender's chunked catch-up goes back to the queue under the
        // tighter of its partial and M^{-1} bounds.
        stale.clear();
        size_t keep = 0;
        for (int64_t i : batch) {
          if (far_behind(i))
            stale.push_back(i);
          else
            batch[keep++] = i;
        }
        batch.resize(keep);
        if (!stale.empty()) {
          bound_from_inverse(stale, qub);
          for (size_t x = 0; x < stale.size(); ++x) {
            const int64_t i = stale[x];
            rs_[i].qb = std::min(rs_[i].qb, qub[x]);
            rs_[i].qb_at = static_cast<uint32_t>(t_ + 1);
            const double key = std::log1p(opt_.alpha * rs_[i].qb);
            if (key > best.score || (key == best.score && i < best.idx)) batch.push_back(i);
            else heap.push({key, i});
          }
        }
        if (batch.empty()) continue;
      }
      auto absorb = [&](const std::vector<int64_t>& v) {
        for (int64_t i : v) {
          if (rs_[i].state != kAlive) continue;
          if (rs_[i].tq < t_) {  // partly caught up: back in the queue with a tighter bound
            const double key = rs_[i].qb < rs_[i].q  // qb: +inf until an M^{-1} bound exists
                                   ? std::min(rs_[i].delta, std::log1p(opt_.alpha * rs_[i].qb))
                                   : rs_[i].delta;
            heap.push({key, i});
            continue;
          }
          refreshed.push_back(i);
          Best b{rs_[i].score, i};
          if (b.better_than(best)) best = b;
        }
      };
      // Tiles work best when rows in a tile need the same w rows: sort by staleness.
      sort_by_step(batch);
      refresh(batch.data(), static_cast<int64_t>(batch.size()), lambda_on(), chunk);
      absorb(batch);
    }
    if (opt_.batch <= 0) {
      // Next step's batch: the candidates this step had to look at, i.e. those popped with a
      // key above the winning score (one-at-a-time lazy greedy pops each of them too), at least
      // kMinBatch so that a refresh has tiles enough to share between threads (measured on 2
      // cores: 16/32/64/128 gave run 3 0.32/0.31/0.30/0.30 s). Sizing it by everything
      // refreshed fed back on itself: a large batch refreshes many candidates, which made the
      // next batch as large (run 3: 2.2e6 evaluations, 0.45 s; now 2.6e5, 0.30 s).
      int64_t need = 0;
      for (double key : popped_keys) need += key > best.score;
      B = std::max<int64_t>(kMinBatch, std::min<int64_t>(4096, need));
    }
    if (check_stop_before_pick(best)) {
      for (int64_t i : refreshed) heap.push({rs_[i].delta, i});
      break;
    }
    add_pick(best.idx);
    fresh.clear();
    for (int64_t i : refreshed)
      if (i != best.idx) fresh.push_back({rs_[i].delta, i});
    std::sort(fresh.begin(), fresh.end(), LazyQueue::Above());
    // Hot entries not popped this step keep their place only while hot stays small.
    const size_t left = hot.size() - hc;
    if (left > fresh.size()) {
      for (size_t x = hc; x < hot.size(); ++x) heap.push(hot[x]);
      hot.swap(fresh);
    } else {
      merged.resize(left + fresh.size());
      std::merge(hot.begin() + hc, hot.end(), fresh.begin(), fresh.end(), merged.begin(),
                 LazyQueue::Above());
      hot.swap(merged);
    }
    hc = 0;
    if (!tick()) return;
  }
}

void Engine::run_stochastic() {
  far_steps_ = kStaleSteps * d_;
  std::vector<int64_t> remaining;
  remaining.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) remaining.push_back(i);
  const double eps = opt_.stochastic_eps;
  const double kk = static_cast<double>(std::max<int64_t>(1, opt_.k));
  const int64_t sample =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil((n_ / kk) * std::log(1.0 / eps))));
  SplitMix64 rng(opt_.seed);
  std::vector<int64_t> cand, stale;
  std::vector<double> qub;
  while (t_ < opt_.k) {
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
    if (!minv_.empty()) {
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
        const double key = std::log1p(opt_.alpha * qub[x]);
        if (key > best.score || (key == best.score && stale[x] < best.idx)) cand.push_back(stale[x]);
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

// The authors' released "diag Fisher" greedy (docs/algorithm.md §8): not the log-det objective.
void Engine::run_diag_compat() {
  std::vector<double> den(d_, 1.0), inv(d_, 1.0), g(d_);
  std::vector<int64_t> alive;
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) alive.push_back(i);
  const double alpha = opt_.alpha, lambda = opt_.lambda;
  while (t_ < opt_.k) {
    const int64_t m = static_cast<int64_t>(alive.size());
    const bool conflict = t_ > 0;
#pragma omp parallel for num_threads(nt_) schedule(static) if (m * d_ > kParallelWork)
    for (int64_t c = 0; c < m; ++c) {
      const int64_t i = alive[c];
      const char* ri = row(i);
      double s;
      K_.sqdots(G_.dtype, &ri, 1, inv.data(), d_, &s);
      const double dl = std::log1p(alpha * s);
      rs_[i].delta = dl;
      double a = 0.0;
      if (conflict) {
        const double* sv = ssum_.data();
        K_.dots(G_.dtype, &ri, 1, &sv, 1, d_, &a);
      }
      conflict_of(i, a);
      rs_[i].score = dl > 0.0 ? dl - lambda * conf(i) : kNegInf;
    }
    res_.evaluations += m;
    const Best b = argmax(alive.data(), m);
    if (check_stop_before_pick(b)) break;
    const int64_t j = b.idx;
    add_pick(j);
    kern::widen_row(G_.dtype, row(j), d_, g.data());
    for (int64_t x = 0; x < d_; ++x) {
      const double v = std::fabs(g[x]) * g[x];
      den[x] += alpha * v * v;
      inv[x] = 1.0 / den[x];
    }
    alive.erase(std::remove(alive.begin(), alive.end(), j), alive.end());
    if (!tick()) return;
  }
}

// The authors' default: rank by base = log(1 + alpha ||g||^2), optionally cut at omega * max.
void Engine::run_topk_compat() {
  std::vector<int64_t> order;
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return base_[a] > base_[b]; });
  res_.evaluations = static_cast<int64_t>(order.size());
  size_t pos = 0;
  while (t_ < opt_.k) {
    if (pos >= order.size()) {
      res_.stop = StopReason::Exhausted;
      break;
    }
    const int64_t j = order[pos++];
    if (opt_.omega > 0.0 && t_ >= 1 && base_[j] <= opt_.omega * res_.gains[0]) {
      res_.stop = StopReason::EarlyStop;
      break;
    }
    double a = 0.0;
    if (t_ > 0) {
      const char* rj = row(j);
      const double* sv = ssum_.data();
      K_.dots(G_.dtype, &rj, 1, &sv, 1, d_, &a);
    }
    conflict_of(j, a);
    rs_[j].delta = base_[j];
    rs_[j].score = base_[j];
    add_pick(j);
    if (!tick()) return;
  }
}

Result Engine::run() {
  t0_ = last_hook_ = std::chrono::steady_clock::now();
  init_norms();
  res_.stop = StopReason::Budget;
  if (res_.bad_row >= 0) return std::move(res_);
  const size_t cap = static_cast<size_t>(std::max<int64_t>(0, opt_.k));
  res_.indices.reserve(cap);
  if (opt_.objective == Objective::LogDet) {
    // Rows of W are never moved: catch-ups hold pointers into it while it grows.
    W_.open(std::min<size_t>(cap, static_cast<size_t>(n_)) * static_cast<size_t>(d_), opt_.spill_dir);
    switch (opt_.method) {
      case Method::Naive: run_naive(); break;
      case Method::Lazy: run_lazy(); break;
      case Method::Stochastic: run_stochastic(); break;
    }
    finish_bound();
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
    p.elapsed_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    if (!hook_(p)) res_.stop = StopReason::Cancelled;
  }
  res_.dot_products = dots_;
  return std::move(res_);
}

}  // namespace

void row_norms2(const MatrixView& G, double* out, int threads) {
  const kern::Table& K = kern::table();
  const int nt = resolve_threads(threads);
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

Result select(const MatrixView& G, const Options& opt, const ProgressHook& hook,
              double hook_interval_s) {
  if (G.n < 0 || G.d <= 0 || (G.n > 0 && G.data == nullptr))
    throw std::invalid_argument("G must be a non-empty n x d matrix");
  if (G.row_stride < G.d) throw std::invalid_argument("row stride smaller than d");
  if (opt.k < 0 || opt.k > G.n) throw std::invalid_argument("k must be in [0, n]");
  if (!(opt.alpha > 0.0) || !std::isfinite(opt.alpha))
    throw std::invalid_argument("alpha must be a finite number > 0");
  if (!(opt.lambda >= 0.0) || !std::isfinite(opt.lambda))
    throw std::invalid_argument("conflict penalty must be a finite number >= 0");
  if (opt.omega != 0.0 && !(opt.omega > 0.0 && opt.omega < 1.0))
    throw std::invalid_argument("early_stop must be in (0, 1)");
  if (!(opt.stochastic_eps > 0.0 && opt.stochastic_eps < 1.0))
    throw std::invalid_argument("stochastic_eps must be in (0, 1)");
  Engine e(G, opt, hook, hook_interval_s);
  return e.run();
}

}  // namespace spice
