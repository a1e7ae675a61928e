"""spice.logdet, spice.curvature and the selection certificate against exact arithmetic.

The oracle is mpmath at 100 digits (more where alpha ||g||^2 is large): the floats of G and
alpha convert exactly, and log det(I + alpha G_S G_S^T) is summed as log1p of the LDL^T pivots
minus 1 of the k x k Gram form (never 1 + something rounded, so values of 1e-300 keep their
digits too)."""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spice

DPS = 100


def mp_pivots(R: np.ndarray, alpha: float) -> list[mpmath.mpf]:
    """The gains log1p(e_j) of the rows of R taken in order (e_j = D_jj - 1 of the LDL^T of
    I + alpha R R^T), to about DPS digits, for any float64 R (m x d) and alpha > 0. Their sum
    is log det(I + alpha R R^T); the last is the last row's gain given all the others."""
    R = np.atleast_2d(np.asarray(R, dtype=np.float64))
    m = R.shape[0]
    mx = float(np.max(np.abs(R))) if R.size else 0.0
    # the pivots are differences of entries up to alpha max|R|^2 d: carry that many more digits
    top = math.log10(alpha) + 2 * math.log10(mx) + math.log10(R.shape[1]) if mx > 0 else 0.0
    with mpmath.workdps(DPS + 2 * int(max(0.0, top))):
        a = mpmath.mpf(float(alpha))
        rows = [[mpmath.mpf(float(v)) for v in r] for r in R]
        K = [
            [a * mpmath.fsum(x * y for x, y in zip(rows[i], rows[j])) for j in range(m)]
            for i in range(m)
        ]
        Lm = [[mpmath.mpf(0)] * m for _ in range(m)]
        D = [mpmath.mpf(0)] * m
        out = []
        for j in range(m):
            e = K[j][j] - mpmath.fsum(Lm[j][i] ** 2 * D[i] for i in range(j))
            D[j] = 1 + e  # kept apart from e: the gain is log1p(e), never log of 1 + rounded
            out.append(mpmath.log1p(e))
            for r in range(j + 1, m):
                acc = mpmath.fsum(Lm[r][i] * Lm[j][i] * D[i] for i in range(j))
                Lm[r][j] = (K[r][j] - acc) / D[j]
        return out


def mp_logdet(R: np.ndarray, alpha: float) -> mpmath.mpf:
    """log det(I + alpha R R^T), to about DPS digits."""
    with mpmath.workdps(DPS + 700):
        return mpmath.fsum(mp_pivots(R, alpha))


def mp_curvature(G: np.ndarray, alpha: float) -> tuple[mpmath.mpf, int]:
    """(c, argmin) from the definition, 1 - min_x Delta_x(D - x) / Delta_x(empty) over the rows
    with a positive single-row gain; Delta_x(D - x) is x's pivot with x ordered last."""
    best, arg = None, -1
    n = G.shape[0]
    for x in range(n):
        if not np.any(G[x]):
            continue
        order = [i for i in range(n) if i != x] + [x]
        with mpmath.workdps(DPS):
            base = mp_pivots(G[x : x + 1], alpha)[0]
            r = mp_pivots(G[order], alpha)[-1] / base
        if best is None or r < best:
            best, arg = r, x
    return (mpmath.mpf(0) if best is None else 1 - best), arg


def rows_at_scales(rng: np.random.Generator, m: int, d: int, lo: float, hi: float) -> np.ndarray:
    """m Gaussian rows of dimension d, row i scaled by 10**p_i with p_i uniform in [lo, hi]."""
    return rng.standard_normal((m, d)) * 10.0 ** rng.uniform(lo, hi, size=(m, 1))


def near_copy(rng: np.random.Generator, g: np.ndarray, rel: float) -> np.ndarray:
    return g * (1.0 + rel * rng.standard_normal(g.shape))


