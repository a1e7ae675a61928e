"""Selection benchmark: naive, lazy and stochastic spice vs a vectorised numpy implementation.

    python bench/select_bench.py            # the table in bench/RESULTS.md (several minutes)
    python bench/select_bench.py --quick    # seconds; CI runs this so the script cannot rot

All methods run in one process on the same data, so machine drift largely cancels in the ratios.
Non-lazy methods (spice naive, numpy) cost the same per step at every step, so on the largest
configurations they run the first ``--prefix`` steps and the full time is extrapolated (marked *);
their picks are checked against lazy's on that prefix.
"""

from __future__ import annotations

import argparse
import os
import sys

if "--threads" in sys.argv:  # before numpy loads OpenBLAS: the same thread count for both sides
    _n = sys.argv[sys.argv.index("--threads") + 1]
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = _n

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from datagen import clustered_features  # noqa: E402
from memwatch import peak_extra  # noqa: E402

import spice  # noqa: E402
from spice.reference import greedy_numpy  # noqa: E402


def run(n: int, d: int, frac: float, lam: float, prefix: int | None) -> list[dict]:
    G = clustered_features(n, d, seed=1)
    k = int(round(frac * n))
    rows = []
    with peak_extra() as m:
        lazy = spice.select(G, k, conflict_penalty=lam, method="lazy")
    rows.append(
        dict(
            method="spice lazy",
            s=m["s"],
            mem=m["extra_bytes"],
            evals=lazy.evaluations,
            dots=lazy.dot_products,
            same="—",
            extrap=False,
        )
    )
    with peak_extra() as m:
        st = spice.select(G, k, conflict_penalty=lam, method="stochastic", seed=0)
    rows.append(
        dict(
            method="spice stochastic",
            s=m["s"],
            mem=m["extra_bytes"],
            evals=st.evaluations,
            dots=st.dot_products,
            same=f"logdet {st.logdet / lazy.logdet:.4f}× lazy",
            extrap=False,
        )
    )
    kk = k if prefix is None else min(k, prefix)
    with peak_extra() as m:
        nv = spice.select(G, kk, conflict_penalty=lam, method="naive")
    same = np.array_equal(nv.indices, lazy.indices[:kk])
    rows.append(
        dict(
            method="spice naive",
            s=m["s"] * k / kk,
            mem=m["extra_bytes"],
            evals=nv.evaluations * k // kk,
            dots=nv.dot_products * k // kk,
            same=f"{same} ({kk} picks)",
            extrap=kk < k,
        )
    )
    with peak_extra() as m:
        ref = greedy_numpy(G, kk, conflict_penalty=lam)
    agree = int(np.sum(ref["indices"] == lazy.indices[: len(ref["indices"])]))
    rows.append(
        dict(
            method="numpy (vectorised, non-lazy)",
            s=m["s"] * k / kk,
            mem=m["extra_bytes"],
            evals=n * k,
            dots=n * k,
            same=f"{agree}/{kk} equal",
            extrap=kk < k,
        )
    )
    for r in rows:
        r.update(n=n, d=d, k=k, gbytes=G.nbytes)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for spice and numpy's OpenBLAS alike (default: all cores)",
    )
    ap.add_argument(
        "--prefix",
        type=int,
        default=1000,
        help="steps run by non-lazy methods when n*k > 1e8 (then extrapolated)",
    )
    ap.add_argument("--conflict-penalty", type=float, default=0.1)
    args = ap.parse_args()
    configs = (
        [(2000, 64)] if args.quick else [(10**4, 256), (10**4, 1024), (10**5, 256), (10**5, 1024)]
    )
    print(
        f"# spice {spice.__version__}, kernels {spice.kernel_isa()}, "
        f"{os.cpu_count()} CPUs, λ = {args.conflict_penalty}, k = 10%"
    )
    print(
        "| n | d | k | method | time (s) | vs numpy | extra memory / G | evaluations "
        "| dot products | picks |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, d in configs:
        prefix = args.prefix if n * n // 10 > 10**8 else None
        rows = run(n, d, 0.1, args.conflict_penalty, prefix)
        base = rows[-1]["s"]
        for r in rows:
            star = "*" if r["extrap"] else ""
            print(
                f"| {r['n']} | {r['d']} | {r['k']} | {r['method']} | {r['s']:.2f}{star} "
                f"| {base / r['s']:.1f}× | {r['mem'] / r['gbytes']:.3f} | {r['evals']:.3g} "
                f"| {r['dots']:.3g} | {r['same']} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
