// Row kernels: dot products of feature rows (any DType) with float64 vectors.
//
// Within one kernel table every dot product is computed in one canonical order, whatever tile
// size computes it: L float64 lanes (L = 4 for the generic and AVX2 tables, 8 for AVX-512), lane l
// accumulating the products j = l (mod L) for j < d - d % L (fused multiply-add on the SIMD
// paths), reduced pairwise in a fixed tree, then the tail added in order. This makes naive, lazy
// and stochastic greedy see bit-identical numbers, so they pick identical sequences (ties to the
// lowest index) and results do not depend on thread count. The table is chosen once per process.
#pragma once

#include <cstdint>
#include <string>

#include "core.hpp"

namespace spice {
namespace kern {

constexpr int kMaxTileRows = 8;

struct Table {
  // out[r * V + v] = <row r, vec v>, r < R, v < V.
  void (*dots)(DType dt, const char* const* rows, int R, const double* const* vecs, int V,
               int64_t d, double* out);
  // out[r] = sum_j row_r[j]^2 * vec[j]  (vec == nullptr: plain squared norm).
  void (*sqdots)(DType dt, const char* const* rows, int R, const double* vec, int64_t d,
                 double* out);
  // dots, prefetching the npf rows pf[] (the caller's next tile) into cache along the way;
  // cold_vecs: the vecs are not in L2 yet (the first tile to read them), so prefetch them too
  // (rows longer than the column block; shorter ones always prefetch the next vecs).
  void (*dots_pf)(DType dt, const char* const* rows, int R, const double* const* vecs, int V,
                  int64_t d, double* out, const char* const* pf, int npf, bool cold_vecs);
  // M[a * d + b] -= ws[s][a] * ws[s][b] for rows a in [a0, a1) of the d x d matrix M, columns
  // b in [b0, d), s = 0 .. S-1 in order (the order of updates per element is fixed, so the
  // result does not depend on how callers split the rows a between threads).
  void (*rank_sub)(const double* const* ws, int S, int64_t a0, int64_t a1, int64_t b0, int64_t d,
                   double* M);
  // z[b] += coef[r] * rows[r][b] for b < len, r = 0 .. R-1 in order (one FMA each on the SIMD
  // paths), whatever the caller's split of b.
  void (*axpy_rows)(const double* const* rows, const double* coef, int R, int64_t len, double* z);
  // Rows per register tile: callers pass tiles of this many rows (at most kMaxTileRows).
  int tile_rows;
  const char* isa;
};

// The kernel table chosen once for this CPU.
const Table& table();

// Widen one row to float64 (exact); out has d entries.
void widen_row(DType dt, const char* row, int64_t d, double* out);

// The portable table, and the AVX2 and AVX-512 ones, which exist only in x86-64 builds.
const Table& generic_table();
const Table* avx2_table();    // nullptr when not compiled in
const Table* avx512_table();  // nullptr when not compiled in

// IEEE half and bfloat16 to float.
float half_to_float(uint16_t h);
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

}  // namespace kern
}  // namespace spice
