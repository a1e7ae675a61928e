"""Shared generators of test instances for the selector tests."""

from __future__ import annotations

import numpy as np


def gaussian(seed: int, n: int, d: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def clustered(
    seed: int,
    n: int,
    d: int,
    clusters: int = 5,
    dup_frac: float = 0.1,
    flip_frac: float = 0.1,
    zero_rows: int = 2,
) -> np.ndarray:
    """Clustered rows with exact duplicates, sign-flipped (conflicting) rows and zero rows."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)) * 2.0
    lab = rng.integers(0, clusters, n)
    G = centers[lab] + 0.5 * rng.standard_normal((n, d))
    G *= rng.uniform(0.2, 2.0, (n, 1))
    ndup = int(dup_frac * n)
    if ndup:
        src = rng.integers(0, n, ndup)
        dst = rng.integers(0, n, ndup)
        G[dst] = G[src]
    nflip = int(flip_frac * n)
    if nflip:
        G[rng.integers(0, n, nflip)] *= -1.0
    if zero_rows:
        G[rng.integers(0, n, zero_rows)] = 0.0
    return G.astype(np.float32)
