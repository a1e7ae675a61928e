"""normalize="unit" on G against the plain path on a normalised copy of G (the same work):
20,000 x 512 float32 clustered features, lazy, k = 2,000, lambda = 0.1, best of 3 alternated runs.

    PYTHONPATH=python python3 bench/unit_rows_bench.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from datagen import clustered_features  # noqa: E402

import spice  # noqa: E402


def main() -> None:
    G = clustered_features(20_000, 512, seed=3)
    Gn = (G / np.linalg.norm(G.astype(np.float64), axis=1, keepdims=True)).astype(G.dtype)
    spice.select(G[:2000], 10)  # thread pool, page-in
    runs = (("plain on a normalised copy", Gn, "none"), ("unit on G", G, "unit"))
    best: dict[str, float] = {}
    work: dict[str, tuple[int, int]] = {}
    for _ in range(3):
        for name, H, mode in runs:
            t = time.perf_counter()
            s = spice.select(H, 2000, conflict_penalty=0.1, method="lazy", normalize=mode)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            work[name] = (s.evaluations, s.dot_products)
    for name, _, _ in runs:
        ev, dots = work[name]
        print(f"{name}: {best[name]:.3f} s, {ev} evaluations, {dots} dot products")


if __name__ == "__main__":
    main()
