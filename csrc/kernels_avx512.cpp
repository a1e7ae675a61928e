// AVX-512F kernels: eight float64 lanes per accumulator. Compiled with -mavx512f -mavx2 -mfma
// -mf16c and only entered after a runtime CPU check (see kernels.cpp). Canonical order of this
// table: lane l accumulates j = l (mod 8) for j < d - d % 8 with FMA, reduced as
// ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), then the tail in order with FMA.
// Keep this file free of standard-library templates (see kernels_avx2.cpp).
#include <immintrin.h>

#include "spice/kernels.hpp"

namespace spice {
namespace kern {
namespace {

template <DType D>
inline __m512d ld8(const char* p, int64_t j);
template <>
inline __m512d ld8<DType::F32>(const char* p, int64_t j) {
  return _mm512_cvtps_pd(_mm256_loadu_ps(reinterpret_cast<const float*>(p) + j));
}
template <>
inline __m512d ld8<DType::F64>(const char* p, int64_t j) {
  return _mm512_loadu_pd(reinterpret_cast<const double*>(p) + j);
}
template <>
inline __m512d ld8<DType::F16>(const char* p, int64_t j) {
  const __m128i h = _mm_loadu_si128(
      reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(p) + j));
  return _mm512_cvtps_pd(_mm256_cvtph_ps(h));
}
template <>
inline __m512d ld8<DType::BF16>(const char* p, int64_t j) {
  const __m128i h = _mm_loadu_si128(
      reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(p) + j));
  const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
  return _mm512_cvtps_pd(_mm256_castsi256_ps(w));
}

template <DType D>
inline double ld1(const char* p, int64_t j);
template <>
inline double ld1<DType::F32>(const char* p, int64_t j) {
  return reinterpret_cast<const float*>(p)[j];
}
template <>
inline double ld1<DType::F64>(const char* p, int64_t j) {
  return reinterpret_cast<const double*>(p)[j];
}
template <>
inline double ld1<DType::F16>(const char* p, int64_t j) {
  return _cvtsh_ss(reinterpret_cast<const uint16_t*>(p)[j]);
}
template <>
inline double ld1<DType::BF16>(const char* p, int64_t j) {
  return bf16_to_float(reinterpret_cast<const uint16_t*>(p)[j]);
}

inline double hsum(__m512d a) {
  alignas(64) double l[8];
  _mm512_store_pd(l, a);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// hsum of eight accumulators at once, lane i = hsum(a[i]): the same addition tree (pairs, then
// pairs of pairs, then the halves), so bit-identical to hsum.
inline __m512d hsum8(const __m512d* a) {
  __m512d u[4];
  for (int p = 0; p < 4; ++p)
    u[p] = _mm512_add_pd(_mm512_unpacklo_pd(a[2 * p], a[2 * p + 1]),
                         _mm512_unpackhi_pd(a[2 * p], a[2 * p + 1]));
  const __m512d v0 = _mm512_add_pd(_mm512_shuffle_f64x2(u[0], u[1], 0x88),
                                   _mm512_shuffle_f64x2(u[0], u[1], 0xDD));
  const __m512d v1 = _mm512_add_pd(_mm512_shuffle_f64x2(u[2], u[3], 0x88),
                                   _mm512_shuffle_f64x2(u[2], u[3], 0xDD));
  return _mm512_add_pd(_mm512_shuffle_f64x2(v0, v1, 0x88), _mm512_shuffle_f64x2(v0, v1, 0xDD));
}

// Bytes per element of a row.
template <DType D>
constexpr int64_t esize() {
  return D == DType::F64 ? 8 : D == DType::F32 ? 4 : 2;
}

// acc[r][v] += rows[r] . vecs[v] over columns [j0, j1) (multiples of 8), lane l taking the
// columns j = l (mod 8) in ascending order. With pf != nullptr the npf rows pf[] are prefetched
// into L1 along the way (the caller's next tile: rows of G are cold, and a short catch-up leaves
// the hardware prefetcher no time to ramp up); pfw[] likewise for the next w vectors.
template <DType D, int R, int V>
__attribute__((always_inline)) inline void accumulate(__m512d (&acc)[R][V], const char* const* rows,
                                                      const double* const* vecs, int64_t j0,
                                                      int64_t j1, const char* const* pf = nullptr,
                                                      int npf = 0,
                                                      const double* const* pfw = nullptr,
                                                      int npfw = 0) {
  constexpr int64_t kLineElems = 64 / esize<D>();
  for (int64_t j = j0; j < j1; j += 8) {
    if (pf && (j & (kLineElems - 1)) == 0)
      for (int p = 0; p < npf; ++p) _mm_prefetch(pf[p] + j * esize<D>(), _MM_HINT_T0);
    if (pfw)
      for (int p = 0; p < npfw; ++p)
        _mm_prefetch(reinterpret_cast<const char*>(pfw[p] + j), _MM_HINT_T0);
    __m512d w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_pd(vecs[v] + j);
    for (int r = 0; r < R; ++r) {
      const __m512d g = ld8<D>(rows[r], j);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_pd(g, w[v], acc[r][v]);
    }
  }
}

// out[r * ldo + v] = the reduction of acc[r][v] (eight accumulators at a time), then the tail
// columns [d - d % 8, d) in order: the canonical order of this table.
template <DType D, int R, int V>
__attribute__((always_inline)) inline void finish(const __m512d (&acc)[R][V],
                                                  const char* const* rows,
                                                  const double* const* vecs, int64_t d, double* out,
                                                  int ldo) {
  constexpr int N = R * V, NG = (N + 7) / 8;
  __m512d flat[NG * 8];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) flat[r * V + v] = acc[r][v];
  for (int x = N; x < NG * 8; ++x) flat[x] = _mm512_setzero_pd();
  alignas(64) double sums[NG * 8];
  for (int g = 0; g < NG; ++g) _mm512_store_pd(sums + 8 * g, hsum8(flat + 8 * g));
  const int64_t d8 = d & ~int64_t(7);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      double s = sums[r * V + v];
      for (int64_t j = d8; j < d; ++j) s = __builtin_fma(ld1<D>(rows[r], j), vecs[v][j], s);
      out[r * ldo + v] = s;
    }
}

