"""The selectors compared by the harness, and the per-subset diagnostics.

Gradient selectors all read the same proxy features ``G``. Two outside baselines are implemented
here: LESS-style (cosine to per-family mean validation gradients, top-k; no Adam preconditioning)
and IFD-style (Cherry-LLM's instruction-following difficulty, loss(answer | instruction) /
loss(answer), highest first, IFD >= 1 dropped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr

import spice


@dataclass
class Pick:
    indices: np.ndarray
    note: str = ""
    extra: dict = field(default_factory=dict)
    seconds: float = 0.0


def random_pick(n: int, k: int, seed: int) -> Pick:
    rng = np.random.default_rng(10_000 + seed)
    return Pick(np.sort(rng.choice(n, size=k, replace=False)))


def spice_pick(G: np.ndarray, k: int, alpha: float, **kw) -> tuple[Pick, spice.Selection]:
    sel = spice.select(G, k, alpha=alpha, **kw)
    extra = {"kept": int(len(sel.indices)), "kept_frac_of_budget": len(sel.indices) / max(1, k),
             "stop_reason": sel.stop_reason}  # fmt: skip
    return Pick(np.asarray(sel.indices, dtype=np.int64), extra=extra, seconds=sel.elapsed_s), sel


def less_pick(G: np.ndarray, Gval: np.ndarray, val_family: list[str], k: int) -> Pick:
    """LESS-style: score_i = max over validation tasks of cos(g_i, mean validation gradient)."""
    Gn = G / np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-12)
    scores = np.full(len(G), -np.inf)
    for f in sorted(set(val_family)):
        rows = [i for i, v in enumerate(val_family) if v == f]
        m = Gval[rows].mean(0)
        m = m / max(np.linalg.norm(m), 1e-12)
        scores = np.maximum(scores, Gn @ m)
    return Pick(np.argsort(-scores, kind="stable")[:k])


def ifd_pick(loss_cond: np.ndarray, loss_uncond: np.ndarray, k: int) -> Pick:
    ifd = loss_cond / np.maximum(loss_uncond, 1e-9)
    order = np.argsort(-ifd, kind="stable")
    ok = [i for i in order if ifd[i] < 1.0]
    rest = [i for i in order if ifd[i] >= 1.0]
    chosen = (ok + rest)[:k]
    return Pick(
        np.asarray(chosen, dtype=np.int64), extra={"ifd_ge_1_in_pool": float(np.mean(ifd >= 1.0))}
    )


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(map(int, a)), set(map(int, b))
    return len(sa & sb) / max(1, len(sa | sb))


def subset_stats(
    G: np.ndarray, idx: np.ndarray, alpha: float, defects: list[str], families: list[str]
) -> dict:
    """Exact log-det, conflict of the picks against the subset mean, defect composition."""
    idx = np.asarray(idx, dtype=np.int64)
    out: dict = {"size": int(len(idx))}
    if len(idx) == 0:
        return out
    out["logdet"] = float(spice.logdet(G, idx, alpha))
    S = G[idx].astype(np.float64)
    mean = S.mean(0)
    cos = (S @ mean) / np.maximum(np.linalg.norm(S, axis=1) * np.linalg.norm(mean), 1e-12)
    out["neg_aligned_frac"] = float(np.mean(cos < 0))
    out["mean_conflict"] = float(np.mean(np.maximum(0.0, -cos)))
    for d in ("clean", "wrong", "dup", "filler"):
        out[f"frac_{d}"] = float(np.mean([defects[i] == d for i in idx]))
    fams: dict[str, int] = {}
    for i in idx:
        fams[families[i]] = fams.get(families[i], 0) + 1
    out["families"] = fams
    return out


def theory_checks(G: np.ndarray, sel: spice.Selection, alpha: float) -> dict:
    """The paper's diagnostics on this data, from a SPICE run: Spearman(conflict, Δ),
    Spearman(conflict, |ε|), half-life step of Δ, curvature c and greedy factor."""
    conf = np.asarray(sel.conflict)[1:]
    gains = np.asarray(sel.gains)[1:]
    eps = np.abs(np.asarray(sel.epsilon))[1:]

    def rho(a, b):
        if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
            return math.nan
        return float(spearmanr(a, b).statistic)

    g = np.asarray(sel.gains)
    half = next((int(t) for t in range(len(g)) if g[t] <= 0.5 * g[0]), None)
    cur = spice.curvature(G, alpha)
    return {
        "spearman_conflict_gain": rho(conf, gains),
        "spearman_conflict_abs_eps": rho(conf, eps),
        "half_life_step": half,
        "picks": int(len(g)),
        "first_gain": float(g[0]) if len(g) else math.nan,
        "last_gain": float(g[-1]) if len(g) else math.nan,
        "curvature_c": float(cur.c),
        "greedy_factor": float(cur.factor),
        "certified_ratio": float(sel.certified_ratio),
        "frac_picks_with_conflict": float(np.mean(conf > 0)) if len(conf) else math.nan,
    }
