"""The CUDA kernels of csrc/cuda/spice_kernels.cu, launched through CuPy."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._inputs import BF16, F16, F32, F64
from .load import _module
from .state import Candidate, _State

_SUFFIX = {F32: "f32", F64: "f64", F16: "f16", BF16: "bf16"}
_VEC = {F32: 4, F64: 2, F16: 8, BF16: 8}  # elements per 16-byte chunk (kernel's L::VEC)
_WARPS, _ROWS = 8, 4  # SPICE_WARPS, SPICE_ROWS in the kernels
_THREADS = 32 * _WARPS
_MB, _SB = 256, 512  # lazy catch-up GEMMs, one fixed shape: _SB rows of W x _MB gathered rows


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
        conflict_penalty: float,
        count: bool,
    ) -> Candidate:
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
                np.float64(conflict_penalty),
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
        return Candidate.from_row(self.xp.asnumpy(self.out))

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