// R x V register tile over the whole row (prefetching as in accumulate).
template <DType D, int R, int V>
inline void micro(const char* const* rows, const double* const* vecs, int64_t d, double* out,
                  int ldo, const char* const* pf = nullptr, int npf = 0,
                  const double* const* pfw = nullptr, int npfw = 0) {
  __m512d acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_pd();
  accumulate<D, R, V>(acc, rows, vecs, 0, d & ~int64_t(7), pf, npf, pfw, npfw);
  finish<D, R, V>(acc, rows, vecs, d, out, ldo);
}

// Column-blocked R x V tile: the accumulators wait in acc_mem (R * V vectors) between column
// blocks, so that a block of the tile's rows and of its w rows stays in L1 (at d = 1024 six
// float32 rows and four w rows are 56 KB, more than L1). Per lane the products still come in
// ascending j: bit-identical to micro.
template <DType D, int R, int V>
inline void micro_blk(const char* const* rows, const double* const* vecs, int64_t j0, int64_t j1,
                      __m512d* acc_mem, const double* const* pfw = nullptr, int npfw = 0) {
  __m512d acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = acc_mem[r * V + v];
  accumulate<D, R, V>(acc, rows, vecs, j0, j1, nullptr, 0, pfw, npfw);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc_mem[r * V + v] = acc[r][v];
}

// Rows longer than this are taken in column blocks of this many elements (catch-up
// micro-benchmark, 6 float32 rows x 32 w rows: 4.6 -> 6.2 FMA vectors a ns at d = 1024; no
// gain at d = 512, where a tile already fits L1).
constexpr int64_t kColBlock = 512;

