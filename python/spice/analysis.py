"""Exact log-determinants of chosen sets and the pool's curvature, in float64
(docs/algorithm.md §2, §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import as_features, row_as_float64

_BLOCK = 4096  # rows per block when streaming over G
# A Cholesky pivot below this fraction of its diagonal entry has lost about four digits or more
# to round-off (its error is about eps times that entry): the value is then refused, not
# returned with an error of that size. A row repeated at alpha ||g||^2 = 1e11 passes (pivot 2
# of 1 + 1e11, good to 1e-5), at 1e13 it does not.
_PIVOT_FLOOR = 1e4 * np.finfo(np.float64).eps
# Beyond exp(_HUGE_LOG) an entry of alpha * (Gram) would leave float64's comfortable range, so
# the identity is scaled down instead of the Gram up (see _regime).
_HUGE_LOG = math.log(1e300)


def _scale_out(R: np.ndarray) -> tuple[np.ndarray, int]:
    """``R = 2**e * U`` with max|U| in [0.5, 1): an exact power-of-two scale (0 for R = 0), so
    that Gram matrices of U neither overflow nor lose anything (the scale commutes with rounding).
    """
    mx = float(np.max(np.abs(R))) if R.size else 0.0
    if mx == 0.0:
        return R, 0
    e = math.frexp(mx)[1]
    return np.ldexp(R, -e), e


def _regime(alpha: float, e: int, dmax: float) -> tuple[bool, float]:
    """For alpha * (2**e)**2 * X with max diag(X) = dmax: (huge, beta or log beta).

    Not huge: beta = alpha * 4**e is returned and I + beta X is formed exactly as
    I + alpha * (unscaled Gram) would be, bit for bit. Huge: log beta is returned and the caller
    works with beta**-1 I + X instead, whose entries stay in range."""
    log_beta = math.log(alpha) + 2.0 * e * math.log(2.0)
    if dmax > 0.0 and log_beta + math.log(dmax) >= _HUGE_LOG:
        return True, log_beta
    return False, math.ldexp(alpha, 2 * e)


def _inv_beta(log_beta: float) -> float:
    return math.exp(-log_beta) if log_beta < 745.0 else 0.0


def _cholesky_checked(K: np.ndarray, what: str) -> np.ndarray:
    """Lower Cholesky factor of the SPD matrix K, or a ValueError when float64 cannot resolve it
    (a pivot at round-off level: nearly dependent rows at a huge alpha * ||g||^2)."""
    try:
        L = np.linalg.cholesky(K)
    except np.linalg.LinAlgError:
        L = None
    # Pivot i = L_ii^2 carries a round-off of about eps K_ii (Cholesky's backward error is
    # componentwise, (|L||L^T|)_ii = K_ii), whatever the scale of row i.
    if (
        L is None
        or not np.isfinite(L).all()
        or not np.all(np.diagonal(L) ** 2 > _PIVOT_FLOOR * np.diagonal(K))
    ):
        raise ValueError(
            f"{what} cannot be resolved in float64: the rows are (nearly) linearly dependent at "
            "a scale alpha * ||g||^2 where round-off swamps the identity in I + alpha G^T G; "
            "lower alpha or drop repeated rows"
        )
    return L


def logdet(G: Any, indices: Any, alpha: float = 1.0, *, bf16: bool = False) -> float:
    """log det(I + α G_Sᵀ G_S) for the rows ``indices`` of ``G``, exact in float64.

    Uses the smaller of the m×m form I + α G_S G_Sᵀ and the d×d form (Sylvester); never an n×n
    matrix. ``indices`` may repeat rows (each occurrence counts).

    Scale-safe: the rows are scaled by a power of two before their Gram matrix is formed, so rows
    whose ‖g‖² overflows float64 still give the (finite) log det. Where float64 cannot resolve
    a Cholesky pivot to about four digits (nearly dependent rows with α‖g‖² ≳ 1e12, where the
    identity drowns in round-off), a ValueError says so instead of a wrong number.
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
    U, e = _scale_out(R)
    m = U.shape[0]
    if m <= d:
        K = U @ U.T.copy()  # .copy(): a plain GEMM, not SYRK (see bench notes on OpenBLAS)
    else:
        K = U.T.copy() @ U
    dmax = float(np.max(np.diagonal(K)))
    if dmax == 0.0:  # every selected row is zero
        return 0.0
    huge, b = _regime(alpha, e, dmax)
    if huge:  # I + beta X = beta (beta^-1 I + X)
        K[np.diag_indices_from(K)] += _inv_beta(b)
        L = _cholesky_checked(K, "log det(I + alpha G_S^T G_S)")
        return float(K.shape[0] * b + 2.0 * np.sum(np.log(np.diagonal(L))))
    K *= b
    K[np.diag_indices_from(K)] += 1.0
    L = _cholesky_checked(K, "log det(I + alpha G_S^T G_S)")
    return float(2.0 * np.sum(np.log(np.diagonal(L))))


@dataclass(frozen=True)
class Curvature:
    """Total curvature of F over the pool and the greedy guarantee it implies.

    c = 1 − min_x Δ_x(D∖{x}) / Δ_x(∅) in [0, 1]; greedy reaches at least ``factor`` = (1 − e^{−c})/c
    of the optimum (1 − 1/e at c = 1, → 1 as c → 0). ``argmin`` is the row attaining the minimum.
    """

    c: float
    factor: float
    argmin: int


