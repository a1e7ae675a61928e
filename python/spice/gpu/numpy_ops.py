"""A numpy emulation of the kernels, so the driver's control flow is tested without a GPU."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._inputs import row_as_float64
from .._numerics import ETA, GAIN_TINY, REL_TINY  # in span(S) and the cosine guard, as the core
from .state import ALIVE, DEAD, NO_CANDIDATE, PICKED, Candidate, _State


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
        conflict_penalty: float,
        count: bool,
    ) -> Candidate:
        idx = np.arange(self.n) if cand is None else np.asarray(cand)
        live = idx[st.state[idx] == ALIVE]
        if count:
            self.evals_count += int(live.size)
        if live.size == 0:
            return NO_CANDIDATE
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
        sc = dl - conflict_penalty * cf
        st.delta[live] = dl
        st.state[live[dead]] = DEAD
        ok = ~dead
        st.align[live[ok]] = al[ok]
        sc = np.where(dead, -np.inf, sc)
        st.score[live] = sc
        if not ok.any():
            return NO_CANDIDATE
        best = float(np.max(sc[ok]))
        i = int(np.min(live[ok][sc[ok] == best]))  # ties: lowest index
        return Candidate(i, best, float(st.delta[i]), float(st.align[i]), float(st.q[i]))

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
