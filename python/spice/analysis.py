"""Log-determinants of chosen sets and the pool's curvature, to float64's relative accuracy at
every scale of alpha * ||g||^2 (docs/algorithm.md §2, §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import as_features, row_as_float64

_BLOCK = 4096  # rows per block when streaming over G

_EPS = float(np.finfo(np.float64).eps)
_LN2 = math.log(2.0)
# A value is returned when its round-off estimate is below this fraction of it; beyond, float64
# cannot resolve it and a ValueError says so.
_REL_TOL = 1e-8
# Scales 1/y beyond 2**±_CLAMP are clamped: such a row moves the others' pivots by < 2**-800,
# far below round-off, and the clamp keeps every product of the factorisation in range.
_CLAMP = 400
# the round-off estimate of curvature sums over all rows exactly up to this many rows
_SENS_ROWS = 4096


def _unit_rows(R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``R`` scaled by exact powers of two: ``R[keep] = 2**s[:, None] * U`` with every
    row of U of max-abs in [0.5, 1); zero rows (no contribution) are dropped.

    Returns (U (m', d) float64, s (m',) int64, keep (m',) int64 positions in R)."""
    mx = np.max(np.abs(R), axis=1) if R.shape[1] else np.zeros(R.shape[0])
    keep = np.flatnonzero(mx > 0.0)
    s = np.frexp(mx[keep])[1].astype(np.int64)
    return np.ldexp(R[keep], -s[:, None]), s, keep


def _log_y2(alpha: float, s: np.ndarray) -> np.ndarray:
    """log(alpha * 4**s) per row: the log of y_j**2, the weight of unit row j. Computed from the
    mantissa of sqrt(alpha), so that scaling G by 2**k and alpha by 4**-k gives the same bits."""
    fr, er = math.frexp(math.sqrt(alpha))
    return 2.0 * (math.log(fr) + _LN2 * (er + s).astype(np.float64))


def _inv_y(alpha: float, s: np.ndarray) -> np.ndarray:
    """1 / y_j = 2**-s_j / sqrt(alpha), exact to one rounding and clamped to 2**±_CLAMP (such a
    row moves the others' pivots by less than 2**-800 of themselves, far below round-off)."""
    fr, er = math.frexp(math.sqrt(alpha))
    return np.ldexp(1.0 / fr, np.clip(-(er + s), -_CLAMP, _CLAMP))


def _y2_times(f: float, log_y2: float, y2: float) -> tuple[float, float]:
    """(e, log e) for e = y**2 * f, the one product exact to a rounding where it is in range."""
    if f <= 0.0:
        return 0.0, -math.inf
    e = f * y2
    if math.isfinite(e) and e >= 2.3e-308 and y2 > 0.0 and math.isfinite(y2):
        return e, math.log(e)
    le = math.log(f) + log_y2
    return (math.exp(le) if le < 709.0 else math.inf), le


def _log1p_of(e: float, le: float) -> float:
    """log(1 + e) from e (possibly inf) and log e."""
    if math.isfinite(e):
        return math.log1p(e)
    return le + math.log1p(math.exp(-le))


