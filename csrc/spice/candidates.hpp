// Per-candidate records of the greedy and the order in which lazy greedy visits them: the
// cache-line record, the best-so-far pair, the record of a pick's candidate, the 4-ary max-queue
// and the hot list that spares it most pushes and pops (docs/algorithm.md §3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "spice/numerics.hpp"

namespace spice {

enum : uint8_t { kAlive = 0, kPicked = 1, kDead = 2 };

// Per-candidate state that every evaluation reads and writes, one cache line per candidate
// (with 10^6 candidates, separate arrays cost one cache miss per field).
struct alignas(64) RowState {
  double q = 0.0;      // q_i = g_i^T M^{-1} g_i at step tq
  double delta = 0.0;  // log1p(alpha q_i): the exact gain at tq, an upper bound later
  double score = kNegInf;
  double align = 0.0;  // cos(g_i, sum of picks) at the last full refresh
  double norm2 = 0.0;  // ||g_i||^2
  double qb = std::numeric_limits<double>::infinity();  // lazy, k > d: M^{-1} bound on q_i
  int64_t tq = 0;                                       // step at which q is current
  uint8_t state = 0;
  uint32_t qb_at = 0;  // 1 + the step of its last M^{-1} bound (low 32 bits)
};
static_assert(sizeof(RowState) == 64, "one cache line per candidate");

// The best (score, index) seen: larger score first, then the lower index.
struct Best {
  double score = kNegInf;
  int64_t idx = std::numeric_limits<int64_t>::max();
  bool better_than(const Best& o) const {
    return score > o.score || (score == o.score && idx < o.idx);
  }
};

// A candidate as a pick records it: a shard's best at the current step (spice/stepper.hpp).
struct Candidate {
  int64_t index = -1;     // row of this shard; -1: none (every row left is picked or in span(S))
  double score = 0.0;     // Delta - lambda * conflict: what the greedy maximises
  double delta = 0.0;     // the information gain log1p(alpha q)
  double base = 0.0;      // log1p(alpha ||g||^2)
  double align = 0.0;     // cosine to the mean of the earlier picks (0 before the first)
  double conflict = 0.0;  // max(0, -align)
  double q = 0.0;         // the residual g^T M^{-1} g: apply_pick needs it for the pick's w
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
  // is called, not inlined, on a hot path).
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

// Candidates refreshed at the previous step, waiting in the queue's order instead of in the
// heap: they are mostly popped again at the next step, and with 10^6 candidates a push and a
// pop cost about twenty cache misses while sorting a few thousand entries is cheap. Popping the
// larger of the heap's top and the hot list's front keeps the queue's exact pop sequence.
class HotList {
 public:
  using Entry = LazyQueue::Entry;
  // True when the next entry in queue order comes from the hot list, not the heap.
  bool next_is_hot(const LazyQueue& heap) const {
    return pos_ < hot_.size() && (heap.empty() || LazyQueue::above(hot_[pos_], heap.top()));
  }
  const Entry& front() const { return hot_[pos_]; }
  void pop() { ++pos_; }
  // The next step's hot list: `fresh`, sorted here; entries not popped this step keep their
  // place (merged) only while the list stays small, else they go back to the heap.
  void replace(std::vector<Entry>& fresh, LazyQueue& heap) {
    std::sort(fresh.begin(), fresh.end(), LazyQueue::Above());
    const size_t left = hot_.size() - pos_;
    if (left > fresh.size()) {
      for (size_t x = pos_; x < hot_.size(); ++x) heap.push(hot_[x]);
      hot_.swap(fresh);
    } else {
      merged_.resize(left + fresh.size());
      std::merge(hot_.begin() + pos_, hot_.end(), fresh.begin(), fresh.end(), merged_.begin(),
                 LazyQueue::Above());
      hot_.swap(merged_);
    }
    pos_ = 0;
  }

 private:
  std::vector<Entry> hot_, merged_;
  size_t pos_ = 0;
};

// Order candidates by step tq (refresh tiles group equal steps): (tq, index) ascending, without
// chasing tq through memory in every comparison. Candidates refreshed at the previous pick
// (tq = t - 1: most of a lazy batch) go to the end unsorted; only the rest is sorted. tmp is
// scratch.
inline void sort_by_step(std::vector<int64_t>& cand, const RowState* rs, int64_t t,
                         std::vector<std::pair<int64_t, int64_t>>& tmp) {
  tmp.clear();
  size_t keep = 0;
  for (size_t k = 0; k < cand.size(); ++k) {
    const int64_t tq = rs[cand[k]].tq;
    if (tq == t - 1) cand[keep++] = cand[k];
    else tmp.push_back({tq, cand[k]});
  }
  std::sort(tmp.begin(), tmp.end());
  std::move_backward(cand.begin(), cand.begin() + keep, cand.end());
  for (size_t k = 0; k < tmp.size(); ++k) cand[k] = tmp[k].second;
}

}  // namespace spice
