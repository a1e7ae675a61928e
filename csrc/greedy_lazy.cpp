// Lazy greedy, exact with the penalty: candidates wait in a max-queue under upper bounds on
// their score and are refreshed in batches only while a bound can still beat the best exact
// score of the step; far-behind ones first get the M^{-1} bound (docs/algorithm.md §3, §5).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "engine.hpp"

namespace spice {
namespace detail {

void Engine::lazy_begin() {
  std::vector<LazyQueue::Entry> store;
  store.reserve(n_);
  for (int64_t i = 0; i < n_; ++i)
    if (rs_[i].state == kAlive) store.push_back({rank(base_[i], i), i});
  lz_ = std::make_unique<LazyState>(std::move(store));
  LazyState& z = *lz_;
  z.B = opt_.batch > 0 ? opt_.batch : kMinBatch;
  // Catch-up rows per refresh: a stale candidate whose bound falls below the best score after
  // part of its catch-up is left there, so late steps do not pay for full catch-ups of losers.
  z.chunk = opt_.chunk > 0 ? opt_.chunk : kDefaultChunk;
  // A popped candidate far enough behind gets the M^{-1} bound (d^2 / 2) instead of another
  // chunk: a chunk leaves it still far behind under a key from an old step, so it is popped again
  // and again, a chunk each time, while the bound is its current value (to round-off). But a
  // bound does not move the candidate's step: one that keeps contending is bounded again at
  // later steps, and late in a long run (k >> d) bounds come by the thousand and are mostly
  // wasted. "Far enough" is max(d, 4 chunks, min(4 d, t / 5)) steps: d early, 4 d from t = 20 d
  // on (docs/design-decisions.md §1, the "far behind" threshold, compares the choices).
  z.far_min = std::max<int64_t>(d_, 4 * std::min<int64_t>(z.chunk, int64_t(1) << 40));
}

// One step's search: pop and refresh candidates until no queued bound can beat the best exact
// score. The refreshed candidates wait in z.refreshed for lazy_after_pick (or lazy_requeue).
Best Engine::lazy_best() {
  LazyState& z = *lz_;
  // The queue and hot list as locals for the step (moved, O(1)): the pop loop's hot path then
  // works on objects the compiler knows nothing else touches.
  LazyQueue heap = std::move(z.heap);
  HotList hot = std::move(z.hot);
  std::vector<int64_t>& batch = z.batch;
  std::vector<int64_t>& refreshed = z.refreshed;
  std::vector<int64_t>& stale = z.stale;
  std::vector<double>& qub = z.qub;
  std::vector<double>& popped_keys = z.popped_keys;
  const int64_t B = z.B, chunk = z.chunk;
  far_steps_ = std::max(z.far_min, std::min(4 * d_, t_ / 5));
  Best best;
  refreshed.clear();
  popped_keys.clear();
  for (;;) {
    batch.clear();
    while (static_cast<int64_t>(batch.size()) < B) {
      const bool from_hot = hot.next_is_hot(heap);
      if (!from_hot && heap.empty()) break;
      const LazyQueue::Entry top = from_hot ? hot.front() : heap.top();
      if (!(top.key > best.score || (top.key == best.score && top.idx < best.idx))) break;
      if (from_hot) hot.pop();
      else heap.pop();
      // A row picked without being popped (a replayed pick, see step_apply) still has its
      // entry; in a plain run every queued row is alive, and its record is not read here.
      if (stale_entries_ && rs_[top.idx].state != kAlive) continue;
      if (cons_.active() && !fits(top.idx)) continue;  // never fits again: dropped for good
      batch.push_back(top.idx);
      popped_keys.push_back(top.key);
    }
    if (batch.empty()) break;
    if (inv_.has_inverse()) {  // very stale candidates: a cheap bound first
      // Far behind (see far_min above): bound through M^{-1} (about d^2 / 2) instead of
      // catching up (t - tq_i) d, at most once per candidate and step; a fresh bound also
      // rejects a candidate whose value fell since its last one. The bound is remembered (q
      // only decreases), so a contender's chunked catch-up goes back to the queue under the
      // tighter of its partial and M^{-1} bounds.
      stale.clear();
      size_t keep = 0;
      for (int64_t i : batch) {
        if (far_behind(i)) stale.push_back(i);
        else batch[keep++] = i;
      }
      batch.resize(keep);
      if (!stale.empty()) {
        bound_from_inverse(stale, qub);
        for (size_t x = 0; x < stale.size(); ++x) {
          const int64_t i = stale[x];
          rs_[i].qb = std::min(rs_[i].qb, qub[x]);
          rs_[i].qb_at = static_cast<uint32_t>(t_ + 1);
          const double key = rank(std::log1p(opt_.alpha * rs_[i].qb), i);
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
          heap.push({rank(key, i), i});
          continue;
        }
        refreshed.push_back(i);
        Best b{rank(rs_[i].score, i), i};
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
    // kMinBatch so that a refresh has tiles enough to share between threads. Sizing it by
    // everything refreshed fed back on itself: a large batch refreshes many candidates, which
    // made the next batch as large.
    int64_t need = 0;
    for (double key : popped_keys) need += key > best.score;
    z.B = std::max<int64_t>(kMinBatch, std::min<int64_t>(kMaxBatch, need));
  }
  z.heap = std::move(heap);
  z.hot = std::move(hot);
  return best;
}

// The run stops: this step's refreshed candidates go back to the queue.
void Engine::lazy_requeue() {
  LazyState& z = *lz_;
  for (int64_t i : z.refreshed) z.heap.push({rank(rs_[i].delta, i), i});
  z.refreshed.clear();
}

// After the pick j (-1: a row this engine does not hold): this step's other refreshed
// candidates become the next step's hot list.
void Engine::lazy_after_pick(int64_t j) {
  LazyState& z = *lz_;
  z.fresh.clear();
  for (int64_t i : z.refreshed)
    if (i != j) z.fresh.push_back({rank(rs_[i].delta, i), i});
  z.hot.replace(z.fresh, z.heap);
  z.refreshed.clear();
}

void Engine::run_lazy() {
  lazy_begin();
  while (t_ < opt_.k) {
    const Best best = lazy_best();
    if (check_stop_before_pick(best)) {
      lazy_requeue();
      break;
    }
    add_pick(best.idx);
    lazy_after_pick(best.idx);
    if (!tick()) return;
  }
}

}  // namespace detail
}  // namespace spice