def _pivots(
    R: np.ndarray,
    log_y2: np.ndarray,
    y2: np.ndarray,
    sc: np.ndarray,
    kappa: float,
    nu: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gains log(1 + y_j**2 f_j) of I + Y Rᵀ R Y taken column by column, and each one's
    round-off estimate. R is r×k upper trapezoidal (r <= k) with columns of norm about 1, known
    to an absolute ``nu[j]`` (default 1) times eps in column j.

    f_j = y_j**-2 e_j is the distance² of (r_j, 0) from the span of the columns (r_i, e_i / y_i),
    i < j, of the stacked matrix [R; Y⁻¹]: a sum of squares read off a Householder QR of that
    matrix before column j's own 1/y_j enters, so nothing is ever subtracted from 1 (relative
    accuracy at any y) and near-parallel columns keep the precision QR gives them."""
    r, k = R.shape
    R0 = R
    R = R.copy()
    nu = np.ones(k) if nu is None else nu
    cn = np.sqrt(np.einsum("ij,ij->j", R0, R0)) * nu  # each column's round-off scale / eps
    Cb = np.zeros((k, k))  # the Y^-1 block; row i holds 1/y_i at column i before step i
    Cb[np.arange(k), np.arange(k)] = sc
    Rinv = np.zeros((k, k))  # inverse of the finished rows of the stacked factor
    gains = np.zeros(k)
    errs = np.zeros(k)
    tol = kappa * _EPS
    for j in range(k):
        z = Cb[:j, j] if j < r else Cb[:r, j]
        rho = R[j, j] if j < r else 0.0
        f = rho * rho + float(z @ z)
        e, le = _y2_times(f, float(log_y2[j]), float(y2[j]))
        # Round-off perturbs each column of R by about tol * cn; f, the distance^2 of column j
        # from the regularised span of the earlier ones, moves by 2 w_r . (dr_j - sum a_i dr_i),
        # w_r the R-part of the residual and a the projection coefficients.
        t = np.concatenate((R[: min(j, r), j], Cb[r:j, j]))
        a = Rinv[:j, :j] @ t
        w_r = R0[:, j] - R0[:, :j] @ a
        spread = cn[j] + float(np.abs(a) @ cn[:j])
        df = tol * spread * (2.0 * float(np.linalg.norm(w_r)) + tol * spread)
        if f > 0.0:
            gains[j] = _log1p_of(e, le)
            # a change df of f moves the gain by y^2 df / (1 + e)
            errs[j] = (
                math.exp(math.log(df) + float(log_y2[j]) - float(np.logaddexp(0.0, le)))
                if df > 0
                else 0.0
            )
        else:
            errs[j] = float(np.logaddexp(0.0, math.log(df) + float(log_y2[j]))) if df > 0 else 0.0
        if j + 1 == k:
            break
        # Reflect column j's active rows onto one pivot row, which then leaves: R's row j while
        # j < r, else Cb's row j; the residual rows are Cb's rows 0 .. min(j, r - 1).
        if j < r:
            A = np.vstack((R[j : j + 1, j:], Cb[: j + 1, j:]))
        else:
            A = np.vstack((Cb[j : j + 1, j:], Cb[:r, j:]))
        x = A[:, 0]
        nx = float(np.linalg.norm(x))
        if nx == 0.0:
            continue
        v = x.copy()
        v[0] += math.copysign(nx, x[0])
        piv = -math.copysign(nx, x[0])  # the finished diagonal entry of column j
        Rinv[:j, j] = -(Rinv[:j, :j] @ t) / piv
        Rinv[j, j] = 1.0 / piv
        A = A[:, 1:]
        A -= np.outer(v, (v @ A) * (2.0 / float(v @ v)))
        if j < r:
            R[j, j + 1 :] = A[0]
            Cb[: j + 1, j + 1 :] = A[1:]
        else:
            Cb[j, j + 1 :] = A[0]
            Cb[:r, j + 1 :] = A[1:]
    return gains, errs


def _kappa(k: int, d: int) -> float:
    """Round-off growth allowed for a Householder QR of k columns of length d, then k steps of
    the stacked reflections: the textbook gamma grows like (k + d) eps; against exact values
    (tests/test_analysis_exact.py) the estimate stays above the error by a factor of 20 or more."""
    return float(k + d + 8)


def _gains(
    U: np.ndarray, alpha: float, s: np.ndarray, nu: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The gains and their round-off for unit rows U (m×d) weighted y_j**2 = alpha 4**s_j, in
    row order."""
    m, d = U.shape
    R = np.linalg.qr(U.T, mode="r")  # (min(m, d), m): U Uᵀ = Rᵀ R, column-wise backward stable
    return _pivots(R, _log_y2(alpha, s), _y2_of(alpha, s), _inv_y(alpha, s), _kappa(m, d), nu)


def _y2_of(alpha: float, s: np.ndarray) -> np.ndarray:
    """alpha * 4**s per row where that is a finite normal number, else 0 (then only the log is
    used)."""
    with np.errstate(over="ignore", under="ignore"):
        y2 = np.ldexp(alpha, 2 * s)
    return np.where(np.isfinite(y2) & (y2 >= 2.3e-308), y2, 0.0)


