"""Cost of the picks' gradient-norm percentiles (one streaming float64 pass over G, which
``spice.select`` now makes after the greedy) next to the selection itself, on a float16 memmap.

Usage: PYTHONPATH=python python3 bench/norm_percentiles_bench.py N D K
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import spice
from spice.report import norm_percentiles


def main(n: int, d: int, k: int) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "g.npy")
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
        for s in range(0, n, 100_000):
            b = min(n, s + 100_000) - s
            rows = rng.standard_normal((b, d)) * rng.uniform(0.1, 3, (b, 1))
            mm[s : s + b] = rows.astype(np.float16)
        mm.flush()
        del mm
        G = np.load(path, mmap_mode="r")
        for _ in range(2):
            t0 = time.perf_counter()
            sel = spice.select(G, k, threads=1)
            t1 = time.perf_counter()
            pct = norm_percentiles(G, sel.indices)
            t2 = time.perf_counter()
            print(
                f"n={n} d={d} k={k} float16 memmap, 1 thread: spice.select {t1 - t0:.2f} s "
                f"(greedy alone {sel.elapsed_s:.2f} s), norm_percentiles alone {t2 - t1:.2f} s, "
                f"picks' median percentile {np.median(pct):.1f}%"
            )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
