// Portable kernels (no FMA contraction: compiled with -ffp-contract=off).
#include <cstring>

#include "spice/kernels.hpp"

namespace spice {
namespace kern {

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3ffu;
      bits = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

namespace {

template <DType D>
inline double load(const char* p, int64_t j);
template <>
inline double load<DType::F32>(const char* p, int64_t j) {
  return reinterpret_cast<const float*>(p)[j];
}
template <>
inline double load<DType::F64>(const char* p, int64_t j) {
  return reinterpret_cast<const double*>(p)[j];
}
template <>
inline double load<DType::F16>(const char* p, int64_t j) {
  return half_to_float(reinterpret_cast<const uint16_t*>(p)[j]);
}
template <>
inline double load<DType::BF16>(const char* p, int64_t j) {
  return bf16_to_float(reinterpret_cast<const uint16_t*>(p)[j]);
}

template <DType D>
double dot1(const char* row, const double* w, int64_t d) {
  const int64_t d4 = d & ~int64_t(3);
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int64_t j = 0; j < d4; j += 4) {
    a0 = a0 + load<D>(row, j) * w[j];
    a1 = a1 + load<D>(row, j + 1) * w[j + 1];
    a2 = a2 + load<D>(row, j + 2) * w[j + 2];
    a3 = a3 + load<D>(row, j + 3) * w[j + 3];
  }
  double s = (a0 + a1) + (a2 + a3);
  for (int64_t j = d4; j < d; ++j) s = s + load<D>(row, j) * w[j];
  return s;
}

template <DType D>
double sq1(const char* row, const double* w, int64_t d) {
  const int64_t d4 = d & ~int64_t(3);
  double a[4] = {0, 0, 0, 0};
  for (int64_t j = 0; j < d4; j += 4) {
    for (int l = 0; l < 4; ++l) {
      const double x = load<D>(row, j + l);
      a[l] = a[l] + (x * x) * (w ? w[j + l] : 1.0);
    }
  }
  double s = (a[0] + a[1]) + (a[2] + a[3]);
  for (int64_t j = d4; j < d; ++j) {
    const double x = load<D>(row, j);
    s = s + (x * x) * (w ? w[j] : 1.0);
  }
  return s;
}

template <DType D>
void dots_t(const char* const* rows, int R, const double* const* vecs, int V, int64_t d,
            double* out, const char* const* /*pf*/ = nullptr, int /*npf*/ = 0,
            bool /*cold_vecs*/ = false) {
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) out[r * V + v] = dot1<D>(rows[r], vecs[v], d);
}

template <DType D>
void sqdots_t(const char* const* rows, int R, const double* vec, int64_t d, double* out) {
  for (int r = 0; r < R; ++r) out[r] = sq1<D>(rows[r], vec, d);
}

// M[a * d + b] -= ws[s][a] * ws[s][b] for a in [a0, a1), b in [b0, d), s = 0 .. S-1 in order.
void rank_sub(const double* const* ws, int S, int64_t a0, int64_t a1, int64_t b0, int64_t d,
              double* M) {
  for (int64_t a = a0; a < a1; ++a) {
    double* row = M + a * d;
    for (int s = 0; s < S; ++s) {
      const double wa = ws[s][a];
      const double* w = ws[s];
      for (int64_t b = b0; b < d; ++b) row[b] = row[b] - wa * w[b];
    }
  }
}

// z[b] += coef[r] * rows[r][b], r in order.
void axpy_rows(const double* const* rows, const double* coef, int R, int64_t len, double* z) {
  for (int64_t b = 0; b < len; ++b) {
    double c = z[b];
    for (int r = 0; r < R; ++r) c = c + coef[r] * rows[r][b];
    z[b] = c;
  }
}

#include "kernels_dispatch.inc"

}  // namespace

void widen_row(DType dt, const char* row, int64_t d, double* out) {
  switch (dt) {
    case DType::F32:
      for (int64_t j = 0; j < d; ++j) out[j] = load<DType::F32>(row, j);
      return;
    case DType::F64: std::memcpy(out, row, sizeof(double) * d); return;
    case DType::F16:
      for (int64_t j = 0; j < d; ++j) out[j] = load<DType::F16>(row, j);
      return;
    case DType::BF16:
      for (int64_t j = 0; j < d; ++j) out[j] = load<DType::BF16>(row, j);
      return;
  }
}

const Table& generic_table() {
  static const Table t{&dots, &sqdots, &dots_pf, &rank_sub, &axpy_rows, 4, "generic"};
  return t;
}

}  // namespace kern
}  // namespace spice
