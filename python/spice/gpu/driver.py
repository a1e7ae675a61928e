"""The greedy driver, written against an array module and an ops object (CuPy or numpy)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from .._inputs import progress_says_continue
from .._numerics import ETA, MAX_ALPHA_NORM2
from .state import ALIVE, NO_CANDIDATE, PICKED, Candidate, _State

ProgressFn = Callable[[int, int, int, float], Any]


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
        conflict_penalty: float,
        core_early_stop: float,
        progress: ProgressFn | None,
        minv_factor: float,
        lazy_batch: int,
    ) -> None:
        self.ops, self.xp = ops, ops.xp
        self.n, self.d = ops.n, ops.d
        self.k, self.alpha = k, alpha
        self.conflict_penalty = conflict_penalty
        self.core_early_stop = core_early_stop  # 0: off
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
        self.svec: Any = None  # s as the step kernel reads it (conflict_penalty > 0)
        self.minv: Any = None
        lim = self.minv_factor * d
        self.minv_at = (
            math.ceil(lim) if self.minv_factor > 0 and k > lim and d * d * 8 <= (1 << 30) else -1
        )
        return -1

    def conflict_arg(self) -> Any:
        return self.svec if (self.conflict_penalty > 0 and self.t > 0) else None

    def stop_before(self, c: Candidate) -> bool:
        if c.index < 0 or not (c.score > -np.inf):
            self.stop = "exhausted"
            return True
        if (
            self.core_early_stop > 0
            and self.t >= 1
            and c.gain <= self.core_early_stop * self.gains[0]
        ):
            self.stop = "early_stop"
            return True
        return False

    def add_pick(self, c: Candidate) -> None:
        xp, ops, t = self.xp, self.ops, self.t
        j = c.index
        self.idx.append(j)
        self.gains.append(c.gain)
        self.scores.append(c.score)
        self.align_step.append(c.align)
        ops.pick(self.st, j, self.s, self.g64, self.A[t : t + 1], self.SN[t + 1 : t + 2])
        scale = math.sqrt(self.alpha / (1.0 + self.alpha * c.q))
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
        if self.conflict_penalty > 0:
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

    def refresh(self, cand: Any) -> Candidate:
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
            st,
            cand,
            None,
            self.conflict_arg(),
            self.SN[t : t + 1],
            t,
            self.alpha,
            self.conflict_penalty,
            True,
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
                self.conflict_penalty,
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
                self.conflict_penalty,
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
            best = NO_CANDIDATE
            theta = self._theta1(B)
            round2 = 0
            for rnd in (1, 2):
                if rnd == 2:
                    theta = best.score if best.index >= 0 else -np.inf
                cand = self.ops.compact(self.st, self.ub, self.stamp, self.t, theta)
                if cand.size == 0:
                    continue
                self.stamp[cand] = self.t
                out = self.refresh(cand)
                if rnd == 2:
                    round2 = int(cand.size)
                if out.index >= 0 and (
                    best.index < 0 or _better(out.score, out.index, best.score, best.index)
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
            if out.index < 0 and m < r:  # the sample is all dead: look at everything left
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
        if self.conflict_penalty > 0:
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
    conflict_penalty: float,
    core_early_stop: float,
    method: str,
    seed: int,
    stochastic_eps: float,
    progress: ProgressFn | None = None,
    minv_factor: float = 1.5,
    lazy_batch: int = 0,
) -> dict[str, Any]:
    """The greedy on an ops object (``_CupyOps`` or ``_NumpyOps``); returns the core's keys."""
    drv = _Driver(
        ops, k, alpha, conflict_penalty, core_early_stop, progress, minv_factor, lazy_batch
    )
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
