// Arithmetic ceilings of this machine next to spice's catch-up kernel (bench/RESULTS.md cites both).
// Needs an x86-64 CPU with AVX-512 (the register-only loop is written with its intrinsics).
//
//   ./dev-build.sh
//   g++ -O3 -march=native -fopenmp -std=c++17 -Icsrc bench/kernel_rates.cpp build/dev/libspice_core.a -o /tmp/kernel_rates
//   /tmp/kernel_rates
//
// 1. Register-only peak: 12 independent chains of 512-bit float64 FMAs per thread, every thread
//    at once (FMA vectors a ns per thread: the most any float64 kernel can do here).
// 2. spice's catch-up kernel (the kernel table picked at run time, as spice.select uses it):
//    R feature rows (float32, float16 or float64) against V float64 vectors of length d, the
//    data L2-resident, every thread at once on its own copy. FMA vectors = R * V * d / 8.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "spice/kernels.hpp"

using namespace spice;
using clk = std::chrono::steady_clock;

static void peak() {
#pragma omp parallel
  {
    const long n = 1200000000L / 12;
    __m512d a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_pd(1.0 + i * 1e-9);
    const __m512d b = _mm512_set1_pd(0.9999999), c = _mm512_set1_pd(1e-9);
#pragma omp barrier
    const auto t0 = clk::now();
    for (long k = 0; k < n; ++k)
      for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_pd(a[i], b, c);
    const double el = std::chrono::duration<double>(clk::now() - t0).count();
    double s = 0;
    for (int i = 0; i < 12; ++i) s += _mm512_reduce_add_pd(a[i]);
#pragma omp critical
    std::printf("register-only FMA peak, thread %d: %.2f FMA vectors/ns (%.3g)\n",
                omp_get_thread_num(), 12.0 * n / el / 1e9, s);
  }
}

static void catchup(int64_t d, int V, int R, DType dt) {
  const kern::Table& K = kern::table();
  std::vector<double> rate(omp_get_max_threads());
#pragma omp parallel
  {
    std::vector<float> Gf(R * d);
    std::vector<uint16_t> Gh(R * d);
    std::vector<double> Gd(R * d), W(V * d);
    std::mt19937 rng(1 + omp_get_thread_num());
    std::normal_distribution<float> nd;
    for (int64_t i = 0; i < R * d; ++i) {
      Gd[i] = Gf[i] = nd(rng);
      Gh[i] = _cvtss_sh(Gf[i], 0);
    }
    for (auto& x : W) x = nd(rng) * 0.01;
    const char* rows[kern::kMaxTileRows];
    for (int r = 0; r < R; ++r)
      rows[r] = dt == DType::F64   ? reinterpret_cast<const char*>(Gd.data() + r * d)
                : dt == DType::F16 ? reinterpret_cast<const char*>(Gh.data() + r * d)
                                   : reinterpret_cast<const char*>(Gf.data() + r * d);
    std::vector<const double*> vecs(V);
    for (int v = 0; v < V; ++v) vecs[v] = W.data() + v * d;
    std::vector<double> out(R * V);
    double sink = 0, best = 1e9;
    const int reps = static_cast<int>(std::max<int64_t>(1, 200000000 / (R * V * d)));
    for (int k = 0; k < 5; ++k) {
#pragma omp barrier
      const auto t0 = clk::now();
      for (int rep = 0; rep < reps; ++rep) {
        K.dots(dt, rows, R, vecs.data(), V, d, out.data());
        sink += out[0];
      }
      best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
    }
    rate[omp_get_thread_num()] = static_cast<double>(reps) * R * V * d / 8 / best / 1e9 + 0 * sink;
  }
  std::printf("catch-up kernel (%s), d=%ld, %d rows x %d vectors, %s rows:", K.isa,
              static_cast<long>(d), R, V,
              dt == DType::F64 ? "float64" : dt == DType::F16 ? "float16" : "float32");
  for (double r : rate) std::printf(" %.2f", r);
  std::printf(" FMA vectors/ns per thread\n");
}

int main() {
  peak();
  for (int64_t d : {1024, 8192})
    for (DType dt : {DType::F32, DType::F16, DType::F64})
      for (int V : {4, 32}) catchup(d, V, 6, dt);
  return 0;
}