def curvature(G: Any, alpha: float = 1.0, *, bf16: bool = False) -> Curvature:
    """Curvature of log det(I + α Σ g gᵀ) over all rows of ``G``.

    n > d: one d×d Cholesky and inverse, streaming over G; n <= d: the n×n form, where
    1 − α g_xᵀ M⁻¹ g_x is the diagonal entry x of (I + α G Gᵀ)⁻¹ (no cancellation). Scale-safe
    like :func:`logdet`: rows whose ‖g‖² overflows float64 are handled through a power-of-two
    scale, and a matrix float64 cannot resolve is a ValueError, not a wrong c.
    """
    arr, code = as_features(G, bf16=bf16)
    n, d = arr.shape
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha = {alpha} must be a finite number > 0")
    mx = 0.0
    for s in range(0, n, _BLOCK):
        B = row_as_float64(arr, code, slice(s, s + _BLOCK))
        if not np.isfinite(B).all():
            bad = s + int(np.flatnonzero(~np.isfinite(B).all(axis=1))[0])
            raise ValueError(f"G contains NaN or Inf: first bad row {bad}")
        mx = max(mx, float(np.max(np.abs(B))))
    if mx == 0.0:  # every row is zero
        return Curvature(c=0.0, factor=1.0, argmin=-1)
    e = math.frexp(mx)[1]  # G = 2**e * U, max|U| in [0.5, 1): an exact scale

    def rows(s: int) -> np.ndarray:
        return np.ldexp(row_as_float64(arr, code, slice(s, s + _BLOCK)), -e)

    what = "the curvature (I + alpha G^T G)^-1"
    if n <= d:
        U = rows(0)
        K = U @ U.T.copy()
        huge, b = _regime(alpha, e, float(np.max(np.diagonal(K))))
        n2 = np.einsum("ij,ij->i", U, U)
        if huge:
            K[np.diag_indices_from(K)] += _inv_beta(b)
            with np.errstate(divide="ignore"):
                base = np.logaddexp(0.0, b + np.log(n2))
        else:
            K *= b
            K[np.diag_indices_from(K)] += 1.0
            base = np.log1p(b * n2)
        Linv = np.linalg.inv(_cholesky_checked(K, what))
        # (I + alpha G G^T)^-1_xx = 1 - alpha g_x^T M^-1 g_x = exp(-Delta_x(D minus x))
        kinv = np.einsum("ij,ij->j", Linv, Linv)
        loo = -np.log(kinv) + (b if huge else 0.0)
        loo = np.minimum(loo, base)  # Delta_x(D minus x) <= Delta_x(empty set)
        ok = base > 0
        if not ok.any():
            return Curvature(c=0.0, factor=1.0, argmin=-1)
        ratio = np.where(ok, loo / np.where(ok, base, 1.0), math.inf)
        arg = int(np.argmin(ratio))
        best = float(ratio[arg])
    else:
        M = np.zeros((d, d))
        for s in range(0, n, _BLOCK):
            B = rows(s)
            M += B.T.copy() @ B
        huge, b = _regime(alpha, e, float(np.max(np.diagonal(M))))
        if huge:  # alpha g^T M^-1 g = u^T (beta^-1 I + U^T U)^-1 u
            M[np.diag_indices_from(M)] += _inv_beta(b)
            scale = 1.0
        else:
            M *= b
            M[np.diag_indices_from(M)] += 1.0
            scale = b
        _cholesky_checked(M, what)
        Minv = np.linalg.inv(M)
        Minv = 0.5 * (Minv + Minv.T)
        best, arg = math.inf, -1
        for s in range(0, n, _BLOCK):
            B = rows(s)
            q = np.einsum("ij,ij->i", B @ Minv, B)
            n2 = np.einsum("ij,ij->i", B, B)
            if huge:
                with np.errstate(divide="ignore"):
                    base = np.logaddexp(0.0, b + np.log(n2))
                with np.errstate(divide="ignore", invalid="ignore"):
                    loo = np.minimum(-np.log(1.0 - q), base)
                loo = np.where(1.0 - q > 0.0, loo, base)
            else:
                base = np.log1p(scale * n2)
                # Delta_x(D minus x) = -log(1 - alpha q_x(D)); 1 - alpha q_x >= 1/(1 + alpha||g||^2)
                # > 0 in exact arithmetic.
                one_minus = np.maximum(1.0 - scale * q, np.exp(-base))
                loo = -np.log(one_minus)
            ok = base > 0
            if ok.any():
                ratio = np.where(ok, loo / np.where(ok, base, 1.0), math.inf)
                j = int(np.argmin(ratio))
                if ratio[j] < best:
                    best, arg = float(ratio[j]), s + j
        if arg < 0:  # every row's gain is below float64's resolution
            return Curvature(c=0.0, factor=1.0, argmin=-1)
    c = min(1.0, max(0.0, 1.0 - best))
    factor = 1.0 if c < 1e-12 else (1.0 - math.exp(-c)) / c
    return Curvature(c=c, factor=factor, argmin=arg)
