// CUDA kernels of spice's GPU selection path (python/spice/gpu/).
//
// Compiled at run time by CuPy (RawModule -> NVRTC), so the wheel needs no CUDA at build time; the
// compile-only test also builds this file with nvcc. Hence: no include directives, only extern "C"
// kernels, CUDA built-ins and inline PTX (no <cmath>, no cuda_fp16.h).
//
// Element types of G (suffix): f32, f64, f16 (IEEE half bits), bf16 (bfloat16 bits, as uint16).
// Every row is widened to double in registers; every dot product accumulates in double.
//
// Per-row arithmetic never depends on where the row sits (row index, block, batch), so two equal
// rows always get bit-identical scores and ties resolve to the lowest index, as on the CPU.
//
// The "vec" layout: when a row is 16-byte aligned (row bytes % 16 == 0 and the base aligned),
// lane l of a warp reads 16-byte chunk c = l + 32*it of the row, i.e. VEC = 16 / sizeof(T)
// consecutive elements. The float64 vectors it multiplies with (w, s) are then passed in a
// permuted layout so that the warp's loads of them are coalesced as well: element
// j = c*VEC + e lives at it*32*VEC + (e/2)*64 + 2*l + (e%2) (spice/gpu/cupy_ops.py: _perm_index).

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned char u8;
typedef long long i64;
typedef unsigned long long u64;

#define SPICE_WARPS 8  // warps per block of the row kernels
#define SPICE_THREADS (SPICE_WARPS * 32)
#define SPICE_ROWS 4   // rows per warp per pass (register blocking)
// The numbers of csrc/spice/numerics.hpp (the CPU core) and python/spice/_numerics.py; a test
// (tests/test_select_numerics.py) keeps the three equal.
#define SPICE_REL_TINY 1e-10   // in span(S): q_i <= REL_TINY * ||g_i||^2 and
#define SPICE_GAIN_TINY 1e-10  // alpha q_i <= GAIN_TINY (as the CPU core's in_span)
#define SPICE_ETA 1e-8         // cosine denominator guard
#define SPICE_IDX_NONE 0x7fffffffffffffffLL

#define SPICE_ALIVE 0
#define SPICE_PICKED 1
#define SPICE_DEAD 2

__device__ __forceinline__ double spice_neg_inf() {
  return __longlong_as_double(0xfff0000000000000LL);
}

// ---------------------------------------------------------------------------------------------
// Element loaders
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float spice_half_to_float(u16 h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ float spice_bf16_to_float(u32 b) { return __uint_as_float(b << 16); }

struct LoadF32 {
  typedef float T;
  enum { VEC = 4 };
  static __device__ __forceinline__ double one(const T* p, i64 j) { return (double)__ldg(p + j); }
  static __device__ __forceinline__ void unpack(const uint4& v, double* o) {
    o[0] = (double)__uint_as_float(v.x);
    o[1] = (double)__uint_as_float(v.y);
    o[2] = (double)__uint_as_float(v.z);
    o[3] = (double)__uint_as_float(v.w);
  }
};

struct LoadF64 {
  typedef double T;
  enum { VEC = 2 };
  static __device__ __forceinline__ double one(const T* p, i64 j) { return __ldg(p + j); }
  static __device__ __forceinline__ void unpack(const uint4& v, double* o) {
    o[0] = __hiloint2double((int)v.y, (int)v.x);
    o[1] = __hiloint2double((int)v.w, (int)v.z);
  }
};

struct LoadF16 {
  typedef u16 T;
  enum { VEC = 8 };
  static __device__ __forceinline__ double one(const T* p, i64 j) {
    return (double)spice_half_to_float(__ldg(p + j));
  }
  static __device__ __forceinline__ void two(u32 x, double* o) {
    o[0] = (double)spice_half_to_float((u16)(x & 0xffffu));
    o[1] = (double)spice_half_to_float((u16)(x >> 16));
  }
  static __device__ __forceinline__ void unpack(const uint4& v, double* o) {
    two(v.x, o);
    two(v.y, o + 2);
    two(v.z, o + 4);
    two(v.w, o + 6);
  }
};

struct LoadBF16 {
  typedef u16 T;
  enum { VEC = 8 };
  static __device__ __forceinline__ double one(const T* p, i64 j) {
    return (double)spice_bf16_to_float((u32)__ldg(p + j));
  }
  static __device__ __forceinline__ void two(u32 x, double* o) {
    o[0] = (double)spice_bf16_to_float(x & 0xffffu);
    o[1] = (double)spice_bf16_to_float(x >> 16);
  }
  static __device__ __forceinline__ void unpack(const uint4& v, double* o) {
    two(v.x, o);
    two(v.y, o + 2);
    two(v.z, o + 4);
    two(v.w, o + 6);
  }
};

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

// Butterfly sum: every lane ends with the same, bit-identical value (a + b == b + a in IEEE).
__device__ __forceinline__ double spice_warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ bool spice_better(double s, i64 i, double bs, i64 bi) {
  return s > bs || (s == bs && i < bi);
}

__device__ __forceinline__ void spice_warp_best(double& s, i64& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double os = __shfl_xor_sync(0xffffffffu, s, o);
    const i64 oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (spice_better(os, oi, s, i)) {
      s = os;
      i = oi;
    }
  }
}

