"""Deterministic synthetic gradient features for the benchmarks.

Clustered rows (task families), rows scaled by a per-row factor, a fraction of sign-flipped rows
(conflicting gradients) and exact duplicates, as in real per-sample gradient sets.
"""

from __future__ import annotations

import numpy as np


def clustered_features(
    n: int,
    d: int,
    seed: int = 0,
    clusters: int = 50,
    noise: float = 0.7,
    flip: float = 0.1,
    dup: float = 0.05,
    dtype=np.float32,
    out: np.ndarray | None = None,
    block: int = 65536,
) -> np.ndarray:
    """(n, d) features generated block by block (``out`` may be a np.memmap)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    G = np.empty((n, d), dtype=dtype) if out is None else out
    for s in range(0, n, block):
        m = min(block, n - s)
        r = np.random.default_rng([seed, s])
        x = centers[r.integers(0, clusters, m)]
        x += noise * r.standard_normal((m, d), dtype=np.float32)
        x *= r.uniform(0.3, 2.0, (m, 1)).astype(np.float32)
        x[r.random(m) < flip] *= -1.0
        G[s : s + m] = x.astype(dtype, copy=False)
    nd = int(dup * n)
    if nd:
        src = rng.integers(0, n, nd)
        dst = rng.integers(0, n, nd)
        for a, b in zip(src, dst):
            G[b] = G[a]
    return G
