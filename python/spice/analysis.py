"""Exact log-determinants of chosen sets and the pool's curvature (math.md §4), float64."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import as_features, row_as_float64

_BLOCK = 4096  # rows per block when streaming over G


def _logdet_spd(K: np.ndarray) -> float:
    try:
        L = np.linalg.cholesky(K)
        return float(2.0 * np.sum(np.log(np.diagonal(L))))
    except np.linalg.LinAlgError:
        sign, val = np.linalg.slogdet(K)
        return float(val) if sign > 0 else float("nan")


def logdet(G: Any, indices: Any, alpha: float = 1.0, *, bf16: bool = False) -> float:
    """log det(I + α G_Sᵀ G_S) for the rows ``indices`` of ``G``, exact in float64.

    Uses the smaller of the m×m form I + α G_S G_Sᵀ and the d×d form (Sylvester); never an n×n
    matrix. ``indices`` may repeat rows (each occurrence counts).
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
    m = R.shape[0]
    if m <= d:
        K = R @ R.T.copy()  # .copy(): a plain GEMM, not SYRK (see bench notes on OpenBLAS)
    else:
        K = R.T.copy() @ R
    K *= alpha
    K[np.diag_indices_from(K)] += 1.0
    return _logdet_spd(K)


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
    """Curvature of log det(I + α Σ g gᵀ) over all rows of ``G`` (one d×d Cholesky, one pass)."""
    arr, code = as_features(G, bf16=bf16)
    n, d = arr.shape
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha = {alpha} must be a finite number > 0")
    M = np.zeros((d, d))
    for s in range(0, n, _BLOCK):
        B = row_as_float64(arr, code, slice(s, s + _BLOCK))
        if not np.isfinite(B).all():
            bad = s + int(np.flatnonzero(~np.isfinite(B).all(axis=1))[0])
            raise ValueError(f"G contains NaN or Inf: first bad row {bad}")
        M += B.T.copy() @ B
    M *= alpha
    M[np.diag_indices_from(M)] += 1.0
    Minv = np.linalg.inv(M)
    Minv = 0.5 * (Minv + Minv.T)
    best, arg = math.inf, -1
    for s in range(0, n, _BLOCK):
        B = row_as_float64(arr, code, slice(s, s + _BLOCK))
        q = np.einsum("ij,ij->i", B @ Minv, B)
        base = np.log1p(alpha * np.einsum("ij,ij->i", B, B))
        # Δ_x(D∖{x}) = −log(1 − α q_x(D)); 1 − α q_x >= 1/(1 + α‖g‖²) > 0 in exact arithmetic.
        one_minus = np.maximum(1.0 - alpha * q, np.exp(-base))
        loo = -np.log(one_minus)
        ok = base > 0
        if ok.any():
            ratio = np.where(ok, loo / np.where(ok, base, 1.0), math.inf)
            j = int(np.argmin(ratio))
            if ratio[j] < best:
                best, arg = float(ratio[j]), s + j
    if arg < 0:  # every row is zero
        return Curvature(c=0.0, factor=1.0, argmin=-1)
    c = min(1.0, max(0.0, 1.0 - best))
    factor = 1.0 if c < 1e-12 else (1.0 - math.exp(-c)) / c
    return Curvature(c=c, factor=factor, argmin=arg)