// R rows against V vectors (V % 4 == 0, V <= 32) in R x 4 tiles, column-blocked.
template <DType D, int R>
void dots_blocked(const char* const* rows, const double* const* vecs, int V, int64_t d, double* out,
                  int ldo, bool cold_vecs) {
  alignas(64) __m512d acc[R * 32];
  for (int x = 0; x < R * V; ++x) acc[x] = _mm512_setzero_pd();
  const int64_t d8 = d & ~int64_t(7);
  for (int64_t j0 = 0; j0 < d8; j0 += kColBlock) {
    const int64_t j1 = d8 - j0 > kColBlock ? j0 + kColBlock : d8;
    for (int v = 0; v < V; v += 4) {
      // Vectors not in L2 yet (cold_vecs: the first tile of a chunk reads them from L3 or
      // memory): fetch the next step's (the next four in this column block, else the first
      // four of the next block) along the way; their 4 KB pieces are too short for the
      // hardware prefetcher. Vectors already in L2 go without (prefetching them into L1
      // evicts this tile's rows).
      const double* nx[4];
      int nn = 0;
      if (cold_vecs && v + 4 < V) {
        for (int u = 0; u < 4; ++u) nx[nn++] = vecs[v + 4 + u];
      } else if (cold_vecs && j1 < d8) {
        for (int u = 0; u < 4; ++u) nx[nn++] = vecs[u] + (j1 - j0);
      }
      micro_blk<D, R, 4>(rows, vecs + v, j0, j1, acc + R * v, nn ? nx : nullptr, nn);
    }
  }
  for (int v = 0; v < V; v += 4) {
    __m512d a[R][4];
    for (int x = 0; x < R * 4; ++x) a[x / 4][x % 4] = acc[R * v + x];
    finish<D, R, 4>(a, rows, vecs + v, d, out + v, ldo);
  }
}

// R rows: the whole groups of four vectors column-blocked (32 at a time), the rest as micro.
template <DType D, int R>
void dots_long(const char* const* rows, const double* const* vecs, int V, int64_t d, double* out,
               int ldo, bool cold_vecs) {
  const int V4 = V / 4 * 4;
  for (int v = 0; v < V4; v += 32)
    dots_blocked<D, R>(rows, vecs + v, V4 - v < 32 ? V4 - v : 32, d, out + v, ldo, cold_vecs);
  int v = V4;
  for (; v + 2 <= V; v += 2) micro<D, R, 2>(rows, vecs + v, d, out + v, ldo);
  if (v < V) micro<D, R, 1>(rows, vecs + v, d, out + v, ldo);
}

// RR rows against V vectors in RR x VW register tiles, then 4, 2 and 1 vectors at a time.
template <DType D, int RR, int VW>
void rest_tile(const char* const* rows, const double* const* vecs, int V, int64_t d, double* out,
               int ldo) {
  int v = 0;
  for (; v + VW <= V; v += VW) micro<D, RR, VW>(rows, vecs + v, d, out + v, ldo);
  if (VW > 4)
    for (; v + 4 <= V; v += 4) micro<D, RR, 4>(rows, vecs + v, d, out + v, ldo);
  for (; v + 2 <= V; v += 2) micro<D, RR, 2>(rows, vecs + v, d, out + v, ldo);
  if (v < V) micro<D, RR, 1>(rows, vecs + v, d, out + v, ldo);
}

