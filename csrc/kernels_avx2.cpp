// AVX2 + FMA + F16C kernels. This translation unit is compiled with -mavx2 -mfma -mf16c and is
// only entered after a runtime CPU check (see kernels.cpp). Keep it free of standard-library
// templates so no AVX2-compiled inline function can be shared with the portable code.
#include <immintrin.h>

#include "spice/kernels.hpp"

namespace spice {
namespace kern {
namespace {

template <DType D>
inline __m256d ld4(const char* p, int64_t j);
template <>
inline __m256d ld4<DType::F32>(const char* p, int64_t j) {
  return _mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(p) + j));
}
template <>
inline __m256d ld4<DType::F64>(const char* p, int64_t j) {
  return _mm256_loadu_pd(reinterpret_cast<const double*>(p) + j);
}
template <>
inline __m256d ld4<DType::F16>(const char* p, int64_t j) {
  const __m128i h = _mm_loadl_epi64(
      reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(p) + j));
  return _mm256_cvtps_pd(_mm_cvtph_ps(h));
}
template <>
inline __m256d ld4<DType::BF16>(const char* p, int64_t j) {
  const __m128i h = _mm_loadl_epi64(
      reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(p) + j));
  const __m128i w = _mm_unpacklo_epi16(_mm_setzero_si128(), h);
  return _mm256_cvtps_pd(_mm_castsi128_ps(w));
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

inline double hsum(__m256d a) {
  alignas(32) double l[4];
  _mm256_store_pd(l, a);
  return (l[0] + l[1]) + (l[2] + l[3]);
}

// R rows x V vectors, one 4-lane accumulator per dot (the canonical order).
template <DType D, int R, int V>
inline void micro(const char* const* rows, const double* const* vecs, int64_t d, double* out,
                  int ldo) {
  __m256d acc[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = _mm256_setzero_pd();
  const int64_t d4 = d & ~int64_t(3);
  for (int64_t j = 0; j < d4; j += 4) {
    __m256d w[V];
    for (int v = 0; v < V; ++v) w[v] = _mm256_loadu_pd(vecs[v] + j);
    for (int r = 0; r < R; ++r) {
      const __m256d g = ld4<D>(rows[r], j);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm256_fmadd_pd(g, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      double s = hsum(acc[r][v]);
      for (int64_t j = d4; j < d; ++j) s = __builtin_fma(ld1<D>(rows[r], j), vecs[v][j], s);
      out[r * ldo + v] = s;
    }
}

template <DType D>
void dots_t(const char* const* rows, int R, const double* const* vecs, int V, int64_t d,
            double* out, const char* const* /*pf*/ = nullptr, int /*npf*/ = 0,
            bool /*cold_vecs*/ = false) {
  int r = 0;
  for (; r + 4 <= R; r += 4) {
    int v = 0;
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
  __m256d acc = _mm256_setzero_pd();
  const int64_t d4 = d & ~int64_t(3);
  if (w) {
    for (int64_t j = 0; j < d4; j += 4) {
      const __m256d g = ld4<D>(row, j);
      acc = _mm256_fmadd_pd(_mm256_mul_pd(g, g), _mm256_loadu_pd(w + j), acc);
    }
  } else {
    for (int64_t j = 0; j < d4; j += 4) {
      const __m256d g = ld4<D>(row, j);
      acc = _mm256_fmadd_pd(g, g, acc);
    }
  }
  double s = hsum(acc);
  for (int64_t j = d4; j < d; ++j) {
    const double x = ld1<D>(row, j);
    s = w ? __builtin_fma(x * x, w[j], s) : __builtin_fma(x, x, s);
  }
  return s;
}

template <DType D>
void sqdots_t(const char* const* rows, int R, const double* vec, int64_t d, double* out) {
  for (int r = 0; r < R; ++r) out[r] = sq1<D>(rows[r], vec, d);
}

// M[a * d + b] -= ws[s][a] * ws[s][b] for a in [a0, a1), b in [bs, d), s = 0 .. S-1 in order (one
// FMA per s). Columns in blocks so the block of the S w rows stays in cache across rows a.
void rank_sub(const double* const* ws, int S, int64_t a0, int64_t a1, int64_t bs, int64_t d,
              double* M) {
  constexpr int64_t BB = 512;
  for (int64_t b0 = bs; b0 < d; b0 += BB) {
    const int64_t b1 = d - b0 < BB ? d : b0 + BB;
    for (int64_t a = a0; a < a1; ++a) {
      double* row = M + a * d;
      int64_t b = b0;
      for (; b + 16 <= b1; b += 16) {
        __m256d c0 = _mm256_loadu_pd(row + b), c1 = _mm256_loadu_pd(row + b + 4);
        __m256d c2 = _mm256_loadu_pd(row + b + 8), c3 = _mm256_loadu_pd(row + b + 12);
        for (int s = 0; s < S; ++s) {
          const __m256d wa = _mm256_set1_pd(ws[s][a]);
          const double* w = ws[s] + b;
          c0 = _mm256_fnmadd_pd(wa, _mm256_loadu_pd(w), c0);
          c1 = _mm256_fnmadd_pd(wa, _mm256_loadu_pd(w + 4), c1);
          c2 = _mm256_fnmadd_pd(wa, _mm256_loadu_pd(w + 8), c2);
          c3 = _mm256_fnmadd_pd(wa, _mm256_loadu_pd(w + 12), c3);
        }
        _mm256_storeu_pd(row + b, c0);
        _mm256_storeu_pd(row + b + 4, c1);
        _mm256_storeu_pd(row + b + 8, c2);
        _mm256_storeu_pd(row + b + 12, c3);
      }
      for (; b < b1; ++b) {
        double c = row[b];
        for (int s = 0; s < S; ++s) c = __builtin_fma(-ws[s][a], ws[s][b], c);
        row[b] = c;
      }
    }
  }
}

// z[b] += coef[r] * rows[r][b], r in order, one FMA each.
template <int ZB>
inline void axpy_block(const double* const* rows, const double* coef, int R, int64_t b, double* z) {
  __m256d acc[ZB];
  for (int u = 0; u < ZB; ++u) acc[u] = _mm256_loadu_pd(z + b + 4 * u);
  for (int r = 0; r < R; ++r) {
    const __m256d c = _mm256_set1_pd(coef[r]);
    for (int u = 0; u < ZB; ++u)
      acc[u] = _mm256_fmadd_pd(c, _mm256_loadu_pd(rows[r] + b + 4 * u), acc[u]);
  }
  for (int u = 0; u < ZB; ++u) _mm256_storeu_pd(z + b + 4 * u, acc[u]);
}

void axpy_rows(const double* const* rows, const double* coef, int R, int64_t len, double* z) {
  int64_t b = 0;
  for (; b + 32 <= len; b += 32) axpy_block<8>(rows, coef, R, b, z);
  for (; b + 4 <= len; b += 4) axpy_block<1>(rows, coef, R, b, z);
  for (; b < len; ++b) {
    double c = z[b];
    for (int r = 0; r < R; ++r) c = __builtin_fma(coef[r], rows[r][b], c);
    z[b] = c;
  }
}

#include "kernels_dispatch.inc"

const Table kAvx2{&dots, &sqdots, &dots_pf, &rank_sub, &axpy_rows, 4, "avx2-fma"};

}  // namespace

const Table* avx2_table() { return &kAvx2; }

}  // namespace kern
}  // namespace spice