def _logdet_terms(R: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pivot gains, their round-off estimates, and the row of R each belongs to (-1: none)."""
    U, s, keep = _unit_rows(R)
    m, d = U.shape
    if m == 0:
        return np.zeros(0), np.zeros(0), keep
    if m <= d:
        g, err = _gains(U, alpha, s)
        return g, err, keep
    # More rows than columns: reduce to the d×d factor T of B = sqrt(alpha) G_S / 2**E, rows
    # sorted by decreasing norm first (the Householder QR then perturbs each row of B by about
    # eps of itself, Cox and Higham). Row i of T = Q[:, i]ᵀ B then carries about
    # eps (sum_l Q_li^2 ||B_l||^2)^(1/2) of round-off: nu passes that on to the pivots.
    fa, ea = math.frexp(math.sqrt(alpha))
    smax = int(s.max())
    B = U * np.ldexp(fa, s - smax)[:, None]
    nb2 = np.einsum("ij,ij->i", B, B)
    order = np.argsort(-nb2, kind="stable")
    Q, T = np.linalg.qr(B[order])
    noise = np.sqrt(np.einsum("li,l->i", Q * Q, nb2[order]))
    V, s2, kept = _unit_rows(T)
    E = smax + ea  # log det(I + Bᵀ B) = log det(I + 4**E Tᵀ T); row i of T weighs 4**(E + s2_i)
    nu = np.maximum(1.0, np.ldexp(noise[kept], -s2))
    g, err = _gains(V, 1.0, E + s2, nu)
    return g, err, np.full(g.shape, -1, dtype=np.int64)


def logdet(G: Any, indices: Any, alpha: float = 1.0, *, bf16: bool = False) -> float:
    """log det(I + α G_Sᵀ G_S) for the rows ``indices`` of ``G``, to float64's relative accuracy.

    ``G``: (n, d) features (float32/64, float16, bfloat16); ``indices``: 1-D integers, may repeat
    rows (each occurrence counts); ``alpha`` > 0. Returns a float >= 0 (nats).

    Every row is scaled by its own power of two and the triangular factor of the scaled rows
    comes from a Householder QR (never a Gram matrix), so the answer keeps its relative accuracy
    for ‖g‖ from 1e-300 to 1e300, α‖g‖² from 1e-300 up, rows of very different size in one set,
    and near-parallel rows (their separating component keeps the precision QR gives it). Each
    gain is log1p of a sum of squares, never 1 + something rounded. Where round-off could move
    the value by more than 1e-8 of it (rows so nearly dependent at so large an α‖g‖² that float64
    cannot tell them apart) a ValueError says so and names a row. Results below float64's normal
    range (about 2e-308) are subnormal and carry only absolute accuracy.
    """
    arr, code = as_features(G, bf16=bf16)
    n, d = arr.shape
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    if idx.size == 0:
        return 0.0
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"indices out of range for n = {n}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha = {alpha} must be a finite number > 0")
    R = row_as_float64(arr, code, idx.astype(np.int64))
    if not np.isfinite(R).all():
        raise ValueError("the selected rows of G contain NaN or Inf")
    gains, errs, where = _logdet_terms(R, alpha)
    total = float(np.sum(gains))
    err = float(np.sum(errs)) + gains.size * _EPS * total  # and the sum's own rounding
    if not err <= _REL_TOL * total:
        j = int(np.argmax(errs))
        row = f"row {int(idx[where[j]])} of G" if where[j] >= 0 else "one of the rows"
        raise ValueError(
            "log det(I + alpha G_S^T G_S) cannot be resolved in float64: "
            f"{row} is so nearly a combination of the others at alpha * ||g||^2 this large that "
            f"round-off (about 1e-16 of each row) could move the value by {err:.2g} of "
            f"{total:.6g} (more than {_REL_TOL:g} of it); drop repeated or near-repeated rows "
            "or lower alpha"
        )
    return total


@dataclass(frozen=True)
class Curvature:
    """Total curvature of F over the pool and the greedy guarantee it implies.

    c = 1 − min_x Δ_x(D∖{x}) / Δ_x(∅) in [0, 1]; greedy reaches at least ``factor`` = (1 − e^{−c})/c
    of the optimum (1 − 1/e at c = 1, → 1 as c → 0). ``argmin`` is the row attaining the minimum
    (-1 when every row is zero). ``c`` is rounded up by its round-off estimate, so ``factor``
    never overstates the guarantee.
    """

    c: float
    factor: float
    argmin: int


def _solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A⁻¹ B, or NaN where A is exactly singular in float64 (a factor of rows that float64
    cannot tell apart): the caller turns NaN into a refusal or a rounded-up c, never a crash."""
    try:
        with np.errstate(all="ignore"):
            return np.linalg.solve(A, B)
    except np.linalg.LinAlgError:
        return np.full(np.broadcast_shapes(A.shape[:-1] + (1,), B.shape), np.nan)


def _stack_qr(parts: list[np.ndarray]) -> np.ndarray:
    """R of the QR of the rows of ``parts`` stacked, each part's rows sorted by decreasing norm
    (row-wise small backward error for graded rows)."""
    A = np.vstack(parts)
    order = np.argsort(-np.einsum("ij,ij->i", A, A), kind="stable")
    return np.linalg.qr(A[order], mode="r")


def _whiten(R: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Rows of V R⁻¹ (R square upper triangular), i.e. the solutions of Rᵀ x = v."""
    return _solve(R.T, V.T).T


def _log_sq(x: np.ndarray) -> np.ndarray:
    """log of the squared norm of each row, without overflow or underflow of the squares."""
    mx = np.max(np.abs(x), axis=1)
    with np.errstate(divide="ignore"):
        e = np.frexp(mx)[1]
        sq = np.einsum("ij,ij->i", np.ldexp(x, -e[:, None]), np.ldexp(x, -e[:, None]))
        return np.where(mx > 0, np.log(sq) + (2.0 * _LN2) * e, -np.inf)


def _sq_scaled(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norm of each row as q * 4**e with q in [0.25, k) (or 0), never over- or
    underflowing."""
    mx = np.max(np.abs(x), axis=1)
    e = np.where(mx > 0, np.frexp(mx)[1], 0)
    xs = np.ldexp(x, -e[:, None])
    return np.einsum("ij,ij->i", xs, xs), e


def _log_log1p(q: np.ndarray, p: np.ndarray, *, minus: bool = False) -> np.ndarray:
    """log(log1p(v)) for v = q * 2**p (or log(-log1p(-v)) with ``minus``, v <= 1/2), to a few
    eps relative for any exponent p: v is formed exactly where it is a normal float, and
    through its logarithm where it is not."""
    q = np.asarray(q, dtype=np.float64)
    p = np.asarray(p, dtype=np.int64)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        v = np.ldexp(q, p)
        lv = np.log(q) + _LN2 * p  # log v
        if minus:
            mid = np.log(-np.log1p(-np.minimum(v, 0.5)))
        else:
            mid = np.log(np.log1p(v))
        tiny = lv < -40.0  # log1p(v) = v (1 - v/2 ...): log of it is lv to within v/2 < eps
        huge = lv > 40.0  # log1p(v) = lv + log1p(1/v), 1/v < eps
        out = np.where(tiny, lv, np.where(huge, np.log(lv), mid))
    return np.where(q > 0, out, -np.inf)


def _cond(R: np.ndarray) -> float:
    """Frobenius condition number of a square triangular factor after scaling its rows to unit
    norm: triangular solves are blind to that scaling (graded factors solve accurately), and
    what remains bounds their relative error over eps."""
    Rs = R / np.linalg.norm(R, axis=1)[:, None]
    Ri = _solve(Rs, np.eye(R.shape[0]))
    c = float(np.linalg.norm(Rs) * np.linalg.norm(Ri))
    return c if math.isfinite(c) else math.inf


def _sensitivity(R: np.ndarray, V: np.ndarray, Bp: np.ndarray) -> np.ndarray:
    """For each row v of V: how much t = ||R⁻ᵀ v||^2 moves, relatively and over eps, when each
    row b_i of Bp (Rᵀ R = c I + Bpᵀ Bp) moves by eps of itself: to first order
    2 ||R⁻¹ w|| sum_i |w . w_i| ||b_i|| / ||w||^2 with w = R⁻ᵀ v, w_i = R⁻ᵀ b_i (summed exactly
    up to _SENS_ROWS rows, beyond through Cauchy-Schwarz, sum_i ... <= ||w|| ||Bp||_F)."""
    W = _whiten(R, V)
    W = W / np.max(np.abs(W), axis=1)[:, None]  # t is homogeneous: rescale to unit size
    X = _solve(R, W.T).T
    w2 = np.einsum("ij,ij->i", W, W)
    if Bp.shape[0] <= _SENS_ROWS:
        Wb = _whiten(R, Bp)
        s = np.abs(W @ Wb.T) @ np.linalg.norm(Bp, axis=1)
    else:
        s = np.sqrt(w2) * float(np.linalg.norm(Bp))
    with np.errstate(over="ignore", invalid="ignore"):
        return 2.0 * _rownorm(X) * s / w2


def _rownorm(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row, without overflow in the squares."""
    mx = np.max(np.abs(x), axis=1)
    safe = np.where(mx > 0, mx, 1.0)
    return mx * np.sqrt(np.einsum("ij,ij->i", x / safe[:, None], x / safe[:, None]))


def curvature(G: Any, alpha: float = 1.0, *, bf16: bool = False) -> Curvature:
    """Curvature of log det(I + α Σ g gᵀ) over all rows of ``G`` ((n, d) features, α > 0).

    Δ_x(D∖{x}) = −log(1 − t_x) with t_x = α g_xᵀ M⁻¹ g_x, M = I + α GᵀG. Rows are scaled by
    powers of two and M's factor comes from a Householder QR of [√α G; I] (never a Gram
    matrix). Where t_x <= 1/2 (small α‖g‖², where the gain must not be 1 minus a rounded
    number) t_x is a sum of squares, log1p-ed. Where t_x > 1/2 (at most 2·min(n, d) rows),
    1 − t_x is computed directly as the diagonal entry of (I + α G_L G_Lᵀ)⁻¹ over those rows
    after whitening by the rest, from a second QR. With n <= d all of it works in the
    n-dimensional span of the rows. ``c`` is rounded up by a round-off estimate; where that
    estimate exceeds 1e-4 (rows so nearly dependent at so large an α‖g‖² that float64 cannot
    resolve their leave-one-out gains) a ValueError says so.
    """
    arr, code = as_features(G, bf16=bf16)
    n, d = arr.shape
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha = {alpha} must be a finite number > 0")
    for s0 in range(0, n, _BLOCK):
        blk = row_as_float64(arr, code, slice(s0, s0 + _BLOCK))
        if not np.isfinite(blk).all():
            bad = s0 + int(np.flatnonzero(~np.isfinite(blk).all(axis=1))[0])
            raise ValueError(f"G contains NaN or Inf: first bad row {bad}")
    U, s, keep = _unit_rows(row_as_float64(arr, code, slice(0, n)))
    if keep.size == 0:  # every row is zero
        return Curvature(c=0.0, factor=1.0, argmin=-1)
    m = U.shape[0]
    # n <= d: work in the m-dimensional span, v_x = column x of R where U Uᵀ = Rᵀ R
    V = np.linalg.qr(U.T, mode="r").T.copy() if m <= d else U
    k = V.shape[1]
    tol = _kappa(m, d) * _EPS
    fa, ea = math.frexp(alpha)
    n2 = np.einsum("ij,ij->i", U, U)
    log_base = _log_log1p(fa * n2, ea + 2 * s)  # log Delta_x(empty) = log log1p(alpha ||g||^2)
    # B' = 2**-E sqrt(alpha) G: tau_x = y_x 2**-E <= 1, and M = 4**E (B'ᵀ B' + 4**-E I)
    fr, er = math.frexp(math.sqrt(alpha))
    smax = int(s.max())
    E = smax + er
    Bp = V * np.ldexp(fr, s - smax)[:, None]
    ident = math.ldexp(1.0, -max(-1000, min(1000, E))) * np.eye(k)
    RN = _stack_qr([Bp, ident])
    q, ew = _sq_scaled(_whiten(RN, V))  # ||RN^-T v_x||^2 = q 4**ew
    pt = ea + 2 * (s - E + ew)  # t_x = alpha 4**(s - E) ||RN^-T v_x||^2 = (fa q) 2**pt
    with np.errstate(over="ignore", under="ignore"):
        t = np.ldexp(fa * q, pt)
    big = t > 0.5
    # log Delta_x(D minus x) = log(-log1p(-t_x)) where t_x <= 1/2
    log_loo = _log_log1p(fa * q, pt, minus=True)
    # Round-off: the factor of M is exact for rows perturbed by about eps of themselves, which
    # moves t_x by at most 2 eps ||B||_F ||M⁻¹ b_x|| ||RN⁻ᵀ b_x|| (first order), i.e. relative
    # 2 eps ||B||_F ||RN⁻¹ w_x|| / ||w_x|| with w_x = RN⁻ᵀ v_x; plus the solves' own
    # cond(RN) eps. Delta_x = -log1p(-t_x) moves by at most as much, relatively.
    rel = tol * (_cond(RN) + _sensitivity(RN, V, Bp))
    L = np.flatnonzero(big)
    if L.size and m <= d:
        # n <= d: 1 - t_x = [(I + α G Gᵀ)⁻¹]_xx = c_x [(Zᵀ Z)⁻¹]_xx with Z = [Vᵀ; C^1/2] (unit
        # rows, c_x = 1 / y_x^2): ||row x of RZ⁻¹||^2 c_x, no subtraction from 1. Independent
        # rows keep the distance of z_x from the others well above round-off.
        lc = np.clip(-_log_y2(alpha, s), -1380.0, 1380.0)  # log c_x
        Z = np.vstack([V.T, np.diag(np.exp(0.5 * lc))])
        RZ = np.linalg.qr(Z, mode="r")
        qz, ez = _sq_scaled(_solve(RZ, np.eye(m))[L])
        log_pi = lc[L] + np.log(qz) + (2.0 * _LN2) * ez
        log_loo[L] = np.log(-np.minimum(log_pi, -1e-300))
        # Rows perturbed by eps of themselves move pi_x = [K⁻¹]_xx (K = I + α G Gᵀ) by at most
        # 2 eps (sum_i |P_xi| ||v_i||) ||Vᵀ P e_x|| / P_xx of itself, P = (Zᵀ Z)⁻¹.
        Zi = _solve(RZ, np.eye(m))
        P = Zi[L] @ Zi.T
        pm = np.max(np.abs(P), axis=1)
        P = P / pm[:, None]  # the bound is of degree 1 in row x of P: scale back by pm below
        vn = np.sqrt(np.einsum("ij,ij->i", V, V))
        Pxx = np.abs(P[np.arange(L.size), L])
        with np.errstate(over="ignore"):
            dpi = 2.0 * (np.abs(P) @ vn) * np.linalg.norm(P @ V, axis=1) / Pxx * pm
        rel[L] = tol * (_cond(RZ) + dpi) / np.maximum(-log_pi, 1e-300)
    elif L.size:
        # n > d: Delta_x(D minus x) = log1p(b_xᵀ M_{-x}⁻¹ b_x), M_{-x} factored for each such
        # row from the rest's d×d factor and the other rows of L (a QR each, O(d^3)). Rows of
        # L number at most 2d (the t_x sum to at most d).
        RP = _stack_qr([Bp[~big], ident])
        for x in L:
            others = L[L != x]
            Rx = _stack_qr([RP, Bp[others]]) if others.size else RP
            qx, exq = _sq_scaled(_whiten(Rx, V[x : x + 1]))
            log_loo[x] = _log_log1p(fa * qx, ea + 2 * (s[x] - E + exq))[0]
            rel[x] = tol * (
                _cond(Rx) + 2.0 + _sensitivity(Rx, V[x : x + 1], np.delete(Bp, x, axis=0))[0]
            )
    ratio = np.exp(np.minimum(log_loo - log_base, 0.0))  # Delta_x(D minus x) <= Delta_x(empty)
    live = np.isfinite(log_base)
    if not live.any():  # every gain is zero
        return Curvature(c=0.0, factor=1.0, argmin=-1)
    ratio = np.where(live, ratio, math.inf)
    # the ratio carries the relative round-off of both logs, and a few eps from the exp
    lo = ratio * (1.0 - rel - 8.0 * _EPS * (1.0 + np.abs(log_loo) + np.abs(log_base)))
    j = int(np.argmin(ratio))
    if np.isnan(ratio).any():
        bad = int(keep[int(np.flatnonzero(np.isnan(ratio))[0])])
        raise ValueError(
            "the curvature cannot be resolved in float64: the leave-one-out gain of "
            f"row {bad} of G could not be computed (rows linearly dependent at so large an "
            "alpha * ||g||^2 that round-off swamps the identity); drop repeated rows or lower "
            "alpha"
        )
    # Rounded up: where the round-off estimate is unbounded, the ratio's lower end is 0 (c = 1,
    # the worst case, still a true statement), so the guarantee is never overstated.
    lo = np.where(np.isfinite(lo), np.maximum(lo, 0.0), np.where(live, 0.0, math.inf))
    c = min(1.0, max(0.0, 1.0 - float(np.min(lo))))
    # (1 - e^-c) / c, decreasing in c, rounded down by a few ulps of its own evaluation
    factor = 1.0 if c == 0.0 else -math.expm1(-c) / c * (1.0 - 4.0 * _EPS)
    return Curvature(c=c, factor=factor, argmin=int(keep[j]))
