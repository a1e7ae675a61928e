// AVX-512F kernels: eight float64 lanes per accumulator. Compiled with -mavx512f -mfma -mf16c and
// only entered after a runtime CPU check (see kernels.cpp). Canonical order of this table: lane l
// accumulates j = l (mod 8) for j < d - d % 8 with FMA, reduced as
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
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
      reinterpret_cast<const uint16_t*>(p) + j));
  return _mm512_cvtps_pd(_mm256_cvtph_ps(h));
}
template <>
inline __m512d ld8<DType::BF16>(const char* p, int64_t j) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
      reinterpret_cast<const uint16_t*>(p) + j));
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

template <DType D, int R, int V>
inline void micro(const char* const* rows, const double* const* vecs, int64_t d, double* out,
                  int ldo) {
  __m512d acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_pd();
  const int64_t d8 = d & ~int64_t(7);
  for (int64_t j = 0; j < d8; j += 8) {
    __m512d w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm512_loadu_pd(vecs[v] + j);
    for (int r = 0; r < R; ++r) {
      const __m512d g = ld8<D>(rows[r], j);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_pd(g, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      double s = hsum(acc[r][v]);
      for (int64_t j = d8; j < d; ++j) s = __builtin_fma(ld1<D>(rows[r], j), vecs[v][j], s);
      out[r * ldo + v] = s;
    }
}

template <DType D>
void dots_t(const char* const* rows, int R, const double* const* vecs, int V, int64_t d,
            double* out) {
  int r = 0;
  for (; r + 4 <= R; r += 4) {
    int v = 0;
    for (; v + 4 <= V; v += 4) micro<D, 4, 4>(rows + r, vecs + v, d, out + r * V + v, V);
    for (; v + 2 <= V; v += 2) micro<D, 4, 2>(rows + r, vecs + v, d, out + r * V + v, V);
    if (v < V) micro<D, 4, 1>(rows + r, vecs + v, d, out + r * V + v, V);
  }
  for (; r < R; ++r) {
    int v = 0;
    for (; v + 4 <= V; v += 4) micro<D, 1, 4>(rows + r, vecs + v, d, out + r * V + v, V);
    for (; v < V; ++v) micro<D, 1, 1>(rows + r, vecs + v, d, out + r * V + v, V);
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

#include "kernels_dispatch.inc"

const Table kAvx512{&dots, &sqdots, "avx512"};

}  // namespace

const Table* avx512_table() { return &kAvx512; }

}  // namespace kern
}  // namespace spice
