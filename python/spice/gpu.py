"""Optional CUDA backend: the exact SPICE greedy on gradient features that live on a GPU.

Nothing here is imported by ``import spice`` and nothing here needs CuPy or a driver until a GPU
selection is actually asked for::

    from spice import gpu
    gpu.available()                  # (True, "cuda:cupy (...)") or (False, why)
    raw = gpu.select_gpu(G_cuda, k)  # same keys as spice._core.select, plus "backend"

``G`` may be a CuPy array or a torch CUDA tensor (float32, float64, float16, bfloat16; torch
tensors are shared through DLPack, never copied); the per-pick results come back as numpy arrays.
The kernels (``csrc/cuda/spice_kernels.cu``) are compiled at run time by CuPy's RawModule (NVRTC),
so the wheel needs no CUDA at build time. There is no silent fallback: without CuPy or a device the
GPU path raises ``RuntimeError`` saying what to install, and every result names its backend.

Methods (docs/algorithm.md §2-§4, §8):

- ``naive``: one fused pass over G per pick (custom kernel: r = G·w, q -= r², conflict dot, Δ,
  score and a two-stage argmax with ties to the lowest index); u_t by two cuBLAS GEMVs over the W
  rows, or, once t > 1.5·d, one GEMV with an explicit d×d M⁻¹ kept by rank-1 updates.
- ``lazy``: exact lazy greedy without a heap (``run_threshold_rounds``): each step refreshes
  every live row whose stale bound (the last Δ computed for it) is >= a threshold, first one
  estimated to take ~B rows, then the best fresh score found; two rounds always suffice.
  Catch-ups run as cuBLAS GEMMs of the gathered rows against the missing W rows.
- ``stochastic``: the CPU's seeded sampling (SplitMix64 + partial Fisher-Yates, replicated on the
  host), so the same seed draws the same candidates; refreshes as in ``lazy``.

Only ``objective="logdet"`` runs on the GPU; the compatibility objectives are CPU-only.

The driver is written against an array module plus a small "ops" object; ``_NumpyOps`` runs the
same control flow on numpy (float64 emulation of the kernels) so the driver is tested without a GPU.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._inputs import (
    BF16,
    F16,
    F32,
    F64,
    describe_bad_row,
    progress_says_continue,
    row_as_float64,
)
from ._numerics import (
    ETA,
    GAIN_TINY,
    MAX_ALPHA_NORM2,
    REL_TINY,
)  # in span(S) and the cosine guard, as the core

__all__ = [
    "BACKEND",
    "as_device_features",
    "available",
    "is_cuda_array",
    "kernel_source_path",
    "select_gpu",
]

BACKEND = "cuda:cupy"
INSTALL_HINT = (
    "install CuPy for your CUDA version: pip install cupy-cuda12x (CUDA 12) or "
    "pip install cupy-cuda13x (CUDA 13)"
)

ALIVE, PICKED, DEAD = 0, 1, 2

_SUFFIX = {F32: "f32", F64: "f64", F16: "f16", BF16: "bf16"}
_VEC = {F32: 4, F64: 2, F16: 8, BF16: 8}  # elements per 16-byte chunk (kernel's L::VEC)
_WARPS, _ROWS = 8, 4  # SPICE_WARPS, SPICE_ROWS in the kernels
_THREADS = 32 * _WARPS
_MB, _SB = 256, 512  # lazy catch-up GEMMs, one fixed shape: _SB rows of W x _MB gathered rows

ProgressFn = Callable[[int, int, int, float], Any]


# ------------------------------------------------------------------------------------------------
# Detection and loading
# ------------------------------------------------------------------------------------------------


def is_cuda_array(obj: Any) -> bool:
    """True for a CuPy array, a torch CUDA tensor, or a DLPack producer on a CUDA device.

    Cheap and import-free: CuPy and torch are only consulted when already imported.
    """
    cp = sys.modules.get("cupy")
    if cp is not None and isinstance(obj, cp.ndarray):
        return True
    th = sys.modules.get("torch")
    if th is not None and isinstance(obj, th.Tensor):
        return bool(obj.is_cuda)
    if isinstance(obj, np.ndarray):
        return False
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is None or not callable(dev):
        return False
    try:
        kind = int(dev()[0])
    except Exception:
        return False
    return kind in (2, 13)  # kDLCUDA, kDLCUDAManaged


def _import_cupy() -> Any:
    try:
        import cupy  # type: ignore[import-not-found]
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise RuntimeError(
            f"spice's GPU selection needs CuPy, which could not be imported ({e}); {INSTALL_HINT}"
        ) from e
    return cupy


def available() -> tuple[bool, str]:
    """Whether the CUDA backend can run here, and a one-line reason or description."""
    try:
        cp = _import_cupy()
    except RuntimeError as e:
        return False, str(e)
    try:
        count = int(cp.cuda.runtime.getDeviceCount())
    except Exception as e:
        return False, f"CuPy {cp.__version__} is installed but no CUDA driver/device answered: {e}"
    if count < 1:
        return False, f"CuPy {cp.__version__} is installed but there is no CUDA device"
    try:
        name = cp.cuda.runtime.getDeviceProperties(0)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        name = "?"
    return True, f"{BACKEND} (CuPy {cp.__version__}, {count} device(s); device 0: {name})"


def kernel_source_path() -> Path:
    """Where the CUDA source is read from (``$SPICE_CUDA_KERNELS``, the package, the checkout)."""
    here = Path(__file__).resolve().parent
    candidates = []
    env = os.environ.get("SPICE_CUDA_KERNELS")
    if env:
        candidates.append(Path(env))
    candidates += [
        here / "cuda" / "spice_kernels.cu",
        here.parent.parent / "csrc" / "cuda" / "spice_kernels.cu",
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise RuntimeError(
        "spice's CUDA kernel source spice_kernels.cu was not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set SPICE_CUDA_KERNELS to its path"
    )


_MODULES: dict[int, Any] = {}


def _module(cp: Any) -> Any:
    dev = int(cp.cuda.Device().id)
    mod = _MODULES.get(dev)
    if mod is None:
        src = kernel_source_path().read_text()
        try:
            mod = cp.RawModule(code=src, options=("--std=c++17",))
            mod.get_function("spice_argmax_final")  # compile now: errors surface here
        except Exception as e:
            raise RuntimeError(f"compiling spice's CUDA kernels with NVRTC failed: {e}") from e
        _MODULES[dev] = mod
    return mod


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def as_device_features(G: Any, *, bf16: bool = False, name: str = "G") -> tuple[Any, int]:
    """Return ``(cupy array, dtype_code)`` on the device, sharing memory with ``G``.

    CuPy arrays and torch CUDA tensors (float32/float64/float16/bfloat16) are used in place
    (torch through DLPack; bfloat16 as its uint16 bit patterns). Host arrays are copied to the
    current device (only when the caller asked for the GPU). Integer arrays are cast to float32
    on the device (a copy). Rows must be contiguous; otherwise a contiguous device copy is made.
    """
    cp = _import_cupy()
    code = -1
    th = sys.modules.get("torch")
    if th is not None and isinstance(G, th.Tensor):
        x = G.detach() if G.requires_grad else G
        if not x.is_cuda:
            raise TypeError(f"{name} is a CPU torch tensor; the GPU selector needs a CUDA tensor")
        if x.dtype == th.bfloat16:
            arr = cp.from_dlpack(x.view(th.int16)).view(cp.uint16)
            code = BF16
        else:
            arr = cp.from_dlpack(x)
    elif isinstance(G, cp.ndarray):
        arr = G
    elif is_cuda_array(G):
        arr = cp.from_dlpack(G)
    else:  # a host array, and the caller asked for the GPU: one explicit copy to the device
        from ._inputs import as_features

        host, code = as_features(G, bf16=bf16, name=name)
        arr = cp.asarray(host)
    from ._inputs import check_shape, native_code, rows_contiguous

    check_shape(arr.shape, name)
    if code < 0:
        code, cast = native_code(arr.dtype, bf16, name)
        if cast is not None:
            arr = arr.astype(cast)
    if not rows_contiguous(arr):
        arr = cp.ascontiguousarray(arr)
    return arr, code


def _perm_index(d: int, vec: int) -> np.ndarray:
    """Source element of each slot of the permuted float64 vectors the vec-path kernels read."""
    nvec = d // vec
    iters = -(-nvec // 32)
    src = np.full(max(1, iters * 32 * vec), -1, dtype=np.int64)
    j = np.arange(nvec * vec, dtype=np.int64)
    c, e = j // vec, j % vec
    pos = (c // 32) * (32 * vec) + (e >> 1) * 64 + 2 * (c % 32) + (e & 1)
    src[pos] = j
    return src


# ------------------------------------------------------------------------------------------------
# Device operations: CuPy kernels, and a numpy emulation with the same semantics
# ------------------------------------------------------------------------------------------------


class _State:
    """Per-candidate arrays (on the ops' device)."""

    def __init__(self, xp: Any, norm2: Any, alpha: float) -> None:
        self.norm2 = norm2
        self.base = xp.log1p(alpha * norm2)
        self.q = norm2.copy()
        self.delta = self.base.copy()
        self.align = xp.zeros_like(norm2)
        self.score = xp.full_like(norm2, -np.inf)
        self.state = xp.where((norm2 > 0) & (self.base > 0), ALIVE, DEAD).astype(xp.uint8)


def _ptr(a: Any) -> int:
    return int(a.data.ptr) if hasattr(a.data, "ptr") else int(a.ctypes.data)


class _CupyOps:
    """The CUDA kernels of csrc/cuda/spice_kernels.cu, launched through CuPy."""

    def __init__(self, cp: Any, G: Any, code: int) -> None:
        self.xp = cp
        self.G = G
        self.code = code
        self.n, self.d = (int(x) for x in G.shape)
        isz = G.dtype.itemsize
        self.stride = int(G.strides[0] // isz) if self.n > 1 else self.d
        vec = _VEC[code]
        self.vec = int(
            _ptr(G) % 16 == 0 and (self.stride * isz) % 16 == 0 and (self.d * isz) % 16 == 0
        )
        mod = _module(cp)
        sfx = _SUFFIX[code]
        self._step = mod.get_function(f"spice_step_{sfx}")
        self._norms = mod.get_function(f"spice_norms_{sfx}")
        self._pick = mod.get_function(f"spice_pick_{sfx}")
        self._gather = mod.get_function(f"spice_gather_{sfx}")
        self._argmax = mod.get_function("spice_argmax_final")
        self._finish = mod.get_function("spice_finish_w")
        self._permute = mod.get_function("spice_permute")
        self._rank1 = mod.get_function("spice_rank1")
        self._catchup = mod.get_function("spice_catchup")
        self._compact = mod.get_function("spice_compact")
        dev = cp.cuda.Device()
        self.sms = int(dev.attributes.get("MultiProcessorCount", 132))
        self.max_grid = 8 * self.sms
        self.part_score = cp.empty(self.max_grid, dtype=cp.float64)
        self.part_idx = cp.empty(self.max_grid, dtype=cp.int64)
        self.out = cp.empty(5, dtype=cp.float64)
        self.counter = cp.zeros(1, dtype=cp.uint64)
        self.evals_dev = cp.zeros(1, dtype=cp.uint64)
        if self.vec:
            self.perm = cp.asarray(_perm_index(self.d, vec))
            self.dp = int(self.perm.size)
        else:
            self.perm = None
            self.dp = self.d
        self.mb, self.sb = _MB, _SB
        self.cap = 1 << 16
        self.cbuf = cp.empty(self.cap, dtype=cp.int64)
        self.device_name = self._device_name(cp, dev)

    @staticmethod
    def _device_name(cp: Any, dev: Any) -> str:
        try:
            nm = cp.cuda.runtime.getDeviceProperties(int(dev.id))["name"]
            return nm.decode() if isinstance(nm, bytes) else str(nm)
        except Exception:
            return "?"

    _NULL = np.uint64(0)

    def _grid_rows(self, m: int) -> int:
        groups = -(-m // _ROWS)
        return max(1, min(-(-groups // _WARPS), self.max_grid))

    @staticmethod
    def _grid_flat(total: int, block: int = 256, cap: int = 65535) -> int:
        return max(1, min(-(-total // block), cap))

    def norms(self) -> Any:
        out = self.xp.empty(self.n, dtype=self.xp.float64)
        self._norms(
            (self._grid_rows(self.n),),
            (_THREADS,),
            (
                self.G,
                np.int64(self.n),
                np.int64(self.d),
                np.int64(self.stride),
                np.int32(self.vec),
                out,
            ),
        )
        return out

    def step_vec(self, x: Any, out: Any | None = None) -> Any:
        """x (natural float64 layout) as the step kernel reads it (permuted in the vec path)."""
        if not self.vec:
            if out is None:
                return x.copy()
            self.xp.copyto(out, x)
            return out
        if out is None:
            out = self.xp.empty(self.dp, dtype=self.xp.float64)
        self._permute((self._grid_flat(self.dp),), (256,), (x, self.perm, np.int64(self.dp), out))
        return out

    def step(
        self,
        st: _State,
        cand: Any | None,
        w: Any | None,
        s: Any | None,
        snorm: Any,
        t: int,
        alpha: float,
        lam: float,
        count: bool,
    ) -> np.ndarray:
        m = self.n if cand is None else int(cand.size)
        grid = self._grid_rows(m)
        N = self._NULL
        self._step(
            (grid,),
            (_THREADS,),
            (
                self.G,
                np.int64(self.d),
                np.int64(self.stride),
                np.int32(self.vec),
                N if cand is None else cand,
                np.int64(m),
                N if w is None else w,
                N if s is None else s,
                snorm,
                np.float64(t),
                st.norm2,
                st.q,
                st.state,
                st.delta,
                st.align,
                st.score,
                np.float64(alpha),
                np.float64(lam),
                self.part_score,
                self.part_idx,
                self.evals_dev if count else N,
            ),
        )
        self._argmax(
            (1,),
            (1024,),
            (self.part_score, self.part_idx, np.int64(grid), st.delta, st.align, st.q, self.out),
        )
        return self.xp.asnumpy(self.out)

    def pick(self, st: _State, j: int, s: Any, g64: Any, a_out: Any, sn_out: Any) -> None:
        self._pick(
            (1,),
            (1024,),
            (
                self.G,
                np.int64(self.d),
                np.int64(self.stride),
                np.int64(j),
                s,
                g64,
                a_out,
                sn_out,
                st.state,
            ),
        )

    def finish_w(self, g: Any, v: Any | None, scale: float, w_out: Any, w_perm: Any | None) -> Any:
        top = max(self.d, self.dp)
        N = self._NULL
        self._finish(
            (self._grid_flat(top),),
            (256,),
            (
                g,
                N if v is None else v,
                np.float64(scale),
                np.int64(self.d),
                w_out,
                N if not self.vec else self.perm,
                np.int64(self.dp),
                N if not self.vec else w_perm,
            ),
        )
        return w_perm if self.vec else w_out

    def rank1(self, M: Any, w: Any) -> None:
        self._rank1((self._grid_flat(self.d * self.d),), (256,), (M, w, np.int64(self.d)))

    def gather(self, cand: Any, out: Any) -> None:
        m = int(cand.size)
        self._gather(
            (self._grid_flat(m * self.d),),
            (256,),
            (self.G, np.int64(self.d), np.int64(self.stride), cand, np.int64(m), out),
        )

    def catchup(self, RT: Any, S: int, s0: int, cand: Any, m: int, tq: Any, q: Any) -> None:
        self._catchup(
            (self._grid_flat(m, 128),),
            (128,),
            (RT, np.int64(S), np.int64(RT.shape[1]), np.int64(s0), np.int64(m), cand, tq, q),
        )

    def compact(self, st: _State, ub: Any, stamp: Any, cur: int, theta: float) -> Any:
        cp = self.xp
        while True:
            self.counter.fill(0)
            self._compact(
                (self._grid_flat(self.n, 256, 8 * self.sms),),
                (256,),
                (
                    ub,
                    st.state,
                    stamp,
                    np.int32(cur),
                    np.int64(self.n),
                    np.float64(theta),
                    self.cbuf,
                    np.int64(self.cap),
                    self.counter,
                ),
            )
            cnt = int(cp.asnumpy(self.counter)[0])
            if cnt <= self.cap:
                return cp.sort(self.cbuf[:cnt])
            self.cap = max(2 * self.cap, cnt)
            self.cbuf = cp.empty(self.cap, dtype=cp.int64)

    def evals(self) -> int:
        return int(self.xp.asnumpy(self.evals_dev)[0])


class _NumpyOps:
    """A float64 numpy emulation of the kernels: same states, thresholds and tie rule.

    Used to test the GPU driver's control flow on machines without a GPU (dot products are
    computed row by row in a fixed order, so equal rows get equal scores, as on the device).
    """

    def __init__(self, G: np.ndarray, code: int) -> None:
        self.xp = np
        self.G = G
        self.code = code
        self.n, self.d = G.shape
        self.evals_count = 0
        self.device_name = "numpy emulation"
        self.mb, self.sb = 16, 8  # small catch-up GEMMs: exercise the chunking

    def _rows(self, idx: Any) -> np.ndarray:
        return row_as_float64(self.G, self.code, idx).reshape(-1, self.d)

    @staticmethod
    def _dot(g: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (g * v[None, :]).sum(axis=1)

    def norms(self) -> np.ndarray:
        g = self._rows(slice(None))
        return (g * g).sum(axis=1)

    def step_vec(self, x: np.ndarray, out: Any | None = None) -> np.ndarray:
        return x.copy()

    def step(
        self,
        st: _State,
        cand: Any | None,
        w: Any | None,
        s: Any | None,
        snorm: Any,
        t: int,
        alpha: float,
        lam: float,
        count: bool,
    ) -> np.ndarray:
        idx = np.arange(self.n) if cand is None else np.asarray(cand)
        live = idx[st.state[idx] == ALIVE]
        if count:
            self.evals_count += int(live.size)
        out = np.array([-1.0, -np.inf, 0.0, 0.0, 0.0])
        if live.size == 0:
            return out
        g = self._rows(live)
        qv = st.q[live]
        if w is not None:
            r = self._dot(g, w)
            qv = np.maximum(qv - r * r, 0.0)
            st.q[live] = qv
        n2 = st.norm2[live]
        dead = ~(qv > REL_TINY * n2) & ~(alpha * qv > GAIN_TINY)
        with np.errstate(all="ignore"):
            dl = np.where(dead, 0.0, np.log1p(alpha * qv))
        dead |= ~(dl > 0.0)
        al = np.zeros(live.size)
        if s is not None and t > 0:
            a = self._dot(g, s)
            sn = float(np.asarray(snorm).reshape(-1)[0])
            with np.errstate(all="ignore"):
                al = (a / t) / (np.sqrt(n2) * (sn / t) + ETA)
        cf = np.where(al < 0.0, -al, 0.0)
        sc = dl - lam * cf
        st.delta[live] = dl
        st.state[live[dead]] = DEAD
        ok = ~dead
        st.align[live[ok]] = al[ok]
        sc = np.where(dead, -np.inf, sc)
        st.score[live] = sc
        if not ok.any():
            return out
        best = float(np.max(sc[ok]))
        i = int(np.min(live[ok][sc[ok] == best]))  # ties: lowest index
        return np.array([float(i), best, st.delta[i], st.align[i], st.q[i]])

    def pick(self, st: _State, j: int, s: Any, g64: Any, a_out: Any, sn_out: Any) -> None:
        g = self._rows(j)[0]
        g64[:] = g
        a_out[...] = float(np.dot(g, s))
        s += g
        sn_out[...] = math.sqrt(float(np.dot(s, s)))
        st.state[j] = PICKED

    def finish_w(self, g: Any, v: Any | None, scale: float, w_out: Any, w_perm: Any | None) -> Any:
        w_out[:] = (g if v is None else g - v) * scale
        return w_out

    def rank1(self, M: Any, w: Any) -> None:
        M -= np.outer(w, w)

    def gather(self, cand: Any, out: Any) -> None:
        c = np.asarray(cand)
        out[: c.size] = self._rows(c)

    def catchup(self, RT: Any, S: int, s0: int, cand: Any, m: int, tq: Any, q: Any) -> None:
        rows = np.asarray(cand)[:m]
        qv = q[rows].copy()
        start = tq[rows]
        for s in range(S):  # in step order, clamped after each subtraction, like the kernel
            x = RT[s, :m]
            upd = np.maximum(qv - x * x, 0.0)
            qv = np.where(s0 + s >= start, upd, qv)
        q[rows] = qv

    def compact(self, st: _State, ub: Any, stamp: Any, cur: int, theta: float) -> np.ndarray:
        return np.flatnonzero((st.state == ALIVE) & (stamp != cur) & (ub >= theta)).astype(np.int64)

    def evals(self) -> int:
        return self.evals_count


def _rowdots(xp: Any, A: Any, B: Any) -> Any:
    """A @ B.T (cuBLAS GEMM on the device; the same fixed-order dots as _NumpyOps.step here)."""
    if xp is np:
        return (A[:, None, :] * B[None, :, :]).sum(axis=2)
    return A @ B.T


# ------------------------------------------------------------------------------------------------
# The greedy driver (array-module generic)
# ------------------------------------------------------------------------------------------------


class _SplitMix64:
    """spice::SplitMix64 (csrc/spice/rng.hpp), so stochastic greedy draws the CPU's samples."""

    M = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.s = int(seed) & self.M

    def next(self) -> int:
        self.s = (self.s + 0x9E3779B97F4A7C15) & self.M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        m = self.next() * n
        lo = m & self.M
        if lo < n:
            thresh = ((1 << 64) - n) % n
            while lo < thresh:
                m = self.next() * n
                lo = m & self.M
        return m >> 64


def _better(s: float, i: int, bs: float, bi: int) -> bool:
    return s > bs or (s == bs and i < bi)


class _Driver:
    def __init__(
        self,
        ops: Any,
        k: int,
        alpha: float,
        lam: float,
        omega: float,
        progress: ProgressFn | None,
        minv_factor: float,
        lazy_batch: int,
    ) -> None:
        self.ops, self.xp = ops, ops.xp
        self.n, self.d = ops.n, ops.d
        self.k, self.alpha, self.lam, self.omega = k, alpha, lam, omega
        self.progress = progress
        self.minv_factor = minv_factor
        self.lazy_batch = lazy_batch
        self.t = 0
        self.idx: list[int] = []
        self.gains: list[float] = []
        self.scores: list[float] = []
        self.align_step: list[float] = []
        self.stop = "budget"
        self.t0 = self.last = time.perf_counter()

    # -- setup / pick bookkeeping ----------------------------------------------------------------

    def setup(self) -> int:
        xp, d, k = self.xp, self.d, self.k
        norm2 = self.ops.norms()
        self.st = _State(xp, norm2, self.alpha)
        bad = ~(self.alpha * norm2 <= MAX_ALPHA_NORM2)  # refused as by the CPU core
        if bool(bad.any()):
            return int(xp.argmax(bad))
        self.SB = self.ops.sb
        mb = self.ops.mb
        self.W = xp.zeros((k + self.SB, d), dtype=xp.float64)  # zero rows pad the last GEMM
        self.gbuf = xp.zeros((mb, d), dtype=xp.float64)
        self.s = xp.zeros(d, dtype=xp.float64)
        self.SN = xp.zeros(k + 1, dtype=xp.float64)  # ||s|| after t picks
        self.A = xp.zeros(max(k, 1), dtype=xp.float64)  # g_pick . s before the pick
        self.g64 = xp.empty(d, dtype=xp.float64)
        dp = getattr(self.ops, "dp", d)
        self.wbuf = xp.zeros(dp, dtype=xp.float64)
        self.sbuf = xp.zeros(dp, dtype=xp.float64)
        self.wvec: Any = None  # w_{t-1} as the step kernel reads it
        self.svec: Any = None  # s as the step kernel reads it (lambda > 0)
        self.minv: Any = None
        lim = self.minv_factor * d
        self.minv_at = (
            math.ceil(lim) if self.minv_factor > 0 and k > lim and d * d * 8 <= (1 << 30) else -1
        )
        return -1

    def conflict_arg(self) -> Any:
        return self.svec if (self.lam > 0 and self.t > 0) else None

    def stop_before(self, out: np.ndarray) -> bool:
        if out[0] < 0 or not (out[1] > -np.inf):
            self.stop = "exhausted"
            return True
        if self.omega > 0 and self.t >= 1 and out[2] <= self.omega * self.gains[0]:
            self.stop = "early_stop"
            return True
        return False

    def add_pick(self, out: np.ndarray) -> None:
        xp, ops, t = self.xp, self.ops, self.t
        j = int(out[0])
        self.idx.append(j)
        self.gains.append(float(out[2]))
        self.scores.append(float(out[1]))
        self.align_step.append(float(out[3]))
        ops.pick(self.st, j, self.s, self.g64, self.A[t : t + 1], self.SN[t + 1 : t + 2])
        scale = math.sqrt(self.alpha / (1.0 + self.alpha * float(out[4])))
        if t == 0:
            self.wvec = ops.finish_w(self.g64, None, scale, self.W[0], self.wbuf)
        elif self.minv is not None:
            u = self.minv @ self.g64
            self.wvec = ops.finish_w(u, None, scale, self.W[t], self.wbuf)
            ops.rank1(self.minv, self.W[t])
        else:
            Wt = self.W[:t]
            v = Wt.T @ (Wt @ self.g64)
            self.wvec = ops.finish_w(self.g64, v, scale, self.W[t], self.wbuf)
        if self.lam > 0:
            self.svec = ops.step_vec(self.s, self.sbuf)
        self.t = t + 1
        if self.minv is None and self.t == self.minv_at:
            Wt = self.W[: self.t]
            self.minv = xp.eye(self.d, dtype=xp.float64) - Wt.T @ Wt

    def tick(self) -> bool:
        if self.progress is None:
            return True
        now = time.perf_counter()
        if now - self.last < 0.2 and self.t < self.k:
            return True
        self.last = now
        r = self.progress(self.t, self.k, self.ops.evals(), now - self.t0)
        if not progress_says_continue(self.progress, r):
            self.stop = "cancelled"
            return False
        return True

    # -- refresh of a candidate list (lazy, stochastic) -------------------------------------------

    def refresh(self, cand: Any) -> np.ndarray:
        """Catch q up to step t for the listed rows, then rescore them (one step kernel).

        The catch-up products come from GEMMs of one fixed shape (SB W rows x MB gathered rows),
        so a row's products do not depend on the batch it is in, and are subtracted one by one in
        step order as the naive step does: equal rows stay bit-identical whatever their history.
        """
        xp, ops, t, st = self.xp, self.ops, self.t, self.st
        m = int(cand.size)
        if t > 0 and m:
            tqc = self.tq[cand]
            order = xp.argsort(tqc * self.n + cand)  # by staleness, then index
            cs = cand[order]
            tq_host = np.asarray(_host(xp, tqc[order]))
            MB, SB = self.gbuf.shape[0], self.SB
            for a in range(0, m, MB):
                b = min(m, a + MB)
                lo = int(tq_host[a])
                if lo >= t:
                    continue
                cc = cs[a:b]
                ops.gather(cc, self.gbuf)
                for s0 in range(lo, t, SB):
                    RT = _rowdots(xp, self.W[s0 : s0 + SB], self.gbuf)  # (SB, MB)
                    ops.catchup(RT, min(SB, t - s0), s0, cc, b - a, self.tq, st.q)
            self.tq[cand] = t
        out = ops.step(
            st, cand, None, self.conflict_arg(), self.SN[t : t + 1], t, self.alpha, self.lam, True
        )
        self.ub[cand] = st.delta[cand]
        return out

    # -- methods ----------------------------------------------------------------------------------

    def run_naive(self) -> None:
        st, ops = self.st, self.ops
        qt = 0
        while self.t < self.k:
            t = self.t
            out = ops.step(
                st,
                None,
                self.wvec if qt < t else None,
                self.conflict_arg(),
                self.SN[t : t + 1],
                t,
                self.alpha,
                self.lam,
                True,
            )
            qt = t
            if self.stop_before(out):
                break
            self.add_pick(out)
            if not self.tick():
                return
        if qt < self.t:  # the last w: make every q exact for the certificate
            ops.step(
                st,
                None,
                self.wvec,
                None,
                self.SN[self.t : self.t + 1],
                self.t,
                self.alpha,
                self.lam,
                False,
            )

    def _theta1(self, B: int) -> float:
        xp, st = self.xp, self.st
        su = self.ub[self.sample]
        vals = su[st.state[self.sample] == ALIVE]
        vals = np.sort(np.asarray(_host(xp, vals)))[::-1]
        if vals.size == 0:
            al = st.state == ALIVE
            if not bool(al.any()):
                return math.inf
            return float(xp.max(xp.where(al, self.ub, -np.inf)))
        pos = int(B * self.sample.size / self.n)
        return float(vals[min(pos, vals.size - 1)])

    def run_threshold_rounds(self) -> None:
        """Exact lazy greedy without a heap (a GPU has no cheap priority queue): each step
        refreshes, in at most two rounds, every live row whose stale bound reaches a threshold
        (one estimated to catch about B rows, then the best fresh score found)."""
        xp = self.xp
        n = self.n
        self.ub = self.st.delta.copy()
        self.tq = xp.zeros(n, dtype=xp.int64)
        self.stamp = xp.full(n, -1, dtype=xp.int32)
        ns = min(n, 16384)
        self.sample = xp.asarray(np.sort(np.random.default_rng(0).choice(n, ns, replace=False)))
        B = self.lazy_batch if self.lazy_batch > 0 else 256
        while self.t < self.k:
            best = np.array([-1.0, -np.inf, 0.0, 0.0, 0.0])
            theta = self._theta1(B)
            round2 = 0
            for rnd in (1, 2):
                if rnd == 2:
                    theta = best[1] if best[0] >= 0 else -np.inf
                cand = self.ops.compact(self.st, self.ub, self.stamp, self.t, theta)
                if cand.size == 0:
                    continue
                self.stamp[cand] = self.t
                out = self.refresh(cand)
                if rnd == 2:
                    round2 = int(cand.size)
                if out[0] >= 0 and (
                    best[0] < 0 or _better(out[1], int(out[0]), best[1], int(best[0]))
                ):
                    best = out
            if self.lazy_batch <= 0:
                B = min(1 << 20, 2 * B) if round2 else max(32, (B * 4) // 5)
            if self.stop_before(best):
                break
            self.add_pick(best)
            if not self.tick():
                return

    def run_stochastic(self, seed: int, eps: float) -> None:
        xp, st = self.xp, self.st
        n = self.n
        self.ub = st.delta.copy()
        self.tq = xp.zeros(n, dtype=xp.int64)
        state_h = np.asarray(_host(xp, st.state))
        remaining = np.flatnonzero(state_h == ALIVE).astype(np.int64)
        kk = float(max(1, self.k))
        sample = max(1, int(math.ceil((n / kk) * math.log(1.0 / eps))))
        rng = _SplitMix64(seed)
        while self.t < self.k:
            r = int(remaining.size)
            m = min(sample, r)
            for a in range(m):  # partial Fisher-Yates, as the CPU core
                b = a + rng.below(r - a)
                remaining[a], remaining[b] = remaining[b], remaining[a]
            cand_h = np.sort(remaining[:m])
            out = self.refresh(xp.asarray(cand_h))
            looked = m
            if out[0] < 0 and m < r:  # the sample is all dead: look at everything left
                out = self.refresh(xp.asarray(np.sort(remaining)))
                looked = r
            if self.stop_before(out):
                break
            self.add_pick(out)
            head = remaining[:looked]
            sh = st.state[xp.asarray(head)]
            keep = np.asarray(_host(xp, sh)) == ALIVE
            if looked == r:  # after a full scan: stable removal, as the CPU core
                remaining = head[keep]
            else:  # only the sample changed: swap-with-last removal from its end, as the CPU core
                size = r
                for x in range(m - 1, -1, -1):
                    if not keep[x]:
                        remaining[x] = remaining[size - 1]
                        size -= 1
                remaining = remaining[:size]
            if not self.tick():
                return

    # -- results ----------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        xp, st = self.xp, self.st
        m = len(self.idx)
        obj = 0.0
        for g in self.gains:
            obj += g
        mask = st.state != PICKED
        vals = xp.log1p(self.alpha * st.q[mask])
        take = min(m, int(vals.size))
        bound = obj
        if take > 0:
            top = xp.sort(vals)[::-1][:take]
            top = np.asarray(_host(xp, top))
            bound = obj + float(np.cumsum(top)[-1])
        idx = np.asarray(self.idx, dtype=np.int64)
        if m:
            di = xp.asarray(idx)
            base = np.asarray(_host(xp, st.base[di]), dtype=np.float64)
            n2 = np.asarray(_host(xp, st.norm2[di]), dtype=np.float64)
        else:
            base = n2 = np.zeros(0)
        if self.lam > 0:
            align = np.asarray(self.align_step, dtype=np.float64)
        else:
            A = np.asarray(_host(xp, self.A))[:m]
            SN = np.asarray(_host(xp, self.SN))[:m]
            align = np.zeros(m)
            for t in range(1, m):
                align[t] = (A[t] / t) / (math.sqrt(n2[t]) * (SN[t] / t) + ETA)
        conflict = np.where(align < 0.0, -align, 0.0)
        return {
            "indices": idx,
            "gains": np.asarray(self.gains, dtype=np.float64),
            "base": base,
            "align": align,
            "conflict": conflict,
            "scores": np.asarray(self.scores, dtype=np.float64),
            "objective_sum": obj,
            "opt_upper_bound": bound,
            "stop_reason": self.stop,
            "evaluations": int(self.ops.evals()),
            "bad_row": -1,
        }


def _host(xp: Any, x: Any) -> Any:
    return x if isinstance(x, np.ndarray) else x.get()


def _run(
    ops: Any,
    k: int,
    alpha: float,
    lam: float,
    omega: float,
    method: str,
    seed: int,
    stochastic_eps: float,
    progress: ProgressFn | None = None,
    minv_factor: float = 1.5,
    lazy_batch: int = 0,
) -> dict[str, Any]:
    """The greedy on an ops object (``_CupyOps`` or ``_NumpyOps``); returns the core's keys."""
    drv = _Driver(ops, k, alpha, lam, omega, progress, minv_factor, lazy_batch)
    bad = drv.setup()
    if bad >= 0:
        empty = np.zeros(0)
        return {
            "indices": np.zeros(0, dtype=np.int64),
            "gains": empty,
            "base": empty,
            "align": empty,
            "conflict": empty,
            "scores": empty,
            "objective_sum": 0.0,
            "opt_upper_bound": 0.0,
            "stop_reason": "budget",
            "evaluations": 0,
            "bad_row": bad,
        }
    if method == "naive":
        drv.run_naive()
    elif method == "lazy":
        drv.run_threshold_rounds()  # exact lazy greedy, done without a heap
    elif method == "stochastic":
        drv.run_stochastic(seed, stochastic_eps)
    else:
        raise ValueError(f"method must be one of ['lazy', 'naive', 'stochastic'], got {method!r}")
    if drv.progress is not None and drv.stop != "cancelled":
        drv.last = -math.inf
        drv.tick()
    return drv.finish()


def _describe_bad_row(G: Any, code: int, row: int, alpha: float) -> str:
    xp_row = G[row]
    host = xp_row.get() if hasattr(xp_row, "get") else np.asarray(xp_row)
    return describe_bad_row(host.reshape(1, -1), code, 0, alpha, row_name=row)


def select_gpu(
    G: Any,
    k: int,
    alpha: float = 1.0,
    lam: float = 0.0,
    omega: float = 0.0,
    method: str = "lazy",
    seed: int = 0,
    stochastic_eps: float = 0.01,
    *,
    objective: str = "logdet",
    progress: ProgressFn | None = None,
    bf16: bool = False,
    code: int | None = None,
    normalize: str = "none",
) -> dict[str, Any]:
    """Run the selection on ``G``'s CUDA device; returns the keys of ``spice._core.select``.

    ``normalize="unit"`` selects on a float64 copy of the rows scaled to norm 1, made on the
    device (n × d × 8 bytes more GPU memory; the CPU core scales its products instead and makes
    no copy). Equal gains (every unit row's first gain is log(1 + α)) may then be ordered by the
    copy's round-off, so the GPU's first pick can differ from the CPU's.

    ``k`` is a count in [0, n] or a fraction, ``lam`` >= 0, ``omega`` in (0, 1) or 0 (off); they
    are checked by the CPU path's own validation (same messages). ``code`` is the dtype code when
    ``G`` came from :func:`as_device_features` (it is derived otherwise).
    Adds ``"backend": "cuda:cupy"`` and ``"device"`` (the GPU's name) to the result.

    Raises
    ------
    RuntimeError
        CuPy missing, no CUDA device, or the kernels failed to compile.
    ValueError
        A compatibility objective (CPU only), an unknown method, or a row with NaN/Inf.
    """
    from .selection import check_normalize, check_options, resolve_k

    # Every setting but k (whose range needs n) is checked before CuPy is looked for.
    _, alpha, lam, omega, stochastic_eps, seed = check_options(
        0,
        0,
        alpha=alpha,
        conflict_penalty=lam,
        early_stop=omega or None,
        method=method,
        objective=objective,
        stochastic_eps=stochastic_eps,
        seed=seed,
    )
    if objective != "logdet":
        raise ValueError(
            f"objective={objective!r} runs on the CPU only; the GPU selector implements the "
            "paper's objective (objective='logdet'). Pass a host array to use the compatibility "
            "modes."
        )
    unit = check_normalize(normalize, objective, alpha)
    cp = _import_cupy()
    ok, why = available()
    if not ok:
        raise RuntimeError(f"spice's GPU selection cannot run: {why}")
    if code is None or not isinstance(G, cp.ndarray):
        G, code = as_device_features(G, bf16=bf16)
    if unit:
        with cp.cuda.Device(G.device.id):
            G, code = unit_rows_copy(cp, G, code, float(alpha))
    k = resolve_k(k, int(G.shape[0]))
    with cp.cuda.Device(G.device.id):
        ops = _CupyOps(cp, G, code)
        raw = _run(
            ops,
            int(k),
            float(alpha),
            float(lam),
            float(omega),
            method,
            int(seed) & 0xFFFFFFFFFFFFFFFF,
            float(stochastic_eps),
            progress,
        )
    if raw["bad_row"] >= 0:
        raise ValueError(_describe_bad_row(G, code, int(raw["bad_row"]), float(alpha)))
    raw["backend"] = BACKEND
    raw["device"] = ops.device_name
    return raw


def unit_rows_copy(xp: Any, G: Any, code: int, alpha: float) -> tuple[Any, int]:
    """``(G_unit, F64)``: a float64 copy of ``G`` (dtype code ``code``; bfloat16 as uint16
    bits) with each row times 1/‖g‖ (zero rows stay zero), made with ``xp`` (CuPy on the device,
    or numpy). The GPU path of ``normalize="unit"``.

    Raises ValueError for a row whose squared norm is not finite (as the selection would) or
    underflows float64 while the row is nonzero (it cannot be scaled exactly).
    """
    if code == BF16:
        x = (G.astype(xp.uint32) << 16).view(xp.float32).astype(xp.float64)
    else:
        x = G.astype(xp.float64)
    n2 = xp.sum(x * x, axis=1)
    bad = ~xp.isfinite(n2) | ((n2 == 0) & xp.any(x != 0, axis=1))
    if bool(bad.any()):
        row = int(xp.flatnonzero(bad)[0])
        if not bool(xp.isfinite(n2[row])):
            raise ValueError(_describe_bad_row(G, code, row, alpha))
        raise ValueError(
            f"row {row} of G is too small to normalise (normalize='unit'): ||g||^2 underflows "
            "float64; rescale the features (e.g. divide by their largest absolute value)"
        )
    pos = n2 > 0
    x *= xp.where(pos, 1.0 / xp.sqrt(xp.where(pos, n2, 1.0)), 0.0)[:, None]
    return x, F64


def emulate(
    G: Any,
    k: int,
    alpha: float = 1.0,
    lam: float = 0.0,
    omega: float = 0.0,
    method: str = "lazy",
    seed: int = 0,
    stochastic_eps: float = 0.01,
    *,
    minv_factor: float = 1.5,
    lazy_batch: int = 0,
) -> dict[str, Any]:
    """The GPU driver's exact control flow on the host (numpy emulation of the kernels).

    For tests and debugging only: slow, float64, ``backend == "numpy-emulation"``.
    """
    from ._inputs import as_features

    arr, code = as_features(G)
    raw = _run(
        _NumpyOps(arr, code),
        int(k),
        float(alpha),
        float(lam),
        float(omega),
        method,
        int(seed) & 0xFFFFFFFFFFFFFFFF,
        float(stochastic_eps),
        None,
        minv_factor,
        lazy_batch,
    )
    raw["backend"] = "numpy-emulation"
    return raw
