// The factor state: w rows, M^{-1} once kept, its folds and the bound it gives (see inverse.hpp).
#include "spice/inverse.hpp"
#include "spice/tuning.hpp"

#include <algorithm>
#include <cmath>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spice {

void InverseFactor::append(const char* row_j, const double* g, double scale, double sj) {
  const int64_t d = d_, t = t_;
  W_.grow(static_cast<size_t>(t + 1) * d);
  double* w = W_.data() + t * d;
  if (t >= d) append_from_inverse(row_j, g, scale, sj, w);
  else append_from_rows(row_j, g, scale, sj, w);
  ++t_;
}

void InverseFactor::append_from_inverse(const char* row_j, const double* g, double scale,
                                        double sj, double* w) {
  const int64_t d = d_, t = t_;
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
  if (t - minv_t_ >= kMinvLag) flush();
  const int64_t np = t - minv_t_;  // pending rows
  double c[kMinvLag];
  {
    const char* rj = row_j;
    const double* vecs[kMinvLag];
    for (int64_t v = 0; v < np; ++v) vecs[v] = W_.data() + (minv_t_ + v) * d;
    if (np > 0) K_.dots(G_.dtype, &rj, 1, vecs, static_cast<int>(np), d, c);
    if (sj != 1.0)
      for (int64_t v = 0; v < np; ++v) c[v] *= sj;
  }
  const kern::Table& K = K_;
  const double* gv = g;
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
}

void InverseFactor::append_from_rows(const char* row_j, const double* g, double scale, double sj,
                                     double* w) {
  const int64_t d = d_, t = t_;
  // c_s = <g_j, w_s>, u = g_j - sum_s c_s w_s, w_t = u * sqrt(alpha / (1 + alpha q_j)), in
  // one sweep over W: a chunk of rows gets its dots, then its updates of u while it is still
  // in cache (about 512 KB), instead of two passes over all t x d of W. Every u[x] subtracts
  // c_s w_s[x] in ascending s, whatever the thread count.
  std::vector<double> c(t);
  const char* rj = row_j;
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
      if (sj != 1.0)
        for (int v = 0; v < nv; ++v) c[s0 + v0 + v] *= sj;
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

// Fold the pending w rows (minv_t_ .. t_-1) into minv_: one pass over the d x d matrix per
// batch of rows (rank-kMinvLag update), row by row in parallel. From d = kTriMinD only the
// upper triangle (plus the diagonal blocks) is ever read, so only that is written: about half
// the arithmetic and memory traffic of a fold.
void InverseFactor::flush() {
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
// M^{-1} is symmetric, so (from d = 512) only its upper triangle is read: for a block A of rows
// [a0, a1), g^T M^{-1} g gains sum_{a in A} g_a (sum_{b in A} M_ab g_b + 2 sum_{b >= a1} M_ab g_b).
// Each block's share is kept per candidate and the shares are added in block order, so the result
// does not depend on how threads split the blocks.
int64_t InverseFactor::bound(const std::vector<int64_t>& cand, const RowState* rs,
                             std::vector<double>& qub, const double* row_scale) {
  const int64_t m = static_cast<int64_t>(cand.size()), d = d_;
  qub.assign(m, 0.0);
  constexpr int RM = kern::kMaxTileRows, VB = static_cast<int>(kBoundBlock), GT = 16;
  const int R = K_.tile_rows;
  const int64_t block = static_cast<int64_t>(GT) * R;  // candidates per pass over M^{-1}
  const int64_t nach = (d + VB - 1) / VB;
  if (ubuf_.size() < static_cast<size_t>(block * nach)) ubuf_.resize(block * nach);
  double* part = ubuf_.data();      // part[c * nach + ac]: block ac's share of candidate c
  const int64_t np = t_ - minv_t_;  // w rows not folded into minv_ yet
  const int64_t es = static_cast<int64_t>(G_.elem_size());
  // Below d = 512 the halved rows are too short for the kernels (a 6 x 4 tile's 24 reductions
  // outweigh its FMAs): whole rows of M^{-1}, as M^{-1} g.
  const bool tri = upper_only();
  for (int64_t b0 = 0; b0 < m; b0 += block) {
    const int64_t nb = std::min(block, m - b0);
    const int ntl = static_cast<int>((nb + R - 1) / R);
    const char* rows[GT][RM];
    int rc[GT];
    for (int x = 0; x < ntl; ++x) {
      rc[x] = static_cast<int>(std::min<int64_t>(R, nb - x * R));
      for (int r = 0; r < rc[x]; ++r) rows[x][r] = G_.row(cand[b0 + x * R + r]);
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
      const double si = row_scale ? row_scale[cand[b0 + c]] : 1.0;
      if (row_scale) qt *= si * si;
      if (np > 0) {
        const char* rw = rows[c / R][c % R];
        double cp[kMinvLag];
        const double* pv[kMinvLag];
        for (int64_t v = 0; v < np; ++v) pv[v] = W_.data() + (minv_t_ + v) * d;
        K_.dots(G_.dtype, &rw, 1, pv, static_cast<int>(np), d, cp);
        if (row_scale)
          for (int64_t v = 0; v < np; ++v) cp[v] *= si;
        for (int64_t v = 0; v < np; ++v) qt -= cp[v] * cp[v];
      }
      const int64_t i = cand[b0 + c];
      qub[b0 + c] = std::min(rs[i].q, std::max(0.0, qt) + 1e-9 * rs[i].norm2);
    }
  }
  return tri ? m * (d + 1) / 2 : m * d;
}

}  // namespace spice
