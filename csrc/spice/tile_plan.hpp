// How a refresh cuts its candidates into register tiles and the tiles into groups that share
// chunks of W (docs/algorithm.md §6). Plain data and two functions, so they can be tested alone.
#pragma once

#include <cstdint>
#include <vector>

namespace spice {

// Where a refresh takes a candidate at step tq: the current step t, or (more than max_rows
// behind) the last multiple of max_rows up to tq + max_rows, so that candidates left behind
// share their step and fill whole tiles the next time.
inline int64_t catchup_end(int64_t tq, int64_t max_rows, int64_t t) {
  return t - tq > max_rows ? (tq + max_rows) / max_rows * max_rows : t;
}

struct TilePlan {
  std::vector<int64_t> start;    // tile x holds candidates [start[x], start[x + 1])
  std::vector<int64_t> lo, hi;   // tile x's steps: its rows are caught up from their tq to hi[x]
  std::vector<int64_t> work;     // tile x's (widest catch-up + 1) * rows
  std::vector<int64_t> group;    // group g holds tiles [group[g], group[g + 1])
  int64_t total_work = 0;        // sum of work
  std::vector<int64_t> dp_cost;  // scratch of the cut
  std::vector<int> dp_rows;
  int64_t tiles() const { return static_cast<int64_t>(start.size()) - 1; }
  int64_t groups() const { return static_cast<int64_t>(group.size()) - 1; }
};

// Relative time per row product of an r-row tile (catch-up micro-benchmark of the AVX-512
// 6 x 4 tiles; the AVX2 and portable tables, with 4-row tiles, use the same shape): thin tiles
// load each w element for fewer rows.
constexpr int64_t kTileRowCost[9] = {0, 30, 22, 20, 11, 10, 10, 10, 10};

// Cut m candidates, in order, into tiles of at most R (<= 8) consecutive rows. ctq[c] is
// candidate c's step; with same = true every candidate is at step tq0 (ctq unread) and tiles
// are every R rows. Otherwise the cut minimises sum over tiles of kTileRowCost[rows] * rows *
// span (span: the tile's lowest step to its highest catch-up end), by dynamic programming in
// O(R m): the kernel computes a tile's whole span for every row in it, so rows that start later
// waste work, while thin tiles waste the kernel. Fills start, lo, hi, work and total_work.
void plan_tiles(TilePlan& p, const int64_t* ctq, int64_t m, bool same, int64_t tq0, int64_t t,
                int64_t max_rows, int R);

// Groups of up to max_tiles consecutive tiles with about `target` work each (a group's first
// tile always joins it), so that a dynamic schedule balances threads even when the first
// (stalest) tiles cost far more than the rest. Fills group.
void plan_groups(TilePlan& p, int64_t target, int max_tiles);

}  // namespace spice
