// Unit tests of the engine's parts that need no selection run: the lazy queue's order (with the
// hot list), sort_by_step, the canonical catch-up take_products, and the refresh tile planner
// against brute force. Plain C++17, no framework: prints each failure, exits 1 if any.
// Built by CMake (-DSPICE_BUILD_TESTS=ON, then ctest) and by tests/test_core_units.py.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "spice/candidates.hpp"
#include "spice/numerics.hpp"
#include "spice/tile_plan.hpp"

namespace {

int failures = 0;
#define CHECK(cond)                                               \
  do {                                                            \
    if (!(cond)) {                                                \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                 \
    }                                                             \
  } while (0)

using spice::LazyQueue;
using Entry = LazyQueue::Entry;

// The queue's order stated independently: larger key first, then the lower index.
bool before(const Entry& a, const Entry& b) {
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

void test_queue_order() {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = static_cast<int>(rng() % 300);
    std::vector<Entry> v;
    for (int i = 0; i < n; ++i) v.push_back({static_cast<double>(rng() % 7), i});  // many ties
    std::shuffle(v.begin(), v.end(), rng);
    LazyQueue q(v);
    // pushes interleaved with pops
    std::vector<Entry> expect = v;
    for (int i = 0; i < 20; ++i) {
      const Entry e{static_cast<double>(rng() % 7) - 0.5, n + i};
      q.push(e);
      expect.push_back(e);
    }
    std::sort(expect.begin(), expect.end(), before);
    std::vector<Entry> got;
    while (!q.empty()) {
      got.push_back(q.top());
      q.pop();
    }
    CHECK(got.size() == expect.size());
    bool same = got.size() == expect.size();
    for (size_t i = 0; same && i < got.size(); ++i)
      same = got[i].key == expect[i].key && got[i].idx == expect[i].idx;
    CHECK(same);
  }
}

// Popping from "heap + hot list" gives exactly the order one queue holding both would give.
void test_hot_list_keeps_order() {
  std::mt19937_64 rng(2);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<Entry> all;
    const int n = 1 + static_cast<int>(rng() % 200);
    for (int i = 0; i < n; ++i) all.push_back({static_cast<double>(rng() % 9), i});
    std::shuffle(all.begin(), all.end(), rng);
    const size_t split = rng() % (all.size() + 1);
    LazyQueue heap(std::vector<Entry>(all.begin(), all.begin() + split));
    spice::HotList hot;
    std::vector<Entry> fresh(all.begin() + split, all.end());
    hot.replace(fresh, heap);
    // pop a few, then replace again with new entries (leftovers merged or spilled)
    std::vector<Entry> got;
    const size_t first = rng() % (all.size() + 1);
    auto pop_one = [&]() {
      if (hot.next_is_hot(heap)) {
        got.push_back(hot.front());
        hot.pop();
      } else {
        got.push_back(heap.top());
        heap.pop();
      }
    };
    for (size_t i = 0; i < first; ++i) pop_one();
    std::vector<Entry> more;
    const int extra = static_cast<int>(rng() % 50);
    for (int i = 0; i < extra; ++i) more.push_back({static_cast<double>(rng() % 9), n + i});
    std::vector<Entry> rest(more);
    hot.replace(more, heap);
    while (hot.next_is_hot(heap) || !heap.empty()) pop_one();
    std::vector<Entry> expect = all;
    std::sort(expect.begin(), expect.end(), before);
    expect.resize(first);
    std::vector<Entry> tail(all);
    std::sort(tail.begin(), tail.end(), before);
    tail.erase(tail.begin(), tail.begin() + static_cast<long>(first));
    tail.insert(tail.end(), rest.begin(), rest.end());
    std::sort(tail.begin(), tail.end(), before);
    expect.insert(expect.end(), tail.begin(), tail.end());
    bool same = got.size() == expect.size();
    for (size_t i = 0; same && i < got.size(); ++i)
      same = got[i].key == expect[i].key && got[i].idx == expect[i].idx;
    CHECK(same);
  }
}

void test_sort_by_step() {
  std::mt19937_64 rng(3);
  const int64_t t = 10;
  std::vector<spice::RowState> rs(100);
  for (auto& r : rs) r.tq = static_cast<int64_t>(rng() % 10);  // 0..9; t - 1 = 9
  std::vector<int64_t> cand;
  for (int64_t i = 0; i < 100; i += 2) cand.push_back(i);
  std::shuffle(cand.begin(), cand.end(), rng);
  std::vector<int64_t> orig = cand;
  std::vector<std::pair<int64_t, int64_t>> tmp;
  spice::sort_by_step(cand, rs.data(), t, tmp);
  CHECK(std::is_permutation(cand.begin(), cand.end(), orig.begin()));
  // (tq, index) ascending for steps below t - 1, then the t - 1 ones in their original order
  size_t k = 0;
  for (; k < cand.size() && rs[cand[k]].tq != t - 1; ++k)
    if (k > 0)
      CHECK(std::make_pair(rs[cand[k - 1]].tq, cand[k - 1]) <
            std::make_pair(rs[cand[k]].tq, cand[k]));
  std::vector<int64_t> last, want;
  for (; k < cand.size(); ++k) last.push_back(cand[k]);
  for (int64_t i : orig)
    if (rs[i].tq == t - 1) want.push_back(i);
  CHECK(last == want);
}