// Rows in tiles of 6 (6 x 4 accumulators: 24 of the 32 registers), then the rest. Every dot
// is computed in the canonical order whatever tile computes it. The first vecs block of each
// tile prefetches the next tile's rows (or pf[] after the last tile).
template <DType D>
void dots_t(const char* const* rows, int R, const double* const* vecs, int V, int64_t d,
            double* out, const char* const* pf = nullptr, int npf = 0, bool cold_vecs = false) {
  if (V <= 2 && esize<D>() >= 4 && npf > 0) {
    // The naive step (one or two vectors) over float32/float64 rows streaming from memory (the
    // caller passes its next tile to prefetch): little arithmetic per byte, so the rows' memory
    // stream decides. One row at a time, each prefetching the row kNaivePf places after it:
    // two memory streams per core, faster than 3-row tiles that prefetch the next 3 rows
    // (docs/design-decisions.md §1). float16 rows carry half the bytes for the
    // same arithmetic and keep the 6-row tiles (a single float16 row is compute-bound).
    constexpr int kNaivePf = 6;
    const char* all[2 * kMaxTileRows];
    int na = 0;
    for (int r = 0; r < R; ++r) all[na++] = rows[r];
    for (int r = 0; r < npf; ++r) all[na++] = pf[r];
    for (int r = 0; r < R; ++r) {
      const char* const* p = r + kNaivePf < na ? all + r + kNaivePf : nullptr;
      if (V == 2) micro<D, 1, 2>(rows + r, vecs, d, out + r * V, V, p, p ? 1 : 0);
      else micro<D, 1, 1>(rows + r, vecs, d, out + r * V, V, p, p ? 1 : 0);
    }
    return;
  }
  int r = 0;
  if (d > kColBlock && V >= 4) {  // long rows: column blocks (L1-sized; w prefetch if cold)
    for (; r + 6 <= R; r += 6) {
      dots_long<D, 6>(rows + r, vecs, V, d, out + r * V, V, cold_vecs);
      cold_vecs = false;  // the next 6 rows find them in cache
    }
    if (R - r == 5) return dots_long<D, 5>(rows + r, vecs, V, d, out + r * V, V, cold_vecs);
    if (R - r == 4) return dots_long<D, 4>(rows + r, vecs, V, d, out + r * V, V, cold_vecs);
  }
  for (; r + 6 <= R; r += 6) {
    const char* const* nx = r + 12 <= R ? rows + r + 6 : pf;
    const int nnx = r + 12 <= R ? 6 : npf;
    int v = 0;
    for (; v + 4 <= V; v += 4)
      micro<D, 6, 4>(rows + r, vecs + v, d, out + r * V + v, V, v == 0 ? nx : nullptr, nnx,
                     v + 4 < V ? vecs + v + 4 : nullptr, V - v - 4 < 4 ? V - v - 4 : 4);
    for (; v + 2 <= V; v += 2)
      micro<D, 6, 2>(rows + r, vecs + v, d, out + r * V + v, V, v == 0 ? nx : nullptr, nnx);
    if (v < V)
      micro<D, 6, 1>(rows + r, vecs + v, d, out + r * V + v, V, v == 0 ? nx : nullptr, nnx);
  }
  // The rows left over (a tile of R % 6 rows): wider register tiles for fewer rows (R x VW
  // accumulators, 18-20 of the 32 registers), so that each row chunk loaded feeds enough
  // independent FMAs. A 1 x 4 tile has four dependency chains and runs at about a quarter of the
  // FMA throughput of a 6 x 4 tile.
  switch (R - r) {
    case 5: return rest_tile<D, 5, 4>(rows + r, vecs, V, d, out + r * V, V);
    case 4: return rest_tile<D, 4, 4>(rows + r, vecs, V, d, out + r * V, V);
    case 3: return rest_tile<D, 3, 6>(rows + r, vecs, V, d, out + r * V, V);
    case 2: return rest_tile<D, 2, 8>(rows + r, vecs, V, d, out + r * V, V);
    case 1: return rest_tile<D, 1, 8>(rows + r, vecs, V, d, out + r * V, V);
    default: return;
  }
}

template <DType D>
inline double sq1(const char* row, const double* w, int64_t d) {
  __m512d acc = _mm512_setzero_pd();
  const int64_t d8 = d & ~int64_t(7);
  if (w) {
    for (int64_t j = 0; j < d8; j += 8) {
      const __m512d g = ld8<D>(row, j);
      acc = _mm512_fmadd_pd(_mm512_mul_pd(g, g), _mm512_loadu_pd(w + j), acc);
    }
  } else {
    for (int64_t j = 0; j < d8; j += 8) {
      const __m512d g = ld8<D>(row, j);
      acc = _mm512_fmadd_pd(g, g, acc);
    }
  }
  double s = hsum(acc);
  for (int64_t j = d8; j < d; ++j) {
    const double x = ld1<D>(row, j);
    s = w ? __builtin_fma(x * x, w[j], s) : __builtin_fma(x, x, s);
  }
  return s;
}

template <DType D>
void sqdots_t(const char* const* rows, int R, const double* vec, int64_t d, double* out) {
  for (int r = 0; r < R; ++r) out[r] = sq1<D>(rows[r], vec, d);
}

