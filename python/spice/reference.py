"""Plain, obviously-correct numpy implementations used as oracles in the tests and benchmarks.

Nothing here is fast. ``greedy_reference`` recomputes every gain from scratch each step (a linear
solve, or two slogdets); ``greedy_numpy`` is the vectorised non-lazy algorithm of
docs/algorithm.md §2 (the baseline the benchmarks compare against); the ``*_compat_reference``
functions transcribe the authors' released selectors (docs/algorithm.md §8);
``greedy_constrained_reference`` is the greedy under a cost budget and group quotas (§11).

The greedy oracles return a :class:`ReferenceSelection`: the fields of :class:`spice.Selection`
that an oracle defines, under the same names, so a test compares ``spice.select(...)`` with
``greedy_reference(...)`` field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

# "In the span of S" as in the core: the residual q <= REL_TINY ||g||^2 and the gain alpha q <=
# GAIN_TINY (a repeated row at a large alpha ||g||^2 has a tiny relative residual but gain ~log 2).
from ._numerics import ETA, GAIN_TINY, REL_TINY


@dataclass(frozen=True)
class ReferenceSelection:
    """An oracle's picks, with the names and meanings of :class:`spice.Selection`'s fields.

    Only what the oracle computes is set; a field it does not define is None (the compatibility
    transcriptions define no ``logdet`` or ``stop_reason``, ``tokens`` is set only with a cost).
    The bounds, counters and timings of a ``Selection`` have no meaning here and are absent.
    """

    indices: np.ndarray
    gains: np.ndarray
    stop_reason: str | None = None
    logdet: float | None = None
    base: np.ndarray | None = None
    epsilon: np.ndarray | None = None
    align: np.ndarray | None = None
    conflict: np.ndarray | None = None
    penalty: np.ndarray | None = None
    scores: np.ndarray | None = None
    tokens: float | None = None
    safeguard: bool | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, name: str) -> Any:
        """``ref["indices"]`` as ``ref.indices``: the oracles returned dicts before, and scripts
        (the wheel's test command among them) still index them so."""
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        return getattr(self, name)

    def defined(self) -> dict[str, Any]:
        """The fields this oracle set (name -> value), ``indices`` first."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def _logdet(G: np.ndarray, S: list[int], alpha: float) -> float:
    """log det(I + α G_S G_Sᵀ) by slogdet, 0 for the empty set."""
    return float(np.linalg.slogdet(np.eye(len(S)) + alpha * G[S] @ G[S].T)[1]) if S else 0.0


def _conflict(G: np.ndarray, S: list[int], norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not S:
        z = np.zeros(G.shape[0])
        return z, z
    gbar = G[S].mean(axis=0)
    align = (G @ gbar) / (norms * np.linalg.norm(gbar) + ETA)
    return align, np.maximum(0.0, -align)


def greedy_reference(
    G: Any,
    k: int,
    alpha: float = 1.0,
    conflict_penalty: float = 0.0,
    early_stop: float | None = None,
    gain: str = "solve",
) -> ReferenceSelection:
    """Greedy SPICE with every Δ recomputed from its definition.

    gain="solve": Δ_x = log(1 + α g_xᵀ M⁻¹ g_x) with M = I + α G_SᵀG_S solved directly;
    gain="slogdet": Δ_x = logdet(I + α G_{S+x} G_{S+x}ᵀ) − logdet(I + α G_S G_Sᵀ).
    Ties go to the lowest index. Sets every per-pick field (gains, base, epsilon, align, conflict,
    penalty, scores), ``logdet`` (by slogdet of the chosen set) and ``stop_reason`` ("budget",
    "early_stop" or "exhausted").
    """
    G = np.asarray(G, dtype=np.float64)
    n, d = G.shape
    norms2 = np.einsum("ij,ij->i", G, G)
    norms = np.sqrt(norms2)
    base = np.log1p(alpha * norms2)
    S: list[int] = []
    out: dict[str, list] = {x: [] for x in ("gains", "base", "align", "conflict", "scores")}
    stop = "budget"
    for _ in range(k):
        if gain == "solve":
            M = np.eye(d) + alpha * G[S].T @ G[S]
            q = np.einsum("ij,ji->i", G, np.linalg.solve(M, G.T))
            q = np.maximum(q, 0.0)
            delta = np.log1p(alpha * q)
        else:
            cur = np.linalg.slogdet(np.eye(len(S)) + alpha * G[S] @ G[S].T)[1] if S else 0.0
            delta = np.empty(n)
            for x in range(n):
                T = S + [x]
                delta[x] = np.linalg.slogdet(np.eye(len(T)) + alpha * G[T] @ G[T].T)[1] - cur
            q = np.expm1(np.maximum(delta, 0.0)) / alpha
        align, conflict = _conflict(G, S, norms)
        score = delta - conflict_penalty * conflict
        eligible = ((q > REL_TINY * norms2) | (alpha * q > GAIN_TINY)) & (delta > 0)
        eligible[S] = False
        if not eligible.any():
            stop = "exhausted"
            break
        j = int(np.flatnonzero(eligible)[np.argmax(score[eligible])])
        if early_stop is not None and S and delta[j] <= early_stop * out["gains"][0]:
            stop = "early_stop"
            break
        S.append(j)
        for name, arr in (
            ("gains", delta),
            ("base", base),
            ("align", align),
            ("conflict", conflict),
            ("scores", score),
        ):
            out[name].append(float(arr[j]))
    arr = {name: np.array(v, dtype=np.float64) for name, v in out.items()}
    return ReferenceSelection(
        indices=np.array(S, dtype=np.int64),
        gains=arr["gains"],
        base=arr["base"],
        epsilon=arr["gains"] - arr["base"],
        align=arr["align"],
        conflict=arr["conflict"],
        penalty=conflict_penalty * arr["conflict"],
        scores=arr["scores"],
        logdet=_logdet(G, S, alpha),
        stop_reason=stop,
    )


def _rank(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The cost-benefit key: score / cost for a positive score, score · cost otherwise."""
    return np.where(score > 0, score / cost, score * cost)


def greedy_constrained_reference(
    G: Any,
    k: int,
    alpha: float = 1.0,
    conflict_penalty: float = 0.0,
    early_stop: float | None = None,
    cost: Any = None,
    budget: float | None = None,
    groups: Any = None,
    quotas: Any = None,
    safeguard: bool = True,
) -> ReferenceSelection:
    """Greedy SPICE under a cost budget and group quotas, every Δ recomputed by a linear solve
    (docs/algorithm.md §11).

    At each step the candidates are the rows not picked, not in span(S), whose cost added to the
    spent cost (float64, in pick order) stays within ``budget`` and whose group (``groups``: ints
    in [0, len(quotas))) has fewer than ``quotas[g]`` picks. With ``cost`` they are ranked by
    score/cost (score·cost for a score <= 0), else by score; ties go to the lowest index. Early
    stop compares Δ/cost (Δ without cost) with ω times the first pick's. With ``cost`` and
    ``safeguard``, the best single row that fits alone (largest log(1 + α‖g‖²)) replaces the set
    when it beats the greedy's summed scores (then that row is the whole set, its gain and score
    log(1 + α‖g‖²), align and conflict 0). Sets every per-pick field, ``logdet``, ``stop_reason``
    ("budget", "early_stop", "exhausted", "filled"), ``safeguard`` and, with ``cost``, ``tokens``
    (the summed cost of the picks, in pick order).
    """
    G = np.asarray(G, dtype=np.float64)
    n, d = G.shape
    c = np.ones(n) if cost is None else np.asarray(cost, dtype=np.float64)
    grp = None if groups is None else np.asarray(groups, dtype=np.int64)
    cap = None if quotas is None else np.asarray(quotas, dtype=np.int64)
    used = None if cap is None else np.zeros(cap.size, dtype=np.int64)
    norms2 = np.einsum("ij,ij->i", G, G)
    norms = np.sqrt(norms2)
    base = np.log1p(alpha * norms2)
    S: list[int] = []
    gains: list[float] = []
    scores: list[float] = []
    aligns: list[float] = []
    spent = 0.0
    stop = "budget"

    def fits(i: int) -> bool:
        if cost is not None and not (spent + c[i] <= budget):
            return False
        return grp is None or bool(used[grp[i]] < cap[grp[i]])  # type: ignore[index]

    for _ in range(k):
        if S:
            M = np.eye(d) + alpha * G[S].T @ G[S]
            q = np.maximum(np.einsum("ij,ji->i", G, np.linalg.solve(M, G.T)), 0.0)
        else:  # M = I: q is the squared norm, exactly (the single-row safeguard compares it)
            q = norms2.copy()
        delta = np.log1p(alpha * q)
        align, conflict = _conflict(G, S, norms)
        score = delta - conflict_penalty * conflict
        ok = np.array([fits(i) for i in range(n)], dtype=bool)
        ok[S] = False
        eligible = ok & ((q > REL_TINY * norms2) | (alpha * q > GAIN_TINY)) & (delta > 0)
        if not eligible.any():
            stop = "exhausted" if ok.any() else "filled"
            break
        key = _rank(score, c) if cost is not None else score
        j = int(np.flatnonzero(eligible)[np.argmax(key[eligible])])
        if early_stop is not None and S:
            if delta[j] / c[j] <= early_stop * (gains[0] / c[S[0]]):
                stop = "early_stop"
                break
        S.append(j)
        gains.append(float(delta[j]))
        scores.append(float(score[j]))
        aligns.append(float(align[j]))
        spent += c[j] if cost is not None else 0.0
        if used is not None:
            used[grp[j]] += 1  # type: ignore[index]
    used_safeguard = False
    if cost is not None and safeguard and k >= 1:
        alone = (base > 0) & (c <= budget)
        if cap is not None:
            alone &= cap[grp] >= 1  # type: ignore[index]
        if alone.any():
            j = int(np.flatnonzero(alone)[np.argmax(base[alone])])
            if base[j] > sum(scores):
                S, gains, scores, spent = [j], [float(base[j])], [float(base[j])], float(c[j])
                aligns = [0.0]
                used_safeguard = True
    g = np.array(gains, dtype=np.float64)
    a = np.array(aligns, dtype=np.float64)
    conf = np.maximum(0.0, -a)
    return ReferenceSelection(
        indices=np.array(S, dtype=np.int64),
        gains=g,
        base=base[S],
        epsilon=g - base[S],
        align=a,
        conflict=conf,
        penalty=conflict_penalty * conf,
        scores=np.array(scores, dtype=np.float64),
        tokens=spent if cost is not None else None,
        logdet=_logdet(G, S, alpha),
        stop_reason=stop,
        safeguard=used_safeguard,
    )


def greedy_numpy(
    G: np.ndarray,
    k: int,
    alpha: float = 1.0,
    conflict_penalty: float = 0.0,
    early_stop: float | None = None,
) -> dict[str, Any]:
    """The non-lazy Sherman–Morrison greedy of docs/algorithm.md §2, vectorised with numpy.

    One GEMV over G per pick in G's own dtype (float32 stays float32, as a numpy user would write
    it), q and the gains in float64. This is the baseline of the benchmarks.
    """
    n, d = G.shape
    dt = G.dtype if G.dtype in (np.float32, np.float64) else np.float32
    norms2 = np.einsum("ij,ij->i", G, G, dtype=np.float64)
    norms = np.sqrt(norms2)
    q = norms2.copy()
    alive = norms2 > 0
    W = np.zeros((k, d))
    s = np.zeros(d)
    idx: list[int] = []
    gains: list[float] = []
    stop = "budget"
    for t in range(k):
        if t > 0:
            r = (G @ W[t - 1].astype(dt)).astype(np.float64)
            q -= r * r
            np.maximum(q, 0.0, out=q)
        delta = np.log1p(alpha * q)
        alive &= (q > REL_TINY * norms2) | (alpha * q > GAIN_TINY)
        score = delta.copy()
        if conflict_penalty > 0 and t > 0:
            a = (G @ s.astype(dt)).astype(np.float64)
            align = (a / t) / (norms * (np.linalg.norm(s) / t) + ETA)
            score -= conflict_penalty * np.maximum(0.0, -align)
        score[~alive] = -np.inf
        j = int(np.argmax(score))
        if not np.isfinite(score[j]):
            stop = "exhausted"
            break
        if early_stop is not None and t > 0 and delta[j] <= early_stop * gains[0]:
            stop = "early_stop"
            break
        g = G[j].astype(np.float64)
        c = W[:t] @ g
        u = g - W[:t].T @ c
        W[t] = u * np.sqrt(alpha / (1.0 + alpha * q[j]))
        s += g
        alive[j] = False
        idx.append(j)
        gains.append(float(delta[j]))
    return {
        "indices": np.array(idx, dtype=np.int64),
        "gains": np.array(gains),
        "logdet": float(np.sum(gains)),
        "stop_reason": stop,
    }


def diag_compat_reference(
    G: Any, k: int, alpha: float = 1.0, conflict_penalty: float = 0.0
) -> ReferenceSelection:
    """The authors' released diagonal-Fisher greedy with the hinge-cosine penalty
    (docs/algorithm.md §8). Like their loop it takes min(k, n) rows whatever the scores: a zero
    row (gain 0, cosine 0, score 0) is picked once every other row scores below it. Ties go to
    the lowest index. Sets ``indices``, ``gains`` (this objective's own) and ``scores``."""
    G = np.asarray(G, dtype=np.float64)
    n, d = G.shape
    norms = np.linalg.norm(G, axis=1)
    den = np.ones(d)
    S: list[int] = []
    gains: list[float] = []
    scores: list[float] = []
    for _ in range(k):
        s = (G**2 / den).sum(axis=1)
        delta = np.log(1.0 + alpha * s)
        _, conflict = _conflict(G, S, norms)
        score = delta - conflict_penalty * conflict
        score[S] = -np.inf
        if len(S) == n:
            break
        j = int(np.argmax(score))
        S.append(j)
        gains.append(float(delta[j]))
        scores.append(float(score[j]))
        den = den + alpha * (np.abs(G[j]) * G[j]) ** 2
    return ReferenceSelection(
        indices=np.array(S, dtype=np.int64),
        gains=np.array(gains, dtype=np.float64),
        scores=np.array(scores, dtype=np.float64),
    )


def topk_compat_reference(
    G: Any, k: int, alpha: float = 1.0, early_stop: float | None = None
) -> ReferenceSelection:
    """The authors' default selector: top-k by log(1 + α‖g‖²) (stable: ties to lower index).
    Sets ``indices`` and ``gains``."""
    G = np.asarray(G, dtype=np.float64)
    base = np.log(1.0 + alpha * (G**2).sum(axis=1))
    order = np.argsort(-base, kind="stable")
    order = order[base[order] > 0][:k]
    if early_stop is not None and order.size:
        keep = base[order] > early_stop * base[order[0]]
        keep[0] = True
        cut = np.flatnonzero(~keep)
        if cut.size:
            order = order[: cut[0]]
    return ReferenceSelection(indices=order.astype(np.int64), gains=base[order])


def dpp_map_greedy(L: np.ndarray, k: int) -> list[int]:
    """Fast greedy MAP inference for a DPP with an explicit n×n kernel ``L`` (Chen, Zhang, Zhou,
    NeurIPS 2018; the fast-map-dpp approach). Ties go to the lowest index. With
    L = I + α G Gᵀ this is Fisher greedy (λ = 0), so it is both an oracle and a baseline."""
    n = L.shape[0]
    cis = np.zeros((k, n))
    di2 = np.diag(L).astype(np.float64).copy()
    j = int(np.argmax(di2))
    out = [j]
    while len(out) < k:
        t = len(out) - 1
        eis = (L[j, :] - cis[:t, j] @ cis[:t, :]) / np.sqrt(di2[j])
        cis[t, :] = eis
        di2 -= eis**2
        di2[out] = -np.inf
        j = int(np.argmax(di2))
        out.append(j)
    return out