// Block-wide (score desc, index asc) best; result valid in thread 0. blockDim.x % 32 == 0.
__device__ __forceinline__ void spice_block_best(double& s, i64& i) {
  __shared__ double sh_s[32];
  __shared__ i64 sh_i[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  spice_warp_best(s, i);
  if (lane == 0) {
    sh_s[warp] = s;
    sh_i[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    s = lane < nw ? sh_s[lane] : spice_neg_inf();
    i = lane < nw ? sh_i[lane] : SPICE_IDX_NONE;
    spice_warp_best(s, i);
  }
  __syncthreads();
}

// Block-wide sum in a fixed order (deterministic); result valid in every thread.
__device__ __forceinline__ double spice_block_sum(double v) {
  __shared__ double sh[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = spice_warp_sum(v);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  double r = lane < nw ? sh[lane] : 0.0;
  r = spice_warp_sum(r);  // every warp reduces the same values in the same order
  __syncthreads();
  return r;
}

// ---------------------------------------------------------------------------------------------
// Dots of SPICE_ROWS rows with w and/or s (float64), one warp
// ---------------------------------------------------------------------------------------------

template <class L, bool DW, bool DS>
__device__ __forceinline__ void spice_dot_rows(const typename L::T* const* rows, const bool* live,
                                               i64 d, int vec, const double* w, const double* s,
                                               double* aw, double* as, int lane) {
#pragma unroll
  for (int r = 0; r < SPICE_ROWS; ++r) {
    aw[r] = 0.0;
    as[r] = 0.0;
  }
  if (vec) {
    const i64 nvec = d / L::VEC;
    i64 it = 0;
    for (i64 c = lane; c < nvec; c += 32, ++it) {
      double wv[L::VEC], sv[L::VEC];
      const i64 base = it * (32 * L::VEC) + 2 * lane;
#pragma unroll
      for (int k = 0; k < L::VEC / 2; ++k) {
        if (DW) {
          const double2 x = __ldg(reinterpret_cast<const double2*>(w + base + 64 * k));
          wv[2 * k] = x.x;
          wv[2 * k + 1] = x.y;
        }
        if (DS) {
          const double2 x = __ldg(reinterpret_cast<const double2*>(s + base + 64 * k));
          sv[2 * k] = x.x;
          sv[2 * k + 1] = x.y;
        }
      }
#pragma unroll
      for (int r = 0; r < SPICE_ROWS; ++r) {
        if (!live[r]) continue;
        const uint4 v = __ldcs(reinterpret_cast<const uint4*>(rows[r]) + c);
        double g[L::VEC];
        L::unpack(v, g);
#pragma unroll
        for (int e = 0; e < L::VEC; ++e) {
          if (DW) aw[r] = __fma_rn(g[e], wv[e], aw[r]);
          if (DS) as[r] = __fma_rn(g[e], sv[e], as[r]);
        }
      }
    }
  } else {
    for (i64 j = lane; j < d; j += 32) {
      const double wj = DW ? __ldg(w + j) : 0.0;
      const double sj = DS ? __ldg(s + j) : 0.0;
#pragma unroll
      for (int r = 0; r < SPICE_ROWS; ++r) {
        if (!live[r]) continue;
        const double g = L::one(rows[r], j);
        if (DW) aw[r] = __fma_rn(g, wj, aw[r]);
        if (DS) as[r] = __fma_rn(g, sj, as[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < SPICE_ROWS; ++r) {
    if (DW) aw[r] = spice_warp_sum(aw[r]);
    if (DS) as[r] = spice_warp_sum(as[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// The fused step: for each live candidate row i (all rows, or the rows listed in cand)
//   DW: r = g_i . w, q_i = max(q_i - r^2, 0)            (one Sherman-Morrison update)
//   DS: a = g_i . s  -> align_i, conflict_i             (s = sum of picked rows, t = #picks)
//   dead when q_i <= REL_TINY ||g_i||^2 and alpha q_i <= GAIN_TINY, or log1p(alpha q_i) <= 0
//   delta_i = log1p(alpha q_i), score_i = delta_i - lambda * conflict_i
// and the block's best (score desc, index asc) to part_score/part_idx[blockIdx.x].
// ---------------------------------------------------------------------------------------------

template <class L, bool DW, bool DS>
__device__ __forceinline__ void spice_step_body(
    const typename L::T* __restrict__ G, i64 d, i64 stride, int vec, const i64* __restrict__ cand,
    i64 m, const double* __restrict__ w, const double* __restrict__ s,
    const double* __restrict__ snorm_p, double t, const double* __restrict__ norm2,
    double* __restrict__ q, u8* __restrict__ state, double* __restrict__ delta,
    double* __restrict__ align, double* __restrict__ score, double alpha, double lambda,
    double* __restrict__ part_score, i64* __restrict__ part_idx, u64* __restrict__ evals) {
  typedef typename L::T T;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const double snorm = DS ? *snorm_p : 0.0;
  double best_s = spice_neg_inf();
  i64 best_i = SPICE_IDX_NONE;
  u32 processed = 0;
  const i64 groups = (m + SPICE_ROWS - 1) / SPICE_ROWS;
  for (i64 grp = (i64)blockIdx.x * SPICE_WARPS + warp; grp < groups;
       grp += (i64)gridDim.x * SPICE_WARPS) {
    i64 idx[SPICE_ROWS];
    bool live[SPICE_ROWS];
    const T* rows[SPICE_ROWS];
#pragma unroll
    for (int r = 0; r < SPICE_ROWS; ++r) {
      const i64 c = grp * SPICE_ROWS + r;
      idx[r] = c < m ? (cand ? cand[c] : c) : 0;
      live[r] = c < m && state[idx[r]] == SPICE_ALIVE;
      rows[r] = G + idx[r] * stride;
    }
    double aw[SPICE_ROWS], as[SPICE_ROWS];
    if (DW || DS) spice_dot_rows<L, DW, DS>(rows, live, d, vec, w, s, aw, as, lane);
#pragma unroll
    for (int r = 0; r < SPICE_ROWS; ++r) {
      if (lane != r || !live[r]) continue;
      const i64 i = idx[r];
      ++processed;
      double qi = q[i];
      if (DW) {
        qi = __dsub_rn(qi, __dmul_rn(aw[r], aw[r]));
        if (qi < 0.0) qi = 0.0;
        q[i] = qi;
      }
      const double n2 = norm2[i];
      if (!(qi > SPICE_REL_TINY * n2) && !(alpha * qi > SPICE_GAIN_TINY)) {
        state[i] = SPICE_DEAD;
        delta[i] = 0.0;
        score[i] = spice_neg_inf();
        continue;
      }
      const double dl = log1p(alpha * qi);
      delta[i] = dl;
      if (!(dl > 0.0)) {
        state[i] = SPICE_DEAD;
        score[i] = spice_neg_inf();
        continue;
      }
      double al = 0.0, cf = 0.0;
      if (DS) {
        const double den = __dadd_rn(__dmul_rn(sqrt(n2), snorm / t), SPICE_ETA);
        al = (as[r] / t) / den;
        cf = al < 0.0 ? -al : 0.0;
      }
      align[i] = al;
      const double sc = __dsub_rn(dl, __dmul_rn(lambda, cf));
      score[i] = sc;
      if (spice_better(sc, i, best_s, best_i)) {
        best_s = sc;
        best_i = i;
      }
    }
  }
  spice_block_best(best_s, best_i);
  if (threadIdx.x == 0) {
    part_score[blockIdx.x] = best_s;
    part_idx[blockIdx.x] = best_i;
  }
  if (evals) {
    __shared__ u32 sh_cnt;
    if (threadIdx.x == 0) sh_cnt = 0;
    __syncthreads();
    if (processed) atomicAdd(&sh_cnt, processed);
    __syncthreads();
    if (threadIdx.x == 0 && sh_cnt) atomicAdd(evals, (u64)sh_cnt);
  }
}

template <class L>
__device__ __forceinline__ void spice_step(const typename L::T* G, i64 d, i64 stride, int vec,
                                           const i64* cand, i64 m, const double* w, const double* s,
                                           const double* snorm_p, double t, const double* norm2,
                                           double* q, u8* state, double* delta, double* align,
                                           double* score, double alpha, double lambda,
                                           double* part_score, i64* part_idx, u64* evals) {
  const bool ds = s != 0 && t > 0.0;
  if (w && ds)
    spice_step_body<L, true, true>(G, d, stride, vec, cand, m, w, s, snorm_p, t, norm2, q, state,
                                   delta, align, score, alpha, lambda, part_score, part_idx, evals);
  else if (w)
    spice_step_body<L, true, false>(G, d, stride, vec, cand, m, w, s, snorm_p, t, norm2, q, state,
                                    delta, align, score, alpha, lambda, part_score, part_idx,
                                    evals);
  else if (ds)
    spice_step_body<L, false, true>(G, d, stride, vec, cand, m, w, s, snorm_p, t, norm2, q, state,
                                    delta, align, score, alpha, lambda, part_score, part_idx,
                                    evals);
  else
    spice_step_body<L, false, false>(G, d, stride, vec, cand, m, w, s, snorm_p, t, norm2, q, state,
                                     delta, align, score, alpha, lambda, part_score, part_idx,
                                     evals);
}

// Squared row norms, float64, one warp per SPICE_ROWS rows.
template <class L>
__device__ __forceinline__ void spice_norms(const typename L::T* G, i64 n, i64 d, i64 stride,
                                            int vec, double* out) {
  typedef typename L::T T;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const i64 groups = (n + SPICE_ROWS - 1) / SPICE_ROWS;
  for (i64 grp = (i64)blockIdx.x * SPICE_WARPS + warp; grp < groups;
       grp += (i64)gridDim.x * SPICE_WARPS) {
    double acc[SPICE_ROWS];
    bool live[SPICE_ROWS];
    const T* rows[SPICE_ROWS];
#pragma unroll
    for (int r = 0; r < SPICE_ROWS; ++r) {
      const i64 i = grp * SPICE_ROWS + r;
      live[r] = i < n;
      rows[r] = G + (live[r] ? i : 0) * stride;
      acc[r] = 0.0;
    }
    if (vec) {
      const i64 nvec = d / L::VEC;
      for (i64 c = lane; c < nvec; c += 32) {
#pragma unroll
        for (int r = 0; r < SPICE_ROWS; ++r) {
          if (!live[r]) continue;
          const uint4 v = __ldcs(reinterpret_cast<const uint4*>(rows[r]) + c);
          double g[L::VEC];
          L::unpack(v, g);
#pragma unroll
          for (int e = 0; e < L::VEC; ++e) acc[r] = __fma_rn(g[e], g[e], acc[r]);
        }
      }
    } else {
      for (i64 j = lane; j < d; j += 32) {
#pragma unroll
        for (int r = 0; r < SPICE_ROWS; ++r) {
          if (!live[r]) continue;
          const double g = L::one(rows[r], j);
          acc[r] = __fma_rn(g, g, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < SPICE_ROWS; ++r) {
      acc[r] = spice_warp_sum(acc[r]);
      if (lane == r && live[r]) out[grp * SPICE_ROWS + r] = acc[r];
    }
  }
}

// g = row j widened to float64; a = g . s (before the update); s += g;
// snorm_out = ||s|| after the update; state[j] = PICKED.
// Run with a single block (blockDim.x a multiple of 32).
template <class L>
__device__ __forceinline__ void spice_pick(const typename L::T* G, i64 d, i64 stride, i64 j,
                                           double* s, double* g64, double* a_out, double* snorm_out,
                                           u8* state) {
  const typename L::T* row = G + j * stride;
  if (threadIdx.x == 0) state[j] = SPICE_PICKED;
  double a = 0.0, sn = 0.0;
  for (i64 x = threadIdx.x; x < d; x += blockDim.x) {
    const double g = L::one(row, x);
    g64[x] = g;
    const double sx = s[x];
    a = __fma_rn(g, sx, a);
    const double ns = sx + g;
    s[x] = ns;
    sn = __fma_rn(ns, ns, sn);
  }
  a = spice_block_sum(a);
  sn = spice_block_sum(sn);
  if (threadIdx.x == 0) {
    *a_out = a;
    *snorm_out = sqrt(sn);
  }
}

// Rows cand[0..m) widened to float64 into out (m x d, row-major), for the refresh GEMMs.
template <class L>
__device__ __forceinline__ void spice_gather(const typename L::T* G, i64 d, i64 stride,
                                             const i64* cand, i64 m, double* out) {
  const i64 total = m * d;
  for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (i64)gridDim.x * blockDim.x) {
    const i64 c = e / d, x = e - c * d;
    out[e] = L::one(G + cand[c] * stride, x);
  }
}

#define SPICE_INSTANTIATE(SFX, L)                                                                  \
  extern "C" __global__ void __launch_bounds__(SPICE_THREADS) spice_step_##SFX(                    \
      const L::T* G, i64 d, i64 stride, int vec, const i64* cand, i64 m, const double* w,          \
      const double* s, const double* snorm_p, double t, const double* norm2, double* q, u8* state, \
      double* delta, double* align, double* score, double alpha, double lambda,                    \
      double* part_score, i64* part_idx, u64* evals) {                                             \
    spice_step<L>(G, d, stride, vec, cand, m, w, s, snorm_p, t, norm2, q, state, delta, align,     \
                  score, alpha, lambda, part_score, part_idx, evals);                              \
  }                                                                                                \
  extern "C" __global__ void __launch_bounds__(SPICE_THREADS)                                      \
      spice_norms_##SFX(const L::T* G, i64 n, i64 d, i64 stride, int vec, double* out) {           \
    spice_norms<L>(G, n, d, stride, vec, out);                                                     \
  }                                                                                                \
  extern "C" __global__ void spice_pick_##SFX(const L::T* G, i64 d, i64 stride, i64 j, double* s,  \
                                              double* g64, double* a_out, double* snorm_out,       \
                                              u8* state) {                                         \
    spice_pick<L>(G, d, stride, j, s, g64, a_out, snorm_out, state);                               \
  }                                                                                                \
  extern "C" __global__ void spice_gather_##SFX(const L::T* G, i64 d, i64 stride, const i64* cand, \
                                                i64 m, double* out) {                              \
    spice_gather<L>(G, d, stride, cand, m, out);                                                   \
  }

SPICE_INSTANTIATE(f32, LoadF32)
SPICE_INSTANTIATE(f64, LoadF64)
SPICE_INSTANTIATE(f16, LoadF16)
SPICE_INSTANTIATE(bf16, LoadBF16)

// ---------------------------------------------------------------------------------------------
// dtype-independent kernels
// ---------------------------------------------------------------------------------------------

// One block: the global best of the per-block partials; out = [index (-1: none), score,
// delta[index], align[index], q[index]].
extern "C" __global__ void spice_argmax_final(const double* part_score, const i64* part_idx,
                                              i64 nparts, const double* delta, const double* align,
                                              const double* q, double* out) {
  double s = spice_neg_inf();
  i64 i = SPICE_IDX_NONE;
  for (i64 p = threadIdx.x; p < nparts; p += blockDim.x) {
    if (spice_better(part_score[p], part_idx[p], s, i)) {
      s = part_score[p];
      i = part_idx[p];
    }
  }
  spice_block_best(s, i);
  if (threadIdx.x == 0) {
    if (i == SPICE_IDX_NONE) {
      out[0] = -1.0;
      out[1] = spice_neg_inf();
      out[2] = 0.0;
      out[3] = 0.0;
      out[4] = 0.0;
    } else {
      out[0] = (double)i;
      out[1] = s;
      out[2] = delta[i];
      out[3] = align[i];
      out[4] = q[i];
    }
  }
}

// w = (g - v) * scale (v == nullptr: g * scale) into w_out (d) and, when perm != nullptr, into
// the permuted copy w_perm (dp entries; perm[p] = source element or -1 for padding).
extern "C" __global__ void spice_finish_w(const double* g, const double* v, double scale, i64 d,
                                          double* w_out, const i64* perm, i64 dp, double* w_perm) {
  const i64 top = d > dp ? d : dp;
  for (i64 x = (i64)blockIdx.x * blockDim.x + threadIdx.x; x < top;
       x += (i64)gridDim.x * blockDim.x) {
    if (x < d) w_out[x] = (v ? __dsub_rn(g[x], v[x]) : g[x]) * scale;
    if (perm && x < dp) {
      const i64 p = perm[x];
      w_perm[x] = p >= 0 ? (v ? __dsub_rn(g[p], v[p]) : g[p]) * scale : 0.0;
    }
  }
}

// out[p] = x[perm[p]] (0 for padding).
extern "C" __global__ void spice_permute(const double* x, const i64* perm, i64 dp, double* out) {
  for (i64 p = (i64)blockIdx.x * blockDim.x + threadIdx.x; p < dp;
       p += (i64)gridDim.x * blockDim.x) {
    const i64 src = perm[p];
    out[p] = src >= 0 ? x[src] : 0.0;
  }
}

// M -= w w^T (d x d, row-major).
extern "C" __global__ void spice_rank1(double* M, const double* w, i64 d) {
  const i64 total = d * d;
  for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
       e += (i64)gridDim.x * blockDim.x) {
    const i64 r = e / d, c = e - r * d;
    M[e] = __dsub_rn(M[e], __dmul_rn(w[r], w[c]));
  }
}

// Lazy catch-up: RT (S x ld, row-major) holds RT[s, c] = w_{s0 + s} . g_cand[c]. For each listed
// row i = cand[c], c < m: q_i = max(q_i - x^2, 0) for x = RT[s, c], s from tq_i - s0 up, in order,
// exactly as the naive step's updates (so equal rows stay bit-identical whatever their history).
extern "C" __global__ void spice_catchup(const double* RT, i64 S, i64 ld, i64 s0, i64 m,
                                         const i64* cand, const i64* tq, double* q) {
  for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < m;
       c += (i64)gridDim.x * blockDim.x) {
    const i64 i = cand[c];
    i64 lo = tq[i] - s0;
    if (lo < 0) lo = 0;
    if (lo >= S) continue;
    double qi = q[i];
    for (i64 s = lo; s < S; ++s) {
      const double x = RT[s * ld + c];
      qi = __dsub_rn(qi, __dmul_rn(x, x));
      if (qi < 0.0) qi = 0.0;
    }
    q[i] = qi;
  }
}

// Stream compaction for lazy refresh rounds: every alive row not yet refreshed this step
// (stamp != cur) with ub >= theta goes to out (order arbitrary; the caller sorts).
extern "C" __global__ void spice_compact(const double* ub, const u8* state, const int* stamp,
                                         int cur, i64 n, double theta, i64* out, i64 cap,
                                         u64* counter) {
  for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (i64)gridDim.x * blockDim.x) {
    if (state[i] == SPICE_ALIVE && stamp[i] != cur && ub[i] >= theta) {
      const u64 pos = atomicAdd(counter, 1ULL);
      if ((i64)pos < cap) out[pos] = i;
    }
  }
}
