// The factor state of the log-det greedy: the rows w_s with M_t^{-1} = I - sum_{s<t} w_s w_s^T,
// and, once t reaches d, M_t^{-1} itself (folded lazily), which makes a pick O(d^2) instead of
// O(t d) and gives far-behind candidates a cheap upper bound (docs/algorithm.md §2, §5).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spice/candidates.hpp"
#include "spice/core.hpp"
#include "spice/kernels.hpp"
#include "spice/row_store.hpp"

namespace spice {

class InverseFactor {
 public:
  // G: a copy of the view (the caller keeps its rows alive); K: the process's kernel table.
  InverseFactor(const MatrixView& G, const kern::Table& K, int threads)
      : G_(G), K_(K), d_(G.d), nt_(threads) {}
  // Room for cap rows of w (k x d float64), in memory or spilled to a file in spill_dir.
  // Rows are never moved once written: catch-ups hold pointers into them while W grows.
  void open(size_t cap_rows, const std::string& spill_dir) {
    W_.open(cap_rows * static_cast<size_t>(d_), spill_dir);
  }
  int64_t rows() const { return t_; }
  void set_threads(int threads) { nt_ = threads; }
  const double* w(int64_t s) const { return W_.data() + s * d_; }
  bool has_inverse() const { return !minv_.empty(); }
  // Append w_t = scale * M_t^{-1} g for a pick: row_j is its row of G, g the same row widened
  // to float64, scale = sqrt(alpha / (1 + alpha q_j)). Unit rows: g is already times sj =
  // 1 / ||g_j||, and the products of row_j are scaled by sj (1: the plain path).
  void append(const char* row_j, const double* g, double scale, double sj = 1.0);
  // For far-behind candidates once M^{-1} is kept: qub[c] bounds q_i(t) of i = cand[c] from
  // above (at most rs[i].q). Unit rows: row_scale[i] = 1 / ||g_i|| (null: plain rows). Returns
  // the dot products it cost (in units of d).
  int64_t bound(const std::vector<int64_t>& cand, const RowState* rs, std::vector<double>& qub,
                const double* row_scale = nullptr);

 private:
  MatrixView G_;
  const kern::Table& K_;
  int64_t d_;
  int nt_;
  int64_t t_ = 0;             // rows of W
  RowStore W_;                // t rows of length d
  std::vector<double> minv_;  // d x d: M^{-1} = I - sum_{s < minv_t_} w_s w_s^T, once t >= d
  int64_t minv_t_ = 0;
  std::vector<double> ubuf_;  // scratch of bound (per-block shares)
  std::vector<double> zbuf_;  // scratch of append's M^{-1} g
  static constexpr int64_t kMinvLag = 32;  // w rows folded into minv_ together
  // Who reads which part of minv_: u = M^{-1} g (append) reads row a from the start of its
  // block of kUBlock rows; the bound reads whole rows below d = kTriMinD and, from it, row a
  // from the start of its block of kBoundBlock rows. The folds write what is read: from
  // d = kTriMinD, row a from the start of its block of kFoldAlign rows (a multiple of both).
  static constexpr int64_t kUBlock = 48, kBoundBlock = 32, kTriMinD = 512, kFoldAlign = 96;
  static_assert(kFoldAlign % kUBlock == 0 && kFoldAlign % kBoundBlock == 0, "fold alignment");
  bool upper_only() const { return d_ >= kTriMinD; }  // M^{-1} read (and folded) as a triangle
  void append_from_inverse(const char* row_j, const double* g, double scale, double sj, double* w);
  void append_from_rows(const char* row_j, const double* g, double scale, double sj, double* w);
  void flush();
};

}  // namespace spice
