// The refresh: bring candidates' q_i up to the current step (or part of the way) with the w
// rows they miss, tile by tile, then their gains, conflicts and scores (docs/algorithm.md §2,
// §4, §6). Every driver refreshes through here, so their arithmetic is bit-identical.
#include <algorithm>
#include <cmath>

#include "engine.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spice {
namespace detail {
// Bring q_i from step tq_i towards t_ (at most max_rows w rows per candidate) for each candidate.
// Candidates that reach t_ get Delta_i, conflict and score; the others get Delta_i from their
// partly updated q_i, which is still an upper bound on every later Delta_i (q only decreases).
// Returns the best (score desc, index asc) among candidates that reached t_.
//
// RefreshMode::SameStepBestOnly (the naive step): a candidate whose bound log1p(alpha q_i) is
// clearly below the best score seen so far is not scored at all: its Delta is not needed to pick.
// The margin keeps this exact (such a candidate cannot win or tie), so the picks stay those of
// lazy greedy. The naive step also passes every alive candidate, all at one step, which spares
// serial passes over their records (only load balance would suffer otherwise: tiles read each
// row's own step).
Best Engine::refresh(const int64_t* cand, int64_t m, bool need_conflict, int64_t max_rows,
                     RefreshMode mode) {
  const bool naive_step = mode == RefreshMode::SameStepBestOnly;
  constexpr int RM = kern::kMaxTileRows;
  const int R = K_.tile_rows;  // rows per tile (the kernels' register tile)
  constexpr int VBMAX = 32;    // w rows per kernel call, at most
  constexpr int GTMAX = 16;    // tiles per group: a chunk of W stays in L2 across a group
  const int64_t d = d_;
  const int VB = static_cast<int>(std::max<int64_t>(4, std::min<int64_t>(VBMAX, 262144 / (8 * d))));
  // The naive step refreshes every alive candidate at every step, so they all share one step
  // tq0, and the serial passes over the candidates' records are skipped (at n = 1e5 each reads
  // 6.4 MB on one core while the other waits). Otherwise their steps are read once, into ctq_.
  const int64_t tq0 = m > 0 ? rs_[cand[0]].tq : 0;
  bool same = true;
  if (!naive_step) {
    ctq_.resize(m);
    for (int64_t c = 0; c < m; ++c) {
      ctq_[c] = rs_[cand[c]].tq;
      same = same && ctq_[c] == tq0;
    }
  }
  plan_tiles(plan_, ctq_.data(), m, same, tq0, t_, max_rows, R);
  const int64_t ntiles = plan_.tiles();
  int64_t work = plan_.total_work;  // row elements touched: (catch-up rows + 1) * d per tile row
  const bool conflict = need_conflict && t_ > 0;
  Best best;
  if (!naive_step && d >= kSharedMinD && work * d > kParallelWork &&
      refresh_shared(cand, conflict, VB, best)) {
    res_.evaluations += m;
    return best;
  }
  // About four groups per thread.
  plan_groups(plan_, std::max<int64_t>(1, work / (4 * nt_)), GTMAX);
  const int64_t ngroups = plan_.groups();
  work *= d;
  const double alpha = opt_.alpha;
  const double* sv = conf_.sum();
  int64_t dots_total = 0;
  // The naive step: every tile costs the same, so each thread takes one contiguous run of
  // groups, i.e. one memory stream per core as a GEMV has; lazy tiles differ in cost: dynamic
  // schedule.
  const bool contiguous = naive_step;
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
      const int64_t t0 = plan_.group[grp];
      const int nt = static_cast<int>(plan_.group[grp + 1] - t0);
      int64_t glo = t_, ghi = 0;
      for (int x = 0; x < nt; ++x) {
        const int64_t b = plan_.start[t0 + x];
        rcount[x] = static_cast<int>(plan_.start[t0 + x + 1] - b);
        lo[x] = plan_.lo[t0 + x];
        hi[x] = plan_.hi[t0 + x];
        for (int r = 0; r < rcount[x]; ++r) {
          rows[x][r] = row(cand[b + r]);
          my_dots += hi[x] - rs_[cand[b + r]].tq;
        }
        glo = std::min(glo, lo[x]);
        ghi = std::max(ghi, hi[x]);
      }
      // Catch-up: W rows in ascending order, each chunk applied to every tile of the group.
      bool fused_group = conflict;
      for (int x = 0; x < nt && fused_group; ++x) fused_group = lo[x] == t_ - 1 && hi[x] == t_;
      double a[GTMAX][RM] = {};
      if (fused_group) {  // the naive step: <g, w_{t-1}> and <g, s> in one pass over the rows
        vecs[0] = inv_.w(t_ - 1);
        vecs[1] = sv;
        for (int x = 0; x < nt; ++x) {
          K_.dots_pf(G_.dtype, rows[x], rcount[x], vecs, 2, d, buf,
                     x + 1 < nt ? rows[x + 1] : nullptr, x + 1 < nt ? rcount[x + 1] : 0, false);
          if (sc_) scale_products(buf, cand + plan_.start[t0 + x], rcount[x], 2);
          for (int r = 0; r < rcount[x]; ++r) {
            const int64_t i = cand[plan_.start[t0 + x] + r];
            const double v = buf[r * 2];
            const double q = rs_[i].q - v * v;
            rs_[i].q = q < 0.0 ? 0.0 : q;
            a[x][r] = buf[r * 2 + 1];
          }
        }
      } else {
        for (int64_t s0 = glo; s0 < ghi; s0 += VB) {
          const int V = static_cast<int>(std::min<int64_t>(VB, ghi - s0));
          for (int v = 0; v < V; ++v) vecs[v] = inv_.w(s0 + v);
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
            // in an earlier chunk are in L2, and pulling them into L1 early evicts this tile's.
            const bool pf = xn < nt && lo[xn] >= s0;
            K_.dots_pf(G_.dtype, rows[x], rcount[x], vecs + v0, nv, d, buf, pf ? rows[xn] : nullptr,
                       pf ? rcount[xn] : 0, cold);
            cold = false;
            if (sc_) scale_products(buf, cand + plan_.start[t0 + x], rcount[x], nv);
            for (int r = 0; r < rcount[x]; ++r) {
              const int64_t i = cand[plan_.start[t0 + x] + r];
              rs_[i].q = take_products(rs_[i].q, buf + r * nv, s0 + v0, nv, rs_[i].tq);
            }
          }
        }
        if (conflict) {
          for (int x = 0; x < nt; ++x)
            if (hi[x] == t_) {
              K_.dots(G_.dtype, rows[x], rcount[x], &sv, 1, d, a[x]);
              if (sc_) scale_products(a[x], cand + plan_.start[t0 + x], rcount[x], 1);
            }
        }
      }
      for (int x = 0; x < nt; ++x) {
        for (int r = 0; r < rcount[x]; ++r) {
          const int64_t i = cand[plan_.start[t0 + x] + r];
          const double q = rs_[i].q;
          if (naive_step && hi[x] == t_ && alpha * q < thr && !in_span(q, rs_[i].norm2, alpha)) {
            rs_[i].tq = hi[x];
            rs_[i].score = kNegInf;  // cannot win; Delta not needed
            continue;
          }
          const int64_t before = local.idx;
          finish_row(i, hi[x], conflict, a[x][r], local, my_dead);
          // log1p(alpha q) < best needs alpha q < expm1(best); keep a relative margin for the
          // rounding of expm1 and log1p. (With costs the best is a key per unit cost: no skip.)
          if (naive_step && local.idx != before && local.score > 0.0 && !cons_.has_cost())
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
  const Best c{rank(st.score, i), i};  // the score itself unless there are costs (§11)
  if (c.better_than(local)) local = c;
}

// refresh's catch-up with the tiles' W chunks shared: each chunk of VB w rows is read once per
// refresh (by one thread) and applied to every tile that needs it, instead of once per group of
// tiles; the products go to a buffer, then each candidate's q takes them in ascending s, exactly
// as the group loop does (same dot products, same order: bit-identical results). At large d the
// first tile to read a chunk from memory is bound by W's bandwidth, and groups let each chunk
// read feed only a few tiles. Returns false (nothing done) when the buffer
// would be too large or every tile needs only the last w row (the group loop fuses that with
// the conflict dot).
bool Engine::refresh_shared(const int64_t* cand, bool conflict, int VB, Best& best) {
  const int64_t d = d_, ntiles = plan_.tiles();
  yoff_.resize(ntiles + 1);
  bool all_last = true;
  int64_t y = 0, npairs = 0;
  for (int64_t x = 0; x < ntiles; ++x) {
    const int64_t lo = plan_.lo[x], hi = plan_.hi[x];
    yoff_[x] = y;
    y += (plan_.start[x + 1] - plan_.start[x]) * std::max<int64_t>(0, hi - lo);
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
    if (plan_.hi[x] > plan_.lo[x])
      for (int64_t c = plan_.lo[x] / VB; c <= (plan_.hi[x] - 1) / VB; ++c) pairs_.push_back({c, x});
  std::sort(pairs_.begin(), pairs_.end());
  // Work items: a chunk's pairs, split when there are too few chunks to share between threads.
  int64_t nchunks = 0;
  for (size_t k = 0; k < pairs_.size(); ++k)
    nchunks += k == 0 || pairs_[k].first != pairs_[k - 1].first;
  const int64_t want = 8 * static_cast<int64_t>(nt_);
  const int64_t per = nchunks >= want
                          ? std::numeric_limits<int64_t>::max()
                          : std::max<int64_t>(1, static_cast<int64_t>(pairs_.size()) / want);
  ibeg_.clear();
  for (size_t k = 0; k < pairs_.size(); ++k)
    if (k == 0 || pairs_[k].first != pairs_[k - 1].first ||
        static_cast<int64_t>(k) - ibeg_.back() >= per)
      ibeg_.push_back(static_cast<int64_t>(k));
  const int64_t nitems = static_cast<int64_t>(ibeg_.size());
  ibeg_.push_back(static_cast<int64_t>(pairs_.size()));
  const double* sv = conf_.sum();
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
      for (int v = 0; v < VB && s0 + v < t_; ++v) vecs[v] = inv_.w(s0 + v);
      for (int64_t k = ibeg_[it]; k < ibeg_[it + 1]; ++k) {
        const int64_t x = pairs_[k].second, b = plan_.start[x];
        const int rc = static_cast<int>(plan_.start[x + 1] - b);
        for (int r = 0; r < rc; ++r) rows[r] = row(cand[b + r]);
        const int v0 = static_cast<int>(std::max(plan_.lo[x], s0) - s0);
        const int v1 = static_cast<int>(std::min<int64_t>(plan_.hi[x], s0 + VB) - s0);
        // The next tile's rows are prefetched before their first use only (see refresh).
        int nrc = 0;
        if (k + 1 < ibeg_[it + 1] && plan_.lo[pairs_[k + 1].second] >= s0) {
          const int64_t xn = pairs_[k + 1].second, bn = plan_.start[xn];
          nrc = static_cast<int>(plan_.start[xn + 1] - bn);
          for (int r = 0; r < nrc; ++r) nrows[r] = row(cand[bn + r]);
        }
        double* y = yb + yoff_[x] + rc * (s0 + v0 - plan_.lo[x]);
        K_.dots_pf(G_.dtype, rows, rc, vecs + v0, v1 - v0, d, y, nrc ? nrows : nullptr, nrc,
                   k == ibeg_[it]);
        if (sc_) scale_products(y, cand + b, rc, v1 - v0);
      }
    }
    // Each candidate's q takes its products in ascending s (blocks of the buffer, chunk by
    // chunk), then its Delta, conflict and score.
#pragma omp for schedule(dynamic, 4)
    for (int64_t x = 0; x < ntiles; ++x) {
      const int64_t b = plan_.start[x], lo = plan_.lo[x], hi = plan_.hi[x];
      const int rc = static_cast<int>(plan_.start[x + 1] - b);
      double a[RM] = {};
      if (conflict && hi == t_) {
        for (int r = 0; r < rc; ++r) rows[r] = row(cand[b + r]);
        K_.dots(G_.dtype, rows, rc, &sv, 1, d, a);
        if (sc_) scale_products(a, cand + b, rc, 1);
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

}  // namespace detail
}  // namespace spice