# ---------------------------------------------------------------- spice.logdet
@pytest.mark.parametrize("alpha", [1e-10, 1e-14, 1e-20])
def test_logdet_keeps_relative_accuracy_at_small_alpha(alpha):
    G = np.random.default_rng(1).standard_normal((4, 6))
    exact = mp_logdet(G, alpha)
    got = spice.logdet(G, np.arange(4), alpha)
    assert abs(got - exact) <= 1e-13 * exact
    sel = spice.select(G, 4, alpha=alpha, conflict_penalty=0.0)
    assert abs(sel.logdet - exact) <= 1e-12 * exact  # the selector agrees


def test_logdet_of_rows_of_1e200_is_not_refused():
    G = np.random.default_rng(2).standard_normal((3, 4)) * 1e200
    for alpha in (1.0, 1e-20, 1e12):
        exact = mp_logdet(G, alpha)
        assert abs(spice.logdet(G, [0, 1, 2], alpha) - exact) <= 1e-13 * exact


def test_logdet_of_near_parallel_rows_at_6e10():
    rng = np.random.default_rng(3)
    g = rng.standard_normal(8)
    G = np.vstack([g, near_copy(rng, g, 1e-6), rng.standard_normal(8)])
    alpha = 6e10 / float(g @ g)
    exact = mp_logdet(G, alpha)  # a Gram-matrix Cholesky is 3e-7 off here
    assert abs(spice.logdet(G, [0, 1, 2], alpha) - exact) <= 1e-12 * exact


def test_logdet_of_mixed_scales_in_one_set():
    G = np.array([[1e80, 0.0], [1e-120, 1e-120]])
    for alpha in (1e-20, 1.0, 1e12):
        exact = mp_logdet(G, alpha)
        assert abs(spice.logdet(G, [0, 1], alpha) - exact) <= 1e-13 * exact


def test_logdet_refusal_names_a_row():
    g = np.random.default_rng(4).standard_normal(5)
    G = np.vstack([np.ones(5), g, g])  # an exact copy at alpha ||g||^2 = 5e40
    with pytest.raises(ValueError, match=r"cannot be resolved in float64: row 2 of G is so nearly"):
        spice.logdet(G, [0, 1, 2], 1e40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 6),
    d=st.integers(1, 5),
    lo=st.floats(-150, 160),
    spread=st.floats(0, 310),
    log_alpha=st.floats(-20, 12),
    parallel=st.sampled_from([0.0, 1e-3, 1e-8, 1e-13]),
)
def test_logdet_is_right_or_refused(seed, m, d, lo, spread, log_alpha, parallel):
    rng = np.random.default_rng(seed)
    G = rows_at_scales(rng, m, d, lo, min(160.0, lo + spread))
    if parallel and m > 1:
        G[-1] = near_copy(rng, G[0], parallel)
    alpha = 10.0**log_alpha
    exact = mp_logdet(G, alpha)
    try:
        got = spice.logdet(G, np.arange(m), alpha)
    except ValueError as e:
        assert "cannot be resolved in float64" in str(e)
        # only near-copies (at least as close as 1e-8) are ever refused
        assert parallel and parallel <= 1e-8 and m > 1
        return
    if exact > 1e-290:
        assert abs(got - exact) <= 1e-8 * exact
    else:  # below float64's normal range a value has only absolute accuracy
        assert abs(got - exact) <= 1e-300


# ---------------------------------------------------------------- spice.curvature
def test_curvature_keeps_a_tiny_row_among_huge_ones():
    G = np.array([[1e80, 0.0], [1e-120, 1e-120]])
    c, arg = mp_curvature(G, 1.0)  # exactly 1/2: the tiny row's gain halves in the pool
    got = spice.curvature(G, 1.0)
    assert c <= got.c <= c + 1e-11 and got.argmin == arg == 1
    exact_factor = -mpmath.expm1(-c) / c
    assert exact_factor - 1e-11 <= got.factor <= exact_factor