void test_take_products() {
  // q = 10, products for steps 3..7: steps before tq = 5 are skipped; clamped at 0 after each.
  const double y[5] = {100.0, 100.0, 1.0, 2.0, 1.0};
  double q = spice::take_products(10.0, y, 3, 5, 5);
  CHECK(q == 10.0 - 1.0 - 4.0 - 1.0);
  q = spice::take_products(3.0, y, 3, 5, 5);  // 3 - 1 = 2, 2 - 4 -> 0, 0 - 1 -> 0
  CHECK(q == 0.0);
  const double z[3] = {1.0, 1.0, 0.0};
  q = spice::take_products(1.5, z, 0, 3, 0);  // 0.5, then clamp to 0 (not -0.5), then 0
  CHECK(q == 0.0);
  // Ascending order matters in floating point: compare with the same sum done the same way.
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<double> v(32);
  for (auto& x : v) x = u(rng);
  double ref = 100.0;
  for (int s = 4; s < 32; ++s) ref = std::max(0.0, ref - v[s] * v[s]);
  CHECK(spice::take_products(100.0, v.data(), 0, 32, 4) == ref);
  CHECK(spice::in_span(0.0, 1.0, 1.0));
  CHECK(!spice::in_span(1e-9, 1.0, 1.0));
  CHECK(!spice::in_span(1e-11, 1.0, 1e3));  // residual tiny but gain alpha q = 1e-8 is not
}

// Brute force: the least cost over all cuts into tiles of 1..R consecutive rows.
int64_t brute_cost(const std::vector<int64_t>& ctq, int64_t t, int64_t max_rows, int R) {
  const int64_t m = static_cast<int64_t>(ctq.size());
  std::function<int64_t(int64_t)> best = [&](int64_t b) -> int64_t {
    if (b == m) return 0;
    int64_t out = std::numeric_limits<int64_t>::max();
    for (int r = 1; r <= R && b + r <= m; ++r) {
      int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
      for (int64_t c = b; c < b + r; ++c) {
        lo = std::min(lo, ctq[c]);
        hi = std::max(hi, spice::catchup_end(ctq[c], max_rows, t));
      }
      out = std::min(out, spice::kTileRowCost[r] * r * std::max<int64_t>(1, hi - lo) + best(b + r));
    }
    return out;
  };
  return best(0);
}

void test_tile_planner() {
  CHECK(spice::catchup_end(3, 100, 50) == 50);  // within reach: to t
  CHECK(spice::catchup_end(3, 10, 50) == 10);   // far behind: the next multiple of max_rows
  CHECK(spice::catchup_end(20, 10, 50) == 30);
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const int R = 1 + static_cast<int>(rng() % 6);
    const int64_t m = static_cast<int64_t>(rng() % 11), t = 40;
    const int64_t max_rows = (trial % 3 == 0) ? 8 : std::numeric_limits<int64_t>::max();
    std::vector<int64_t> ctq(m);
    for (auto& x : ctq) x = static_cast<int64_t>(rng() % 40);
    std::sort(ctq.begin(), ctq.end());
    spice::TilePlan p;
    spice::plan_tiles(p, ctq.data(), m, false, 0, t, max_rows, R);
    // a cut of [0, m) into consecutive tiles of 1..R rows
    CHECK(p.start.front() == 0 && p.start.back() == m);
    int64_t cost = 0, total = 0;
    for (int64_t x = 0; x < p.tiles(); ++x) {
      const int64_t rows = p.start[x + 1] - p.start[x];
      CHECK(rows >= 1 && rows <= R);
      int64_t lo = t, hi = 0, w = 0;
      for (int64_t c = p.start[x]; c < p.start[x + 1]; ++c) {
        lo = std::min(lo, ctq[c]);
        hi = std::max(hi, spice::catchup_end(ctq[c], max_rows, t));
        w = std::max(w, std::min<int64_t>(t - ctq[c], max_rows) + 1);
      }
      CHECK(p.lo[x] == lo && p.hi[x] == hi && p.work[x] == w * rows);
      total += p.work[x];
      cost += spice::kTileRowCost[rows] * rows * std::max<int64_t>(1, hi - lo);
    }
    CHECK(p.total_work == total);
    CHECK(cost == brute_cost(ctq, t, max_rows, R));  // the cut is optimal
    // groups: consecutive, non-empty, at most max_tiles tiles, covering every tile
    const int gt = 1 + static_cast<int>(rng() % 4);
    spice::plan_groups(p, 1 + static_cast<int64_t>(rng() % 60), gt);
    CHECK(p.group.front() == 0 && p.group.back() == p.tiles());
    for (int64_t g = 0; g < p.groups(); ++g) {
      const int64_t nt = p.group[g + 1] - p.group[g];
      CHECK(nt >= 1 && nt <= gt);
    }
  }
  // all at one step: tiles every R rows
  spice::TilePlan p;
  spice::plan_tiles(p, nullptr, 13, true, 7, 9, std::numeric_limits<int64_t>::max(), 6);
  CHECK((p.start == std::vector<int64_t>{0, 6, 12, 13}));
  CHECK(p.lo[2] == 7 && p.hi[2] == 9 && p.work[0] == 3 * 6 && p.work[2] == 3);
}

}  // namespace

int main() {
  test_queue_order();
  test_hot_list_keeps_order();
  test_sort_by_step();
  test_take_products();
  test_tile_planner();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
