// The refresh's tile cut and grouping (see spice/tile_plan.hpp).
#include "spice/tile_plan.hpp"

#include <algorithm>
#include <limits>

namespace spice {

void plan_tiles(TilePlan& p, const int64_t* ctq, int64_t m, bool same, int64_t tq0, int64_t t,
                int64_t max_rows, int R) {
  p.start.clear();
  if (same) {
    for (int64_t c = 0; c < m; c += R) p.start.push_back(c);
  } else {
    p.dp_cost.assign(m + 1, 0);  // least cost of the first e candidates
    p.dp_rows.assign(m + 1, 0);  // ... and the rows of its last tile
    for (int64_t e = 1; e <= m; ++e) {
      int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0, bestc = -1;
      int bestr = 1;
      for (int r = 1; r <= R && r <= e; ++r) {
        const int64_t tq = ctq[e - r];
        lo = std::min(lo, tq);
        hi = std::max(hi, catchup_end(tq, max_rows, t));
        const int64_t c = p.dp_cost[e - r] + kTileRowCost[r] * r * std::max<int64_t>(1, hi - lo);
        if (bestc < 0 || c <= bestc) {
          bestc = c;
          bestr = r;
        }
      }
      p.dp_cost[e] = bestc;
      p.dp_rows[e] = bestr;
    }
    for (int64_t e = m; e > 0; e -= p.dp_rows[e]) p.start.push_back(e - p.dp_rows[e]);
    std::reverse(p.start.begin(), p.start.end());
  }
  p.start.push_back(m);
  const int64_t ntiles = p.tiles();
  p.total_work = 0;
  p.work.resize(ntiles);
  p.lo.resize(ntiles);
  p.hi.resize(ntiles);
  for (int64_t x = 0; x < ntiles; ++x) {
    const int64_t b = p.start[x], e = p.start[x + 1];
    int64_t w = 0;  // the tile's widest catch-up, plus one
    if (same) {
      w = std::min<int64_t>(t - tq0, max_rows) + 1;
      p.lo[x] = tq0;
      p.hi[x] = catchup_end(tq0, max_rows, t);
    } else {
      int64_t lo = t, hi = 0;
      for (int64_t c = b; c < e; ++c) {
        w = std::max(w, std::min<int64_t>(t - ctq[c], max_rows) + 1);
        lo = std::min(lo, ctq[c]);
        hi = std::max(hi, catchup_end(ctq[c], max_rows, t));
      }
      p.lo[x] = lo;
      p.hi[x] = hi;
    }
    p.work[x] = w * (e - b);
    p.total_work += p.work[x];
  }
}

void plan_groups(TilePlan& p, int64_t target, int max_tiles) {
  const int64_t ntiles = p.tiles();
  p.group.clear();
  for (int64_t x = 0; x < ntiles;) {
    p.group.push_back(x);
    int64_t w = 0;
    const int64_t x0 = x;
    while (x < ntiles && x - x0 < max_tiles && (x == x0 || w + p.work[x] <= target))
      w += p.work[x++];
  }
  p.group.push_back(ntiles);
}

}  // namespace spice