@pytest.mark.parametrize("alpha", [1e-14, 1e-18])
@pytest.mark.parametrize("n, d", [(6, 3), (3, 5)])
def test_curvature_at_small_alpha_is_tiny_not_inflated(alpha, n, d):
    G = np.random.default_rng(5).standard_normal((n, d))
    c, arg = mp_curvature(G, alpha)  # about alpha ||g||^2
    got = spice.curvature(G, alpha)
    # c = 1 - (a ratio near 1) is rounded up by that ratio's round-off, about 1e-13: the factor
    # (1 - c/2 here) is then exact to 1e-13, never above the true one
    assert c <= got.c <= c + 1e-12
    if c > 1e-15:  # the ratios differ by more than float64's resolution: the argmin is known
        assert got.argmin == arg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 6),
    d=st.integers(1, 5),
    lo=st.floats(-150, 160),
    spread=st.floats(0, 310),
    log_alpha=st.floats(-20, 12),
    parallel=st.sampled_from([0.0, 1e-3, 1e-8, 1e-13]),
)
def test_curvature_is_never_overstated(seed, n, d, lo, spread, log_alpha, parallel):
    rng = np.random.default_rng(seed)
    G = rows_at_scales(rng, n, d, lo, min(160.0, lo + spread))
    if parallel and n > 1:
        G[-1] = near_copy(rng, G[0], parallel)
    alpha = 10.0**log_alpha
    c, _ = mp_curvature(G, alpha)
    got = spice.curvature(G, alpha)
    assert got.c >= c  # rounded up: the stated factor is a true guarantee
    assert got.factor <= (-mpmath.expm1(-c) / c if c > 0 else 1)
    if not parallel and spread < 1 and log_alpha < 6:
        assert got.c <= c + 1e-6  # and tight where float64 resolves it


# ---------------------------------------------------------------- the certificate
def exact_opt(G: np.ndarray, m: int, alpha: float) -> mpmath.mpf:
    """max log det over all m-subsets of the rows, in exact arithmetic."""
    return max(mp_logdet(G[list(S)], alpha) for S in itertools.combinations(range(len(G)), m))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(3, 9),
    d=st.integers(2, 5),
    k=st.integers(1, 5),
    log_an2=st.floats(6, 12),
    pairs=st.sampled_from([0.0, 1e-3, 1e-6, 1e-8]),
    method=st.sampled_from(["naive", "lazy"]),
)
def test_certificate_bounds_the_exact_optimum(seed, n, d, k, log_an2, pairs, method):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d))
    if pairs:  # near-parallel pairs: where the rounded gains err the most
        for i in range(1, n, 2):
            G[i] = near_copy(rng, G[i - 1], pairs)
    # alpha ||g||^2 <= 1e12 with room for the core's own rounding of ||g||^2 at the limit
    alpha = 10.0**log_an2 * (1 - 1e-9) / float(np.max(np.einsum("ij,ij->i", G, G)))
    sel = spice.select(G, min(k, n), alpha=alpha, conflict_penalty=0.0, method=method)
    opt = exact_opt(G, len(sel), alpha)
    assert sel.opt_upper_bound >= opt
    assert sel.opt_upper_bound <= opt * (1 + 1e-3) + 1e-9 or len(sel) < n  # not loose for S = D


def test_certificate_on_seeded_hard_cases():
    # 150 draws of near-parallel pairs at alpha ||g||^2 in 1e6..1e12; summing rounded gains
    # without a margin put the bound below the exact optimum in 10 of them.
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, d = int(rng.integers(3, 9)), int(rng.integers(2, 6))
        k = int(rng.integers(1, min(n, 5) + 1))
        G = rng.standard_normal((n, d))
        if rng.random() < 0.5:
            for i in range(1, n, 2):
                G[i] = near_copy(rng, G[i - 1], 10.0 ** rng.uniform(-8, -2))
        G /= np.sqrt(np.max(np.einsum("ij,ij->i", G, G)))
        alpha = 10.0 ** rng.uniform(6, 12) * 0.999
        sel = spice.select(G, k, alpha=alpha, conflict_penalty=0.0, method="lazy")
        assert sel.opt_upper_bound >= exact_opt(G, len(sel), alpha)