// RA rows a of M from column b on, 32 columns: M[a][b..b+32) -= ws[s][a] * ws[s][b..b+32) for
// s = 0 .. S-1 in order, one FMA per s and element.
template <int RA>
inline void rank_tile(const double* const* ws, int S, int64_t a, int64_t b, int64_t d, double* M) {
  __m512d c[RA][4];
  for (int r = 0; r < RA; ++r)
    for (int u = 0; u < 4; ++u) c[r][u] = _mm512_loadu_pd(M + (a + r) * d + b + 8 * u);
  for (int s = 0; s < S; ++s) {
    const double* w = ws[s];
    __m512d wb[4];
    for (int u = 0; u < 4; ++u) wb[u] = _mm512_loadu_pd(w + b + 8 * u);
    for (int r = 0; r < RA; ++r) {
      const __m512d wa = _mm512_set1_pd(w[a + r]);
      for (int u = 0; u < 4; ++u) c[r][u] = _mm512_fnmadd_pd(wa, wb[u], c[r][u]);
    }
  }
  for (int r = 0; r < RA; ++r)
    for (int u = 0; u < 4; ++u) _mm512_storeu_pd(M + (a + r) * d + b + 8 * u, c[r][u]);
}

// M[a * d + b] -= ws[s][a] * ws[s][b] for a in [a0, a1), b in [bs, d), s = 0 .. S-1 in order
// (one FMA per s). Six rows of M at a time, so that each block of w loaded feeds six rows' FMAs
// (one row at a time was bound by loads: five per four FMAs); columns in blocks so that the S w
// rows' block stays in cache across rows a.
void rank_sub(const double* const* ws, int S, int64_t a0, int64_t a1, int64_t bs, int64_t d,
              double* M) {
  constexpr int64_t BB = 512;
  for (int64_t b0 = bs; b0 < d; b0 += BB) {
    const int64_t b1 = d - b0 < BB ? d : b0 + BB;
    const int64_t bv = b0 + (b1 - b0) / 32 * 32;  // columns [b0, bv) in 32s, then one by one
    int64_t a = a0;
    for (; a + 6 <= a1; a += 6)
      for (int64_t b = b0; b < bv; b += 32) rank_tile<6>(ws, S, a, b, d, M);
    for (; a < a1; ++a)
      for (int64_t b = b0; b < bv; b += 32) rank_tile<1>(ws, S, a, b, d, M);
    for (a = a0; a < a1; ++a) {
      double* row = M + a * d;
      for (int64_t b = bv; b < b1; ++b) {
        double c = row[b];
        for (int s = 0; s < S; ++s) c = __builtin_fma(-ws[s][a], ws[s][b], c);
        row[b] = c;
      }
    }
  }
}

// z[b] += coef[r] * rows[r][b], r in order, one FMA each. Blocks of ZB vectors: every row adds
// into each of them, and with eight independent chains the FMA latency (4 cycles) is hidden;
// two chains left a long row list (R = 64 in add_pick's sweep) latency-bound.
template <int ZB>
inline void axpy_block(const double* const* rows, const double* coef, int R, int64_t b, double* z) {
  __m512d acc[ZB];
  for (int u = 0; u < ZB; ++u) acc[u] = _mm512_loadu_pd(z + b + 8 * u);
  for (int r = 0; r < R; ++r) {
    const __m512d c = _mm512_set1_pd(coef[r]);
    for (int u = 0; u < ZB; ++u)
      acc[u] = _mm512_fmadd_pd(c, _mm512_loadu_pd(rows[r] + b + 8 * u), acc[u]);
  }
  for (int u = 0; u < ZB; ++u) _mm512_storeu_pd(z + b + 8 * u, acc[u]);
}

void axpy_rows(const double* const* rows, const double* coef, int R, int64_t len, double* z) {
  int64_t b = 0;
  for (; b + 64 <= len; b += 64) axpy_block<8>(rows, coef, R, b, z);
  for (; b + 8 <= len; b += 8) axpy_block<1>(rows, coef, R, b, z);
  for (; b < len; ++b) {
    double c = z[b];
    for (int r = 0; r < R; ++r) c = __builtin_fma(coef[r], rows[r][b], c);
    z[b] = c;
  }
}

#include "kernels_dispatch.inc"

const Table kAvx512{&dots, &sqdots, &dots_pf, &rank_sub, &axpy_rows, 6, "avx512"};

}  // namespace

const Table* avx512_table() { return &kAvx512; }

}  // namespace kern
}  // namespace spice
